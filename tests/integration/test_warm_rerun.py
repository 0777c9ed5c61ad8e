"""A re-run of an unchanged recipe takes every model from the caches and never imports TensorFlow.

The float reference (model cache), the statistics (calibration cache) and now the quantized models (the
recipe's and the per-layer "alone" requantizations, ``quant_cache``) are content-addressed, so the second
run needs only LiteRT. Measured on the demo (2026-11-28, benchmark off): 5.1 s cold in a fresh process
with TensorFlow's import 3.4 s of it; warm 0.65 s, TensorFlow not imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, tiny_recipe

PROBE = (
    "import sys\n"
    "from converter.cli.main import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "except SystemExit as e:\n"
    "    code = e.code\n"
    "print('tensorflow' in sys.modules, 'keras' in sys.modules, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _convert(recipe: Path, out: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGECONV_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-c", PROBE, "convert", "--recipe", str(recipe), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_a_warm_rerun_needs_no_tensorflow_and_gives_the_same_bytes(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(tiny_recipe(tiny_model_dir, benchmark={"enabled": False}))
    cold = _convert(recipe, tmp_path / "cold", tmp_path / "cache")
    assert cold.returncode == 0, cold.stderr
    assert cold.stderr.splitlines()[-1] == "True True"  # the first run converts the Keras model: TensorFlow
    warm = _convert(recipe, tmp_path / "warm", tmp_path / "cache")
    assert warm.returncode == 0, warm.stderr
    assert warm.stderr.splitlines()[-1] == "False False", warm.stderr
    assert "import tf" not in warm.stderr
    for name in ("model_int8.tflite", "model_float.tflite"):
        assert (tmp_path / "warm" / name).read_bytes() == (tmp_path / "cold" / name).read_bytes()
    report = json.loads((tmp_path / "warm" / "report.json").read_text())
    cache = report["cache"]
    assert cache["float_model"] and cache["statistics"] and not cache["tensorflow_loaded"]
    assert cache["quantized_models"]["misses"] == 0 and cache["quantized_models"]["hits"] >= 1
    cold_report = json.loads((tmp_path / "cold" / "report.json").read_text())
    assert cold_report["cache"]["quantized_models"]["hits"] == 0 and cold_report["cache"]["tensorflow_loaded"]
    for key in ("accuracy", "quantization", "artifacts"):
        assert report[key] == cold_report[key], key
    # the evaluation and the per-layer errors come back from the result cache, identical
    assert cold_report["cache"]["results"] == {"hits": 0, "misses": 2}
    assert cache["results"] == {"hits": 2, "misses": 0}
    assert report["analysis"]["layers"] == cold_report["analysis"]["layers"] and report["analysis"]["layers"]
    # a changed evaluation set is a miss: nothing stale is reported
    changed = tiny_recipe(tiny_model_dir, benchmark={"enabled": False})
    changed["data"]["evaluation"]["samples"] = 50
    fewer = _convert(write_recipe(changed, "fewer.yaml"), tmp_path / "fewer", tmp_path / "cache")
    assert fewer.returncode == 0, fewer.stderr
    third = json.loads((tmp_path / "fewer" / "report.json").read_text())
    assert third["cache"]["results"]["misses"] >= 1 and third["accuracy"]["samples"] == 50


@pytest.mark.full  # test_load_inputs rebuilds a corrupt cache entry by default
def test_a_corrupt_quantized_entry_is_rebuilt(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(tiny_recipe(tiny_model_dir, benchmark={"enabled": False}, analysis={"samples": 0}))
    assert _convert(recipe, tmp_path / "a", tmp_path / "cache").returncode == 0
    folder = tmp_path / "cache" / "quantized"
    entries = sorted(folder.glob("*.tflite"))
    assert len(entries) == 1
    entries[0].write_bytes(entries[0].read_bytes()[:-7] + b"garbage")
    again = _convert(recipe, tmp_path / "b", tmp_path / "cache")
    assert again.returncode == 0, again.stderr
    assert "quantized model cache entry" in again.stderr and "is corrupt" in again.stderr
    assert (tmp_path / "b" / "model_int8.tflite").read_bytes() == (tmp_path / "a" / "model_int8.tflite").read_bytes()
