"""Every float and int8 model edgeconv writes has a ``serving_default`` signature, as the stock converter's do.

Without one, ``interpreter.get_signature_runner()``, Android's ``runSignature`` and tools that require
signatures fail; the Keras route converts from a concrete function, which writes none, so edgeconv adds it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from converter.cli.main import main
from converter.runtime.interpreter import make_interpreter
from converter.runtime.model import TFLiteModel
from tests.conftest import tiny_data, tiny_recipe


def test_keras_models_get_a_signature_the_runner_uses(
    tiny_model_dir: Path, tmp_path: Path, write_recipe: Callable[..., Path]
) -> None:
    recipe = tiny_recipe(tiny_model_dir, benchmark={"enabled": False}, analysis={"samples": 0})
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", "--recipe", str(write_recipe(recipe)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    x, _ = tiny_data()
    for name in ("model_float.tflite", "model_int8.tflite"):
        interpreter = make_interpreter(model_path=str(out / name))
        assert interpreter.get_signature_list() == {"serving_default": {"inputs": ["input"], "outputs": ["output_0"]}}
        runner = interpreter.get_signature_runner("serving_default")
        model = TFLiteModel(model_path=str(out / name))
        info = interpreter.get_input_details()[0]
        sample = x[:1].astype(np.float32)
        if info["dtype"] != np.float32:  # the int8 model takes its input quantized
            scale, zero = info["quantization"]
            sample = np.clip(np.round(sample / scale + zero), -128, 127).astype(info["dtype"])
        by_signature = runner(input=sample)["output_0"]
        model.interpreter.set_tensor(model.inputs[0].index, sample)
        model.interpreter.invoke()
        assert np.array_equal(by_signature, model.interpreter.get_tensor(model.outputs[0].index))
