"""Generated recipes and ``--set`` values thrown at ``validate`` and ``convert``.

Whatever the document, the answer is exit 0 or 2 with one paragraph: never exit 3, never
a traceback, never a file written. Derandomized and bounded, so it is the same run every
time and takes seconds. ``convert`` runs every check before the work for real and stops at a
sentinel where the steps would start, so TensorFlow is never imported.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from converter import pipeline
from converter.cli.main import main
from converter.errors import UserInputError
from converter.recipe import Recipe
from tests.conftest import ROOT

MODEL = ROOT / "tests" / "data" / "add_one_float.tflite"


def _leaves(tp: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf key in the recipe format (``targets`` counts as a leaf)."""
    out: list[str] = []
    hints = typing.get_type_hints(tp)
    for f in dataclasses.fields(tp):
        if not f.init:
            continue
        path = f"{prefix}{f.name}"
        options = [o for o in typing.get_args(hints[f.name]) or (hints[f.name],) if dataclasses.is_dataclass(o)]
        if options and f.name != "targets":
            out += _leaves(options[0], path + ".")
        else:
            out.append(path)
    return out


LEAVES = _leaves(Recipe)
KEYS = sorted({p.rsplit(".", 1)[-1] for p in LEAVES} | {p.split(".")[0] for p in LEAVES})
WORDS = [
    "host",
    "raspberry-pi-4",
    "stm32h7",
    "minmax",
    "percentile",
    "entropy",
    "int8",
    "int16",
    "uint8",
    "float32",
    "auto",
    "observed",
    "ProxyCommand=touch pwned",
    "ProxyJump=gw",
    "ConnectTimeout=5",
    "pi@x",
    "-oProxyCommand=x",
    "cal.npz",
    "model.tflite",
    "missing.npz",
    "600KB",
    "+2%",
    "5ms",
    "a:b",
    "../x",
    "~",
    "",
    " ",
    "\x00",
    "é",
    "1e999",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.integers(-3, 300)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(-2, 300)
    | st.text(max_size=12)
    | st.sampled_from(WORDS)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
TARGETS = st.lists(
    st.sampled_from(["host", "raspberry-pi-4", "stm32h7", "hots"])
    | st.dictionaries(
        st.sampled_from(["device", "host", "port", "identity", "known_hosts", "ssh_options", "python", "budgets"]),
        SCALARS | st.lists(st.sampled_from(WORDS), max_size=3),
        max_size=5,
    ).map(lambda d: {"device": "raspberry-pi-4", **d}),
    max_size=3,
)
# Mostly plausible values, sometimes anything.
LEAF_VALUES = SCALARS | SCALARS | st.lists(SCALARS, max_size=3) | VALUES
TOKENS = [
    "{",
    "}",
    "[",
    "]",
    ": ",
    ", ",
    "? ",
    "- ",
    "\n",
    "  ",
    "&a ",
    "*a",
    "!!set ",
    "!!binary ",
    "!!python/name:os.system ",
    "<<: ",
    "1",
    "-1",
    "x",
    "name",
    "seed",
    "version: 1\n",
    "'q'",
    '"q"',
    "#c",
    "1e999",
    "2001-13-45",
    "~",
    "|\n",
    "%",
]
ATOMS = ["1", "-1", "x", "~", "'q'", "1e999", "2001-13-45", "&a 1", "*a", "name", "!!binary aGk=", "1" + "0" * 5000]
# Flow YAML whose mapping keys may themselves be lists or mappings ({[1]: 2}, {? {a: 1} : 2}).
FLOW = st.recursive(
    st.sampled_from(ATOMS),
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")
        | st.lists(st.tuples(inner, inner), max_size=3).map(
            lambda kv: "{" + ", ".join(f"? {k} : {v}" for k, v in kv) + "}"
        )
    ),
    max_leaves=8,
)
# Random characters, and token soup that often makes flow mappings with list or mapping keys, anchors and tags.
YAML_TEXT = st.text(alphabet="{}[]:,-?&*!|>'\"#%@ \n\tabxyz01.=<", max_size=80) | st.lists(
    st.sampled_from(TOKENS), max_size=30
).map("".join)

BASE: dict[str, Any] = {
    "version": 1,
    "name": "fuzz",
    "model": str(MODEL),
    "data": {"calibration": {"path": "cal.npz"}},
    "benchmark": {"warmup": 0, "runs": 1, "min_seconds": 0.0},
}


@st.composite
def documents(draw: st.DrawFn) -> str:
    """YAML text: a valid recipe with a few keys replaced by junk, a random document, or raw YAML-ish text."""
    kind = draw(st.sampled_from(["mutated"] * 4 + ["random", "text", "flow"]))
    if kind == "text":
        return draw(YAML_TEXT)
    if kind == "flow":
        return f"version: 1\nname: fuzz\n{draw(st.sampled_from(KEYS))}: {draw(FLOW)}\n"
    if kind == "random":
        return yaml.safe_dump(draw(VALUES))
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(0, 3))):
        *parents, last = draw(st.sampled_from(LEAVES)).split(".")
        if draw(st.integers(0, 9)) == 0:  # now and then a junk key or a whole junk section
            parents, last = parents[:1], draw(st.sampled_from(KEYS) | st.text(max_size=6))
        node = doc
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[last] = draw(TARGETS if last == "targets" else LEAF_VALUES)
    return yaml.safe_dump(doc, allow_unicode=draw(st.booleans()))


@st.composite
def overrides(draw: st.DrawFn) -> list[str]:
    out = []
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(LEAVES) | st.sampled_from(LEAVES) | st.sampled_from(KEYS) | st.text(max_size=8))
        if draw(st.integers(0, 2)):
            drawn = draw(TARGETS if key == "targets" else LEAF_VALUES)
            value = yaml.safe_dump(drawn, default_flow_style=True, width=10**6, allow_unicode=True).strip()
            value = value.removesuffix("...").strip()
        else:
            value = draw(YAML_TEXT | FLOW)
        out.append(f"{key}={value}")
    return out


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    np.savez(tmp_path / "cal.npz", x=np.zeros((4, 2), dtype=np.float32))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _check(result: Result, allowed: tuple[int, ...], workdir: Path, before: set[str]) -> None:
    assert result.exit_code in allowed, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "unexpected failure" not in result.output, result.output
    if result.exit_code == 2:
        assert result.stderr.startswith("error: ") or "Error: " in result.stderr, result.output
    assert {p.name for p in workdir.iterdir()} == before, "a file was written"


FUZZ = settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(text=documents(), sets=overrides())
@example(text="? !!set \n", sets=[])  # a set as a key: was exit 3 (TypeError: unhashable type: 'set')
def test_validate_never_crashes(workdir: Path, text: str, sets: list[str]) -> None:
    (workdir / "recipe.yaml").write_text(text, encoding="utf-8")
    before = {p.name for p in workdir.iterdir()}
    args = ["validate", "--recipe", "recipe.yaml"] + [a for s in sets for a in ("--set", s)]
    _check(CliRunner().invoke(main, args), (0, 2), workdir, before)


DEVICES = ["host", "raspberry-pi-4", "stm32h7", "arduino-nano-33-ble-sense", "coral-usb-accelerator"]


@st.composite
def near_valid(draw: st.DrawFn) -> str:
    """A recipe that usually validates, varied in what convert checks before the work."""
    doc = copy.deepcopy(BASE)
    doc["name"] = draw(st.sampled_from(["fuzz", "a.b", "x-1", "out"]))
    devices = draw(st.lists(st.sampled_from(DEVICES), min_size=1, max_size=3, unique=True))
    doc["targets"] = [
        {"device": d, "host": draw(st.sampled_from(["pi@127.0.0.1", "pi@[::1]", "pi@x"]))}
        if d == "raspberry-pi-4" and draw(st.booleans())
        else d
        for d in devices
    ]
    if draw(st.booleans()):
        doc["custom_objects"] = draw(st.sampled_from([[], ["a:b"], ["os:system"]]))
    if draw(st.booleans()):
        doc["calibration"] = {"method": draw(st.sampled_from(["minmax", "auto", "percentile"]))}
    if draw(st.booleans()):
        doc["budgets"] = {"model_bytes": draw(st.sampled_from(["1KB", "+2%", 100]))}
    return yaml.safe_dump(doc)


class _Reached(UserInputError):
    """Raised in place of the pipeline's steps: the recipe got through every check before the work."""


def test_convert_never_crashes_and_writes_nothing(workdir: Path) -> None:
    # The real model, and the steps after the cheap checks replaced by a sentinel: every check convert makes
    # before the work (custom_objects, model format, device profiles, the output folder's lock and staging)
    # meets the generated recipes, and a run stopped there must leave nothing behind.
    reached: list[str] = []

    def stop(recipe: Recipe, *args: object) -> None:
        reached.append(recipe.name)
        raise _Reached("stopped before the work")

    @FUZZ
    @given(text=documents() | near_valid(), sets=overrides())
    def run(text: str, sets: list[str]) -> None:
        (workdir / "recipe.yaml").write_text(text, encoding="utf-8")
        before = {p.name for p in workdir.iterdir()}
        args = ["convert", "--recipe", "recipe.yaml", "--out", "out"] + [a for s in sets for a in ("--set", s)]
        _check(CliRunner().invoke(main, args), (2,), workdir, before)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "_run", stop)
        run()
    assert len(reached) >= 50, f"only {len(reached)} generated recipes got past validation"
