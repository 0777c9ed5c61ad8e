"""Arm Ethos-U55/U65/U85: the int8 model compiled by Arm's Vela, figures read from Vela's own outputs.

Vela (``ethos-u-vela``, the ``npu`` extra) takes exactly the full-integer TFLite edgeconv makes and
replaces the ops the NPU runs with one ``ethos-u`` custom op; the rest stay builtin ops for the CPU
beside it (TFLite Micro on a Cortex-M, LiteRT on Linux). Nothing here recomputes a figure: SRAM,
flash, cycles and the latency estimate come from Vela's summary CSV, the per-layer table from its
per-layer CSV, the CPU ops and Vela's reasons from its report on stdout. Vela runs as a child
process with a timeout, so a crash or a hang of the compiler is this target's problem, not the run's.
"""

from __future__ import annotations

import configparser
import csv
import io
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from converter.devices import DeviceProfile, NpuSpec
from converter.targets import firmware
from converter.targets.base import Check, Context, fit
from converter.tflite.ops import TFLM_RESOLVER

TIMEOUT_S = 600
COMPILED_NAME = "model_vela.tflite"
_CPU_WARNING = re.compile(r"^Warning \(supported operators\) operator: (\w+), ofm: '(.*)'$")
_OP_COUNT = re.compile(r"^(CPU|NPU) operators = (\d+) ")


class VelaError(Exception):
    """Vela refused or crashed on the model; the message carries its last words."""


@dataclass
class VelaResult:
    """What Vela said about one compilation."""

    model: bytes
    summary: dict[str, str]
    layers: list[dict[str, str]]
    npu_ops: int
    cpu_ops: int
    cpu_reasons: dict[str, tuple[str, str]] = field(default_factory=dict)  # ofm name -> (op, reason)
    options: list[str] = field(default_factory=list)


def vela_version() -> str | None:
    try:
        return metadata.version("ethos-u-vela")
    except metadata.PackageNotFoundError:
        return None


def _config(npu: NpuSpec, folder: Path) -> tuple[list[str], str]:
    """Vela's config files; a board's own NPU clock becomes a copy of the system config with that clock.

    Vela's shipped ``vela.ini`` is always named, so it never warns that it picked one by itself.
    """
    shipped = Path(str(resources.files("ethosu") / "config_files" / "Arm" / "vela.ini"))
    files = ["--config", str(shipped)]
    if npu.config_file is not None:
        if not npu.config_file.is_file():
            raise VelaError(f"npu.config_file: {npu.config_file} does not exist")
        files += ["--config", str(npu.config_file)]
    if npu.clock_mhz is None:
        return files, npu.system_config
    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # Vela's keys are case-sensitive
    parser.read_string(shipped.read_text())
    if npu.config_file is not None:
        parser.read_string(npu.config_file.read_text())
    base = f"System_Config.{npu.system_config}"
    if base not in parser:
        raise VelaError(f"npu.system_config: Vela has no [{base}] in {shipped}")
    name = f"{npu.system_config}_{npu.clock_mhz}MHz"
    out = configparser.ConfigParser()
    out.optionxform = str  # type: ignore[assignment,method-assign]
    out[f"System_Config.{name}"] = {**parser[base], "core_clock": f"{npu.clock_mhz}e6"}
    path = folder / "board.ini"
    with path.open("w") as f:
        out.write(f)
    return [*files, "--config", str(path)], name


def compile_model(model: bytes, npu: NpuSpec, timeout_s: float = TIMEOUT_S) -> VelaResult:
    """Run Vela on ``model``; ``VelaError`` when it fails, with its message."""
    with tempfile.TemporaryDirectory(prefix="edgeconv-vela-") as tmp:
        folder = Path(tmp)
        (folder / "model.tflite").write_bytes(model)
        config, system = _config(npu, folder)
        options = [
            "--accelerator-config",
            npu.accelerator,
            "--system-config",
            system,
            "--memory-mode",
            npu.memory_mode,
        ]
        command = [sys.executable, "-m", "ethosu.vela", "model.tflite", *options, *config]
        # --verbose-performance writes the per-layer CSV; --show-cpu-operations is left out on purpose:
        # it makes Vela count lowered ops (129 for the demo) instead of the model's own (93).
        command += ["--output-dir", "out", "--verbose-performance"]
        try:
            done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as e:
            raise VelaError(f"Vela did not finish within {timeout_s:g} s") from e
        out = folder / "out"
        compiled = out / "model_vela.tflite"
        if done.returncode != 0 or not compiled.is_file():
            tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise VelaError(f"Vela exited with {done.returncode}: {tail or 'no message'}")
        summary = next(csv.DictReader(io.StringIO(next(out.glob("model_summary_*.csv")).read_text())))
        layers = list(csv.DictReader(io.StringIO((out / "model_per-layer.csv").read_text())))
        counts, reasons = _read_stdout(done.stdout)
        return VelaResult(
            compiled.read_bytes(), summary, layers, counts.get("NPU", 0), counts.get("CPU", 0), reasons, options
        )


def _read_stdout(text: str) -> tuple[dict[str, int], dict[str, tuple[str, str]]]:
    """Vela's operator counts and, per op left to the CPU, its TFLite op name and Vela's reason."""
    counts: dict[str, int] = {}
    reasons: dict[str, tuple[str, str]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if m := _OP_COUNT.match(line):
            counts[m.group(1)] = int(m.group(2))
        elif m := _CPU_WARNING.match(line):
            why = []
            for follow in lines[i + 1 :]:
                if not follow.strip():
                    break
                why.append(follow.strip().removeprefix("Reason: "))
            reasons[m.group(2)] = (m.group(1), " ".join(why))
    return counts, reasons


def _kib(summary: dict[str, str], key: str) -> int | None:
    value = summary.get(key)
    return round(float(value) * 1024) if value not in (None, "") else None


def _layers(result: VelaResult) -> list[dict[str, Any]]:
    return [
        {
            "op": row["Original Operator"],
            "npu_op": row["NNG Operator"],
            "runs_on": row["Target"],
            "cycles": int(float(row["Op Cycles"])),
            "macs": int(float(row["MAC Count"])),
            "name": row["Name"],
        }
        for row in result.layers
    ]


def section_of(result: VelaResult, npu: NpuSpec, ctx: Context, profile: DeviceProfile) -> Check:
    """The report section, the problems and the firmware files for one compiled model."""
    summary = result.summary
    builtin = {name: op.name for op in ctx.ops for name in op.output_names}
    cpu = sorted(
        {
            (builtin.get(row["Name"]) or result.cpu_reasons.get(row["Name"], (row["Original Operator"], ""))[0])
            for row in result.layers
            if row["Target"] == "CPU"
        }
    )
    reasons = {op: why for op, why in result.cpu_reasons.values() if op in cpu}
    check = Check()
    cpu_runtime = "TFLite Micro" if profile.kind == "mcu" else "LiteRT"
    if profile.kind == "mcu":
        check.problems += [
            f"op {op} is left to the CPU by Vela and has no TFLite Micro kernel"
            for op in sorted(set(cpu) - set(TFLM_RESOLVER))
        ]
    total = result.npu_ops + result.cpu_ops
    cycles = int(float(summary["cycles_total"]))
    seconds = float(summary["inference_time"])
    sram = _kib(summary, "sram_memory_used")
    check.section.update(
        compiler={
            "name": "vela",
            "version": vela_version(),
            "options": result.options,
            "config_file": npu.config_file.name if npu.config_file else None,
        },
        npu={
            "accelerator": npu.accelerator,
            "system_config": summary.get("system_config"),
            "memory_mode": summary.get("memory_mode"),
            "clock_mhz": float(summary["core_clock"]) / 1e6,
        },
        npu_ops=result.npu_ops,
        cpu_op_count=result.cpu_ops,
        cpu_ops=cpu,
        cpu_op_reasons=reasons,
        cpu_runtime=cpu_runtime,
        npu_ops_fraction=result.npu_ops / total if total else None,
        sram_bytes=sram,
        vela_flash_bytes=_kib(summary, "off_chip_flash_memory_used"),
        vela_dram_bytes=_kib(summary, "dram_memory_used"),
        cycles=cycles,
        latency_estimate_ms=seconds * 1e3,
        latency_estimate={
            "latency_ms": seconds * 1e3,
            "basis": f"Vela's performance model: {cycles:,} NPU cycles at {float(summary['core_clock']) / 1e6:g} MHz"
            + (f"; {len(cpu)} CPU op(s) not included" if cpu else ""),
            "kind": "estimate",
        },
        layers=_layers(result),
        compiled_model={"path": f"firmware/{profile.name}/{COMPILED_NAME}", "bytes": len(result.model)},
    )
    dram = _kib(summary, "dram_memory_used") or 0
    # RAM the NPU needs: its SRAM plus, in the Dedicated_Sram modes, the DRAM holding arena and weights.
    check.section.update(fit(profile, len(result.model), None if sram is None else sram + dram, check.problems))
    folder = f"firmware/{profile.name}"
    check.files = {f"{folder}/{COMPILED_NAME}": result.model}
    if profile.kind == "mcu":  # firmware sources: the model as a C array, a resolver with the Ethos-U op
        arena_note = f"Vela's SRAM figure for this memory mode ({npu.memory_mode})"
        files = firmware.model_data(result.model, ctx.recipe.name, sram, arena_note=arena_note)
        cpu_ops = [op for op in ctx.ops if op.name in cpu]
        files["op_resolver.h"] = firmware.op_resolver(cpu_ops, extra_methods=("AddEthosU",))
        check.files.update({f"{folder}/{k}": v.encode() for k, v in files.items()})
    check.section["firmware"] = sorted(check.files)
    return check


def check(ctx: Context, name: str, profile: DeviceProfile) -> Check:
    """Compile for the profile's NPU; a compiler failure is this target's problem."""
    npu = profile.npu
    if npu is None:  # devices.load_device refuses this; a profile built by hand may not
        return Check(problems=[f"profile {profile.name} has runtime ethos-u but no npu section"])
    key = f"vela:{npu}"
    if key not in ctx.shared:
        try:
            ctx.shared[key] = compile_model(ctx.model, npu)
        except VelaError as e:
            ctx.shared[key] = e
    result = ctx.shared[key]
    if isinstance(result, VelaError):
        out = Check(problems=[f"Vela could not compile the model: {result}"])
        out.section.update(compiler={"name": "vela", "version": vela_version(), "error": str(result)})
        return out
    return section_of(result, npu, ctx, profile)
