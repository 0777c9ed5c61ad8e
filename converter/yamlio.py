"""YAML reading for recipes and device profiles: safe, strict about keys, and bounded.

Recipes come from pull requests, so a file must not be able to exhaust this machine:
its size is capped before parsing (``MAX_BYTES``), nesting is capped while composing
(``MAX_DEPTH``; PyYAML's composer recurses and would die with a RecursionError), and so is
the number of values it expands to through aliases (``MAX_NODES``, the "billion laughs").
Mapping keys must be scalars: ``{[1]: 2}`` is valid YAML but no recipe key.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from converter.errors import RecipeError

MAX_BYTES = 1024 * 1024  # a real recipe is a few hundred bytes
MAX_DEPTH = 64
MAX_NODES = 100_000  # values after expanding aliases


class _LimitError(yaml.YAMLError):
    """A bound was exceeded; carries the mark of the node where it happened."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` that rejects a key given twice or a non-scalar key, and bounds depth."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise _LimitError(f"nested more than {MAX_DEPTH} levels deep; a recipe needs a handful", mark)
            return super().compose_node(parent, index)  # type: ignore[no-untyped-call,no-any-return]
        finally:
            self._depth -= 1


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            kind = "a list" if isinstance(key_node, yaml.SequenceNode) else "a mapping"
            raise yaml.constructor.ConstructorError(
                None, None, f"a key must be a plain name, got {kind}", key_node.start_mark
            )
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if not isinstance(key, str | int | float | bool) and key is not None:  # e.g. "? !!set": a set
            raise yaml.constructor.ConstructorError(
                None, None, f"a key must be a plain name, got a {type(key).__name__}", key_node.start_mark
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values ``node`` stands for once aliases are expanded (memoised per node)."""
    size = memo.get(id(node))
    if size is not None:
        return size
    memo[id(node)] = MAX_NODES + 1  # a node that contains itself (a recursive alias) counts as too big
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            size += _expanded_size(child, memo)
            if size > MAX_NODES:
                break
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            size += _expanded_size(key, memo) + _expanded_size(value, memo)
            if size > MAX_NODES:
                break
    memo[id(node)] = size
    return size


# What a path that is not a regular file is, for the message that refuses it.
_SPECIAL = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO, a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def not_regular(path: Path) -> str | None:
    """Why ``path`` cannot be read as a settings file: "not found", "a folder", "not a regular file"; else None.

    A settings file must be a regular file: ``/dev/zero`` or a FIFO given as a recipe would otherwise read
    forever or block until a writer comes, and "not found" would send the user looking for a file that exists.
    The result completes "<path>: <what> ...".
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as e:  # a name too long, a loop of symbolic links, a folder that cannot be searched
        return f"cannot be looked at ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a regular file"
    kind = next((name for test, name in _SPECIAL if test(mode)), "a special file")
    return f"is not a regular file (it is {kind})"


def _read_regular(path: Path, limit: int, what: str) -> bytes:
    """Up to ``limit`` bytes of ``path``, opened without blocking and checked to be a regular file once open.

    ``not_regular`` looked before; this closes the gap where the path is swapped for a FIFO or a device
    in between (``O_NONBLOCK``: opening a FIFO does not wait for a writer).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RecipeError(f"{path}: the {what} is not a regular file (it changed while being opened)")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit)
    finally:
        os.close(fd)


def load_yaml_file(path: Path, what: str) -> Any:
    """Parse ``path``; any problem becomes a ``RecipeError`` naming the file and line."""
    problem = not_regular(path)
    if problem == "not found":
        raise RecipeError(f"{path}: {what} not found; check the path you passed")
    if problem is not None:
        raise RecipeError(f"{path}: the {what} {problem}; give the path of the {what}'s YAML file")
    try:
        data = _read_regular(path, MAX_BYTES + 1, what)
        if len(data) > MAX_BYTES:
            raise RecipeError(
                f"{path}: the {what} is larger than {MAX_BYTES // 1024} KiB; a {what} is a short file of settings "
                "(data and models go in files it names)"
            )
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: cannot read {what}: {e}") from e
    return load_yaml_text(text, str(path))


def load_yaml_text(text: str, name: str) -> Any:
    """Parse YAML text with the strict, bounded safe loader."""
    if len(text) > MAX_BYTES:
        raise RecipeError(f"{name}: the YAML is larger than {MAX_BYTES // 1024} KiB")
    loader: _StrictLoader | None = None
    try:
        loader = _StrictLoader(text)  # its reader refuses control characters: a YAMLError too
        node = loader.get_single_node()  # type: ignore[no-untyped-call]
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_NODES:
            raise _LimitError(f"expands to more than {MAX_NODES:,} values (through aliases)", node.start_mark)
        return loader.construct_document(node)  # type: ignore[no-untyped-call]
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise RecipeError(
            f"{name}: line {line}: malformed YAML: character U+{e.character:04X} ({e.reason}); "
            "remove control characters from the text"
        ) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise RecipeError(f"{name}:{where}: malformed YAML: {problem}") from e
    except (ValueError, OverflowError) as e:  # a scalar PyYAML cannot turn into a value (a 5,000-digit int, 2001-13-45)
        raise RecipeError(f"{name}: malformed YAML: a value cannot be read: {e}") from e
    finally:
        if loader is not None:
            loader.dispose()  # type: ignore[no-untyped-call]
