"""The TFLite flatbuffer schema (generated Python, object API) without importing TensorFlow.

``ai-edge-litert`` ships the same generated module TensorFlow does (``schema_py_generated``), newer but
compatible: reading, editing and writing a model with it gives the same bytes for every field both
know. Importing TensorFlow costs seconds and hundreds of MB, so everything that only reads or edits a
model's flatbuffer (float rewrites, inspection, the fused-LSTM check) uses this; TensorFlow stays for
quantization itself.
"""

from __future__ import annotations

from typing import Any


def schema() -> Any:
    """The generated schema module: LiteRT's, else TensorFlow's."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:  # an install with TensorFlow but without ai-edge-litert
        from tensorflow.lite.python import schema_py_generated
    return schema_py_generated


def load(model: bytes) -> Any:
    """The model as mutable objects (``ModelT``), as TensorFlow's ``flatbuffer_utils`` reads it."""
    s = schema()
    return s.ModelT.InitFromObj(s.Model.GetRootAsModel(bytearray(model), 0))


def dump(model: Any) -> bytes:
    """The objects written back as a .tflite (file identifier TFL3), as ``flatbuffer_utils`` writes it."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
