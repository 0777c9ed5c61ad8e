# mypy: disable-error-code="untyped-decorator"
# (tf.function is untyped)
"""A zero-padded global average pool (Hugging Face EfficientNet through litert-torch) pooled over its map.

``nn.AvgPool2d(hidden_dim, ceil_mode=True)`` on a small map reaches TFLite as a zero PAD of the map to the
window's size, an AVERAGE_POOL_2D over all of it, and the window-to-map factor folded into the classifier's
weights. The graphs here are that lowering, built with TensorFlow so the test needs neither PyTorch nor
litert-torch; the hub model is ``efficientnet`` in ``tools/hub_models.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from converter.quantization.quantize import Plan, quantize  # noqa: E402
from converter.recipe import recipe_from_mapping  # noqa: E402
from converter.runtime.model import TFLiteModel  # noqa: E402
from converter.runtime.preprocess import Preprocess  # noqa: E402
from converter.sources.float_rewrites import rewrite_padded_global_pools  # noqa: E402
from converter.tflite.inspect_model import float_ops, list_ops  # noqa: E402

WINDOW = 128  # the pool's window; the map is 4x4, so the pool divides by 16,384 where a mean divides by 16


def _lowered(head: str) -> bytes:
    """conv -> ReLU6 -> PAD to the window -> AVERAGE_POOL_2D -> ``head`` ('dense': the folded classifier)."""
    rng = np.random.default_rng(0)
    kernel = tf.constant((rng.standard_normal((3, 3, 3, 8)) / 3).astype(np.float32))
    dense = tf.constant((rng.standard_normal((8, 5)) * WINDOW * WINDOW / 16).astype(np.float32))

    @tf.function
    def net(x: Any) -> Any:
        h = tf.nn.relu6(tf.nn.conv2d(x, kernel, strides=8, padding="SAME"))  # [1, 4, 4, 8]
        h = tf.pad(h, [[0, 0], [0, WINDOW - 4], [0, WINDOW - 4], [0, 0]])
        pooled = tf.nn.avg_pool2d(h, WINDOW, WINDOW, "VALID")  # [1, 1, 1, 8]
        flat = tf.reshape(pooled, [1, 8])
        return tf.matmul(flat, dense) if head == "dense" else flat * 1024.0 + 1.0

    concrete = net.get_concrete_function(tf.TensorSpec([1, 32, 32, 3], tf.float32))
    return bytes(tf.lite.TFLiteConverter.from_concrete_functions([concrete], net).convert())


def _sqnr(want: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(want**2) / max(float(np.sum((want - got) ** 2)), 1e-30)))


@pytest.mark.parametrize("head", ["dense", "add"])
def test_the_pool_covers_the_map_and_the_int8_model_follows_the_image(head: str, tmp_path: Any) -> None:
    lowered = _lowered(head)
    assert "PAD" in {op.name for op in list_ops(lowered)}
    rewritten, count = rewrite_padded_global_pools(lowered)
    assert count == 1
    ops = [op.name for op in list_ops(rewritten)]
    assert "PAD" not in ops and "AVERAGE_POOL_2D" in ops
    assert ("MUL" in ops) == (head == "add")  # the factor goes into the dense weights, else into a MUL
    x = np.random.default_rng(1).uniform(0, 1, (64, 32, 32, 3)).astype(np.float32)
    before = TFLiteModel(model_content=lowered, delegate="none").predict(x)[0]
    after = TFLiteModel(model_content=rewritten, delegate="none").predict(x)[0]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * float(np.abs(before).max()))
    assert rewrite_padded_global_pools(rewritten) == (rewritten, 0)

    raw = {"version": 1, "name": "pool", "model": "m.tflite", "data": {"calibration": {"path": "x.npz"}}}
    recipe = recipe_from_mapping(raw, tmp_path, source=tmp_path / "r.yaml", check_files=False)
    plan = Plan(method="minmax", input_type="float32", output_type="float32")
    sqnr = {}
    for name, model in (("lowered", lowered), ("rewritten", rewritten)):
        q = quantize(model, x, recipe, Preprocess(), eight_bit_data=False, plan=plan)
        assert float_ops(q.model) == []
        sqnr[name] = _sqnr(before, TFLiteModel(model_content=q.model, delegate="none").predict(x)[0])
    # The padded pool's int8 output keeps its input's scale, so 1/1024 of it rounds to the zero point
    assert sqnr["lowered"] < 10 < 30 < sqnr["rewritten"], sqnr
