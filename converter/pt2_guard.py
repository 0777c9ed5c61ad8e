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
from typing import Any

from .errors import ModelLoadError

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
# Names a shape expression may use: symbols (s0, u3, ...) and the sympy functions torch writes.
_SYMBOL = re.compile(r"[a-z]{1,4}[0-9]+")
_FUNCTIONS = frozenset(
    {
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
            names = archive.namelist()
            root = _root(path, names)
            members = {n[len(root) :]: n for n in names if n.startswith(root)}

            def text(name: str) -> str:
                return archive.read(members[name]).decode("utf-8")

            _check_layout(path, members, text)
            for name in sorted(members):
                if name.startswith("models/") and name.endswith(".json"):
                    _check_program(path, name, json.loads(text(name)))
                if name.endswith(("_weights_config.json", "_constants_config.json")):
                    _check_payloads(path, name, json.loads(text(name)))
    except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError, ValueError, KeyError) as e:
        raise ModelLoadError(f"model: {path}: is a damaged torch.export archive ({e}); {EXPORT_HINT}") from e


def _root(path: Path, names: list[str]) -> str:
    """The archive's top folder (``torch.export.save`` names it after the file)."""
    formats = [n for n in names if n.endswith("/archive_format") and n.count("/") == 1]
    if len(formats) != 1:
        raise ModelLoadError(
            f"model: {path}: is a zip archive but not a torch.export archive (no <folder>/archive_format inside; "
            f"a TorchScript file or an archive of the old layout, which PyTorch reads by unpickling); {EXPORT_HINT}"
        )
    return formats[0][: -len("archive_format")]


def _check_layout(path: Path, members: dict[str, str], text: Any) -> None:
    fmt, version = (
        text("archive_format").strip(),
        text("archive_version").strip() if "archive_version" in members else "",
    )
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
    for name in members:
        for folder, what in _REFUSED_DIRS.items():
            if name.startswith(folder):
                raise ModelLoadError(
                    f"model: {path}: holds {what} ({name}); edgeconv converts the exported graph only and refuses "
                    f"archives with compiled or external parts, which loading would run or fetch; {EXPORT_HINT}"
                )
        if re.fullmatch(r"data/(?:weights|constants)/[^/]+\.pt", name):
            raise ModelLoadError(
                f"model: {path}: stores its weights in the legacy pickled form ({name}), which torch.export.load "
                f"unpickles with weights_only=False (that can run any code); {EXPORT_HINT}"
            )


def _check_payloads(path: Path, name: str, config: Any) -> None:
    """Weights and constants must be raw tensors: a pickled one is unpickled without restriction."""
    entries = config.get("config", {}) if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ModelLoadError(f"model: {path}: {name} is not a payload table; {EXPORT_HINT}")
    for fqn, meta in entries.items():
        pickled = not isinstance(meta, dict) or meta.get("use_pickle") is not False
        file = str(meta.get("path_name", "")) if isinstance(meta, dict) else ""
        if pickled or not re.fullmatch(r"(?:weight|tensor)_\d+", file):
            raise ModelLoadError(
                f"model: {path}: '{fqn}' in {name} is stored as a pickled Python object ({file or 'no file'}), "
                "which torch.export.load unpickles without restriction (that can run any code); edgeconv takes "
                f"raw tensors only; {EXPORT_HINT}"
            )


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
