"""Calibrate and quantize: the recipe's ranges written into the float reference, then TFLite's quantizer.

A ``Plan`` says how: range method, bias correction, layers kept float, int8 or 16x8
activations. The recipe gives the first plan; the accuracy loop (``tune``) tries others.

Integer model inputs (token ids, masks, indices) stay integer in the quantized model: TensorFlow's
quantizer turns float inputs into ``input_type`` and leaves integer ones as they are, so the plan's
``input_type`` applies to the float inputs alone, and the samples reach the quantizer's calibrator as
integers (``tflite_quantizer.stock_quantize``). TensorFlow's 16x8 route has no kernels for the lookups
ids feed (EMBEDDING_LOOKUP) nor ranges for integer inputs; its failure on such a model says so.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from converter.calibration.bias_correction import BiasFix, correct_biases
from converter.calibration.calibrate import Calibration, calibrate
from converter.calibration.equalize import equalize
from converter.errors import ConversionError, NoIntegerKernelError
from converter.quantization.concat_scales import named_ranges, own_scales
from converter.quantization.layer_norm import as_l2_normalization
from converter.quantization.tflite_quantizer import quantize_with_ranges, stock_quantize
from converter.recipe import Method, Recipe
from converter.runtime.model import TFLiteModel, signature_names
from converter.runtime.preprocess import Preprocess
from converter.tflite import flatbuf

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """One way to quantize a model."""

    method: Method
    bias_correction: bool = False
    equalization: bool = False
    qat: bool = False
    float_nodes: tuple[str, ...] = ()
    activations: str = "int8"
    input_type: str = "int8"
    output_type: str = "int8"
    layer_norm_l2: bool = False  # LayerNorms computed by L2_NORMALIZATION (``layer_norm``); a fix the loop tries

    @classmethod
    def of(cls, recipe: Recipe) -> Plan:
        q = recipe.quantization
        c = recipe.calibration
        return cls(c.method, c.bias_correction, c.equalization, False, (), q.activations, q.input_type, q.output_type)


@dataclass(frozen=True)
class Quantized:
    """A quantized model, the plan behind it, and the calibration it used (None for 16x8 and QAT).

    ``reference`` is the float model whose tensors it mirrors layer by layer (the equalized
    one after equalization: same function, rescaled channels); None means the original.
    ``rejected`` maps a transform the recipe asked for but whose result failed its check
    ("equalization", "bias_correction") to the reason; the model was made without it.
    """

    model: bytes
    plan: Plan
    calibration: Calibration | None
    bias_fixes: tuple[BiasFix, ...] = ()
    equalized_pairs: int | None = None
    reference: bytes | None = None
    rejected: tuple[tuple[str, str], ...] = ()
    layer_norms: int | None = None  # how many LayerNorms the plan's ``layer_norm_l2`` rewrote
    requantized: tuple[str, ...] = ()  # concatenation inputs kept at their own scale (``concat_scales``)

    def float_reference(self, original: bytes) -> bytes:
        return self.reference if self.reference is not None else original

    def to_json(self) -> dict[str, Any]:
        p = self.plan
        route = "ranges learned by quantization-aware training" if p.qat else "minmax (TFLite 16x8)"
        rejected = dict(self.rejected)
        return {
            "method": p.method if self.calibration is not None else route,
            "activations": p.activations,
            "bias_correction": {
                "layers": len(self.bias_fixes),
                "max_shift_steps": max((f.max_shift_steps for f in self.bias_fixes), default=None),
            }
            if p.bias_correction
            else self._rejected(rejected, "bias_correction", {"layers": 0, "max_shift_steps": None}),
            "equalization": {"pairs": self.equalized_pairs}
            if p.equalization
            else self._rejected(rejected, "equalization", {"pairs": None}),
            "qat": p.qat,
            "float_nodes": list(p.float_nodes),
            "layer_norm": {"as": "l2_normalization", "count": self.layer_norms} if p.layer_norm_l2 else None,
            "requantized_concat_inputs": list(self.requantized),
        }

    @staticmethod
    def _rejected(rejected: dict[str, str], transform: str, empty: dict[str, Any]) -> dict[str, Any] | None:
        return {**empty, "rejected": rejected[transform]} if transform in rejected else None


def contract_range(prep: Preprocess) -> tuple[float, float]:
    """The model input range that 8-bit data (0..255) maps to under the preprocessing contract.

    Bilinear resizing mixes values convexly, so it cannot leave [0, 255]: only scale and offset matter.
    """
    ends = Preprocess(scale=prep.scale, offset=prep.offset)(np.array([0.0, 255.0], dtype=np.float32))
    return float(ends.min()), float(ends.max())


def prep_json(prep: Preprocess) -> dict[str, Any]:
    return {"resize": list(prep.resize) if prep.resize else None, "scale": prep.scale, "offset": prep.offset}


def _no_16x8(error: ConversionError, float_tflite: bytes) -> ConversionError:
    """TensorFlow's 16x8 failure, said in words: an op it has no 16x8 kernel for, or integer inputs.

    Seen with TensorFlow 2.21: "Quantization to 16x8-bit not yet supported for op: 'EMBEDDING_LOOKUP'"
    (the .pt2 route's embedding; SELECT_V2 in a ViT) and "Max and min for dynamic tensors should be recorded
    during calibration: Failed for tensor serving_default_ids:0" (the ONNX route's int64 ids). The remedy is
    the recipe's (int8 activations), so it is ``NoIntegerKernelError``: exit 2 for the run, and one skipped
    attempt for the accuracy loop, as any ``ConversionError``.
    """
    model = TFLiteModel(model_content=float_tflite, delegate="none")
    keys = signature_names(model.interpreter)
    integer = [keys.get(i.index, i.name) for i in model.inputs if i.scale is None and np.dtype(i.dtype).kind in "biu"]
    said = " ".join(str(error).split()).rstrip(".")  # TensorFlow's sentence spans lines
    if integer:
        return NoIntegerKernelError(
            f"{said}; the model has integer inputs ({', '.join(repr(n) for n in integer)}), and TensorFlow's 16x8 "
            "quantizer (quantization.activations: int16) handles neither them nor the lookups they feed "
            "(EMBEDDING_LOOKUP, GATHER): use activations: int8, which keeps the ids integer and quantizes the rest"
        )
    ops = sorted(set(_NOT_16X8.findall(said)))
    if not ops:
        return error
    return NoIntegerKernelError(
        f"{said}; TensorFlow's 16x8 quantizer (quantization.activations: int16) has no 16x8 kernel for "
        f"{', '.join(ops)}, which this model uses: use activations: int8 (without an accuracy budget the accuracy "
        "loop still tries its full-integer fixes; with budgets.accuracy_drop on a CPU target it may keep the "
        "layers that lose most float)"
    )


_NOT_16X8 = re.compile(r"16x8-bit not yet supported for op: '(\w+)'")


def pool_padding_ranges(model: bytes, ranges: dict[int, tuple[float, float]]) -> dict[int, tuple[float, float]]:
    """``ranges`` with each max-pool padding's output given its input's range instead of the pad value's.

    A PyTorch ``MaxPool2d(padding=1)`` (the ResNet stem) becomes PADV2 with -inf (or, after
    ``soften_mask_constants``, -64) then MAX_POOL_2D. The pad value never wins a max, but min/max statistics
    count it, so the padded tensor's int8 range stretched from [0, 6] to [-64, 6]: a tenth of its resolution.
    With the input's range the pad value quantizes to the lowest int8 code, still below every real value, so
    the max-pool computes what it did; the MLIR quantizer gives PADV2 one scale for input and output anyway.
    """
    parsed = flatbuf.load(model)
    names = flatbuf.enum_names("BuiltinOperator")
    graph = parsed.subgraphs[0]
    readers: dict[int, list[str]] = {}
    for op in graph.operators:
        for i in op.inputs if op.inputs is not None else []:
            readers.setdefault(int(i), []).append(flatbuf.op_code(parsed, op, names))
    out = dict(ranges)
    for op in graph.operators:
        if flatbuf.op_code(parsed, op, names) != "PADV2" or len(op.inputs) < 3:
            continue
        source, value, padded = int(op.inputs[0]), int(op.inputs[2]), int(op.outputs[0])
        pad = graph.tensors[value]
        if source not in ranges or padded not in ranges or not pad.buffer:
            continue
        values = flatbuf.data(parsed, pad, "<f4") if flatbuf.type_name(pad.type) == "FLOAT32" else None
        if values is None or values.size != 1 or float(values.reshape(-1)[0]) > ranges[source][0]:
            continue
        if readers.get(padded) and all(r == "MAX_POOL_2D" for r in readers[padded]):
            out[padded] = ranges[source]
    return out


def quantize(
    float_tflite: bytes,
    cal_x: np.ndarray,
    recipe: Recipe,
    prep: Preprocess,
    *,
    eight_bit_data: bool,
    plan: Plan | None = None,
    concat_scales: bool = True,
) -> Quantized:
    """The quantized model for ``plan`` (default: the recipe's).

    ``concat_scales``: keep shared concatenation inputs at their own scale (``concat_scales``), for targets that
    run LiteRT's or TFLite Micro's kernels (``tune.own_kernels_only``).
    """
    plan = plan or Plan.of(recipe)
    per_channel = recipe.quantization.per_channel
    if plan.activations == "int16":
        # TFLite's 16x8 route calibrates by itself: none of our range steps apply, so the plan says so.
        plan = dataclasses.replace(plan, method="minmax", bias_correction=False, equalization=False, float_nodes=())
        try:
            model = stock_quantize(
                float_tflite,
                cal_x,
                input_type=plan.input_type,
                output_type=plan.output_type,
                per_channel=per_channel,
                activations="int16",
                cache=recipe.calibration.cache,
            )
        except ConversionError as e:
            raise _no_16x8(e, float_tflite) from e
        return Quantized(model, plan, None)
    contract = contract_range(prep) if eight_bit_data else None
    pairs = norms = None
    rewritten = False
    if plan.layer_norm_l2:  # a different float model (the same function): its own statistics and ranges
        float_tflite, norms = as_l2_normalization(float_tflite, cal_x)
        rewritten = norms > 0
    if plan.equalization:
        float_tflite, pairs = equalize(float_tflite, check_x=cal_x)
        rewritten = True
    spec = dataclasses.replace(recipe.calibration, method=plan.method)
    calibration = calibrate(float_tflite, cal_x, spec, prep_json(prep), contract)
    if calibration.cache_hit:
        log.info("calibration statistics from the cache (%s…)", calibration.cache_key[:12])

    def run(source: bytes, float_nodes: tuple[str, ...]) -> tuple[bytes, list[str]]:
        ranges = pool_padding_ranges(source, calibration.ranges())
        model = quantize_with_ranges(
            source,
            ranges,
            input_type=plan.input_type,
            output_type=plan.output_type,
            per_channel=per_channel,
            float_nodes=float_nodes,
            cache=recipe.calibration.cache,
        )
        return own_scales(model, lambda: named_ranges(source, ranges)) if concat_scales else (model, [])

    model, requantized = run(float_tflite, plan.float_nodes)
    fixes: list[BiasFix] = []
    if plan.bias_correction:
        corrected, fixes = correct_biases(float_tflite, model, cal_x, skip=set(plan.float_nodes))
        model, requantized = run(corrected, plan.float_nodes)
    reference = float_tflite if rewritten else None
    return Quantized(
        model, plan, calibration, tuple(fixes), pairs, reference, layer_norms=norms, requantized=tuple(requantized)
    )
