# mypy: disable-error-code="untyped-decorator"
# (tf.function is untyped)
"""LayerNorm computed by L2_NORMALIZATION for int8 (``quantization.layer_norm``), with numbers.

The graph is the first block of a ViT as litert-torch writes it: a class token (a learned constant) joined to
the patch tokens, a position embedding added, then LayerNorm decomposed as ``x * r + (0 - r * mean)`` with
``r = rsqrt(var + eps)``, then a dense layer. Patch tokens differ in spread by a factor of 30 (a blank
patch against a textured one), which is what costs the decomposed form its precision. Built with TensorFlow so
the test needs neither PyTorch nor transformers; the hub models' runs are ``test_hub_zoo``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

tf = pytest.importorskip("tensorflow")

from converter.quantization.layer_norm import as_l2_normalization, find_layer_norms  # noqa: E402
from converter.quantization.quantize import Plan, quantize  # noqa: E402
from converter.recipe import recipe_from_mapping  # noqa: E402
from converter.runtime.model import TFLiteModel  # noqa: E402
from converter.runtime.preprocess import Preprocess  # noqa: E402
from converter.tflite.inspect_model import list_ops  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

TOKENS, WIDTH, EPS = 16, 32, 1e-5


@pytest.fixture(scope="module", params=["litert-torch", "affine folded"])
def block(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """litert-torch's form leaves LayerNorm's scale and shift to the next layer; onnx2tf and Keras fold them in:
    ``x * (r * gamma) + (beta - mean * r * gamma)``."""
    rng = np.random.default_rng(0)
    gamma = tf.constant(rng.uniform(0.5, 1.5, WIDTH).astype(np.float32))
    beta = tf.constant(rng.normal(0, 0.1, WIDTH).astype(np.float32))
    folded = request.param == "affine folded"
    cls = tf.constant(0.02 * rng.standard_normal((1, 1, WIDTH)).astype(np.float32))
    pos = tf.constant(0.02 * rng.standard_normal((1, TOKENS + 1, WIDTH)).astype(np.float32))
    dense = tf.constant((rng.standard_normal((WIDTH, 8)) / np.sqrt(WIDTH)).astype(np.float32))

    @tf.function
    def first_block(patches: Any) -> Any:
        x = tf.concat([cls, patches], axis=1) + pos
        mean = tf.reduce_mean(x, axis=-1, keepdims=True)
        r = tf.math.rsqrt(tf.reduce_mean(tf.math.squared_difference(x, mean), axis=-1, keepdims=True) + EPS)
        if folded:
            inv = r * gamma
            return tf.matmul(x * inv + (beta - mean * inv), dense)
        return tf.matmul(x * r + (0.0 - r * mean), dense)

    spec = tf.TensorSpec([1, TOKENS, WIDTH], tf.float32)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([first_block.get_concrete_function(spec)], first_block)
    path = tmp_path_factory.mktemp("layer_norm") / f"block-{request.param.replace(' ', '-')}.tflite"
    path.write_bytes(converter.convert())
    return path


def _patches(n: int, seed: int) -> np.ndarray:
    """Tokens whose spread ranges over a decade and a half, as blank and textured patches do."""
    rng = np.random.default_rng(seed)
    spread = 10.0 ** rng.uniform(-1.5, 0.0, size=(n, TOKENS, 1))
    return (rng.standard_normal((n, TOKENS, WIDTH)) * spread + rng.normal(0, 0.5, (n, TOKENS, 1))).astype(np.float32)


def _outputs(model: bytes, x: np.ndarray) -> np.ndarray:
    return TFLiteModel(model_content=model, delegate="none").predict(x)[0]


def _edgeconv(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m converter ARGS`` in a fresh process, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "converter", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)


def _sqnr(reference: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - got) ** 2)))


def test_the_rewrite_finds_the_layer_norm_and_computes_the_same_numbers(block: Path) -> None:
    original = block.read_bytes()
    x = _patches(16, seed=1)
    norms = find_layer_norms(original, x)
    assert len(norms) == 1 and norms[0].width == WIDTH and norms[0].eps == pytest.approx(EPS)
    assert norms[0].fixed is not None and norms[0].fixed.shape == (1, 1, WIDTH)  # the class token's row
    assert (norms[0].gamma is None) is (norms[0].beta is None) is ("litert-torch" in block.name)
    rewritten, count = as_l2_normalization(original, x)
    assert count == 1
    ops = [op.name for op in list_ops(rewritten)]
    assert "L2_NORMALIZATION" in ops and "RSQRT" not in ops and "SQUARED_DIFFERENCE" not in ops, ops
    assert _sqnr(_outputs(original, x), _outputs(rewritten, x)) > 100  # eps kept exactly (measured 130 dB)
    assert as_l2_normalization(rewritten, x) == (rewritten, 0)  # nothing left to rewrite: same bytes


def test_int8_with_l2_normalization_beats_the_decomposed_form(block: Path) -> None:
    original = block.read_bytes()
    raw = {"version": 1, "name": "ln", "model": str(block), "data": {"calibration": {"path": "x.npz"}}}
    recipe = recipe_from_mapping(raw, block.parent, source=block.parent / "r.yaml", check_files=False)
    cal, held = _patches(64, seed=2), _patches(32, seed=3)
    reference = _outputs(original, held)
    figures = {}
    for l2 in (False, True):
        plan = Plan(method="minmax", input_type="float32", output_type="float32", layer_norm_l2=l2)
        q = quantize(original, cal, recipe, Preprocess(), eight_bit_data=False, plan=plan)
        assert ("L2_NORMALIZATION" in {op.name for op in list_ops(q.model)}) is l2
        figures[l2] = _sqnr(reference, _outputs(q.model, held))
    print(f"\nFIGURES layer_norm {block.stem} int8 SQNR: decomposed {figures[False]:.1f} dB, l2 {figures[True]:.1f} dB")
    assert figures[True] >= figures[False] + 6.0, figures


@pytest.mark.parametrize("block", ["litert-torch"], indirect=True)
def test_the_fidelity_loop_takes_l2_normalization_for_a_low_sqnr_transformer(block: Path, tmp_path: Path) -> None:
    """No budget, no evaluation data: held-out samples show the recipe's result far below 20 dB, and the loop's
    first full-integer fix is the rewrite; the chosen model carries it, and the report says so."""
    np.savez(tmp_path / "cal.npz", x=_patches(200, seed=4))
    recipe = {
        "version": 1,
        "name": "ln",
        "model": str(block),
        "data": {"calibration": {"path": "cal.npz"}},
        "benchmark": {"enabled": False},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    done = _edgeconv("convert", "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    attempts = {a["step"]: a for a in report["tuning"]["attempts"]}
    recipe_db, l2_db = attempts["recipe"]["worst_sqnr_db"], attempts["LayerNorm as L2 norm"]["worst_sqnr_db"]
    chosen = next(a for a in report["tuning"]["attempts"] if a["chosen"])
    picked = f"'{chosen['step']}' {chosen['worst_sqnr_db']} dB"
    print(f"\nFIGURES layer_norm loop: recipe {recipe_db} dB, l2 {l2_db} dB, chosen {picked}")
    assert recipe_db < 20 and l2_db >= recipe_db + 6
    assert chosen["plan"]["layer_norm"] == {"as": "l2_normalization", "count": 1}
    int8 = (tmp_path / "o" / "model_int8.tflite").read_bytes()
    assert "L2_NORMALIZATION" in {op.name for op in list_ops(int8)}
    # analyze rebuilds the float model convert calibrated (the report's ranges name its tensors)
    done = _edgeconv("analyze", "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o"), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    layers = json.loads(done.stdout)
    assert "L2_NORMALIZATION" in {layer["op"] for layer in layers}
    assert any(layer.get("alone_sqnr_db") is not None for layer in layers)
