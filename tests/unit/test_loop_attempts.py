"""An attempt of the accuracy loop that fails is recorded under ``tuning.skipped``; the loop goes on.

Only the user's own input errors and interrupts stop it.
"""

from __future__ import annotations

import numpy as np
import pytest

from converter.artifacts import Interrupted
from converter.errors import DataError
from converter.quantization.quantize import Plan, Quantized
from converter.quantization.tune import Loop


def _loop(quantizer: object) -> Loop:
    x, y = np.zeros((4, 8, 8, 1), np.float32), np.zeros(4, np.int64)
    return Loop(b"float model", x, y, 0.01, quantizer)  # type: ignore[arg-type]


def test_a_quantizer_error_is_recorded_and_the_loop_goes_on() -> None:
    def refuse(plan: Plan) -> Quantized:
        raise RuntimeError(
            "failed to create XNNPACK runtime\nNode number 10 (TfLiteXNNPackDelegate) failed to prepare."
        )

    loop = _loop(refuse)
    assert loop.attempt("equalization", "cross-layer equalization", Plan("minmax", equalization=True)) is None
    assert loop.attempts == []
    assert loop.skipped == [
        {
            "step": "equalization",
            "reason": "RuntimeError: failed to create XNNPACK runtime Node number 10 (TfLiteXNNPackDelegate) "
            "failed to prepare.",
        }
    ]


def test_a_model_the_interpreter_cannot_load_is_recorded_not_raised() -> None:
    """Evaluating the attempt (the real LiteRT interpreter on bytes that are no model) fails: skipped."""
    loop = _loop(lambda plan: Quantized(b"not a tflite model", plan, None))
    assert loop.attempt("bias correction", "cancel the mean shift", Plan("minmax", bias_correction=True)) is None
    assert [s["step"] for s in loop.skipped] == ["bias correction"]
    assert loop.skipped[0]["reason"].startswith("ValueError: ")


def test_user_input_errors_and_interrupts_are_not_swallowed() -> None:
    def bad_data(plan: Plan) -> Quantized:
        raise DataError("recipe.yaml: tuning.qat.data: qat.npz has no labels; QAT trains on them")

    loop = _loop(bad_data)
    with pytest.raises(DataError, match="has no labels"):
        loop.attempt("qat", "quantization-aware fine-tune", Plan("minmax", qat=True))
    for interrupt in (KeyboardInterrupt(), Interrupted()):

        def stop(plan: Plan, interrupt: BaseException = interrupt) -> Quantized:
            raise interrupt

        with pytest.raises(KeyboardInterrupt):
            _loop(stop).attempt("mse ranges", "calibration.method: mse", Plan("mse"))
    assert loop.skipped == []
