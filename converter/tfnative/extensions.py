"""TensorFlow's compiled extensions, each loaded alone from the installed wheel.

An extension is loaded from its file under its own dotted name and registered in ``sys.modules``, so an
``import tensorflow`` later in the same process finds it there instead of initialising the native library
twice (which aborts at exit). Where TensorFlow is imported already, its own module is returned.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The MLIR converter and quantizer (pybind); loading it loads TensorFlow's native library and its op registry.
CONVERTER_API = "tensorflow.compiler.mlir.lite.python._pywrap_converter_api"
OFF_ENV = "EDGECONV_NATIVE_TENSORFLOW"  # off: import TensorFlow instead (a comparison, a debug)

_LOCK = threading.Lock()
_LOADED: dict[str, Any] = {}  # dotted name -> module, or None where it cannot load


def enabled() -> bool:
    """False where ``EDGECONV_NATIVE_TENSORFLOW`` says off."""
    return os.environ.get(OFF_ENV, "").lower() not in ("off", "0", "no", "false")


def package_folder() -> Path | None:
    """The installed ``tensorflow`` package's folder, found without importing it."""
    try:
        spec = importlib.util.find_spec("tensorflow")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def tensorflow_version() -> str | None:
    """The installed TensorFlow's version (its distribution's metadata), or None."""
    for dist in ("tensorflow", "tensorflow-cpu", "tf-nightly"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _file(dotted: str) -> Path | None:
    folder = package_folder()
    parts = dotted.split(".")
    if folder is None or parts[0] != "tensorflow":
        return None
    base = folder.joinpath(*parts[1:])
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def load(dotted: str, required_attribute: str) -> Any | None:
    """The extension ``dotted`` (TensorFlow's own when imported), or None where it cannot load on its own.

    ``required_attribute`` must be on it: an extension of another TensorFlow layout that lacks it is not
    used.
    """
    if dotted in sys.modules:
        return sys.modules[dotted]
    if not enabled():
        return None
    with _LOCK:
        if dotted in _LOADED:
            return _LOADED[dotted]
        path = _file(dotted)
        loaded: Any | None = None
        if path is not None:
            try:
                spec = importlib.util.spec_from_file_location(dotted, path)
                assert spec is not None and spec.loader is not None  # noqa: S101 - a file location always gives both
                loaded = importlib.util.module_from_spec(spec)
                sys.modules[dotted] = loaded  # before it runs: TensorFlow's own import must find this one
                spec.loader.exec_module(loaded)
                if not hasattr(loaded, required_attribute):
                    raise ImportError(f"{path.name} has no {required_attribute}")
            except (ImportError, OSError, AssertionError) as e:
                sys.modules.pop(dotted, None)
                log.debug("TensorFlow's %s did not load on its own (%s)", dotted, e)
                loaded = None
        _LOADED[dotted] = loaded
        return loaded
