"""The runtime bundle: ``converter/runtime`` as one self-contained zipapp for devices.

A device then needs Python, numpy and a TFLite interpreter -- not this project. The zip
is built with fixed timestamps and sorted entries, so the same sources give the same bytes.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
BUNDLE_NAME = "edgeconv_runtime.pyz"
_EPOCH = (1980, 1, 1, 0, 0, 0)


def bundle_bytes() -> bytes:
    """The zipapp: ``converter/__init__.py``, ``converter/runtime/*.py`` and a ``__main__``."""
    files = {"converter/__init__.py": (PACKAGE / "__init__.py").read_bytes()}
    for source in sorted((PACKAGE / "runtime").glob("*.py")):
        files[f"converter/runtime/{source.name}"] = source.read_bytes()
    files["__main__.py"] = b"import sys\n\nfrom converter.runtime.cli import main\n\nsys.exit(main())\n"
    buffer = io.BytesIO()
    buffer.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, files[name])
    return buffer.getvalue()


def write_bundle(folder: Path) -> Path:
    """Write the bundle into ``folder`` and return its path."""
    from converter.artifacts import write_atomic

    path = folder / BUNDLE_NAME
    write_atomic(path, bundle_bytes())
    return path
