"""``edgeconv devices``: the device profiles (``devices/*.yaml``) as a table, or as JSON for machines.

Every figure comes from the profile as ``converter.devices`` validates it; a limit the profile does not
state is shown as "—" (``null`` in JSON), never filled in.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from converter.cli.common import EXIT_OK, debug_option, guarded
from converter.devices import DeviceProfile, available_devices, devices_dir, load_device

UNKNOWN = "—"

# What the target check does on each runtime (``converter/targets/<runtime>.py``), in a few words.
RUNTIME_CHECKS = {
    "litert": "every builtin op runs (float fallbacks reported); accuracy, latency",
    "tflm": "TFLite Micro op coverage, tensor arena, TFLM vs LiteRT outputs",
    "edgetpu": "Edge TPU op mapping (predicted; edgetpu_compiler if installed)",
    "ethos-u": "Vela compiles it: NPU and CPU ops, SRAM",
    "rknn": "rknn-toolkit2 builds the .rknn; accuracy on its simulator",
}
# Where ``targets.base.fit`` compares a figure with the profile's limit: flash on every backend but LiteRT,
# RAM only where an arena is known (TFLite Micro's, Vela's SRAM + DRAM).
FLASH_CHECKED = frozenset({"tflm", "edgetpu", "ethos-u", "rknn"})
RAM_CHECKED = frozenset({"tflm", "ethos-u"})


def size_text(value: int | None) -> str:
    """Bytes as written in the profile: exact KiB/MiB where they divide evenly, else bytes; "—" when unknown."""
    if value is None:
        return UNKNOWN
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size} {unit}"
    return f"{value:,} B"


def memory(profile: DeviceProfile) -> tuple[int | None, int | None]:
    """(flash, RAM) in bytes where the profile states them; an accelerator's shared memory counts as RAM."""
    return profile.flash_bytes, profile.ram_bytes if profile.ram_bytes is not None else shared_memory(profile)


def shared_memory(profile: DeviceProfile) -> int | None:
    """The ``memory_bytes`` of the profile's accelerator section (``rknn:`` and the like), when it states one."""
    for f in dataclasses.fields(profile):
        section = getattr(profile, f.name)
        value = getattr(section, "memory_bytes", None) if dataclasses.is_dataclass(section) else None
        if isinstance(value, int):
            return value
    return None


def budgets(profile: DeviceProfile) -> dict[str, float | str]:
    """The profile's default budgets that are set (a recipe's win)."""
    return dict(profile.budgets.items())


def checks(profile: DeviceProfile) -> str:
    """What a conversion checks for this profile: the runtime's check, the memory fit, the default budgets."""
    # A runtime added without a line here still lists: its backend's name stands for its checks.
    parts = [RUNTIME_CHECKS.get(profile.runtime, f"the {profile.runtime} backend's checks")]
    fits = [
        name
        for name, limit, checked in (
            ("flash", profile.flash_bytes, FLASH_CHECKED),
            ("RAM", profile.ram_bytes, RAM_CHECKED),
        )
        if limit is not None and profile.runtime in checked
    ]
    if fits:
        parts.append("fits " + " and ".join(fits))
    gates = budgets(profile)
    if gates:
        parts.append("budgets " + ", ".join(f"{k} {_number(v)}" for k, v in gates.items()))
    return "; ".join(parts)


def _number(value: float | str) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _json_ready(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def row(profile: DeviceProfile) -> dict[str, Any]:
    """One profile for ``--json``: the table's columns as numbers, and the whole validated profile."""
    flash, ram = memory(profile)
    return {
        "name": profile.name,
        "description": profile.description,
        "runtime": profile.runtime,
        "kind": profile.kind,
        "flash_bytes": flash,
        "ram_bytes": ram,
        "checks": checks(profile),
        "budgets": budgets(profile),
        "profile": _json_ready(dataclasses.asdict(profile)),
    }


def table(profiles: list[DeviceProfile]) -> str:
    """The profiles as aligned columns, one line each."""
    rows = [["name", "runtime", "kind", "flash", "RAM", "what is checked"]]
    for p in profiles:
        flash, ram = memory(p)
        rows.append([p.name, p.runtime, p.kind, size_text(flash), size_text(ram), checks(p)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]]) for r in rows]
    return "\n".join(lines)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON (every field of each).")
@debug_option
def devices(as_json: bool, debug: bool) -> None:
    """List the device profiles (devices/*.yaml) a recipe can target.

    One line each: runtime, kind (host, ssh board, mcu), flash and RAM as the profile states them ("—" where
    it states none: nothing is assumed), and what a conversion checks there. --json gives every field.
    """

    def run() -> int:
        profiles = [load_device(name) for name in available_devices()]
        if as_json:
            click.echo(json.dumps([row(p) for p in profiles], indent=2, ensure_ascii=False))
        elif not profiles:
            click.echo(f"no device profiles in {devices_dir()}")
        else:
            click.echo(table(profiles))
            click.echo(f"\n{len(profiles)} profiles in {devices_dir()}; name them under targets: in a recipe")
        return EXIT_OK

    guarded(debug, run)
