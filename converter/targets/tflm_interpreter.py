"""TFLite Micro validation with the real TFLM interpreter (the ``tflite-micro`` package).

What a microcontroller build would do, on this machine: load the int8 model with TFLM's
kernels, find the smallest tensor arena that works (binary search over real allocations;
the recording allocator's total is reported beside it), and compare TFLM's outputs with
LiteRT's on the evaluation samples. TFLM runs its reference kernels here, LiteRT its
optimized ones: differences are reported, not hidden.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import TargetError
from converter.extras import require
from converter.runtime.model import TensorInfo, TFLiteModel, input_arrays, pack_inputs, quantize, signature_names
from converter.tflite.inspect_model import list_ops
from converter.tflite.ops import tflm_missing

ARENA_ALIGNMENT = 16
# Below about 1 KB the TFLM Python wrapper crashes (segfault) instead of reporting a failed
# allocation (seen with tflite-micro 0.dev20261023): the search never goes lower.
ARENA_FLOOR = 1024
_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '([A-Z0-9_]+)'")


@dataclass(frozen=True)
class TFLMResult:
    """What TFLM said about a model."""

    loaded: bool
    missing_ops: list[str]
    arena_bytes: int | None  # the smallest arena that allocated and ran, 16-byte steps
    recorded_arena_bytes: int | None  # the recording allocator's "Arena allocation total"
    samples: int
    exact_match: float | None  # fraction of int8 output values equal to LiteRT's
    max_abs_diff_steps: int | None  # largest output difference, in quantization steps
    top1_agreement: float | None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _runtime() -> Any:
    require("tflite_micro")
    from tflite_micro.python.tflite_micro import runtime

    return runtime


class _CapturedStderr:
    """Capture what C++ writes to file descriptor 2 (TFLM prints its allocations there)."""

    def __enter__(self) -> _CapturedStderr:
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc: object) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode(errors="replace")
        self._file.close()


class _Prober:
    """Allocation trials, each in a fresh process (see ``tflm_probe``), remembered by size."""

    def __init__(self, model: bytes, sample: np.ndarray | list[np.ndarray], folder: str) -> None:
        self.model_path = os.path.join(folder, "model.tflite")  # noqa: PTH118
        with open(self.model_path, "wb") as f:  # noqa: PTH123
            f.write(model)
        self.sample_paths = []  # one .npy per model input, in the model's input order
        for i, values in enumerate(sample if isinstance(sample, list) else [sample]):
            path = os.path.join(folder, "sample.npy" if i == 0 else f"sample_{i}.npy")  # noqa: PTH118
            np.save(path, values)
            self.sample_paths.append(path)
        self.results: dict[int, bool] = {}

    def works(self, arena: int) -> bool:
        if arena not in self.results:
            # By file path with -I: no module named "converter" from the working folder can stand in.
            probe = str(Path(__file__).with_name("tflm_probe.py"))
            cmd = [sys.executable, "-I", probe, self.model_path, str(arena), *self.sample_paths]
            try:
                proc = subprocess.run(cmd, capture_output=True, timeout=300, check=False)
            except subprocess.TimeoutExpired as e:
                raise TargetError(f"TFLite Micro allocation trial took longer than {e.timeout:.0f}s") from e
            if proc.returncode not in (0, 1, -11):  # -11: the wrapper's segfault on a too-small arena
                raise TargetError(f"TFLite Micro probe failed: {proc.stderr.decode(errors='replace')[-300:]}")
            self.results[arena] = proc.returncode == 0
        return self.results[arena]


def smallest_arena(model: bytes, sample: np.ndarray | list[np.ndarray], hint: int, upper: int) -> int | None:
    """The smallest arena (a multiple of 16 bytes, at least ``ARENA_FLOOR``) in which the model runs.

    Starts at ``hint`` (the recording allocator's total), steps up exponentially until a
    size works, then bisects: about a dozen trials instead of a search from zero.
    """
    with tempfile.TemporaryDirectory(prefix="edgeconv-tflm-") as folder:
        probe = _Prober(model, sample, folder)
        step = ARENA_ALIGNMENT
        lo = max(ARENA_FLOOR, -(-hint // ARENA_ALIGNMENT) * ARENA_ALIGNMENT)
        if probe.works(lo):  # the hint is enough: bisect below it
            hi, lo = lo, ARENA_FLOOR
            if probe.works(lo):
                return lo
        else:
            hi = lo + step
            while not probe.works(hi):
                lo, step = hi, step * 2
                hi = lo + step
                if hi > upper:
                    return None
        while hi - lo > ARENA_ALIGNMENT:  # invariant: lo fails, hi works
            mid = (lo + hi) // 2 // ARENA_ALIGNMENT * ARENA_ALIGNMENT
            if probe.works(mid):
                hi = mid
            else:
                lo = mid
        return hi


def validate(model: bytes, samples: np.ndarray | None) -> TFLMResult:
    """Run ``model`` in TFLM: op coverage, arena, and agreement with LiteRT on float ``samples``.

    ``samples`` are packed for a model with several inputs; every output is compared.
    """
    runtime = _runtime()
    missing = tflm_missing(list_ops(model))
    litert = TFLiteModel(model_content=model, delegate="none")
    infos = litert.inputs
    x = samples if samples is not None and len(samples) else _zeros(infos)

    def quantized_row(row: int) -> list[np.ndarray]:
        return [quantize(a, info) for a, info in zip(input_arrays(x[row : row + 1], infos), infos, strict=True)]

    first = quantized_row(0)
    generous = max(len(model) * 10, 4 << 20)
    with _CapturedStderr() as log:
        try:
            interpreter = runtime.Interpreter.from_bytes(model, arena_size=generous)
            for i, q in enumerate(first):
                interpreter.set_input(q, i)
            interpreter.invoke()
            interpreter.print_allocations()
        except (RuntimeError, ValueError) as e:
            interpreter, error = None, str(e)
    if interpreter is None:
        found = sorted(set(missing) | set(_MISSING_OP.findall(log.text + error)))
        names = signature_names(litert.interpreter)
        wide = [names.get(i.index, i.name) for i in infos if i.dtype == "int64" and i.scale is None]
        return TFLMResult(False, found, None, None, 0, None, None, None, _load_failure(log.text, error, wide))
    match = re.search(r"Arena allocation total (\d+) bytes", log.text)
    recorded = int(match.group(1)) if match else None
    arena = smallest_arena(model, first if len(first) > 1 else first[0], recorded or ARENA_FLOOR, generous)
    # The verdict on coverage is TFLM's own: it ran, so nothing the table flagged is missing.
    equal, worst, agree = [], 0, []
    for row in range(len(x)):
        interpreter.reset()  # variable tensors (a fused LSTM's state) start from zero for each sample, in both
        litert.interpreter.reset_all_variables()
        for i, (q, info) in enumerate(zip(quantized_row(row), infos, strict=True)):
            interpreter.set_input(q, i)
            litert.interpreter.set_tensor(info.index, q)
        interpreter.invoke()
        litert.interpreter.invoke()
        for k, out in enumerate(litert.outputs):
            micro = interpreter.get_output(k)
            ref = litert.interpreter.get_tensor(out.index)
            diff = np.abs(micro.astype(np.int64) - ref.astype(np.int64))
            equal.append(float(np.mean(diff == 0)))
            worst = max(worst, int(diff.max()))
            if ref.ndim == 2 and ref.shape[1] > 1:
                agree.append(float(np.argmax(micro, 1)[0] == np.argmax(ref, 1)[0]))
    return TFLMResult(
        True, [], arena, recorded, len(x), float(np.mean(equal)), worst, float(np.mean(agree)) if agree else None
    )


def _load_failure(said: str, error: str, wide: list[str]) -> str:
    """Why TFLM could not load the model: its last line, with the kernel's own reason when it printed one.

    TFLM prints a kernel's reason ("Positions of type 'INT64' are not supported by gather.") on the line
    before its "Node GATHER (number 4) failed to prepare"; the second alone does not say what to change.
    int64 indices are the case a user can fix: ONNX exports of PyTorch ids are int64, TFLM's GATHER
    takes int32 positions only, and an int32 export (or the .pt2, whose ids are int32) runs.
    ``wide``: the model's int64 inputs without a scale, by name.
    """
    lines = [line.strip() for line in said.strip().splitlines() if line.strip()]
    if not lines:
        return f"TFLM cannot load the model: {error}"
    text = f"{lines[-2]} {lines[-1]}" if len(lines) > 1 and "failed to prepare" in lines[-1] else lines[-1]
    if wide and "'INT64' are not supported" in text:
        text += (
            f" (the model's integer input {', '.join(repr(n) for n in wide)} is int64, as ONNX exports of PyTorch ids "
            "are, and TFLite Micro's kernels take int32 indices: export the model with int32 ids, e.g. "
            "torch.onnx.export(model, (ids.to(torch.int32),), ...), or convert its .pt2, whose ids are int32)"
        )
    return f"TFLM cannot load the model: {text}"


def _zeros(infos: list[TensorInfo]) -> np.ndarray:
    """One all-zero sample for the model's inputs (packed for several), each in its input's dtype.

    Float32 zeros for a quantized input (``quantize`` maps them onto its grid); an integer input without
    a scale takes zeros of its own dtype, id 0 (every table has a row 0).
    """
    arrays = {
        info.name: np.zeros((1, *info.shape[1:]), np.float32 if info.scale is not None else info.dtype)
        for info in infos
    }
    return pack_inputs(arrays) if len(arrays) > 1 else next(iter(arrays.values()))
