"""Coral Edge TPU: a static mapping prediction, and the real compiler when it is installed.

The Edge TPU runs a graph prefix: the compiler maps ops in order until the first op it
cannot run (unsupported, not int8/uint8, or dynamic-shaped); that op and everything
after it run on the CPU. The static check predicts that split from the documented op
list and constraints -- it is labelled a prediction. ``edgetpu_compiler`` is used when
it is on PATH; its log is parsed for what it actually mapped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from converter.devices import DeviceProfile
from converter.targets.base import Check, Context, fit
from converter.tflite.inspect_model import OpInfo
from converter.tflite.ops import EDGETPU_OPS

INTEGER = {"int8", "uint8", "int32"}  # int32: biases and shape tensors

# What the report says about the compiler; docs/targets/coral.md quotes them.
NOT_INSTALLED = (
    "edgetpu_compiler is not installed here (not on PATH; Coral publishes it for Debian/Ubuntu x86-64 only): "
    "the Edge TPU mapping is the static prediction, labelled as one; with the compiler on PATH, convert runs it "
    "and writes model_int8_edgetpu.tflite"
)
FAILED = (
    "edgetpu_compiler (found on PATH) failed on this model: the Edge TPU mapping is the static prediction, "
    "labelled as one, and no model_int8_edgetpu.tflite is written"
)


@dataclass(frozen=True)
class EdgeTPUPrediction:
    """Where the graph would split and why."""

    mapped_ops: int
    total_ops: int
    first_cpu_op: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)
    kind: str = "prediction"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _why_not(op: OpInfo) -> str | None:
    if op.name not in EDGETPU_OPS:
        return f"{op.name} is not supported by the Edge TPU"
    floats = [d for d in op.input_dtypes + op.output_dtypes if d not in INTEGER]
    if floats and op.name not in ("QUANTIZE", "DEQUANTIZE"):
        return f"{op.name} computes in {floats[0]}; the Edge TPU runs 8-bit quantized ops only"
    if any(len(s) and s[0] != 1 for s in op.output_shapes if len(s) == 4):
        return f"{op.name} has batch size > 1; the Edge TPU needs batch 1"
    return None


def predict(ops: list[OpInfo], input_dtype: str, output_dtype: str) -> EdgeTPUPrediction:
    """The prefix of ops the compiler would map, from the documented constraints."""
    problems = []
    if input_dtype == "float32" or output_dtype == "float32":
        problems.append("float model I/O: the QUANTIZE/DEQUANTIZE at the edges run on the CPU; use int8/uint8 I/O")
    mapped = 0
    for op in ops:
        if op.name in ("QUANTIZE", "DEQUANTIZE") and (op.index == 0 or op.index == len(ops) - 1):
            continue  # I/O conversion at the graph edges; already reported above
        reason = _why_not(op)
        if reason:
            problems.append(
                f"op {op.index}: {reason}; it and the {len(ops) - op.index - 1} ops after it run on the CPU"
            )
            return EdgeTPUPrediction(mapped, len(ops), {"index": op.index, "op": op.name, "reason": reason}, problems)
        mapped += 1
    return EdgeTPUPrediction(mapped, len(ops), None, problems)


@dataclass(frozen=True)
class CompilerLog:
    """What edgetpu_compiler reported."""

    mapped_ops: int | None
    cpu_ops: int | None
    on_chip_bytes: int | None
    off_chip_bytes: int | None
    operations: list[dict[str, Any]]


_SIZE = re.compile(r"([\d.]+)\s*(B|KiB|MiB|GiB)")
_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def _bytes(text: str) -> int | None:
    m = _SIZE.search(text)
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


def parse_log(text: str) -> CompilerLog:
    """Parse ``edgetpu_compiler -s`` output (the operation table and memory lines)."""
    mapped = re.search(r"Number of operations that will run on Edge TPU:\s*(\d+)", text)
    cpu = re.search(r"Number of operations that will run on CPU:\s*(\d+)", text)
    on_chip = re.search(r"On-chip memory used for caching model parameters:\s*(.+)", text)
    off_chip = re.search(r"Off-chip memory used for streaming uncached model parameters:\s*(.+)", text)
    total = re.search(r"Total number of operations:\s*(\d+)", text)
    if mapped is None and cpu is None and total and "successfully compiled but not all" not in text:
        mapped, cpu = total, None  # everything mapped: the compiler prints no split lines then
    operations = []
    for line in text.splitlines():
        m = re.match(r"^([A-Z][A-Z0-9_]+)\s+(\d+)\s+(Mapped to Edge TPU|.+)$", line.strip())
        if m:
            operations.append({"op": m.group(1), "count": int(m.group(2)), "status": m.group(3).strip()})
    return CompilerLog(
        int(mapped.group(1)) if mapped else None,
        int(cpu.group(1)) if cpu else (0 if mapped else None),
        _bytes(on_chip.group(1)) if on_chip else None,
        _bytes(off_chip.group(1)) if off_chip else None,
        operations,
    )


def compiler_path() -> str | None:
    return shutil.which("edgetpu_compiler")


def compile_model(model: bytes) -> tuple[bytes, CompilerLog, str] | None:
    """Run edgetpu_compiler when installed: (compiled model, parsed log, raw log); None otherwise."""
    exe = compiler_path()
    if exe is None:
        return None
    with tempfile.TemporaryDirectory(prefix="edgeconv-edgetpu-") as tmp:
        src = Path(tmp) / "model.tflite"
        src.write_bytes(model)
        try:
            proc = subprocess.run(
                [exe, "-s", "-o", tmp, str(src)], capture_output=True, text=True, timeout=600, check=False
            )
        except subprocess.TimeoutExpired:
            return None  # reported as FAILED
        out = Path(tmp) / "model_edgetpu.tflite"
        if proc.returncode != 0 or not out.is_file():
            return None
        return out.read_bytes(), parse_log(proc.stdout), proc.stdout


def check(ctx: Context, name: str, profile: DeviceProfile) -> Check:
    """The static mapping prediction, and the compiler's own verdict and model when it is installed."""
    prediction = predict(ctx.ops, ctx.input_dtype, ctx.output_dtype)
    out = Check(problems=list(prediction.problems))
    compiled = compile_model(ctx.model)
    if compiled is None:
        compiler: dict[str, Any] = {
            "available": compiler_path() is not None,
            "reason": NOT_INSTALLED if compiler_path() is None else FAILED,
        }
    else:
        data, parsed, raw = compiled
        out.files["model_int8_edgetpu.tflite"] = data
        compiler = {"available": True, "log": parsed.__dict__, "raw": raw}
    out.section.update(edgetpu={"prediction": prediction.to_json(), "compiler": compiler})
    out.section.update(fit(profile, len(ctx.model), None, out.problems))
    return out
