"""Look inside a .tflite: its ops and which of them still compute in float."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .runtime.interpreter import make_interpreter


@dataclass(frozen=True)
class OpInfo:
    """One operator: builtin name and the dtypes of its tensors."""

    index: int
    name: str
    input_dtypes: tuple[str, ...]
    output_dtypes: tuple[str, ...]


def list_ops(model: bytes) -> list[OpInfo]:
    """Every operator of the model's main subgraph, in execution order."""
    interpreter = make_interpreter(model_content=model, delegate="none")
    dtypes = {d["index"]: np.dtype(d["dtype"]).name for d in interpreter.get_tensor_details()}
    ops = []
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the only op listing both LiteRT and TF offer
        ins = tuple(dtypes.get(int(i), "none") for i in op["inputs"] if int(i) >= 0)
        outs = tuple(dtypes.get(int(i), "none") for i in op["outputs"] if int(i) >= 0)
        ops.append(OpInfo(int(op["index"]), str(op["op_name"]), ins, outs))
    return ops


def float_ops(model: bytes) -> list[OpInfo]:
    """Ops that compute in float, apart from the QUANTIZE/DEQUANTIZE at float model I/O."""
    return [
        op
        for op in list_ops(model)
        if "float32" in op.input_dtypes + op.output_dtypes and op.name not in ("QUANTIZE", "DEQUANTIZE")
    ]
