# mypy: disable-error-code="untyped-decorator"
# (tf.function is untyped)
"""SQUARE rewritten as ``MUL(x, x)`` in the float model, so the int8 model has no float op.

The graph is ConvNeXt-V2's global response norm as onnx2tf writes it (``sqrt(mean(x^2))`` over the spatial
axes with SQUARE, then a gain), between two dense layers. Built with TensorFlow so the test needs neither
PyTorch nor onnx2tf; the hub model is ``convnextv2`` in ``tools/hub_models.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from converter.errors import NoIntegerKernelError  # noqa: E402
from converter.quantization.quantize import Plan, quantize  # noqa: E402
from converter.recipe import recipe_from_mapping  # noqa: E402
from converter.runtime.model import TFLiteModel  # noqa: E402
from converter.runtime.preprocess import Preprocess  # noqa: E402
from converter.sources.float_rewrites import rewrite_square  # noqa: E402
from converter.tflite.inspect_model import float_ops, list_ops  # noqa: E402


@pytest.fixture(scope="module")
def grn() -> bytes:
    rng = np.random.default_rng(0)
    first = tf.constant((rng.standard_normal((8, 16)) / 3).astype(np.float32))

    @tf.function
    def block(x: Any) -> Any:
        h = tf.matmul(x, first)  # [1, 6, 16]
        norm = tf.sqrt(tf.reduce_mean(tf.square(h), axis=1, keepdims=True) + 1e-6)
        return h * (norm / (tf.reduce_mean(norm, axis=-1, keepdims=True) + 1e-6)) + h

    concrete = block.get_concrete_function(tf.TensorSpec([1, 6, 8], tf.float32))
    return bytes(tf.lite.TFLiteConverter.from_concrete_functions([concrete], block).convert())


def test_square_becomes_mul_with_the_same_numbers_and_quantizes(grn: bytes, tmp_path: Any) -> None:
    assert "SQUARE" in {op.name for op in list_ops(grn)}
    rewritten, count = rewrite_square(grn)
    assert count == 1
    ops = [op.name for op in list_ops(rewritten)]
    assert "SQUARE" not in ops and "MUL" in ops
    x = np.random.default_rng(1).standard_normal((16, 6, 8)).astype(np.float32)
    before = TFLiteModel(model_content=grn, delegate="none").predict(x)[0]
    after = TFLiteModel(model_content=rewritten, delegate="none").predict(x)[0]
    assert np.array_equal(before, after)  # x * x is what SQUARE computes: bit for bit
    assert rewrite_square(rewritten) == (rewritten, 0)

    raw = {"version": 1, "name": "grn", "model": "m.tflite", "data": {"calibration": {"path": "x.npz"}}}
    recipe = recipe_from_mapping(raw, tmp_path, source=tmp_path / "r.yaml", check_files=False)
    plan = Plan(method="minmax", input_type="float32", output_type="float32")
    with pytest.raises(NoIntegerKernelError, match="stays float: SQUARE"):  # why: no int8 SQUARE kernel
        quantize(grn, x, recipe, Preprocess(), eight_bit_data=False, plan=plan)
    q = quantize(rewritten, x, recipe, Preprocess(), eight_bit_data=False, plan=plan)
    assert float_ops(q.model) == []
