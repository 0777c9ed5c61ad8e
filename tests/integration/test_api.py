"""The Python API: ``converter.convert`` from a recipe file or a mapping, with the CLI's override semantics,
library exceptions (never SystemExit), and an ``import converter`` that loads no TensorFlow."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import converter
from converter.api import MAPPING_SOURCE, override_texts
from converter.errors import ModelLoadError, RecipeError
from tests.conftest import ROOT, assert_accuracy_drop_below, tiny_recipe

FAST_BENCH = {"warmup": 1, "runs": 5, "min_seconds": 0.0}


def _relative_recipe(**extra: Any) -> dict[str, Any]:
    """The tiny recipe with paths relative to the model folder, as a recipe file beside it would have them."""
    recipe: dict[str, Any] = {
        "version": 1,
        "name": "tiny-api",
        "model": "tiny.keras",
        "data": {"calibration": {"path": "train.npz", "samples": 100}, "evaluation": {"path": "test.npz"}},
        "benchmark": FAST_BENCH,
    }
    recipe.update(extra)
    return recipe


def _assert_files_match_report(result: converter.ConvertResult) -> None:
    art = result.report["artifacts"]
    assert result.int8_model == result.out_dir / "model_int8.tflite"
    assert result.int8_model.stat().st_size == art["int8"]["bytes"] > 0
    assert result.float_model.stat().st_size == art["float"]["bytes"] > art["int8"]["bytes"]
    assert json.loads(result.report_json.read_text()) == result.report


def test_convert_a_recipe_file_with_overrides(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(tiny_recipe(tiny_model_dir))
    # tuning off: entropy ranges put the tiny model below 20 dB, where the loop would try other methods
    overrides = {
        "calibration.method": "entropy",
        "data.calibration.samples": 60,
        "budgets.model_bytes": 100,
        "tuning.enabled": False,
    }
    result = converter.convert(recipe, overrides=overrides, out=tmp_path / "out")
    assert result.out_dir == tmp_path / "out"
    _assert_files_match_report(result)
    report = result.report
    assert report["calibration"]["method"] == "entropy"
    assert report["calibration"]["samples"] == 60
    assert report["recipe"]["path"] == str(recipe)
    acc = report["accuracy"]
    assert {"metric", "float", "int8", "drop", "samples"} <= acc.keys()
    assert acc["samples"] == 100
    assert_accuracy_drop_below(report, 2.0)
    # A missed budget is a result, not an exception (the CLI exits 1 for it).
    assert result.passed is False
    failed = [g for g in report["gates"] if g["status"] == "failed"]
    assert [(g["name"], g["limit"]) for g in failed] == [("model_bytes", 100.0)]


def test_convert_a_mapping_with_a_base_folder(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    """Relative paths start at base_dir; the recipe hash is the one the same recipe gets as a file."""
    mapping = _relative_recipe(budgets={"accuracy_drop": 0.05})
    mapping["data"]["calibration"]["path"] = Path("train.npz")  # a Path, as code builds them, is a path
    result = converter.convert(
        mapping, base_dir=tiny_model_dir, overrides=["data.calibration.samples=80"], out=tmp_path / "out"
    )
    _assert_files_match_report(result)
    report = result.report
    assert report["recipe"]["path"] == MAPPING_SOURCE
    assert report["calibration"]["samples"] == 80
    assert_accuracy_drop_below(report, 2.0)
    assert result.passed is True
    for name in ("tiny.keras", "train.npz", "test.npz"):  # the same relative paths, from a recipe file's folder
        (tmp_path / name).symlink_to(tiny_model_dir / name)
    as_file = write_recipe(json.dumps(_relative_recipe(budgets={"accuracy_drop": 0.05})))  # JSON is YAML
    assert converter.validate(as_file, overrides=["data.calibration.samples=80"]).sha256 == report["recipe"]["sha256"]


def test_an_invalid_mapping_is_a_recipe_error_with_the_key_path(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RecipeError) as bad_value:
        converter.convert(_relative_recipe(calibration={"method": "entropyy"}), base_dir=tiny_model_dir, out=out)
    assert str(bad_value.value).startswith(f"{MAPPING_SOURCE}: calibration.method: expected one of minmax")
    assert "(did you mean 'entropy'?)" in str(bad_value.value)
    with pytest.raises(RecipeError, match=r"calibraton: unknown key \(did you mean 'calibration'\?\)"):
        converter.convert(_relative_recipe(calibraton={}), base_dir=tiny_model_dir, out=out)
    with pytest.raises(
        RecipeError,
        match=rf"^{re.escape(MAPPING_SOURCE)}: model: not found: {re.escape(str(tmp_path))}/tiny\.keras; check",
    ):
        converter.convert(_relative_recipe(), base_dir=tmp_path, out=out)  # relative paths start at base_dir
    with pytest.raises(
        RecipeError, match=r"--set data\.calibration\.path=missing\.npz: not found: .*tiny.*missing\.npz"
    ):
        converter.convert(
            _relative_recipe(), overrides={"data.calibration.path": "missing.npz"}, base_dir=tiny_model_dir, out=out
        )
    with pytest.raises(RecipeError, match=r"--set data\.calibration\.samples=0: must be at least 1"):
        converter.convert(
            _relative_recipe(), overrides={"data.calibration.samples": 0}, base_dir=tiny_model_dir, out=out
        )
    assert not out.exists()


def test_a_bad_model_is_a_model_load_error_not_system_exit(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "broken.keras").write_bytes(b"not a zip archive")
    recipe = tiny_recipe(tiny_model_dir, model=str(tmp_path / "broken.keras"))
    with pytest.raises(ModelLoadError, match="broken.keras: is not a .keras archive"):
        converter.convert(recipe, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_overrides_mean_what_set_means(tiny_model_dir: Path) -> None:
    """A mapping's values reach the recipe as they are: no YAML surprises ('yes' stays a string)."""
    recipe = converter.validate(
        tiny_recipe(tiny_model_dir),
        overrides={
            "name": "yes",
            "input.resize": (16, 16),
            "calibration.percentile": 1e-5,
            "calibration.rules": [{"tensors": "dense*", "method": "mse"}],
            "benchmark.top_k": None,
        },
    )
    assert recipe.name == "yes"
    assert recipe.input.resize == (16, 16)
    assert recipe.calibration.percentile == 1e-5
    assert recipe.calibration.rules[0].method == "mse"
    assert recipe.benchmark.top_k is None
    assert override_texts({"a.b": "x y", "c": [1, 2]}) == ["a.b=x y", "c=[1, 2]"]


def test_misused_arguments_are_recipe_errors(tiny_model_dir: Path, write_recipe: Callable[..., Path]) -> None:
    recipe = write_recipe(tiny_recipe(tiny_model_dir))
    with pytest.raises(RecipeError, match="base_dir: a recipe file's relative paths start at its own folder"):
        converter.validate(recipe, base_dir=tiny_model_dir)
    with pytest.raises(RecipeError, match="overrides: got the string"):
        converter.validate(recipe, overrides="calibration.method=entropy")
    with pytest.raises(RecipeError, match="expected a recipe file .* or a mapping of recipe keys, got int"):
        converter.validate(3)  # type: ignore[arg-type]


def test_import_converter_loads_no_tensorflow() -> None:
    """``import converter`` and ``from converter import convert`` stay cheap: no TensorFlow, Keras, torch or numpy."""
    code = (
        "import sys, converter\n"
        "from converter import ConvertResult, convert, validate\n"
        "heavy = ('tensorflow', 'keras', 'torch', 'numpy')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)), convert.__module__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "converter.api"]
