# mypy: disable-error-code="untyped-decorator"
# (tf.function is untyped)
"""int64 index arithmetic narrowed to int32 in the float model, so TensorFlow Lite Micro's GATHER runs it.

The graph is the one onnx2tf writes for an ONNX export of a PyTorch embedding: an int64 ids input, PyTorch's
wrap of negative ids (``ids + (ids < 0) * vocab``: LESS, CAST, MUL, ADD on int64) and a GATHER with int64
positions. Built here with TensorFlow so the test needs neither PyTorch nor onnx2tf; the ONNX route end to end
is ``test_integer_inputs``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from converter.runtime.model import TFLiteModel  # noqa: E402
from converter.sources.float_rewrites import narrow_int64  # noqa: E402
from converter.targets.tflm_interpreter import validate  # noqa: E402
from converter.tflite import flatbuf  # noqa: E402

VOCAB, LENGTH = 50, 12


def _tflite(fn: object, spec: object) -> bytes:
    concrete = fn.get_concrete_function(spec)  # type: ignore[attr-defined]
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], fn)
    return bytes(converter.convert())


@pytest.fixture(scope="module")
def embedding() -> bytes:
    table = tf.constant(np.random.default_rng(0).standard_normal((VOCAB, 8)).astype(np.float32))

    @tf.function
    def embed(ids: Any) -> Any:
        wrapped = ids + tf.cast(ids < 0, tf.int64) * tf.constant(VOCAB, tf.int64)
        return tf.reduce_mean(tf.nn.relu(tf.gather(table, wrapped)), axis=1)

    return _tflite(embed, tf.TensorSpec([1, LENGTH], tf.int64))


def _types(content: bytes) -> set[str]:
    model = flatbuf.load(content)
    return {flatbuf.type_name(t.type) for t in model.subgraphs[0].tensors}


def test_index_arithmetic_becomes_int32_with_the_same_outputs(embedding: bytes) -> None:
    assert "INT64" in _types(embedding)
    narrowed, count = narrow_int64(embedding)
    assert count >= 3 and "INT64" not in _types(narrowed)  # the input, the wrap's tensors, the constant
    ids = np.random.default_rng(1).integers(-VOCAB, VOCAB, (20, LENGTH))  # negative ids take the wrap
    wide = TFLiteModel(model_content=embedding, delegate="none")
    narrow = TFLiteModel(model_content=narrowed, delegate="none")
    assert narrow.inputs[0].dtype == "int32"
    want = wide.predict(ids.astype(np.int64))[0]
    got = narrow.predict(ids.astype(np.int32))[0]
    assert np.array_equal(got, want)
    assert narrow_int64(narrowed) == (narrowed, 0)  # nothing left to narrow: same bytes


def test_tflite_micro_runs_the_narrowed_model_and_says_why_it_refuses_the_wide_one(embedding: bytes) -> None:
    ids = np.random.default_rng(2).integers(0, VOCAB, (5, LENGTH))
    refused = validate(embedding, ids.astype(np.int64))
    assert not refused.loaded and refused.error is not None
    assert "is int64" in refused.error and "int32 ids" in refused.error
    narrowed, _ = narrow_int64(embedding)
    ran = validate(narrowed, ids.astype(np.int32))
    assert ran.loaded and ran.samples == 5, ran.error
    assert ran.exact_match is not None and ran.exact_match >= 0.99, ran  # float kernels: TFLM's and LiteRT's


def test_an_int64_output_or_a_wide_constant_keeps_the_bytes() -> None:
    @tf.function
    def argmax(x: Any) -> Any:
        return tf.argmax(x, axis=1, output_type=tf.int64)  # an int64 result leaves the model

    returned = _tflite(argmax, tf.TensorSpec([1, 4], tf.float32))
    assert narrow_int64(returned) == (returned, 0)

    @tf.function
    def big(ids: Any) -> Any:
        return tf.cast(ids + tf.constant(1 << 40, tf.int64) > 0, tf.float32)

    wide = _tflite(big, tf.TensorSpec([1, 3], tf.int64))
    assert "INT64" in _types(wide)
    assert narrow_int64(wide) == (wide, 0)
