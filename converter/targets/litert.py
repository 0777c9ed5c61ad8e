"""LiteRT on a CPU (host, Raspberry Pi): it runs every builtin op of a full-integer model."""

from __future__ import annotations

from converter.devices import DeviceProfile
from converter.targets.base import Check, Context


def check(ctx: Context, name: str, profile: DeviceProfile) -> Check:
    """Nothing to compile or fit: latency and accuracy are measured on the device itself."""
    return Check({"flash_bytes": None, "ram_bytes": None})
