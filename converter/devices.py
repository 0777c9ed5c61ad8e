"""Device profiles: data in ``devices/*.yaml``, validated by the same strict loader as recipes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import RecipeError
from .schema import Where, build, suggest
from .yamlio import load_yaml_file

NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]*"


@dataclass(frozen=True)
class DeviceProfile:
    """Where a model will run: the runtime it uses and the limits it must fit."""

    name: str = field(metadata={"doc": "Profile name; equals the file name without .yaml", "pattern": NAME_PATTERN})
    description: str = field(metadata={"doc": "One line for humans"})
    runtime: Literal["litert", "tflm", "edgetpu"] = field(
        metadata={"doc": "Interpreter on the device: LiteRT (TFLite), TFLite Micro, or LiteRT + Edge TPU delegate"}
    )
    kind: Literal["host", "ssh", "mcu"] = field(
        default="ssh",
        metadata={"doc": "host: this machine; ssh: a Linux board reached over SSH; mcu: a microcontroller"},
    )
    threads: int | None = field(default=None, metadata={"doc": "Interpreter threads (null: runtime default)", "min": 1})


def devices_dir() -> Path:
    """The profile folder: ``$EDGECONV_DEVICES`` or ``devices/`` next to the package."""
    env = os.environ.get("EDGECONV_DEVICES")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "devices"


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
    return profile
