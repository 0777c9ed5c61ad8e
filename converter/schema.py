"""Strict loading of YAML data into frozen dataclasses, and the JSON Schema of the same types.

Recipes and device profiles are both declared as annotated frozen dataclasses; this
module is the one validator for both, so their rules (unknown keys are errors with a
"did you mean", every error names the file and the key path) cannot drift apart.
Field ``metadata`` may carry ``doc`` (a description) and ``min`` / ``max`` bounds.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from converter.errors import RecipeError

T = TypeVar("T")


_FIELD_PREFIX = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[\d+\])?: ")


_KEY_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?(?:\.[A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?)*")


def blame_override(message: str, source: str, overrides: tuple[tuple[str, str], ...]) -> str:
    """``message`` ("recipe.yaml: key.path: ...", found while running) blaming the ``--set`` that gave the value.

    Validation blames options through ``Where``; an error found later (the data file a ``--set`` named, an
    ``input`` section a ``--set`` added) is raised with the recipe file's name. The option is blamed when it set
    the key the message names or a mapping above it, or a key below it whose value the message quotes.
    """
    prefix = f"{source}: "
    if not overrides or not message.startswith(prefix):
        return message
    rest = message[len(prefix) :]
    key = rest.partition(": ")[0]
    if not _KEY_PATH.fullmatch(key):
        return message
    for path, text in reversed(overrides):  # a later option wins, as it did when they were applied
        value = text.partition("=")[2].strip()
        if key == path:
            return f"--set {text}: {rest.partition(': ')[2]}"
        if key.startswith(path + ".") or (path.startswith(key + ".") and value and value in rest):
            return f"--set {text}: {rest}"
    return message


@dataclass(frozen=True)
class Where:
    """The file being read, its key path, and the folder relative paths resolve against.

    ``overrides`` maps the key paths that ``--set`` options replaced to the option's text, so
    an error in a value the user typed on the command line blames that option, not the file.
    """

    file: str
    base_dir: Path
    path: str = ""
    overrides: tuple[tuple[str, str], ...] = ()

    def key(self, name: str | int) -> Where:
        """The location one level down (``a.b`` for keys, ``a[0]`` for list items)."""
        if isinstance(name, int):
            return dataclasses.replace(self, path=f"{self.path}[{name}]")
        return dataclasses.replace(self, path=f"{self.path}.{name}" if self.path else name)

    def error(self, message: str) -> RecipeError:
        """A ``RecipeError`` that starts with ``file: key.path:`` (or ``--set key=value:``)."""
        option = self._override(message)
        if option is not None:
            key = option.partition("=")[0].strip()
            m = _FIELD_PREFIX.match(message)
            if m and f"{self.path}.{m.group(1)}".lstrip(".") == key:
                message = message[m.end() :]  # "calibration: input_range: ..." is the key the option names
            elif self.path and self.path != key:
                message = f"{self.path}: {message}"
            return RecipeError(f"--set {option}: {message}")
        prefix = f"{self.file}: {self.path}: " if self.path else f"{self.file}: "
        return RecipeError(prefix + message)

    def _override(self, message: str) -> str | None:
        """The ``--set`` text that supplied the value at fault, if one did (the most specific one)."""
        if not self.overrides:
            return None
        path = self.path
        # Cross-field checks raise at the parent with a message that starts with the field's name.
        m = _FIELD_PREFIX.match(message)
        if m:
            path = f"{path}.{m.group(1)}" if path else m.group(1)
        best: tuple[str, str] | None = None
        for key, text in self.overrides:
            if (path == key or path.startswith((key + ".", key + "["))) and (best is None or len(key) > len(best[0])):
                best = (key, text)
        return best[1] if best else None


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


def suggest(name: str, known: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a close match exists, else an empty string."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def build(tp: Any, value: Any, where: Where, meta: typing.Mapping[str, Any] | None = None) -> Any:
    """Validate ``value`` against type ``tp`` and return it converted (dataclasses built)."""
    meta = meta or {}
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        rest = [o for o in options if o is not type(None)]
        if len(rest) == 1:
            return build(rest[0], value, where, meta)
        # A mapping or a list can only mean the one option of that shape: report its own error.
        for option in rest:
            if (isinstance(value, dict) and (dataclasses.is_dataclass(option) or get_origin(option) is dict)) or (
                isinstance(value, list) and get_origin(option) is tuple
            ):
                return build(option, value, where, meta)
        for option in rest:
            try:
                return build(option, value, where, meta)
            except RecipeError:
                continue
        raise where.error(f"expected {' or '.join(_type_name(o) for o in rest)}, got {_describe(value)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            hint = suggest(str(value), [str(c) for c in choices])
            raise where.error(f"expected one of {', '.join(str(c) for c in choices)}; got {_describe(value)}{hint}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, where)
    if origin is dict:  # names chosen by the user (e.g. a model's input names) -> values of one type
        key_type, value_type = get_args(tp)
        if not isinstance(value, dict):
            raise where.error(f"expected a mapping, got {_describe(value)}")
        for key in value:
            if not isinstance(key, key_type):
                raise where.error(f"expected {_type_name(key_type)} as each key, got {_describe(key)}")
        return {key: build(value_type, v, where.key(key), meta) for key, v in value.items()}
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list | tuple):
            raise where.error(f"expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(build(args[0], v, where.key(i)) for i, v in enumerate(value))
        if len(value) != len(args):
            raise where.error(f"expected a list of {len(args)} items, got {len(value)}")
        return tuple(build(a, v, where.key(i), meta) for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise where.error(f"expected a path (a string), got {_describe(value)}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (where.base_dir / path)
    return _scalar(tp, value, where, meta)


def _scalar(tp: Any, value: Any, where: Where, meta: typing.Mapping[str, Any]) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise where.error(f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise where.error(f"expected an integer, got {_describe(value)}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise where.error(f"expected a number, got {_describe(value)}")
        try:
            value = float(value)
        except OverflowError:
            raise where.error(f"expected a finite number, got an integer with {len(str(value))} digits") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise where.error(f"expected a finite number, got {value}")
    elif tp is str:
        if not isinstance(value, str):
            raise where.error(f"expected a string, got {_describe(value)}")
        pattern = meta.get("pattern")
        if pattern is not None and not re.fullmatch(pattern, value):
            raise where.error(f"{value!r} does not match {pattern} ({meta.get('pattern_doc', '')})")
        return value
    else:  # pragma: no cover - a programming error in a dataclass declaration
        raise TypeError(f"schema: unsupported type {tp!r}")
    if "min" in meta and value < meta["min"]:
        raise where.error(f"must be at least {meta['min']}, got {value}")
    if "max" in meta and value > meta["max"]:
        raise where.error(f"must be at most {meta['max']}, got {value}")
    return value


def _build_dataclass(cls: Any, value: Any, where: Where) -> Any:
    if not isinstance(value, dict):
        raise where.error(f"expected a mapping, got {_describe(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in value:
        if not isinstance(key, str) or key not in fields:
            raise where.key(str(key)).error(
                f"unknown key{suggest(str(key), fields)}; allowed keys here: {', '.join(fields)}"
            )
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = build(hints[name], value[name], where.key(name), f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise where.key(name).error(f"required key is missing ({f.metadata.get('doc', '')})")
    try:
        return cls(**kwargs)
    except ValueError as e:  # cross-field checks in __post_init__
        raise where.error(str(e)) from e


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp) or get_origin(tp) is dict:
        return "a mapping"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(str(c) for c in get_args(tp))
    if get_origin(tp) is tuple:
        args = get_args(tp)
        return "a list" if args[-1] is Ellipsis else f"a list of {len(args)} {_type_name(args[0]).split()[-1]}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def json_schema(tp: Any, meta: typing.Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12 subset) that ``build`` enforces for ``tp``."""
    meta = meta or {}
    origin = get_origin(tp)
    out: dict[str, Any]
    if origin in (Union, types.UnionType):
        out = {"anyOf": [json_schema(o) for o in get_args(tp)]}
    elif origin is Literal:
        out = {"enum": list(get_args(tp))}
    elif dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        props = {}
        required = []
        for f in dataclasses.fields(tp):
            if not f.init:
                continue
            props[f.name] = json_schema(hints[f.name], f.metadata)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
            elif f.default is not dataclasses.MISSING and isinstance(f.default, str | int | float | bool | type(None)):
                props[f.name]["default"] = f.default
        out = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            out["required"] = required
        if tp.__doc__:
            out["description"] = " ".join(tp.__doc__.split())
    elif origin is dict:
        out = {"type": "object", "additionalProperties": json_schema(get_args(tp)[1])}
    elif origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            out = {"type": "array", "items": json_schema(args[0])}
        else:
            out = {
                "type": "array",
                "prefixItems": [json_schema(a, meta) for a in args],
                "minItems": len(args),
                "maxItems": len(args),
            }
    elif tp is Path or tp is str:
        out = {"type": "string"}
        if "pattern" in meta:
            out["pattern"] = meta["pattern"]
    elif tp is bool:
        out = {"type": "boolean"}
    elif tp is int:
        out = {"type": "integer"}
    elif tp is float:
        out = {"type": "number"}
    elif tp is type(None):
        out = {"type": "null"}
    else:  # pragma: no cover
        raise TypeError(f"schema: unsupported type {tp!r}")
    if "min" in meta:
        out["minimum"] = meta["min"]
    if "max" in meta:
        out["maximum"] = meta["max"]
    if "doc" in meta:
        out["description"] = meta["doc"]
    return out
