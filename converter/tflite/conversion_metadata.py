"""The ``CONVERSION_METADATA`` entry TensorFlow's Python converter adds to every model it writes.

A port of ``lite.py``'s last step (``util.get_model_hash`` and ``util.populate_conversion_metadata`` with the
generated ``conversion_metadata`` schema) onto the schema module ``flatbuf`` uses, so a model converted by the
native converter alone (``sources/saved_model_native.py``) ends byte-identical to ``TFLiteConverter``'s:
the table is packed field by field in the order the generated ``Pack`` methods use.
"""

from __future__ import annotations

from typing import Any

import flatbuffers

from converter.tflite import flatbuffer_schema as tflite_schema

FIELD = "CONVERSION_METADATA"
# conversion_metadata.fbs ModelType
TF_SAVED_MODEL = 1

_MASK = (1 << 64) - 1
_HASH_CONSTANT = 0x9E3779B97F4A7800


def _mix(value: int, item: Any) -> int:
    """``util.update_hash_with_primitive_value`` in Python integers (numpy uint64 wraps the same way)."""
    v = int(item) & _MASK
    return (value ^ ((v + _HASH_CONSTANT + ((value << 10) & _MASK) + (value >> 4)) & _MASK)) & _MASK


def _mix_all(value: int, items: Any) -> int:
    for item in items:
        value = _mix(value, item)
    return value


def model_hash(model: Any) -> int:
    """``util.get_model_hash``: operators' inputs/outputs, tensor and buffer sizes, shapes, I/O counts."""
    h = 0
    for subgraph in model.subgraphs:
        if subgraph.operators is not None:
            h = _mix(h, len(subgraph.operators))
            for op in subgraph.operators:
                if op.inputs is not None:
                    h = _mix_all(h, op.inputs)
                if op.outputs is not None:
                    h = _mix_all(h, op.outputs)
        if subgraph.tensors is not None:
            h = _mix(h, len(subgraph.tensors))
            for tensor in subgraph.tensors:
                if tensor.buffer is not None:
                    data = model.buffers[tensor.buffer].data
                    if data is not None:
                        h = _mix(h, len(data))
                if tensor.shape is not None:
                    h = _mix_all(h, tensor.shape)
        if subgraph.inputs is not None:
            h = _mix(h, len(subgraph.inputs))
        if subgraph.outputs is not None:
            h = _mix(h, len(subgraph.outputs))
    return h


def _pack(tensorflow_version: str, api_version: int, model_type: int, hash_value: int) -> bytes:
    """``ConversionMetadataT.Pack``: environment, then options (no optimization modes, no custom/select ops)."""
    b = flatbuffers.Builder(0)
    version = b.CreateString(tensorflow_version)
    b.StartObject(4)  # Environment
    b.PrependUOffsetTRelativeSlot(0, version, 0)
    b.PrependUint32Slot(1, api_version, 0)
    b.PrependInt32Slot(2, model_type, 0)
    b.PrependUint64Slot(3, hash_value, 0)
    environment = b.EndObject()
    b.StartVector(4, 0, 4)  # modelOptimizationModes: an empty list, written as TensorFlow writes it
    modes = b.EndVector()
    b.StartObject(5)  # ConversionOptions
    b.PrependUOffsetTRelativeSlot(0, modes, 0)
    b.PrependBoolSlot(1, False, 0)  # allowCustomOps
    b.PrependBoolSlot(2, False, 0)  # enableSelectTfOps
    b.PrependBoolSlot(3, False, 0)  # forceSelectTfOps
    options = b.EndObject()
    b.StartObject(2)  # ConversionMetadata
    b.PrependUOffsetTRelativeSlot(0, environment, 0)
    b.PrependUOffsetTRelativeSlot(1, options, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def add(content: bytes, *, tensorflow_version: str, model_type: int, api_version: int = 2) -> bytes:
    """The model with TensorFlow's conversion metadata for a float conversion with builtin ops only."""
    schema = tflite_schema.schema()
    model = tflite_schema.load(content)
    buffer = schema.BufferT()
    buffer.data = _pack(tensorflow_version, api_version, model_type, model_hash(model))
    if not model.metadata:
        model.metadata = []
    for entry in model.metadata:
        name = entry.name.decode() if isinstance(entry.name, bytes) else str(entry.name)
        if name == FIELD:
            model.buffers[entry.buffer] = buffer
            return tflite_schema.dump(model)
    if not model.buffers:
        model.buffers = []
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = FIELD
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    return tflite_schema.dump(model)
