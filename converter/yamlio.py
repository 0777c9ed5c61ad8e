"""YAML reading for recipes and device profiles: safe, and strict about duplicate keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import RecipeError


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` that rejects a key given twice (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_file(path: Path, what: str) -> Any:
    """Parse ``path``; any problem becomes a ``RecipeError`` naming the file and line."""
    if not path.is_file():
        hint = " (it is a folder)" if path.is_dir() else ""
        raise RecipeError(f"{path}: {what} not found{hint}; check the path you passed")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: cannot read {what}: {e}") from e
    return load_yaml_text(text, str(path))


def load_yaml_text(text: str, name: str) -> Any:
    """Parse YAML text with the strict safe loader."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise RecipeError(f"{name}:{where}: malformed YAML: {problem}") from e
