"""edgeconv: recipe-driven full-integer TFLite conversion for microcontrollers and NPUs.

``from converter import convert`` is the Python API (``converter.api``). It is loaded on first use, so
``import converter`` stays cheap: no TensorFlow, no numpy, as the device runtime and the command line need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ConvertResult", "__version__", "convert", "validate"]

if TYPE_CHECKING:
    from converter.api import ConvertResult, convert, validate

_API = frozenset({"ConvertResult", "convert", "validate"})


def __getattr__(name: str) -> Any:
    """The API's names, imported from ``converter.api`` when first asked for."""
    if name in _API:
        from converter import api

        return getattr(api, name)
    raise AttributeError(f"module 'converter' has no attribute {name!r}")
