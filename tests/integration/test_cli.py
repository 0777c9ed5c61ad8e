"""The command line: exit codes, one-paragraph errors, and nothing written on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from converter.cli.main import main
from tests.conftest import ROOT, reproducible_figures, tiny_recipe


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _convert(recipe: Path, out: Path, *extra: str) -> Result:
    return run("convert", "--recipe", str(recipe), "--out", str(out), *extra)


def _assert_user_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_convert_ok_prints_summary_and_exits_0(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    result = _convert(write_recipe(tiny_recipe(tiny_model_dir)), tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "model_int8.tflite" in result.stdout and "accuracy (host, top1, 100 samples)" in result.stdout
    assert f"files in {tmp_path / 'out'}/" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".edgeconv.json",
        "junit.xml",
        "model_float.tflite",
        "model_int8.tflite",
        "report.html",
        "report.json",
        "report.md",
    ]


def test_json_output_is_the_report(tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    result = _convert(write_recipe(tiny_recipe(tiny_model_dir)), tmp_path / "out", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads((tmp_path / "out" / "report.json").read_text())


def test_set_override_reaches_the_run(tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    recipe = write_recipe(tiny_recipe(tiny_model_dir))
    result = _convert(
        recipe, tmp_path / "out", "--set", "data.calibration.samples=17", "--set", "quantization.input_type=uint8"
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["calibration"]["samples"] == 17
    assert report["quantization"]["input"]["dtype"] == "uint8"


def test_float_io_is_said_as_float(tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    """A float input takes float values as they are: the summary gives it no scale and does not call it ids."""
    recipe = write_recipe(tiny_recipe(tiny_model_dir))
    io = ("--set", "quantization.input_type=float32", "--set", "quantization.output_type=float32")
    result = _convert(recipe, tmp_path / "out", *io)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["quantization"]["input"]["dtype"] == "float32" and report["quantization"]["input"]["scale"] is None
    assert "  I/O    float32 in, float32 out\n" in result.stdout, result.stdout


def test_labels_outside_the_classes_are_refused_before_calibration(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    """Labels of another numbering (here shifted by 10) would score 0 % for both models and pass unnoticed."""
    import numpy as np

    with np.load(tiny_model_dir / "test.npz") as data:
        x, y = data["x"], data["y"]
    classes = int(y.max()) + 1
    np.savez(tmp_path / "shifted.npz", x=x, y=y + 10)
    recipe = tiny_recipe(tiny_model_dir)
    recipe["data"]["evaluation"]["path"] = str(tmp_path / "shifted.npz")
    result = _convert(write_recipe(recipe), tmp_path / "out")
    _assert_user_error(
        result,
        f"data.evaluation: the labels run from {int(y.min()) + 10} to {int(y.max()) + 10}",
        f"has {classes} classes (0 to {classes - 1})",
    )
    assert not (tmp_path / "out").exists()


def test_evaluation_data_on_another_scale_is_warned(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    """Evaluation data as 0-1 floats where calibration has 0-255 bytes: said on the console and in the report, not
    only as a collapsed accuracy that blames the model's layers."""
    import numpy as np

    with np.load(tiny_model_dir / "test.npz") as data:
        np.savez(tmp_path / "scaled.npz", x=data["x"].astype(np.float32) / 255, y=data["y"])
    recipe = tiny_recipe(tiny_model_dir)
    recipe["data"]["evaluation"]["path"] = str(tmp_path / "scaled.npz")
    result = _convert(write_recipe(recipe), tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "data.evaluation: the evaluation values span [" in result.stderr, result.stderr
    warnings = json.loads((tmp_path / "out" / "report.json").read_text())["warnings"]
    assert any("and the calibration values [" in w for w in warnings), warnings


def test_a_data_file_given_by_set_is_blamed_on_the_option(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    """The file's problem is found while reading it, after validation: the message names the --set, not the recipe."""
    import numpy as np

    np.savez(tmp_path / "other.npz", z=np.zeros((4, 12, 12, 3), np.float32))
    option = f"data.calibration.path={tmp_path / 'other.npz'}"
    result = _convert(write_recipe(tiny_recipe(tiny_model_dir)), tmp_path / "out", "--set", option)
    _assert_user_error(result, f"error: --set {option}: ")
    assert "recipe.yaml" not in result.stderr.splitlines()[-1]


def test_a_16x8_model_is_said_as_one(tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    """model_int8.tflite holds int16 activations with 16x8: the summary's size line says so."""
    sets = [f"quantization.{k}=int16" for k in ("activations", "input_type", "output_type")]
    result = _convert(
        write_recipe(tiny_recipe(tiny_model_dir)), tmp_path / "out", *[a for s in sets for a in ("--set", s)]
    )
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith("  int8   model_int8.tflite"))
    assert line.endswith("% of float; 16x8: int16 activations, int8 weights)"), line


def test_missing_recipe(tmp_path: Path) -> None:
    _assert_user_error(_convert(tmp_path / "none.yaml", tmp_path / "out"), "none.yaml: recipe not found")


def test_bad_recipe_key(tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    recipe = write_recipe(tiny_recipe(tiny_model_dir, calibration={"method": "entropyy"}))
    _assert_user_error(_convert(recipe, tmp_path / "out"), "recipe.yaml: calibration.method: expected one of minmax")
    assert not (tmp_path / "out").exists()


def test_debug_shows_traceback(tmp_path: Path) -> None:
    result = run("convert", "--recipe", str(tmp_path / "none.yaml"), "--debug")
    assert result.exit_code == 2 and "Traceback" in result.stderr


def _bad(
    tiny_model_dir: Path, tmp_path: Path, write_recipe: Callable[..., Path], changes: dict[str, Any]
) -> tuple[Result, Path]:
    recipe = tiny_recipe(tiny_model_dir)
    for key, value in changes.items():
        node = recipe
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    out = tmp_path / "out"
    return _convert(write_recipe(recipe), out), out


def test_missing_model(tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    result, out = _bad(tiny_model_dir, tmp_path, write_recipe, {"model": str(tmp_path / "gone.keras")})
    _assert_user_error(result, "model: not found:", "gone.keras")
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".keras", ".h5", ".tflite"])
def test_corrupt_model(suffix: str, tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(b"\x00garbage" * 100)
    result, out = _bad(tiny_model_dir, tmp_path, write_recipe, {"model": str(broken)})
    _assert_user_error(result, f"broken{suffix}")
    assert not out.exists()


def test_quantized_tflite_is_refused(tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    first = _convert(write_recipe(tiny_recipe(tiny_model_dir)), tmp_path / "first")
    assert first.exit_code == 0
    result, _ = _bad(tiny_model_dir, tmp_path, write_recipe, {"model": str(tmp_path / "first" / "model_int8.tflite")})
    _assert_user_error(result, "is already quantized")


def test_data_shape_mismatch(tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    np.savez(tmp_path / "small.npz", x=np.zeros((10, 8, 8, 3), dtype=np.uint8))
    result, out = _bad(tiny_model_dir, tmp_path, write_recipe, {"data.calibration.path": str(tmp_path / "small.npz")})
    _assert_user_error(
        result, "data.calibration", "samples have shape [8, 8, 3]", "expects [12, 12, 3]; set input.resize"
    )
    assert not out.exists()


def test_empty_dataset(tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 12, 12, 3), dtype=np.uint8))
    result, out = _bad(tiny_model_dir, tmp_path, write_recipe, {"data.evaluation.path": str(tmp_path / "empty.npz")})
    _assert_user_error(result, "data.evaluation.path", "the dataset is empty")
    assert not out.exists()


def test_nan_in_calibration_data(tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    x = np.ones((10, 12, 12, 3), dtype=np.float32)
    x[4, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    result, out = _bad(tiny_model_dir, tmp_path, write_recipe, {"data.calibration.path": str(tmp_path / "nan.npz")})
    _assert_user_error(result, "1 NaN/Inf values in 1 samples (first: sample 4)")
    assert not out.exists()


def test_output_folder_of_another_recipe(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert _convert(write_recipe(tiny_recipe(tiny_model_dir)), out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = write_recipe(tiny_recipe(tiny_model_dir, name="other"), "other.yaml")
    _assert_user_error(_convert(other, out), "holds recipe 'tiny', not 'other'", "--force")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _convert(other, out, "--force").exit_code == 0
    assert json.loads((out / "report.json").read_text())["recipe"]["name"] == "other"


def test_validate_and_schema_commands(write_recipe: Callable[..., Path], tiny_model_dir: Path) -> None:
    result = run("validate", "--recipe", str(write_recipe(tiny_recipe(tiny_model_dir))))
    assert result.exit_code == 0 and "ok (recipe 'tiny', targets: host)" in result.stdout
    schema = json.loads(run("schema").stdout)
    assert schema["title"] == "edgeconv recipe" and "calibration" in schema["properties"]


def test_usage_error_exits_2() -> None:
    assert run("convert").exit_code == 2
    assert run("no-such-command").exit_code == 2


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "converter", "--version"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "edgeconv, version 0.1.0"


@pytest.mark.full  # two more conversions in fresh processes; test_convert checks identical bytes in one
def test_separate_processes_give_identical_models(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    """Byte-identical across processes too (Keras name counters and the like must not leak in).

    Each conversion is a fresh ``python -m converter`` with the cache off and its own empty
    cache folder, so both convert the Keras model and calibrate from scratch.
    """
    recipe = write_recipe(tiny_recipe(tiny_model_dir, calibration={"cache": False}))
    reports = {}
    for run in ("here", "there"):
        cache = tmp_path / f"cache-{run}"
        env = {**os.environ, "EDGECONV_CACHE_DIR": str(cache)}
        cmd = [sys.executable, "-m", "converter", "convert", "--recipe", str(recipe), "--out", str(tmp_path / run)]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False)
        assert result.returncode == 0, result.stderr
        reports[run] = json.loads((tmp_path / run / "report.json").read_text())
        assert "from the float model cache" not in reports[run]["model"]["loader"]
        assert reports[run]["calibration"]["cache"]["hit"] is None
        assert not cache.exists() or not any(cache.rglob("*")), sorted(cache.rglob("*"))
    for name in ("model_float.tflite", "model_int8.tflite"):
        assert (tmp_path / "here" / name).read_bytes() == (tmp_path / "there" / name).read_bytes(), name
    assert reproducible_figures(reports["here"]) == reproducible_figures(reports["there"])
