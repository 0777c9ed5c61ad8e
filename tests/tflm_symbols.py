"""The operators tflite-micro's own library registers, read from its shared object's symbol table.

The tflite-micro wheel ships no C++ headers, but its ``_runtime.so`` exports every kernel's
``tflite::Register_<OP>()`` function. We read the ELF ``.dynsym`` table directly (a few
struct reads; no binutils or pyelftools needed) and demangle only that one name pattern.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

SHT_DYNSYM = 11
# tflite::Register_CONV_2D() mangles to _ZN6tflite5micro16Register_CONV_2DEv (length-prefixed name).
_REGISTER = re.compile(r"_ZN6tflite5micro(\d+)(Register_[A-Z0-9_]+)Ev")


def tflm_library() -> Path:
    """The tflite-micro Python wheel's native library (what the TFLM interpreter here runs)."""
    import tflite_micro

    matches = sorted(Path(tflite_micro.__file__).parent.rglob("_runtime*.so"))
    if not matches:
        raise FileNotFoundError(f"no _runtime*.so under {Path(tflite_micro.__file__).parent}")
    return matches[0]


def defined_dynamic_symbols(path: Path) -> list[str]:
    """Names of the symbols a 64-bit little-endian ELF file defines in ``.dynsym`` (like ``nm -D --defined-only``)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = []
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type != SHT_DYNSYM:
            continue
        strtab_offset = sections[link][4]
        for sym in range(offset, offset + size, entsize):
            st_name, _, _, st_shndx = struct.unpack_from("<IBBH", data, sym)
            if st_shndx == 0:  # SHN_UNDEF: imported, not defined here
                continue
            end = data.index(b"\0", strtab_offset + st_name)
            names.append(data[strtab_offset + st_name : end].decode("ascii", "replace"))
    return names


def tflm_registrations(path: Path | None = None) -> set[str]:
    """Builtin operators with a ``tflite::Register_<OP>()`` in the library: ``{"CONV_2D", ...}``."""
    ops = set()
    for name in defined_dynamic_symbols(path or tflm_library()):
        m = _REGISTER.fullmatch(name)
        if m and int(m.group(1)) == len(m.group(2)):
            ops.add(m.group(2).removeprefix("Register_"))
    return ops


def method_key(method: str) -> str:
    """``AddConv2D`` -> ``CONV2D``: a resolver method's name without case and underscores."""
    return method.removeprefix("Add").upper()


def registration_key(op: str) -> str:
    """``CONV_2D`` -> ``CONV2D``: TFLM names both sides alike apart from case and underscores."""
    return op.replace("_", "")
