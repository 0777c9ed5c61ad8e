"""Unroll Keras recurrent layers (LSTM, GRU, SimpleRNN, also inside Bidirectional) before tracing.

Traced as they are, Keras recurrent layers become a TFLite WHILE loop, which has no int8 kernel (and
whose loop-control tensors are no activations to calibrate). With a static sequence length the same
layer built with ``unroll=True`` traces into one copy of the cell per time step: plain FULLY_CONNECTED,
ADD, MUL, LOGISTIC and TANH ops, which all have int8 kernels. The weights are copied unchanged, and the
unrolled model's float outputs are checked against the original's (``UNROLL_ATOL``) before it is used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from converter.errors import ConversionError, ModelLoadError

log = logging.getLogger(__name__)

# Largest absolute difference allowed between the original and the unrolled Keras model's float outputs
# on seeded standard-normal inputs: both run the same cell in the same order. Measured on the test models
# (2026-11-28): 0 (bit-equal) for LSTM, GRU, SimpleRNN and Bidirectional(LSTM); the float .tflite traced from
# the unrolled model differs from the original Keras model by at most 9.2e-7 (softmax outputs).
UNROLL_ATOL = 1e-5
_CHECK_SAMPLES = 8


def _set_unroll(config: Any) -> int:
    """Set ``unroll: True`` in every (nested) layer config that has the key; how many were False."""
    changed = 0
    if isinstance(config, dict):
        if config.get("unroll") is False:
            config["unroll"] = True
            changed += 1
        for value in config.values():
            changed += _set_unroll(value)
    elif isinstance(config, list):
        for value in config:
            changed += _set_unroll(value)
    return changed


def _recurrent_layers(model: Any) -> list[Any]:
    """The layers (top level and in nested models) whose config has ``unroll: False``."""
    found = []
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "layers") and not hasattr(layer, "cell") and not hasattr(layer, "forward_layer"):
            found += _recurrent_layers(layer)
        elif _set_unroll(layer.get_config()):
            found.append(layer)
    return found


def _time_steps(layer: Any) -> Any:
    """The layer's input sequence length (None when dynamic), or the string "unknown"."""
    try:
        shape = layer.input.shape
    except (AttributeError, ValueError):
        return "unknown"
    return shape[1] if len(shape) >= 3 else "unknown"


def unroll_recurrent(model: Any, path: Path) -> tuple[Any, str]:
    """``model`` with every recurrent layer unrolled, and a note for the loader string ("" when none).

    A recurrent layer whose sequence length is dynamic cannot be unrolled (nor made static by the
    batch-1 trace): that is a ``ModelLoadError`` telling the user to save the model with a fixed length.
    """
    layers = _recurrent_layers(model)
    if not layers:
        return model, ""
    dynamic = [layer.name for layer in layers if _time_steps(layer) is None]
    if dynamic:
        plural = len(dynamic) > 1
        raise ModelLoadError(
            f"model: {path}: the recurrent layer{'s' if plural else ''} {', '.join(repr(n) for n in dynamic)} "
            f"take{'' if plural else 's'} a sequence of unknown length (time dimension None); a loop of unknown "
            "length stays a float WHILE loop with no int8 kernel. Save the model with a fixed sequence length, "
            "e.g. keras.Input((steps, features)), so edgeconv can unroll it into int8 ops"
        )
    import numpy as np

    def clone(layer: Any) -> Any:
        # Keras's own default clone_function, with unroll set (also in nested configs: Bidirectional, models)
        config = layer.get_config()
        _set_unroll(config)
        return layer.__class__.from_config(config)

    keras_module = _keras_module_of(model)
    try:
        unrolled = keras_module.models.clone_model(model, clone_function=clone)
        unrolled.set_weights(model.get_weights())
    except Exception as e:  # noqa: BLE001 - Keras raises many types while rebuilding a model
        raise ModelLoadError(
            f"model: {path}: cannot rebuild it with unroll=True on its recurrent layers "
            f"({', '.join(layer.name for layer in layers)}): {e}; save the model with unroll=True on those layers"
        ) from e
    rng = np.random.default_rng(0)
    shapes = [[_CHECK_SAMPLES, *(int(d) for d in t.shape[1:])] for t in model.inputs]
    xs = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    x = xs[0] if len(xs) == 1 else xs  # a model with several inputs takes a list
    before = _outputs(model(x, training=False))
    after = _outputs(unrolled(x, training=False))
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(before, after, strict=True))
    if worst > UNROLL_ATOL:
        raise ConversionError(
            f"model: {path}: unrolling the recurrent layers changed the float outputs by up to {worst:.3g} "
            f"(allowed {UNROLL_ATOL:g}); this is a bug in edgeconv, please report it with the model"
        )
    log.info("unrolled %d recurrent layers of %s; float outputs differ by %.3g at most", len(layers), path.name, worst)
    names = ", ".join(f"{layer.__class__.__name__} '{layer.name}'" for layer in layers)
    note = (
        f"; {len(layers)} recurrent layer{'s' if len(layers) > 1 else ''} ({names}) unrolled over their static "
        f"sequence length (a WHILE loop has no int8 kernel; float outputs differ by {worst:.2g} at most)"
    )
    return unrolled, note


def _keras_module_of(model: Any) -> Any:
    """Keras 3 or tf_keras (Keras 2), whichever built ``model``: each clones only its own models."""
    import importlib

    top = type(model).__module__.split(".", 1)[0]
    return importlib.import_module("tf_keras" if top == "tf_keras" else "keras")


def _outputs(result: Any) -> list[Any]:
    import numpy as np

    if isinstance(result, dict):
        return [np.asarray(item) for item in result.values()]
    if isinstance(result, (list, tuple)):
        return [np.asarray(item) for item in result]
    return [np.asarray(result)]
