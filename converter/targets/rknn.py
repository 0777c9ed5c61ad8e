"""Rockchip RKNN NPUs: the int8 model built by rknn-toolkit2 and run on its x86 simulator.

The toolkit lives in a virtualenv of its own (``edgeconv setup rknn``, see ``rknn_setup``) and runs
as a child process (``rknn_worker.py``) with JSON in and out and a timeout: one toolkit run per
platform loads our int8 TFLite, keeps its quantization (no re-quantization, so our calibration is what
reaches the NPU), builds for the platform, exports ``firmware/<target>/model.rknn`` and, in the same
run (a saved .rknn cannot be simulated), runs the simulator on the evaluation samples. A pre-quantized
model takes its quantized int8 input and returns raw int8 outputs, so the samples are quantized here
with the model's own input scale and the outputs compared raw with our TFLite int8 model's.

A toolkit that refuses the model or the platform, crashes (rk2118 aborts the process) or hangs is this
target's problem (``compatible: false``, exit 1), never a failed run. The .rknn bytes differ between
identical runs (the toolkit stamps each build), so determinism claims exclude them.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converter.devices import DeviceProfile, RknnSpec
from converter.runtime.accuracy import classifies, is_reconstruction, output_error
from converter.runtime.model import TensorInfo, TFLiteModel, input_arrays, quantize
from converter.targets import rknn_setup
from converter.targets.base import Check, Context, fit

TIMEOUT_S = 900
ARTIFACT = "model.rknn"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class RknnError(Exception):
    """The toolkit refused, crashed or timed out; the message carries its last words."""


@dataclass
class RknnRun:
    """One toolkit run: the exported model and the simulator's raw outputs."""

    model: bytes
    outputs: list[np.ndarray]
    toolkit: str
    seconds: dict[str, float] = field(default_factory=dict)


def _errors(stderr: str, fallback: bool = True) -> str:
    """The toolkit's own error lines (``E ...``), else (with ``fallback``) the last lines of its log."""
    lines = [_ANSI.sub("", line).strip() for line in stderr.splitlines() if line.strip()]
    errors = [
        line
        for line in lines
        if line.startswith("E ") and "Traceback" not in line and not line.startswith("E rknn-toolkit2 version")
    ]
    return " | ".join((errors or (lines if fallback else []))[-3:])


def run_toolkit(
    python: Path, model: bytes, platform: str, inputs: list[np.ndarray], timeout_s: float = TIMEOUT_S
) -> RknnRun:
    """Build ``model`` for ``platform`` and simulate it on ``inputs`` (each input's quantized tensors, in order)."""
    with tempfile.TemporaryDirectory(prefix="edgeconv-rknn-") as tmp:
        folder = Path(tmp)
        (folder / "model.tflite").write_bytes(model)
        paths = [folder / f"input_{k}.npy" for k in range(len(inputs))]
        for path, x in zip(paths, inputs, strict=True):
            np.save(path, x)
        request = {
            "model": str(folder / "model.tflite"),
            "platform": platform,
            "rknn": str(folder / ARTIFACT),
            "inputs": [str(p) for p in paths],
            "outputs": str(folder / "outputs.npz"),
        }
        # -I: the worker's folder (converter/targets, which holds this rknn.py) must not shadow the toolkit's
        # ``rknn`` package, and PYTHONPATH/user site-packages must not leak into the toolkit's environment.
        command = [str(python), "-I", str(rknn_setup.WORKER)]
        try:
            done = subprocess.run(
                command, input=json.dumps(request), capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise RknnError(f"rknn-toolkit2 did not finish within {timeout_s:g} s") from e
        if done.returncode < 0:
            name = signal.Signals(-done.returncode).name
            last = _errors(done.stderr) or "no message"
            raise RknnError(f"rknn-toolkit2 crashed ({name}) working for {platform}; its last words: {last}")
        lines = done.stdout.strip().splitlines()
        try:
            answer: dict[str, Any] = json.loads(lines[-1]) if lines else {}
        except ValueError:
            answer = {}
        if done.returncode != 0 or not answer.get("ok"):
            log = _errors(done.stderr, fallback="error" not in answer)
            what = answer.get("error") or f"the worker exited with {done.returncode}"
            repeated = what.rsplit(": ", 1)[-1] in log  # a toolkit exception is also in its log
            raise RknnError(
                f"rknn-toolkit2 failed for {platform}: {what}" + (f" (its log: {log})" if log and not repeated else "")
            )
        with np.load(folder / "outputs.npz") as out:
            outputs = [out[f"output_{k}"] for k in range(len(out.files))]
        return RknnRun((folder / ARTIFACT).read_bytes(), outputs, str(answer.get("toolkit")), answer.get("seconds", {}))


def _reference(ctx: Context) -> tuple[list[np.ndarray], list[np.ndarray], TFLiteModel]:
    """Each input's quantized samples and our TFLite int8 model's raw outputs on them (shared by every RKNN target)."""
    if "rknn:reference" not in ctx.shared:
        model = TFLiteModel(model_content=ctx.model)  # as the host evaluation runs it (XNNPACK), like for like
        if ctx.samples is not None:
            arrays = input_arrays(ctx.samples, model.inputs)
        else:
            arrays = [np.empty((0, *info.shape[1:]), np.float32) for info in model.inputs]
        # a pre-quantized model takes its quantized input tensors
        xs = [quantize(a, info) for a, info in zip(arrays, model.inputs, strict=True)]
        raw: list[list[np.ndarray]] = [[] for _ in model.outputs]
        for row in range(len(xs[0])):
            for info, x in zip(model.inputs, xs, strict=True):
                model.interpreter.set_tensor(info.index, x[row : row + 1])
            model.interpreter.reset_all_variables()
            model.interpreter.invoke()
            for acc, info in zip(raw, model.outputs, strict=True):
                acc.append(model.interpreter.get_tensor(info.index).copy())
        outputs = [np.concatenate(r) if r else np.empty((0,)) for r in raw]
        ctx.shared["rknn:reference"] = (xs, outputs, model)
    cached: tuple[list[np.ndarray], list[np.ndarray], TFLiteModel] = ctx.shared["rknn:reference"]
    return cached


def accuracy_section(
    ctx: Context, xs: list[np.ndarray], ours: list[np.ndarray], sim: list[np.ndarray], model: TFLiteModel
) -> dict[str, Any]:
    """The simulator against our TFLite int8 model on the same samples (and against the labels)."""
    n = len(xs[0])
    section: dict[str, Any] = {"where": "simulator", "samples": n, "data": ctx.samples_kind}
    if not n:
        return {**section, "metric": None, "reason": "no samples to simulate"}
    shapes_match = all(a.shape == b.reshape(a.shape).shape for a, b in zip(ours, sim, strict=True))
    if len(sim) != len(ours) or not shapes_match:
        return {**section, "metric": None, "reason": f"the simulator returned {len(sim)} outputs of other shapes"}
    sim = [b.reshape(a.shape).astype(a.dtype) for a, b in zip(ours, sim, strict=True)]
    steps = max(int(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64)))) for a, b in zip(ours, sim, strict=True))
    section.update(
        raw_max_abs_diff_steps=steps,
        raw_identical_fraction=float(
            np.mean(np.concatenate([(a == b).ravel() for a, b in zip(ours, sim, strict=True)]))
        ),
        outputs=[
            output_error(info.name, _dequantize(a, info), _dequantize(b, info))
            for a, b, info in zip(ours, sim, model.outputs, strict=True)
        ],
    )
    first, labels = ours[0], ctx.labels
    if labels is not None and classifies(first, is_reconstruction(first, ctx.samples)):
        sim_top, our_top = np.argmax(sim[0], axis=1), np.argmax(first, axis=1)
        section.update(
            metric="top1",
            int8=float(np.mean(sim_top == labels[:n])),
            tflite_int8=float(np.mean(our_top == labels[:n])),
            agreement=float(np.mean(sim_top == our_top)),
        )
        section["drop_vs_tflite_int8"] = section["tflite_int8"] - section["int8"]
    elif classifies(first, False):
        section.update(metric="agreement", agreement=float(np.mean(np.argmax(sim[0], 1) == np.argmax(first, 1))))
    else:
        section.update(metric="sqnr", sqnr_db_vs_tflite_int8=section["outputs"][0]["sqnr_db"])
    return section


def _dequantize(q: np.ndarray, info: TensorInfo) -> np.ndarray:
    if info.scale is None or info.zero_point is None:
        return q.astype(np.float32)
    return (q.astype(np.float32) - np.float32(info.zero_point)) * np.float32(info.scale)


def _compiler(spec: RknnSpec, version: str | None) -> dict[str, Any]:
    return {
        "name": "rknn-toolkit2",
        "version": version,
        "options": {"target_platform": spec.platform, "do_quantization": False, "load": "load_tflite"},
        "venv": str(rknn_setup.venv_dir()),
    }


def check(ctx: Context, name: str, profile: DeviceProfile) -> Check:
    """Build for the profile's platform and simulate; a toolkit failure is this target's problem."""
    spec = profile.rknn
    if spec is None:  # devices.load_device refuses this; a profile built by hand may not
        return Check(problems=[f"profile {profile.name} has runtime rknn but no rknn section"])
    python = rknn_setup.installed()
    if python is None:  # the pipeline refuses this before any work; a caller of check_targets may not
        return Check(problems=[str(rknn_setup.not_installed_error(f"target {name}"))])
    xs, ours, model = _reference(ctx)
    key = f"rknn:{spec.platform}"
    if key not in ctx.shared:
        try:
            ctx.shared[key] = run_toolkit(python, ctx.model, spec.platform, xs)
        except RknnError as e:
            ctx.shared[key] = e
    result = ctx.shared[key]
    if isinstance(result, RknnError):
        out = Check(problems=[f"rknn-toolkit2 could not build or simulate the model: {result}"])
        out.section.update(compiler={**_compiler(spec, None), "error": str(result)}, artifact=None, accuracy=None)
        return out
    out = Check()
    path = f"firmware/{profile.name}/{ARTIFACT}"
    out.section.update(
        compiler={**_compiler(spec, result.toolkit), "seconds": result.seconds},
        npu={"platform": spec.platform, "npu_tops": spec.npu_tops, "memory_bytes": spec.memory_bytes},
        artifact={
            "path": path,
            "bytes": len(result.model),
            "deterministic": False,
            "note": "rknn-toolkit2 writes different bytes on identical runs; compare accuracy, not bytes",
        },
        accuracy=accuracy_section(ctx, xs, ours, result.outputs, model),
    )
    out.section.update(fit(profile, len(result.model), None, out.problems))
    out.files = {path: result.model}
    out.section["firmware"] = [path]
    return out
