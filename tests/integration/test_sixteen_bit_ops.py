# mypy: disable-error-code="untyped-decorator"
# (tf.function is untyped)
"""16x8 (``quantization.activations: int16``) on a model with an op TensorFlow's 16x8 quantizer has no kernel for.

``tf.where`` with broadcasting is GREATER and SELECT_V2 (litert-torch writes SELECT_V2 for the hub zoo's
ViT); TensorFlow 2.21 quantizes both to int8 but not to 16x8. That is the recipe's choice to change, so the
run stops with exit 2 naming the ops and the remedy, not exit 3 with TensorFlow's sentence alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from converter.errors import NoIntegerKernelError  # noqa: E402
from converter.quantization.quantize import Plan, quantize  # noqa: E402
from converter.recipe import recipe_from_mapping  # noqa: E402
from converter.runtime.preprocess import Preprocess  # noqa: E402
from converter.tflite.inspect_model import float_ops, list_ops  # noqa: E402


@pytest.fixture(scope="module")
def select() -> bytes:
    weights = tf.constant((np.random.default_rng(0).standard_normal((8, 8)) / 3).astype(np.float32))

    @tf.function
    def block(x: Any) -> Any:
        h = tf.matmul(x, weights)
        return tf.where(h > 0.0, h, tf.zeros([1, 1, 8]))

    concrete = block.get_concrete_function(tf.TensorSpec([1, 6, 8], tf.float32))
    return bytes(tf.lite.TFLiteConverter.from_concrete_functions([concrete], block).convert())


def test_an_op_without_a_16x8_kernel_is_exit_2_naming_it(select: Any, tmp_path: Any) -> None:
    assert "SELECT_V2" in {op.name for op in list_ops(select)}
    x = np.random.default_rng(1).standard_normal((16, 6, 8)).astype(np.float32)
    raw = {"version": 1, "name": "select", "model": "m.tflite", "data": {"calibration": {"path": "x.npz"}}}
    recipe = recipe_from_mapping(raw, tmp_path, source=tmp_path / "r.yaml", check_files=False)
    sixteen = Plan(method="minmax", activations="int16", input_type="float32", output_type="float32")
    said = "has no 16x8 kernel for GREATER, SELECT_V2, which this model uses: use activations: int8"
    with pytest.raises(NoIntegerKernelError, match=said):
        quantize(select, x, recipe, Preprocess(), eight_bit_data=False, plan=sixteen)
    eight = Plan(method="minmax", input_type="float32", output_type="float32")
    assert float_ops(quantize(select, x, recipe, Preprocess(), eight_bit_data=False, plan=eight).model) == []
