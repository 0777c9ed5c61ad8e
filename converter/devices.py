"""Device profiles: data in ``devices/*.yaml``, validated by the same strict loader as recipes."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from converter.errors import RecipeError
from converter.reports.budgets import Budgets
from converter.schema import Where, build, suggest
from converter.yamlio import load_yaml_file

NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]*"


VELA_ACCELERATORS = Literal[
    "ethos-u55-32",
    "ethos-u55-64",
    "ethos-u55-128",
    "ethos-u55-256",
    "ethos-u65-256",
    "ethos-u65-512",
    "ethos-u85-128",
    "ethos-u85-256",
    "ethos-u85-512",
    "ethos-u85-1024",
    "ethos-u85-2048",
]


@dataclass(frozen=True)
class NpuSpec:
    """An Arm Ethos-U NPU as Vela models it: its configuration, system config and memory mode."""

    accelerator: VELA_ACCELERATORS = field(metadata={"doc": "Vela's --accelerator-config (NPU and MACs/cycle)"})
    system_config: str = field(
        metadata={"doc": "A [System_Config.*] of Vela's vela.ini: clocks, AXI ports and memory latencies"}
    )
    memory_mode: str = field(
        metadata={"doc": "A [Memory_Mode.*] of Vela's vela.ini: where the arena, constants and cache live"}
    )
    clock_mhz: int | None = field(
        default=None,
        metadata={"doc": "NPU clock when the board's differs from the system config's core_clock", "min": 1},
    )
    config_file: Path | None = field(
        default=None,
        metadata={
            "doc": "The board vendor's Vela .ini (relative to the profile) when system_config/memory_mode are "
            "its sections rather than Vela's shipped ones"
        },
    )
    source: str | None = field(default=None, metadata={"doc": "Where the figures come from (datasheet, page)"})


@dataclass(frozen=True)
class RknnSpec:
    """A Rockchip NPU as rknn-toolkit2 builds for it; the figures are for humans and reports."""

    platform: str = field(
        metadata={
            "doc": "rknn-toolkit2's target_platform (2.5.0: rk3588, rk3576, rk3566, rk3568, rk3562, rv1103, rv1106, "
            "rv1103b, rv1106b, rv1126b, rk2118); the toolkit itself judges it, so a platform it refuses is the "
            "target's problem"
        }
    )
    npu_tops: float | None = field(
        default=None, metadata={"doc": "NPU peak INT8 TOPS from the vendor (null: not verified)", "min": 0}
    )
    memory_bytes: int | None = field(
        default=None, metadata={"doc": "DRAM the NPU shares with the CPU (null: depends on the board)", "min": 1}
    )
    source: str | None = field(default=None, metadata={"doc": "Where the figures come from"})


@dataclass(frozen=True)
class TensorRTSpec:
    """An NVIDIA GPU as TensorRT builds for it; the figures are for humans and reports."""

    version: str = field(
        metadata={
            "doc": "TensorRT version the device runs (major.minor.patch, e.g. 10.3.0); it numbers the calibration "
            "cache's header (TRT-<n>-EntropyCalibration2)"
        }
    )
    int8: bool = field(
        default=True,
        metadata={"doc": "TensorRT has INT8 kernels for this GPU (compute capability 6.1 or newer; Maxwell has none)"},
    )
    jetpack: str | None = field(default=None, metadata={"doc": "JetPack release (Jetson modules), for humans"})
    trtexec: str = field(
        default="/usr/src/tensorrt/bin/trtexec",
        metadata={
            "doc": "trtexec on the device, which deploy and bench run over SSH to build and time the engine "
            "(JetPack puts it here, off the PATH); bench --trtexec overrides it"
        },
    )
    gpu: str | None = field(default=None, metadata={"doc": "GPU, for humans and reports"})
    compute_capability: str | None = field(default=None, metadata={"doc": "CUDA compute capability (8.7: Orin)"})
    memory_bytes: int | None = field(
        default=None, metadata={"doc": "Memory the GPU shares with the CPU (null: depends on the machine)", "min": 1}
    )
    ai_tops: float | None = field(
        default=None,
        metadata={
            "doc": "NVIDIA's headline 'AI performance' in TOPS (sparse INT8, GPU and DLAs together; not what one "
            "dense engine reaches; null: not verified)",
            "min": 0,
        },
    )
    source: str | None = field(default=None, metadata={"doc": "Where the figures come from"})


@dataclass(frozen=True)
class DeviceProfile:
    """Where a model will run: the runtime it uses and the limits it must fit."""

    name: str = field(metadata={"doc": "Profile name; equals the file name without .yaml", "pattern": NAME_PATTERN})
    description: str = field(metadata={"doc": "One line for humans"})
    runtime: Literal["litert", "tflm", "edgetpu", "ethos-u", "rknn", "tensorrt"] = field(
        metadata={
            "doc": "Interpreter on the device: LiteRT (TFLite), TFLite Micro, LiteRT + Edge TPU delegate, an "
            "Arm Ethos-U NPU (a Vela-compiled model; the NPU's driver runs it, CPU ops run in TFLite Micro), a "
            "Rockchip NPU (a .rknn built by rknn-toolkit2, run by the RKNN runtime), or an NVIDIA GPU (TensorRT "
            "builds its engine from the Q/DQ ONNX model edgeconv writes)"
        }
    )
    kind: Literal["host", "ssh", "mcu"] = field(
        default="ssh",
        metadata={"doc": "host: this machine; ssh: a Linux board reached over SSH; mcu: a microcontroller"},
    )
    threads: int | None = field(default=None, metadata={"doc": "Interpreter threads (null: every core)", "min": 1})
    delegate: Literal["xnnpack", "none", "edgetpu"] = field(
        default="xnnpack", metadata={"doc": "xnnpack (LiteRT's CPU default), none (builtin kernels), edgetpu"}
    )
    cpu: str | None = field(default=None, metadata={"doc": "CPU, for humans and reports"})
    cores: int | None = field(default=None, metadata={"doc": "CPU cores", "min": 1})
    clock_mhz: int | None = field(default=None, metadata={"doc": "CPU clock in MHz", "min": 1})
    python: str = field(default="python3", metadata={"doc": "Python on the device (ssh targets)"})
    needs_compiled_model: bool = field(
        default=False, metadata={"doc": "Runs only a model compiled for it (Edge TPU: edgetpu_compiler output)"}
    )
    flash_bytes: int | None = field(default=None, metadata={"doc": "Flash for code + model (MCU)", "min": 1})
    ram_bytes: int | None = field(
        default=None, metadata={"doc": "RAM for the tensor arena and the rest (MCU)", "min": 1}
    )
    runtime_flash_bytes: int = field(
        default=0,
        metadata={"doc": "Flash the runtime and application take besides the model (stated estimate)", "min": 0},
    )
    runtime_ram_bytes: int = field(
        default=0,
        metadata={"doc": "RAM the runtime and application take besides the arena (stated estimate)", "min": 0},
    )
    supports_int16: bool = field(default=True, metadata={"doc": "Has 16x8 (int16 activation) kernels"})
    per_channel_fully_connected: bool = field(
        default=True, metadata={"doc": "Its kernels handle per-channel FULLY_CONNECTED weights correctly"}
    )
    float_io: bool = field(default=True, metadata={"doc": "Accepts float model inputs/outputs"})
    cycles_per_mac: float | None = field(
        default=None, metadata={"doc": "Cycles per int8 multiply-accumulate, for the latency estimate", "min": 0}
    )
    npu: NpuSpec | None = field(default=None, metadata={"doc": "The Ethos-U NPU (runtime: ethos-u)"})
    rknn: RknnSpec | None = field(default=None, metadata={"doc": "The Rockchip NPU (runtime: rknn)"})
    tensorrt: TensorRTSpec | None = field(default=None, metadata={"doc": "The NVIDIA GPU (runtime: tensorrt)"})
    budgets: Budgets = field(default_factory=Budgets, metadata={"doc": "Default budgets; a recipe's win"})


def devices_dir() -> Path:
    """The profile folder: ``$EDGECONV_DEVICES``, else ``devices/`` beside the package (a source checkout or
    an editable install), else ``<prefix>/share/edgeconv/devices`` where a wheel installs the same files."""
    env = os.environ.get("EDGECONV_DEVICES")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[1] / "devices"
    if beside.is_dir():
        return beside
    return Path(sys.prefix) / "share" / "edgeconv" / "devices"


def available_devices(folder: Path | None = None) -> list[str]:
    """Names of the shipped profiles, sorted."""
    folder = folder or devices_dir()
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_device(name: str, folder: Path | None = None) -> DeviceProfile:
    """Load and validate ``devices/<name>.yaml``."""
    folder = folder or devices_dir()
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = available_devices(folder)
        raise RecipeError(
            f"unknown device '{name}'{suggest(name, known)}; profiles in {folder}: {', '.join(known) or 'none'}"
        )
    raw = load_yaml_file(path, "device profile")
    profile: DeviceProfile = build(DeviceProfile, raw, Where(str(path), path.parent))
    if profile.name != name:
        raise RecipeError(f"{path}: name: '{profile.name}' must equal the file name '{name}'")
    if (profile.runtime == "ethos-u") != (profile.npu is not None):
        raise RecipeError(f"{path}: npu: give an npu section exactly when runtime is ethos-u")
    if (profile.runtime == "rknn") != (profile.rknn is not None):
        raise RecipeError(f"{path}: rknn: give an rknn section exactly when runtime is rknn")
    if (profile.runtime == "tensorrt") != (profile.tensorrt is not None):
        raise RecipeError(f"{path}: tensorrt: give a tensorrt section exactly when runtime is tensorrt")
    return profile
