"""``edgeconv bench --recipe``: the recipe's preprocessing, and a warning when inputs overrun the int8 range.

Seen: ``bench`` of the demo model on its raw digits without ``--scale`` reported int8 96.75 % against float
98.05 % with no warning: pixels 0..255 went into an input quantized for 0..1, so most were clipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from converter.cli.main import main
from tests.conftest import ROOT

DEMO = ROOT / "recipes" / "mobilenet.yaml"
TEST_DATA = ROOT / "recipes" / "data" / "digits_test.npz"


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "o"
    result = CliRunner().invoke(
        main, ["convert", "--recipe", str(DEMO), "--out", str(out), "--set", "benchmark.enabled=false"]
    )
    assert result.exit_code == 0, result.output
    return out


def _bench(models: Path, *extra: str) -> tuple[int, str]:
    args = ["bench", "--model", str(models / "model_int8.tflite"), "--float", str(models / "model_float.tflite")]
    args += ["--data", str(TEST_DATA), "--runs", "3", "--warmup", "1", "--min-seconds", "0", *extra]
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def _top1(output: str) -> tuple[float, float]:
    m = re.search(r"float ([\d.]+)%, int8 ([\d.]+)%", output)
    assert m, output
    return float(m.group(1)), float(m.group(2))


def test_bench_takes_the_recipes_preprocessing_and_warns_without_it(demo_models: Path) -> None:
    code, output = _bench(demo_models, "--recipe", str(DEMO))
    assert code == 0, output
    assert "outside the int8 model's input range" not in output
    float_top1, int8_top1 = _top1(output)
    assert (float_top1, int8_top1) == (98.61, 98.61)  # what convert measured on the same 360 samples

    code, output = _bench(demo_models, "--resize", "32", "32")  # the forgotten scale: raw pixels 0..255
    assert code == 0, output
    warning = re.search(r"warning: ([\d.]+)% of the input values fall outside the int8 model's input range", output)
    assert warning and float(warning.group(1)) > 5, output
    assert "give the recipe's preprocessing with --recipe, or --scale/--offset" in output

    code, output = _bench(demo_models, "--recipe", str(DEMO), "--scale", "1")  # an explicit option wins
    assert code == 0 and "outside the int8 model's input range" in output
