"""Inspect a ``torch.export`` archive (.pt2) before PyTorch reads it: what loading it may run.

``torch.export.load`` (checked in torch 2.13; its docstring says "never load data from an untrusted
source") can run code from the file in five ways, all refused here, before torch is imported:

- **Unpickling.** Weights or constants stored with ``use_pickle`` go through
  ``torch.load(weights_only=False)``; "opaque" constants through ``pickle.loads``; torchbind objects
  through ``torch._C._pickle_load_obj``; archives of the legacy layout (no ``archive_version``, or
  ``data/weights/<model>.pt``) through ``torch.load`` too. The example inputs (``data/sample_inputs``)
  are read with ``weights_only=True`` but, when that fails, *again with weights_only=False*: the
  worker (``torch_worker``) loads them with ``weights_only=True`` itself first and refuses the file
  when that fails, so torch's unsafe fallback never runs.
- **Native code.** An AOTInductor package (``data/aotinductor/``) is a compiled shared library that
  torch loads.
- **Python source.** ``guards_code`` strings are pasted into a function that ``exec`` compiles when
  ``ep.module()`` is called and that runs on every call (litert-torch calls it while tracing).
- **Python expressions.** Symbolic shapes (``expr_str``) go through ``sympy.sympify``, which ``eval``s.
- **Graph calls.** A node's target is resolved as any attribute path under ``torch``, ``_operator`` or
  ``math`` (``torch.os.system`` resolves) and is called when the graph runs.

What is checked is what is loaded. torch's zip reader (miniz) takes the first member's folder as the
root and finds members by name without regard to ASCII case, so a checked ``…_config.json`` can have a
twin ``…_config.JSON`` that torch reads instead. The checks therefore run over one small interface
(``ArchiveView``) twice: over Python's zipfile with torch's lookup rules before torch is imported, and
again in the conversion's child over torch's own reader right before ``torch.export.load``. Either
refuses archives with duplicate or case-colliding names, absolute or traversing names, members outside
the root and members ``torch.export.save`` does not write; declared sizes are bounded per kind of member
and in total, and compression ratios above 100:1 are refused before anything is inflated.

What stays allowed: tensors stored raw (the default of ``torch.export.save``), the example inputs as
tensors, graph nodes that call ATen/prims operators, symbolic-shape arithmetic and ``operator`` helpers,
shape expressions and guards built from sizes, numbers and comparison/arithmetic tokens only.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from converter.errors import ModelLoadError

EXPORT_HINT = (
    "export the model with torch.export.export(model.eval(), (example_input,)) and save it with "
    "torch.export.save(exported, 'model.pt2') (its defaults store raw tensors, nothing else)"
)

# Graph call targets the deserializer may resolve. ATen and prims are the operator sets torch.export
# produces; the rest is symbolic-shape arithmetic.
_TARGET = re.compile(
    r"torch\.ops\.(?:aten|prims)\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?"
    r"|_operator\.(?:getitem|add|sub|mul|floordiv|truediv|mod|pow|neg|pos|abs|eq|ne|lt|le|gt|ge|and_|or_|not_)"
    r"|torch\.(?:sym_float|sym_int|sym_max|sym_min|sym_not|sym_ite|sym_sqrt|sym_sum|_sym_sqrt)"
    r"|math\.(?:ceil|floor|trunc|sqrt)"
)
# Names a shape expression may use: symbols (s0, u3, ...), the sympy functions torch writes and the sympy
# constructors of srepr's form (Max(Integer(1), Add(Symbol('s16', ...), Integer(-2)))).
_SYMBOL = re.compile(r"[a-z]{1,4}[0-9]+")
_FUNCTIONS = frozenset(
    {
        # sympy's own constructors, as srepr writes an expression (torch.export.save's form for dynamic sizes)
        "Integer",
        "Rational",
        "Add",
        "Mul",
        "Pow",
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "Mod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "CeilDiv",
        "LShift",
        "RShift",
        "PowByNatural",
        "FloatPow",
        "FloatTrueDiv",
        "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator",
        "TruncToFloat",
        "TruncToInt",
        "RoundToInt",
        "RoundDecimal",
        "ToFloat",
        "Identity",
        "Max",
        "Min",
        "Abs",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "And",
        "Or",
        "Not",
        "floor",
        "ceiling",
        "oo",
        "int_oo",
        "True",
        "False",
    }
)
_GUARD_WORDS = frozenset({"and", "or", "not", "True", "False", "_size"})
# A symbol as sympy's srepr writes it with its assumptions, which torch.export.save writes for every dynamic
# dimension: Symbol('s77', positive=True, integer=True). Read as the bare symbol (the assumptions are keywords
# of sympy's own Symbol, nothing else can appear in the match).
_SYMBOL_REPR = re.compile(
    r"Symbol\(\s*'([a-z]{1,4}[0-9]+)'(?:\s*,\s*(?:positive|negative|nonnegative|nonpositive|integer|real|finite)"
    r"\s*=\s*(?:True|False))*\s*\)"
)
# One token of an expression: a number, a name, or an operator; nothing else (no quotes, dots, brackets).
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?(?:e[+-]?\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|(\*\*|//|==|!=|<=|>=|[-+*/%<>(),]))")
# An input's size in a guard: L['x'].size()[0] or L['args'][0].size()[1].
_SIZE = re.compile(r"L(?:\[(?:'\w+'|\"\w+\"|\d+)\])+\.(?:size|stride)\(\)\[\d+\]")
_REFUSED_DIRS = {
    "data/aotinductor/": "an AOTInductor package (a compiled shared library that torch would load)",
    "data/executorch/": "an ExecuTorch program",
    "data/mtia": "an MTIA program",
    "xl_model_weights/": "externally stored weights",
}


# Members of a torch.export archive, relative to its root folder: what ``torch.export.save`` writes for one
# program named "model", and nothing else. Each pattern has the most bytes a member may declare: the guard
# reads the small ones whole, and torch's reader allocates what a member declares before it inflates it.
_KiB, _MiB, _GiB = 1 << 10, 1 << 20, 1 << 30
_KNOWN: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"archive_format|archive_version|byteorder|version|\.data/version|\.data/serialization_id"), 4 * _KiB),
    (
        re.compile(r"models/model\.json|data/(?:weights/model_weights|constants/model_constants)_config\.json"),
        256 * _MiB,
    ),
    (re.compile(r"data/sample_inputs/model\.pt"), 256 * _MiB),
    (re.compile(r"data/weights/weight_\d+|data/constants/tensor_\d+"), 8 * _GiB),
    (re.compile(r"extra/[A-Za-z0-9_][A-Za-z0-9_.-]*"), 16 * _MiB),
)
MAX_TOTAL = 8 * _GiB  # declared, all members together: far above any model an edge device runs
MAX_RATIO = 100  # declared / compressed bytes of a member over 1 MiB (torch.export.save stores, ratio 1)
# Element sizes of the serialized ScalarType codes (torch/_export/serde/schema.py), for payload bounds.
_ELEMENT_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 9: 4, 10: 8, 11: 16, 12: 1, 13: 2}
_ELEMENT_SIZE.update({28: 2, 29: 1, 30: 1, 31: 1, 32: 1, 33: 1, 34: 4, 35: 8})


class ArchiveView(Protocol):
    """A .pt2 archive as one reader sees it: member names relative to the root, declared sizes, contents.

    The guard's checks run over this interface twice: here over ``ZipView`` (Python's zipfile, made to
    look members up as torch does) before torch is imported, and in the conversion's child process over
    torch's own reader (``torch._C.PyTorchFileReader``) right before ``torch.export.load``, so the bytes
    checked are the bytes loaded whatever either zip parser makes of a crafted file.
    """

    def names(self) -> list[str]: ...

    def size(self, name: str) -> int: ...

    def read(self, name: str) -> bytes: ...


class ZipView:
    """A .pt2 archive through Python's zipfile, with torch's lookup rules.

    torch's reader (miniz) takes the first member's folder as the archive's root, prefixes every lookup
    with it and finds members by name **without regard to ASCII case**; among several matches it takes
    whichever its binary search lands on. This view refuses every archive where that could matter
    (a name outside the root, duplicates, names equal but for case) and looks names up case-blind, so
    a member it reads is the one torch would read.
    """

    def __init__(self, path: Path, archive: zipfile.ZipFile) -> None:
        self._path, self._archive = path, archive
        infos = archive.infolist()
        if not infos:
            raise _refuse(path, "the archive is empty")
        first = infos[0].filename
        if "/" not in first:
            raise _refuse(path, f"its first member {first!r} is not in a folder (torch.export keeps all in one)")
        self._root = first.split("/", 1)[0] + "/"
        self._members: dict[str, zipfile.ZipInfo] = {}
        seen: dict[str, str] = {}
        for info in infos:
            name = info.filename
            problem = _unsafe_name(name)
            if problem is None and not name.startswith(self._root):
                problem = f"is outside the archive's root folder {self._root!r}, which torch reads every member from"
            if problem is not None:
                raise _refuse(path, f"member {name!r} {problem}")
            key = _ascii_lower(name)
            if key in seen:
                what = "twice" if seen[key] == name else f"as {seen[key]!r} and {name!r}"
                raise _refuse(
                    path,
                    f"names the member {name!r} {what}: torch's reader finds members without regard to case and "
                    "reads whichever one it finds, so what is checked and what is loaded could differ",
                )
            seen[key] = name
            self._members[key] = info

    def names(self) -> list[str]:
        return [info.filename[len(self._root) :] for info in self._members.values()]

    def info(self, name: str) -> zipfile.ZipInfo:
        return self._members[_ascii_lower(self._root + name)]

    def size(self, name: str) -> int:
        return self.info(name).file_size

    def read(self, name: str) -> bytes:
        info = self.info(name)
        with self._archive.open(info) as member:
            data = member.read(info.file_size + 1)  # never more than declared (plus one byte to notice a lie)
        if len(data) != info.file_size:
            raise _refuse(self._path, f"member {info.filename!r} holds more or fewer bytes than it declares")
        return data


def check_pt2(path: Path) -> None:
    """Refuse an archive whose loading could run code; every finding is a ``ModelLoadError`` (exit 2)."""
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model: {path}: the file is empty (0 bytes); {EXPORT_HINT}")
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"model: {path}: is not a torch.export archive: a .pt2 file is a zip archive and this one has no zip "
            f"directory (truncated, or not made by torch.export.save); {EXPORT_HINT}"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            view = ZipView(path, archive)
            _check_compression(path, view)
            check_archive(path, view)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as e:
        raise ModelLoadError(f"model: {path}: is a damaged torch.export archive ({e}); {EXPORT_HINT}") from e


def check_archive(path: Path, view: ArchiveView) -> None:
    """Every check on one reader's view: names, declared sizes, layout, then the contents torch interprets."""
    try:
        names = view.names()
        _check_names(path, names)
        _check_sizes(path, names, view)
        members = set(names)

        def text(name: str) -> str:
            return view.read(name).decode("utf-8")

        _check_layout(path, members, text)
        _check_program(path, "models/model.json", json.loads(text("models/model.json")))
        for name in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
            if name in members:
                _check_payloads(path, name, json.loads(text(name)), view, members)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise ModelLoadError(f"model: {path}: is a damaged torch.export archive ({e}); {EXPORT_HINT}") from e


def _refuse(path: Path, why: str) -> ModelLoadError:
    return ModelLoadError(f"model: {path}: {why}; {EXPORT_HINT}")


def _ascii_lower(name: str) -> str:
    """miniz's case folding: A-Z only (the names it compares are bytes)."""
    return name.translate(_LOWER)


_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _unsafe_name(name: str) -> str | None:
    """Why a member name is refused before anything else, or None: only plain relative ASCII paths pass."""
    if not name.isascii() or any(ord(c) < 32 or c == "\x7f" for c in name):
        return "has non-ASCII or control characters"
    if name.startswith("/") or "\\" in name or re.match(r"[A-Za-z]:", name):
        return "is an absolute path"
    if name.endswith("/"):
        return "is a folder entry, which torch.export.save does not write"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "is not a plain relative path (empty, '.' or '..' parts: path traversal)"
    return None


def _limit(name: str) -> int | None:
    return next((limit for pattern, limit in _KNOWN if pattern.fullmatch(name)), None)


def _check_names(path: Path, names: list[str]) -> None:
    """Only members torch.export.save writes; anything else torch might read is refused by name."""
    keys = [_ascii_lower(n) for n in names]
    twins = sorted({n for n, k in zip(names, keys, strict=True) if keys.count(k) > 1})
    if twins:
        raise _refuse(
            path,
            f"names members {', '.join(repr(n) for n in twins)} more than once or equal but for case: torch's "
            "reader finds members without regard to case, so what is checked and what is loaded could differ",
        )
    for name in names:
        problem = _unsafe_name(name)
        if problem is not None:
            raise _refuse(path, f"member {name!r} {problem}")
    for folder, what in _REFUSED_DIRS.items():
        found = [n for n in names if _ascii_lower(n).startswith(folder)]
        if found:
            raise _refuse(
                path,
                f"holds {what} ({found[0]}); edgeconv converts the exported graph only and refuses archives with "
                "compiled or external parts, which loading would run or fetch",
            )
    legacy = [n for n in names if re.fullmatch(r"data/(?:weights|constants)/[^/]+\.pt", n, re.IGNORECASE)]
    if legacy:
        raise _refuse(
            path,
            f"stores its weights in the legacy pickled form ({legacy[0]}), which torch.export.load unpickles with "
            "weights_only=False (that can run any code)",
        )
    unknown = sorted(n for n in names if _limit(n) is None)
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise _refuse(
            path,
            f"holds members that torch.export.save does not write for one program named 'model': {shown}; edgeconv "
            "reads only archives whose every member it knows (torch reads members by name, and an unknown one "
            "could be read in place of a checked one)",
        )


def _check_sizes(path: Path, names: list[str], view: ArchiveView) -> None:
    """Declared sizes within each member's bound and the total: torch allocates what a member declares."""
    total = 0
    for name in names:
        size, limit = view.size(name), _limit(name) or 0
        if size > limit:
            raise _refuse(
                path, f"member {name!r} declares {size:,} bytes, over the {limit:,} a member of its kind may hold"
            )
        total += size
    if total > MAX_TOTAL:
        raise _refuse(path, f"its members declare {total:,} bytes in all, over edgeconv's bound of {MAX_TOTAL:,}")


def _check_compression(path: Path, view: ZipView) -> None:
    """A member that inflates far beyond its stored bytes is a zip bomb (torch.export.save stores members)."""
    for name in view.names():
        info = view.info(name)
        if info.file_size > _MiB and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise _refuse(
                path,
                f"member {info.filename!r} declares {info.file_size:,} bytes from {info.compress_size:,} compressed "
                f"(over {MAX_RATIO}:1, a zip bomb); torch.export.save stores members uncompressed",
            )


def _check_layout(path: Path, members: set[str], text: Any) -> None:
    fmt = text("archive_format").strip() if "archive_format" in members else ""
    version = text("archive_version").strip() if "archive_version" in members else ""
    if fmt != "pt2" or version != "0":
        raise ModelLoadError(
            f"model: {path}: archive format {fmt!r} version {version!r}; edgeconv reads torch.export archives of "
            f"format 'pt2' version '0' (torch 2.6 and later: older layouts are read by unpickling); {EXPORT_HINT}"
        )
    if "models/model.json" not in members or "data/sample_inputs/model.pt" not in members:
        raise ModelLoadError(
            f"model: {path}: the archive has no program 'model' with example inputs (models/model.json, "
            f"data/sample_inputs/model.pt), which the conversion traces with; {EXPORT_HINT}"
        )


def _check_payloads(path: Path, name: str, config: Any, view: ArchiveView, members: set[str]) -> None:
    """Weights and constants must be raw tensors that fit the bytes stored for them.

    A pickled one is unpickled without restriction. A raw one is viewed with ``as_strided`` over its
    member, and an empty member becomes ``torch.zeros(sizes)``: sizes a file declares beyond its bytes
    would allocate whatever the file asks.
    """
    entries = config.get("config", {}) if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ModelLoadError(f"model: {path}: {name} is not a payload table; {EXPORT_HINT}")
    folder = name.rsplit("/", 1)[0] + "/"
    for fqn, meta in entries.items():
        pickled = not isinstance(meta, dict) or meta.get("use_pickle") is not False
        file = str(meta.get("path_name", "")) if isinstance(meta, dict) else ""
        if pickled or not re.fullmatch(r"(?:weight|tensor)_\d+", file):
            raise ModelLoadError(
                f"model: {path}: '{fqn}' in {name} is stored as a pickled Python object ({file or 'no file'}), "
                "which torch.export.load unpickles without restriction (that can run any code); edgeconv takes "
                f"raw tensors only; {EXPORT_HINT}"
            )
        member = folder + file
        needed = _payload_bytes(meta.get("tensor_meta"))
        stored = view.size(member) if member in members else None
        if needed is None or stored is None or needed > stored:
            what = "no member" if stored is None else f"{stored:,} bytes"
            raise ModelLoadError(
                f"model: {path}: '{fqn}' in {name} describes a tensor of "
                f"{'unreadable sizes' if needed is None else f'{needed:,} bytes'} stored in {member} ({what}); "
                f"the archive is damaged or was not written by torch.export.save; {EXPORT_HINT}"
            )


def _payload_bytes(meta: Any) -> int | None:
    """Bytes the strided view of a tensor's metadata reaches into its storage, or None when unreadable."""
    if not isinstance(meta, dict) or meta.get("dtype") not in _ELEMENT_SIZE:
        return None
    try:
        sizes = [int(s["as_int"]) for s in meta["sizes"]]
        strides = [int(s["as_int"]) for s in meta["strides"]]
        offset = int(meta["storage_offset"]["as_int"])
    except (KeyError, TypeError, ValueError):
        return None
    if len(sizes) != len(strides) or any(v < 0 for v in (*sizes, *strides, offset)):
        return None
    if 0 in sizes:
        return 0
    last = offset + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True))
    return int((last + 1) * _ELEMENT_SIZE[meta["dtype"]])


def _check_program(path: Path, name: str, program: Any) -> None:
    """Node targets, shape expressions and guards: only the forms torch.export writes for a tensor graph."""
    if not isinstance(program, dict):
        raise ModelLoadError(f"model: {path}: {name} is not an exported program; {EXPORT_HINT}")
    for node in _dicts(program):
        target = node.get("target")
        if "inputs" in node and "outputs" in node and isinstance(target, str) and not _TARGET.fullmatch(target):
            raise ModelLoadError(
                f"model: {path}: the graph calls '{target}', which is not an ATen operator; loading resolves such "
                "a name to any Python function and running the graph calls it, so edgeconv refuses it. Export "
                f"the model without custom operators; {EXPORT_HINT}"
            )
        expr = node.get("expr_str")
        if isinstance(expr, str) and not _safe_expression(expr):
            raise ModelLoadError(
                f"model: {path}: the shape expression {expr[:80]!r} in {name} is not plain arithmetic on sizes; "
                f"torch evaluates it as Python (sympy.sympify), so edgeconv refuses it; {EXPORT_HINT}"
            )
    guards = program.get("guards_code") or []
    for guard in guards if isinstance(guards, list) else [guards]:
        if not isinstance(guard, str) or not _safe_expression(_SIZE.sub(" _size ", guard), guard=True):
            raise ModelLoadError(
                f"model: {path}: the guard {str(guard)[:80]!r} in {name} is not a comparison of input sizes; "
                f"torch compiles guards as Python source and runs them, so edgeconv refuses it; {EXPORT_HINT}"
            )


def _safe_expression(text: str, *, guard: bool = False) -> bool:
    """Whether ``text`` is numbers, size symbols, known functions and operators, and nothing else."""
    text = _SYMBOL_REPR.sub(r" \1 ", text)
    position = 0
    while position < len(text):
        m = _TOKEN.match(text, position)
        if m is None or m.end() == position:
            return text[position:].strip() == ""
        name = m.group(2)
        if name is not None and not (name in _FUNCTIONS or _SYMBOL.fullmatch(name) or (guard and name in _GUARD_WORDS)):
            return False
        position = m.end()
    return True


def _dicts(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping inside a JSON document (graphs nest in higher-order operators' arguments)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
