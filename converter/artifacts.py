"""The output folder: refuse another recipe's folder, write every file atomically."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .errors import OutputError

STAMP = ".edgeconv.json"


def check_output_dir(out: Path, recipe_name: str, force: bool) -> None:
    """Refuse a non-empty folder that is not this recipe's, unless ``force``."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a folder; choose another --out")
    if force or not any(out.iterdir()):
        return
    owner = None
    stamp = out / STAMP
    if stamp.is_file():
        try:
            owner = json.loads(stamp.read_text()).get("recipe")
        except (OSError, ValueError, AttributeError):
            owner = None
    if owner != recipe_name:
        whose = f"recipe '{owner}'" if owner else "files not written by edgeconv"
        raise OutputError(
            f"--out {out}: holds {whose}, not '{recipe_name}'; choose another --out or pass --force to overwrite"
        )


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).chmod(0o666 & ~_umask())  # mkstemp creates 0600; artifacts are ordinary files
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_outputs(out: Path, recipe_name: str, files: dict[str, bytes]) -> None:
    """Stamp the folder as this recipe's, then write each file atomically (report last)."""
    write_atomic(out / STAMP, json.dumps({"recipe": recipe_name}).encode() + b"\n")
    for name, data in files.items():
        write_atomic(out / name, data)


def file_record(path: Path, data: bytes) -> dict[str, object]:
    """``{path, bytes, sha256}`` of an artifact, as the report lists it."""
    return {"path": str(path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
