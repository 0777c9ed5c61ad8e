"""The package's imports flow one way: from the command line down to the basics, never back up or round.

Read from the source with ``ast`` (nothing is imported), so a new import that closes a circle or
reaches up a layer fails here, naming the modules, before it can fail at run time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "converter"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str, top_level_only: bool) -> Iterator[str]:
    """The converter modules ``module`` imports (``from a import b`` counts as ``a.b`` when that is a module)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, path.name == "__init__.py")
            for alias in node.names:
                name = f"{target}.{alias.name}"
                if name in MODULES:
                    yield name
                elif target in MODULES:
                    yield target
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in MODULES)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in ``graph``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles_between_modules() -> None:
    """Module-level imports form no circle (a package's ``__init__`` importing its own modules aside)."""
    graph = {m: {t for t in _imports(m, True) if not m.startswith(t + ".")} for m in MODULES}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _importers(group: str) -> set[str]:
    return {m for m in MODULES for t in _imports(m, False) if _group(t) == group and _group(m) != group}


def test_only_the_entry_points_import_the_command_line() -> None:
    """``cli/`` prints and picks exit codes; nothing below it may reach up to it."""
    assert _importers("cli") <= {"converter.__main__"}


def test_the_device_runtime_needs_nothing_else_of_the_package() -> None:
    """``runtime/`` is shipped alone to boards (the zipapp bundle): it imports only itself."""
    outside = {(m, t) for m in MODULES if _group(m) == "runtime" for t in _imports(m, False) if _group(t) != "runtime"}
    assert not outside


@pytest.mark.parametrize(
    ("group", "may_import"),
    [
        ("tflite", {"runtime", "errors", "extras"}),
        (
            "calibration",
            {
                "runtime",
                "tflite",
                "errors",
                "progress",
                "artifacts",
                "cache",
                "provenance",
                "recipe",
                "extras",
                "quantization",
            },
        ),
        (
            "sources",
            {
                "runtime",
                "tflite",
                "errors",
                "progress",
                "artifacts",
                "cache",
                "extras",
                "venv_setup",
                "model_cache",
                "calibration",
                "quantization",
                "supervise",
                "native_output",
                "tfnative",
            },
        ),
        ("tfnative", set()),  # TensorFlow's native pieces: a leaf every stage may use
    ],
)
def test_lower_stages_do_not_reach_up(group: str, may_import: set[str]) -> None:
    """The lower stages import only what sits below them (``quantization`` here means its arithmetic and the
    TensorFlow prefetch, both free of the stages above)."""
    reached = {_group(t) for m in MODULES if _group(m) == group for t in _imports(m, False)} - {group, ""}
    assert reached <= may_import, sorted(reached - may_import)


def test_pipeline_is_driven_only_from_the_command_line_and_the_api() -> None:
    importers = {m for m in MODULES for t in _imports(m, False) if t == "converter.pipeline"}
    assert {_group(m) for m in importers} <= {"cli", "api"}
