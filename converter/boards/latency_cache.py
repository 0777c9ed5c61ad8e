"""Host latency kept per machine: the same model bytes, settings and machine give the figure measured before.

A latency is a measurement of a machine, not a function of the model alone, so the key holds what makes it
that machine's: its name, CPU model, cores this process may use, OS, Python and interpreter version (and a
digest of ``/etc/machine-id`` where there is one, so two containers named alike differ), beside the int8 and
float models' bytes and every benchmark setting. A re-run of an unchanged recipe on the same machine then
skips the 1-2 s of timed runs; the report says the figure came from here and when it was measured, and
``benchmark.cache: false`` (``edgeconv convert --remeasure``) measures again, and the new figure replaces it.
Only host runs are kept: a board over SSH may have changed since (another OS image, another clock), and
deploy always measures.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from converter.boards.bench import BenchRequest
from converter.cache import Store, digest
from converter.runtime.machine import machine_info

log = logging.getLogger(__name__)

VERSION = "latency-v1"
STORE = Store("latency", ".latency", "host latency")  # JSON; the sidecar is <key>.json
MACHINE_ID = Path("/etc/machine-id")


def machine_identity() -> dict[str, Any]:
    """What makes a latency this machine's (``machine_info`` and the cores this process may run on)."""
    identity = dict(machine_info())
    try:
        identity["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        identity["usable_cpus"] = os.cpu_count()
    try:
        identity["machine_id"] = hashlib.sha256(MACHINE_ID.read_bytes().strip()).hexdigest()[:16]
    except OSError:
        identity["machine_id"] = None
    return identity


def entry(request: BenchRequest) -> str:
    """The key of ``request`` on this machine: the models' bytes, the settings and the machine's identity."""
    settings = {
        "threads": request.threads,
        "delegate": request.delegate,
        "warmup": request.warmup,
        "runs": request.runs,
        "min_seconds": request.min_seconds,
        "max_runs": request.max_runs,
        "label": request.label,
    }
    float_bytes = request.float_model.read_bytes() if request.float_model is not None else None
    return digest([VERSION, settings, machine_identity()], request.model.read_bytes(), float_bytes)


def get(key: str) -> dict[str, Any] | None:
    """The runtime's result stored under ``key`` (with ``measured_at``), or None."""

    def decode(content: bytes) -> dict[str, Any]:
        result = json.loads(content)
        if not isinstance(result, dict) or "models" not in result or "measured_at" not in result:
            raise ValueError("not a latency result")
        return result

    return STORE.get_as(key, decode)


def stamped(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the time it was measured (UTC, to the second): the moment it was taken, now."""
    return {**result, "measured_at": datetime.now(UTC).isoformat(timespec="seconds")}


def put(key: str, result: dict[str, Any]) -> None:
    """Store a ``stamped`` result under ``key``."""
    STORE.put(key, json.dumps(result, sort_keys=True).encode())
