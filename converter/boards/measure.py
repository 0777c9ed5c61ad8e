"""The measurement step: latency (and device accuracy) on every target of a recipe.

Host targets run the runtime bundle locally; SSH targets with a host run it on the device;
everything else is reported as not measured, with the reason.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converter.boards import latency_cache
from converter.boards.bench import BenchRequest, run_local, run_remote, write_eval_npz
from converter.boards.deploy import DEFAULT_TIMEOUT_S, SSHTarget
from converter.devices import DeviceProfile
from converter.recipe import BenchmarkSpec, TargetSpec
from converter.runtime.preprocess import Preprocess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetResult:
    """What was measured on one target; ``reason`` says why when nothing was."""

    latency: dict[str, Any] | None
    accuracy: dict[str, Any] | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def latency_record(result: dict[str, Any], where: str) -> dict[str, Any]:
    """report.json's ``latency.<target>`` from a runtime result: int8 and float side by side."""
    models = result["models"]
    record: dict[str, Any] = {
        "where": where,
        "machine": result["machine"],
        "int8": models["model"]["latency"],
        "float": models["float"]["latency"] if "float" in models else None,
        "peak_rss_mb": result.get("peak_rss_mb"),
    }
    if record["float"]:
        record["int8_speedup_p50"] = record["float"]["p50_ms"] / record["int8"]["p50_ms"]
    for key in ("retries", "ssh_warnings"):  # a lost connection or a weakened host-key check stays on record
        if result.get(key):
            record[key] = result[key]
    return record


def host_latency(
    profile: DeviceProfile, bench: BenchmarkSpec, models: dict[str, Path], store: bool = True
) -> dict[str, Any]:
    """report.json's ``latency.host``: measured now, or with ``benchmark.cache`` the figure this machine gave before
    for the same bytes and settings (``latency_cache``); ``from_cache`` and ``measured_at`` say which. A figure
    measured now is stored either way, so ``--remeasure`` replaces the one it did not take; ``store`` false (the
    recipe's ``calibration.cache: false``, no cache at all) neither reads nor writes one."""
    request = request_for(profile, bench, models["int8"], models["float"], label="host")
    key = latency_cache.entry(request) if store else None
    found = latency_cache.get(key) if key and bench.cache else None
    if found is not None:
        log.info(
            "benchmark  host: from the latency cache (measured %s on this machine; --remeasure measures again)",
            found["measured_at"],
        )
        return {**latency_record(found, "host"), "from_cache": True, "measured_at": found["measured_at"]}
    log.info("benchmark  host (%s, threads %s)", profile.delegate, profile.threads or "all")
    result = latency_cache.stamped(run_local(request))
    if key:
        latency_cache.put(key, result)  # replaces the figure --remeasure did not take
    return {**latency_record(result, "host"), "from_cache": False, "measured_at": result["measured_at"]}


def ssh_target(
    spec: TargetSpec, profile: DeviceProfile, *, name: str | None = None, insecure_options: tuple[str, ...] = ()
) -> SSHTarget:
    """``insecure_options``: --ssh-option values that weaken host-key checking, allowed by --insecure-host-key.

    They never enter a ``TargetSpec``, which refuses them: a recipe target may not carry them.
    """
    assert spec.host is not None  # noqa: S101 - callers check
    return SSHTarget(
        destination=spec.host,
        port=spec.port,
        identity=spec.identity,
        known_hosts=spec.known_hosts,
        options=spec.ssh_options + insecure_options,
        python=spec.python or profile.python,
        timeout_s=spec.timeout_s or DEFAULT_TIMEOUT_S,
        name=name or spec.device,
        insecure_host_key=bool(insecure_options),
    )


def request_for(
    profile: DeviceProfile, bench: BenchmarkSpec, model: Path, float_model: Path | None, **kw: Any
) -> BenchRequest:
    return BenchRequest(
        model=model,
        float_model=float_model,
        threads=profile.threads,
        delegate=profile.delegate,
        warmup=bench.warmup,
        runs=bench.runs,
        min_seconds=bench.min_seconds,
        max_runs=bench.max_runs,
        top_k=bench.top_k,
        **kw,
    )


def measure_target(
    spec: TargetSpec,
    profile: DeviceProfile,
    bench: BenchmarkSpec,
    models: dict[str, Path],
    eval_data: tuple[np.ndarray, np.ndarray | None] | None,
    preprocess: Preprocess,
    keep: bool = False,
    *,
    board: str | None = None,
    insecure_options: tuple[str, ...] = (),
    trtexec: str | None = None,
    store_latency: bool = True,
) -> TargetResult:
    """Measure one target; raises ``DeployError``/``EvaluationError`` when a measurement fails.

    ``store_latency`` false keeps the host's latency out of the latency cache (a run with caching off).
    """
    if profile.runtime == "ethos-u":
        return TargetResult(
            None,
            reason=f"{profile.name} runs the Vela-compiled model with the Ethos-U driver, which is not on this "
            f"machine; see targets.{profile.name}.latency_estimate (Vela's performance model, an estimate)",
        )
    if profile.runtime == "tensorrt" and spec.host and "qdq" in models:
        return _tensorrt_on_board(spec, profile, models["qdq"], keep, board, insecure_options, trtexec)
    if profile.runtime == "tensorrt":
        return TargetResult(
            None,
            reason=f"{profile.name} runs a TensorRT engine built from firmware/{profile.name}/model_qdq.onnx on "
            f"its NVIDIA GPU, which convert does not reach: run edgeconv deploy --host user@board (or set "
            f"targets[].host) to build and time it there with trtexec; "
            f"see targets.{profile.name}.accuracy (the Q/DQ model on onnxruntime, a CPU simulation)",
        )
    if profile.runtime == "rknn" and (not spec.host or "rknn" not in models):
        return TargetResult(
            None,
            reason=f"{profile.name} runs the .rknn with Rockchip's RKNN runtime on the board: set targets[].host "
            f"(or run edgeconv deploy --host) to measure it there with rknn-toolkit-lite2; "
            f"see targets.{profile.name}.accuracy (rknn-toolkit2's simulator on this machine)",
        )
    if profile.kind == "mcu":
        return TargetResult(
            None,
            reason=f"a microcontroller is not measured from here; see "
            f"targets.{profile.name}.cost.latency_estimate (an estimate)",
        )
    if profile.needs_compiled_model:
        return TargetResult(
            None,
            reason=f"{profile.name} runs only models compiled by edgetpu_compiler, which convert runs when it is on "
            "PATH (model_int8_edgetpu.tflite); convert and deploy do not measure on an Edge TPU: run edgeconv bench "
            "--model model_int8_edgetpu.tflite --delegate edgetpu --host USER@HOST; the op mapping is in "
            f"targets.{profile.name}.edgetpu (a static prediction, labelled so, without the compiler)",
        )
    if profile.kind == "host":
        return TargetResult(host_latency(profile, bench, models, store_latency))
    if not spec.host:
        return TargetResult(
            None,
            reason=f"no SSH host for {profile.name}: set targets[].host in the recipe "
            "or run edgeconv deploy --host user@device",
        )
    with tempfile.TemporaryDirectory(prefix="edgeconv-eval-") as tmp:
        data = write_eval_npz(Path(tmp) / "eval.npz", *eval_data) if eval_data is not None else None
        request = request_for(
            profile,
            bench,
            models["int8"],
            models["float"],
            npu_model=models.get("rknn") if profile.runtime == "rknn" else None,
            data=data,
            preprocess=preprocess,
            label=board or profile.name,
        )
        log.info("deploy     %s on %s", board or profile.name, spec.host)
        target = ssh_target(spec, profile, name=board, insecure_options=insecure_options)
        result = run_remote(request, target, keep=keep)
    if request.npu_model is not None:
        return npu_result(profile, spec, result)
    return TargetResult(latency_record(result, "device"), accuracy=result.get("accuracy"))


def _tensorrt_on_board(
    spec: TargetSpec,
    profile: DeviceProfile,
    qdq: Path,
    keep: bool,
    board: str | None,
    insecure: tuple[str, ...],
    program: str | None,
) -> TargetResult:
    """The Q/DQ model built into an engine and timed by trtexec on the board (``boards.trtexec``).

    ``program``: trtexec's path on the board when not the profile's (``deploy --trtexec``).
    """
    from converter.boards import trtexec

    log.info("deploy     %s on %s (trtexec)", board or profile.name, spec.host)
    target = ssh_target(spec, profile, name=board, insecure_options=insecure)
    assert profile.tensorrt is not None  # noqa: S101 - devices.load_device requires it for runtime tensorrt
    result = trtexec.measure(
        target, qdq, program or profile.tensorrt.trtexec, keep=keep, version=profile.tensorrt.version
    )
    record: dict[str, Any] = {
        "where": result["where"],
        "machine": {"cpu": profile.cpu, "host": spec.host, "tensorrt": result["tensorrt"]},
        # runs_on() and the renderers read delegate/threads; trtexec says nothing about its run count or spread
        "int8": {
            **result["latency"],
            "delegate": "TensorRT engine (trtexec)",
            "threads": None,
            "runs": None,
            "std_ms": None,
            "source": "trtexec performance summary",
        },
        "float": None,
        "peak_rss_mb": None,
        "engine_bytes": result["engine_bytes"],
        "command": result["command"],
    }
    for key in ("retries", "ssh_warnings"):
        if result.get(key):
            record[key] = result[key]
    gpu = {"engine": "built on the board", "engine_bytes": result["engine_bytes"], "latency_ms": result["latency"]}
    return TargetResult(record, extra={"gpu": {**gpu, "reason": None, "accuracy_reason": result["accuracy_reason"]}})


def npu_result(profile: DeviceProfile, spec: TargetSpec, result: dict[str, Any]) -> TargetResult:
    """An RKNN board: the NPU's figures are the target's; the TFLite int8 model on its CPU is kept beside them."""
    cpu = latency_record(result, "device")
    npu = result.get("npu") or {}
    if not npu.get("measured"):
        cpu_p50 = cpu["int8"]["p50_ms"]
        why = npu.get("reason") or "the runtime gave no NPU result"
        return TargetResult(
            None,
            reason=f"the .rknn was not measured on {spec.host}: {why} (the TFLite int8 model ran on its CPU "
            f"instead: p50 {cpu_p50:.3g} ms, in targets.{profile.name}.device_cpu)",
            extra={"device_cpu": {"latency": cpu, "accuracy": result.get("accuracy")}},
        )
    record = {**cpu, "where": "device NPU", "runtime": npu["runtime"], "int8": npu["latency"], "cpu_int8": cpu["int8"]}
    if record["float"]:
        record["int8_speedup_p50"] = record["float"]["p50_ms"] / record["int8"]["p50_ms"]
    details = {k: npu.get(k) for k in ("runtime", "version", "input", "vs_tflite_int8")}
    return TargetResult(
        record,
        accuracy=npu.get("accuracy"),
        extra={"accuracy": npu.get("accuracy"), "npu_runtime": details, "device_cpu": {"latency": cpu}},
    )


def merge_measured(section: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """A target's checks with what was measured on it; a device accuracy keeps the simulator's beside it."""
    merged = {**section, **measured}
    if measured.get("accuracy") is not None and section.get("accuracy") is not None:
        merged["simulator_accuracy"] = section["accuracy"]
    return merged
