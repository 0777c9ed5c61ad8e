"""TensorRT on a Jetson (or any NVIDIA board reached over SSH): the Q/DQ ONNX model built and timed by trtexec.

The convert step writes ``firmware/<target>/model_qdq.onnx`` without a GPU; an engine is specific to the GPU and
TensorRT version it is built with, so it is built on the board itself. Over the same SSH session as the LiteRT
boards (host keys verified, arguments passed word by word, never a shell string made from user input), the
Q/DQ model is copied into a private folder and

    trtexec --onnx=<folder>/model_qdq.onnx --int8 --fp16 --saveEngine=<folder>/model.engine

runs there (the TensorRT the profile names, 10.3 on JetPack 6): ``--int8`` lets TensorRT use the int8 kernels the
Q/DQ pairs ask for (explicit quantization), ``--fp16`` lets the layers left float run in FP16. From TensorRT 11
the flags are ``--stronglyTyped`` instead: its documentation says explicit quantization goes with strong typing
and precision flags should not be given ("Explicit Quantization", TensorRT 11.5 developer guide). trtexec's own
timing is read from its performance summary, which TensorRT 10.3 prints as

    [I] Latency: min = 3.12671 ms, max = 3.15479 ms, mean = 3.14068 ms, median = 3.14062 ms,
        percentile(90%) = 3.14587 ms, percentile(95%) = 3.14771 ms, percentile(99%) = 3.15039 ms

(one line; older releases and a ``--percentile`` argument print fewer percentiles: those missing are null), and
the engine's size with ``stat``.
"Latency" is trtexec's host latency (H2D + GPU compute + D2H) per inference, over its default timing run.
Accuracy on the board would need its ``tensorrt`` Python bindings and the evaluation data; that is not run here,
so it is null with the reason. ``tests/integration/test_tensorrt_board.py`` runs this against a loopback sshd
with a test double of trtexec (the SSH plumbing only: no engine is built there).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from converter.boards.deploy import RemoteSession, SSHTarget, remote_session
from converter.errors import DeployError

TRTEXEC = "/usr/src/tensorrt/bin/trtexec"  # where JetPack puts it; not on the PATH of a fresh JetPack install
ENGINE = "model.engine"
SUMMARY = "=== Performance summary ==="
NO_ACCURACY = (
    "accuracy on the board needs its tensorrt Python bindings and the evaluation data; edgeconv does not run them "
    "there (see targets.<name>.accuracy: the Q/DQ model on onnxruntime, a CPU simulation)"
)
# "[05/13/2025-10:36:46] [I] Latency: min = ..." (the prefixes are optional); "H2D Latency:" is another line.
_LATENCY = re.compile(r"^(?:\[[^\]]*\]\s*)*Latency: (.+)$", re.MULTILINE)
_FIELD = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\)) = ([0-9.eE+-]+) ms")
_VERSION = re.compile(r"\[TensorRT v(\d+)\]")


def parse_summary(text: str) -> dict[str, float | None]:
    """p50/p90/p95/p99, mean, min and max (ms) from trtexec's performance summary; ``ValueError`` without one."""
    if SUMMARY not in text:
        raise ValueError(f"trtexec printed no '{SUMMARY}' section")
    line = _LATENCY.search(text.split(SUMMARY, 1)[1])
    if line is None:
        raise ValueError(f"trtexec's '{SUMMARY}' has no 'Latency:' line")
    values: dict[str, float] = {}
    for name, pct, value in _FIELD.findall(line.group(1)):
        values[f"p{float(pct):g}" if pct else name] = float(value)
    if "median" not in values:
        raise ValueError(f"trtexec's latency line has no median: {line.group(0).strip()!r}")
    return {
        "p50_ms": values["median"],
        "p90_ms": values.get("p90"),
        "p95_ms": values.get("p95"),
        "p99_ms": values.get("p99"),
        "mean_ms": values.get("mean"),
        "min_ms": values.get("min"),
        "max_ms": values.get("max"),
    }


def precision_flags(version: str) -> list[str]:
    """How the engine's precisions are chosen for a Q/DQ model on TensorRT ``version`` (major.minor.patch)."""
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 10
    return ["--stronglyTyped"] if major >= 11 else ["--int8", "--fp16"]


def build_command(trtexec: str, onnx: str, engine: str, version: str = "10.3.0") -> list[str]:
    """trtexec's argument list (each word passed as is to the board: no shell parses it)."""
    return [trtexec, f"--onnx={onnx}", *precision_flags(version), f"--saveEngine={engine}"]


def _engine_bytes(session: RemoteSession, engine: str) -> int:
    out = session.check("engine", session.run("engine", "stat", "-c", "%s", engine)).strip()
    if not out.isdigit():
        raise DeployError("engine", f"{session.target.label}: unexpected answer to stat for {engine}: {out!r}")
    return int(out)


def measure(
    target: SSHTarget, qdq: Path, trtexec: str = TRTEXEC, keep: bool = False, version: str = "10.3.0"
) -> dict[str, Any]:
    """Build ``qdq`` into an engine on the board with trtexec and read its latency and the engine's size.

    ``version``: the board's TensorRT (the profile's ``tensorrt.version``), which picks the precision flags.

    Raises ``DeployError`` naming the step (connect, copy, run, engine) when one fails; a trtexec that fails or
    prints no summary is a ``run`` error quoting its last line.
    """
    if not qdq.is_file():
        raise DeployError("copy", f"{qdq}: no such file; convert the recipe with a TensorRT target first")
    with remote_session(target, keep) as session:
        session.copy([qdq])
        onnx, engine = f"{session.workdir}/{qdq.name}", f"{session.workdir}/{ENGINE}"
        command = build_command(trtexec, onnx, engine, version)
        result = session.run_runtime(*command)
        out = session.check("run", result)
        try:
            latency = parse_summary(out)
        except ValueError as e:
            last = next((ln.strip() for ln in reversed(out.splitlines()) if ln.strip()), "no output")
            raise DeployError("run", f"{target.label}: {trtexec}: {e}; its last line: {last}") from e
        size = _engine_bytes(session, engine)
    printed = _VERSION.search(out)  # "[TensorRT v100300]": the version trtexec says it is
    doc: dict[str, Any] = {
        "where": "device GPU (trtexec)",
        "runtime": "tensorrt",
        "tensorrt": printed.group(1) if printed else None,
        "command": [Path(trtexec).name, *(word.replace(session.workdir + "/", "") for word in command[1:])],
        "latency": latency,
        "engine_bytes": size,
        "accuracy": None,
        "accuracy_reason": NO_ACCURACY,
    }
    if session.retries:
        doc["retries"] = session.retries
    if session.warnings:
        doc["ssh_warnings"] = session.warnings
    return doc
