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

from .bench import BenchRequest, run_local, run_remote, write_eval_npz
from .deploy import SSHTarget
from .devices import DeviceProfile
from .recipe import BenchmarkSpec, TargetSpec
from .runtime.preprocess import Preprocess

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
    return record


def ssh_target(spec: TargetSpec, profile: DeviceProfile) -> SSHTarget:
    assert spec.host is not None  # noqa: S101 - callers check
    return SSHTarget(
        destination=spec.host,
        port=spec.port,
        identity=spec.identity,
        known_hosts=spec.known_hosts,
        options=spec.ssh_options,
        python=spec.python or profile.python,
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
) -> TargetResult:
    """Measure one target; raises ``DeployError``/``EvaluationError`` when a measurement fails."""
    if profile.runtime == "ethos-u":
        return TargetResult(
            None,
            reason=f"{profile.name} runs the Vela-compiled model with the Ethos-U driver, which is not on this "
            f"machine; see targets.{profile.name}.latency_estimate (Vela's performance model, an estimate)",
        )
    if profile.runtime == "rknn":
        return TargetResult(
            None,
            reason=f"{profile.name} runs the .rknn with Rockchip's RKNN runtime on the board, which is not measured "
            f"from here; see targets.{profile.name}.accuracy (rknn-toolkit2's simulator on this machine)",
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
            reason=f"{profile.name} runs only models compiled by edgetpu_compiler, "
            "which is not part of this version's pipeline",
        )
    if profile.kind == "host":
        log.info("benchmark  host (%s, threads %s)", profile.delegate, profile.threads or "all")
        result = run_local(request_for(profile, bench, models["int8"], models["float"], label="host"))
        return TargetResult(latency_record(result, "host"))
    if not spec.host:
        return TargetResult(
            None,
            reason=f"no SSH host for {profile.name}: set targets[].host in the recipe "
            "or run edgeconv deploy --host user@device",
        )
    with tempfile.TemporaryDirectory(prefix="edgeconv-eval-") as tmp:
        data = write_eval_npz(Path(tmp) / "eval.npz", *eval_data) if eval_data is not None else None
        request = request_for(
            profile, bench, models["int8"], models["float"], data=data, preprocess=preprocess, label=profile.name
        )
        log.info("deploy     %s on %s", profile.name, spec.host)
        result = run_remote(request, ssh_target(spec, profile), keep=keep)
    return TargetResult(latency_record(result, "device"), accuracy=result.get("accuracy"))
