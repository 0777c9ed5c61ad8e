"""The recipe: one YAML file that drives the pipeline, validated before any work starts."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from converter.boards.ssh_names import EXAMPLES, destination_problem
from converter.boards.ssh_options import ssh_option_problem
from converter.devices import available_devices, devices_dir, load_device
from converter.errors import RecipeError, UserInputError
from converter.reports.budgets import Budgets
from converter.runtime.preprocess import Preprocess
from converter.schema import Where, build, json_schema, suggest
from converter.yamlio import load_yaml_file, load_yaml_text

IoType = Literal["int8", "uint8", "int16", "float32"]

# Bounds on numbers that validate as numbers but would crash, hang or overflow later.
MAX_RESIZE = 8192  # per side: [8192, 8192, 3] float32 is 800 MB for one sample already
MAX_SEED = 2**32 - 1  # what every RNG we hand seeds to (numpy, Keras, TensorFlow) takes
MAX_MAGNITUDE = 1e9  # scale, offset, input_range: beyond this float32 quantization scales overflow


def _check_reshape(shape: tuple[int, ...], key: str) -> None:
    """One sample's shape for ``input.reshape`` (``key`` names it): positive sizes, not absurdly large."""
    if not shape or min(shape) < 1:
        raise ValueError(f"{key}: one sample's shape as a list of positive sizes, e.g. [784]; got {list(shape)}")
    if math.prod(shape) > MAX_RESIZE * MAX_RESIZE * 4:
        raise ValueError(f"{key}: {list(shape)} holds more values than a sample can (too large)")


@dataclass(frozen=True)
class InputSpec:
    """Preprocessing contract applied to every sample: resize, then x * scale + offset."""

    resize: tuple[int, int] | None = field(
        default=None, metadata={"doc": "[height, width] to resize images to (bilinear); null keeps the size"}
    )
    scale: float = field(default=1.0, metadata={"doc": "Multiplier applied after resize"})
    offset: float = field(
        default=0.0, metadata={"doc": "Added after scaling", "min": -MAX_MAGNITUDE, "max": MAX_MAGNITUDE}
    )
    layout: Literal["nhwc", "nchw"] = field(
        default="nhwc",
        metadata={
            "doc": "Layout of the model's image (4-D) inputs on the device: nhwc (channel-last, what TFLite kernels, "
            "MCUs and NPUs want) or nchw. A PyTorch source is converted so; for other sources it says what the "
            "model takes. Data stored in the other layout is transposed to it"
        },
    )
    reshape: tuple[int, ...] | dict[str, tuple[int, ...]] | None = field(
        default=None,
        metadata={
            "doc": "Shape of one sample as the model takes it, for data stored in another shape with the same "
            "number of values (e.g. [784] for 28x28 images); applied before layout, resize, scale and offset. "
            "A model with several inputs takes a mapping of input name to shape (e.g. {features: [16]}), "
            "for the inputs whose data needs it"
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.reshape, dict):
            if not self.reshape:
                raise ValueError(
                    "reshape: an empty mapping names no input; give input name: shape pairs, e.g. {features: [16]}, "
                    "or remove reshape"
                )
            for name, shape in self.reshape.items():
                _check_reshape(shape, f"reshape.{name}")
        elif self.reshape is not None:
            _check_reshape(self.reshape, "reshape")
        if self.resize is not None and self.layout == "nchw":
            raise ValueError(
                "resize: works on channel-last images ([N, H, W, C]) and layout is nchw; remove resize and store the "
                "images at the model's size, or use layout: nhwc (for a PyTorch source edgeconv then converts the "
                "model with channel-last input)"
            )
        if self.resize is not None and min(self.resize) < 1:
            raise ValueError(f"resize: sizes must be positive, got {list(self.resize)}")
        if self.resize is not None and max(self.resize) > MAX_RESIZE:
            raise ValueError(
                f"resize: sizes must be at most {MAX_RESIZE}, got {list(self.resize)} "
                "(one sample that large would not fit in memory)"
            )
        if self.scale == 0:
            raise ValueError("scale: must not be 0 (every sample would become the offset)")
        if not 1 / MAX_MAGNITUDE <= abs(self.scale) <= MAX_MAGNITUDE:
            raise ValueError(
                f"scale: its size must be between {1 / MAX_MAGNITUDE:g} and {MAX_MAGNITUDE:g}, got {self.scale}"
            )


@dataclass(frozen=True)
class DataSource:
    """A dataset: .npz (x[, y]), .npy (x) or an image folder (class sub-folders give labels)."""

    path: Path = field(metadata={"doc": "File or folder, relative to the recipe file"})
    samples: int | None = field(
        default=None, metadata={"doc": "How many samples to use (seeded random subset); null: all", "min": 1}
    )
    seed: int = field(default=0, metadata={"doc": "Seed of the subset selection", "min": 0, "max": MAX_SEED})


@dataclass(frozen=True)
class EvaluationSource(DataSource):
    """Held-out samples, and the metric that scores int8 against float on them (``runtime.accuracy``)."""

    metric: Literal["auto", "top1", "sqnr", "mse"] = field(
        default="auto",
        metadata={
            "doc": "auto: top1 for class scores with labels, sqnr for a reconstruction model, else mse; "
            "accuracy_drop is in its unit (top-1 points as a fraction, dB lost, relative MSE)"
        },
    )


@dataclass(frozen=True)
class DataSpec:
    """Representative data for calibration, and optional labelled data for evaluation."""

    calibration: DataSource = field(metadata={"doc": "Representative samples (a few hundred)"})
    evaluation: EvaluationSource | None = field(
        default=None, metadata={"doc": "Held-out samples; labels give top-1 accuracy"}
    )
    holdout: bool = field(
        default=True,
        metadata={
            "doc": "Without evaluation: hold out a fifth of the calibration samples (8 to 200, when 32 are left to "
            "calibrate with) and measure int8 against float on them; false calibrates on all of them"
        },
    )


@dataclass(frozen=True)
class QuantizationSpec:
    """Full-integer quantization options."""

    input_type: IoType = field(default="int8", metadata={"doc": "Model input dtype"})
    output_type: IoType = field(default="int8", metadata={"doc": "Model output dtype"})
    per_channel: bool = field(default=True, metadata={"doc": "Per-channel (true) or per-tensor weight scales"})
    activations: Literal["int8", "int16"] = field(
        default="int8", metadata={"doc": "int8, or int16 activations with int8 weights (16x8)"}
    )

    def __post_init__(self) -> None:
        allowed = ("float32", "int16") if self.activations == "int16" else ("float32", "int8", "uint8")
        for key in ("input_type", "output_type"):
            value = getattr(self, key)
            if value not in allowed:
                raise ValueError(
                    f"{key}: {value} does not go with activations: {self.activations}; use one of {', '.join(allowed)}"
                )


Method = Literal["minmax", "percentile", "entropy", "mse", "auto"]


@dataclass(frozen=True)
class CalibrationRule:
    """Per-tensor override: tensors whose name matches the glob get this method."""

    tensors: str = field(metadata={"doc": "Glob over tensor names (see calibration.tensors in report.json)"})
    method: Method = field(metadata={"doc": "Range method for the matching tensors"})
    percentile: float | None = field(
        default=None, metadata={"doc": "Percentile for method percentile (0, 100]", "min": 0, "max": 100}
    )

    def __post_init__(self) -> None:
        if self.percentile is not None and self.percentile <= 0:
            raise ValueError(f"percentile: must be in (0, 100], got {self.percentile}")


@dataclass(frozen=True)
class CalibrationSpec:
    """How activation ranges are chosen from the calibration data."""

    method: Method = field(
        default="minmax",
        metadata={
            "doc": "minmax: observed range (stock converter); percentile: clip the tails; "
            "entropy: TensorRT KL threshold; mse: least quantization error; auto: the best of these per tensor"
        },
    )
    percentile: float = field(
        default=99.99, metadata={"doc": "Percentile kept by method percentile, in (0, 100]", "min": 0, "max": 100}
    )
    rules: tuple[CalibrationRule, ...] = field(
        default=(), metadata={"doc": "Ordered per-tensor overrides; a later matching rule wins"}
    )
    input_range: Literal["auto", "observed"] | tuple[float, float] = field(
        default="auto",
        metadata={
            "doc": "Model input range: auto (the preprocessing contract's for 8-bit image data, else observed), "
            "observed, or [lo, hi]"
        },
    )
    cache: bool = field(
        default=True,
        metadata={"doc": "Reuse the float reference model and the statistics computed before for the same inputs"},
    )
    bias_correction: bool = field(
        default=False,
        metadata={"doc": "Cancel the mean output shift weight rounding causes in each conv/dense layer"},
    )
    equalization: bool = field(
        default=False,
        metadata={"doc": "Cross-layer equalization: balance channel scales across conv/dense pairs before calibrating"},
    )

    def __post_init__(self) -> None:
        if self.percentile <= 0:
            raise ValueError(f"percentile: must be in (0, 100], got {self.percentile}")
        if isinstance(self.input_range, tuple):
            lo, hi = self.input_range
            if not lo < hi:
                raise ValueError(f"input_range: lo must be below hi, got {list(self.input_range)}")
            if max(abs(lo), abs(hi)) > MAX_MAGNITUDE or hi - lo < 1e-6:
                raise ValueError(
                    f"input_range: must lie within [-{MAX_MAGNITUDE:g}, {MAX_MAGNITUDE:g}] and span at least 1e-6, "
                    f"got {list(self.input_range)} (its quantization scale would not fit a float32)"
                )


class TargetValueError(ValueError, UserInputError):
    """A refused ssh option: the schema adds file and key path; code building a ``TargetSpec`` gets exit 2."""


@dataclass(frozen=True)
class TargetSpec:
    """A device profile, and for SSH devices how to reach it."""

    device: str = field(metadata={"doc": "Device profile name from devices/"})
    host: str | None = field(default=None, metadata={"doc": "user@host to deploy to over SSH (ssh devices)"})
    port: int | None = field(default=None, metadata={"doc": "SSH port", "min": 1, "max": 65535})
    identity: Path | None = field(default=None, metadata={"doc": "SSH private key file"})
    known_hosts: Path | None = field(default=None, metadata={"doc": "known_hosts file that verifies the host key"})
    ssh_options: tuple[str, ...] = field(
        default=(),
        metadata={
            "doc": "Extra ssh -o options from a safe list (ProxyJump, ConnectTimeout, ServerAliveInterval, Port, ...); "
            "ProxyCommand and others that run local commands are refused"
        },
    )
    python: str | None = field(default=None, metadata={"doc": "Python on the device (default: the profile's)"})
    timeout_s: float | None = field(
        default=None,
        metadata={
            "doc": "Seconds this device may take (connect, copy, run) before the step that stalled is named "
            "(default 600; ssh keep-alives drop a silent connection after about 45 s)",
            "min": 1,
            "max": 86400,
        },
    )
    budgets: Budgets = field(default_factory=Budgets, metadata={"doc": "Budgets for this target (win over global)"})

    def __post_init__(self) -> None:
        # Recipes arrive in pull requests: nothing here may make ssh run a local command (hosts: _check_targets).
        for i, option in enumerate(self.ssh_options):
            problem = ssh_option_problem(option)
            if problem:
                raise TargetValueError(f"ssh_options[{i}]: {option!r}: {problem}")


@dataclass(frozen=True)
class BenchmarkSpec:
    """How latency is measured on each target."""

    enabled: bool = field(default=True, metadata={"doc": "Measure latency on the targets after converting"})
    warmup: int = field(default=10, metadata={"doc": "Untimed runs first", "min": 0, "max": 10_000})
    runs: int = field(default=100, metadata={"doc": "At least this many timed runs", "min": 1, "max": 100_000})
    # 0.5 s and 100 runs: p50/p90 matched 1.0 s on the demo (3 repeats each), and 100 runs give p99 a value
    # that is not simply the maximum; about 1 s less per conversion on small models.
    min_seconds: float = field(default=0.5, metadata={"doc": "And at least this long", "min": 0, "max": 600})
    # 1,000 runs gave the same p50/p90/p99 as 0.5 s and as 1.0 s (10 interleaved repeats each on KWS, ResNet-8
    # and the demo: p50 spread 0.4-1.6 %) in 0.08-0.38 s: a small model stops there instead of timing for 0.5 s.
    max_runs: int = field(
        default=1000,
        metadata={
            "doc": "Stop at this many timed runs (or runs, if more) even before min_seconds",
            "min": 1,
            "max": 10_000_000,
        },
    )
    top_k: int | None = field(default=None, metadata={"doc": "Also report top-k accuracy", "min": 2, "max": 1000})
    cache: bool = field(
        default=True,
        metadata={
            "doc": "Reuse a host latency measured on this machine for the same model bytes and settings "
            "(edgeconv convert --remeasure sets it false)"
        },
    )


@dataclass(frozen=True)
class AnalysisSpec:
    """Per-layer error analysis after conversion."""

    samples: int = field(
        default=32, metadata={"doc": "Evaluation samples to compare layer by layer; 0 skips", "min": 0}
    )
    alone: Literal["auto", "always", "never"] = field(
        default="auto",
        metadata={
            "doc": "Quantize the worst layers one at a time (one requantization each): auto only when an accuracy "
            "gate fails (or, with none, the drop is above 1 point / 1 dB / 0.01), always, or never"
        },
    )


@dataclass(frozen=True)
class QatSpec:
    """A short quantization-aware fine-tune the loop may try (Keras 2 models; tensorflow-model-optimization)."""

    data: DataSource = field(metadata={"doc": "Labelled training samples (not the evaluation data)"})
    epochs: int = field(default=3, metadata={"doc": "Fine-tuning epochs", "min": 1, "max": 1000})
    learning_rate: float = field(default=1e-4, metadata={"doc": "Adam learning rate, in (0, 1]", "min": 0, "max": 1})
    batch_size: int = field(default=32, metadata={"doc": "Training batch size", "min": 1, "max": 65536})

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate: must be above 0, got {self.learning_rate}")


@dataclass(frozen=True)
class TuningSpec:
    """The accuracy-target loop: what it may try when budgets.accuracy_drop is missed."""

    enabled: bool = field(
        default=True,
        metadata={"doc": "Try fixes (auto ranges, bias correction, fallbacks) when accuracy_drop is missed"},
    )
    max_float_layers: int = field(
        default=8,
        metadata={"doc": "Most layers kept float on CPU targets (never on Edge TPU or MCU targets); 0: none", "min": 0},
    )
    int16: bool = field(default=True, metadata={"doc": "May try 16x8 (int16 activations) on CPU targets"})
    qat: QatSpec | None = field(
        default=None, metadata={"doc": "Quantization-aware fine-tuning, tried after the post-training fixes"}
    )


@dataclass(frozen=True)
class Recipe:
    """A conversion recipe (version 1)."""

    version: Literal[1] = field(metadata={"doc": "Recipe format version; 1"})
    name: str = field(
        metadata={
            "doc": "Name of the model; the default output folder is build/<name>/",
            "pattern": r"[A-Za-z0-9][A-Za-z0-9_.-]*",
            "pattern_doc": "letters, digits, '_', '.', '-'",
        }
    )
    model: Path = field(metadata={"doc": ".keras, legacy .h5, SavedModel folder or float .tflite"})
    data: DataSpec = field(metadata={"doc": "Calibration and evaluation data"})
    input: InputSpec = field(default_factory=InputSpec, metadata={"doc": "Preprocessing contract"})
    quantization: QuantizationSpec = field(default_factory=QuantizationSpec, metadata={"doc": "Quantization options"})
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec, metadata={"doc": "Range selection"})
    targets: tuple[str | TargetSpec, ...] = field(
        default=("host",), metadata={"doc": "Device profiles from devices/: a name, or {device, host, ...} for SSH"}
    )
    benchmark: BenchmarkSpec = field(default_factory=BenchmarkSpec, metadata={"doc": "Latency measurement"})
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec, metadata={"doc": "Per-layer error analysis"})
    tuning: TuningSpec = field(default_factory=TuningSpec, metadata={"doc": "Accuracy-target loop"})
    budgets: Budgets = field(
        default_factory=Budgets, metadata={"doc": "Limits checked as CI gates; targets and device profiles may add"}
    )
    custom_objects: tuple[str, ...] = field(
        default=(),
        metadata={
            "doc": "Keras custom objects as 'module:Name'; imported (their code runs) only with "
            "convert --allow-custom-objects"
        },
    )
    source: Path = field(default=Path("recipe.yaml"), init=False, compare=False)

    sha256: str = field(default="", init=False, compare=False)
    # The key paths --set options replaced, each with the option's text (``schema.Where.overrides``), so an
    # error found while running names the option rather than the file (``schema.blame_override``).
    overrides: tuple[tuple[str, str], ...] = field(default=(), init=False, compare=False)

    def preprocess(self) -> Preprocess:
        """The preprocessing contract this recipe declares."""
        return Preprocess(resize=self.input.resize, scale=self.input.scale, offset=self.input.offset)

    def target_specs(self) -> tuple[TargetSpec, ...]:
        """Every target as a ``TargetSpec`` (a bare name has no SSH host)."""
        return tuple(TargetSpec(t) if isinstance(t, str) else t for t in self.targets)

    def __post_init__(self) -> None:
        names = [t.device for t in self.target_specs()]
        if len(set(names)) != len(names):
            raise ValueError(f"targets: a device is listed twice: {names}")
        c = self.calibration
        if self.quantization.activations == "int16" and (c.method != "minmax" or c.rules):
            raise ValueError(
                "calibration: 16x8 (activations: int16) supports method minmax only, without rules: TFLite's "
                "16x8 quantizer takes no external ranges (and 16-bit steps make clipping matter far less)"
            )


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``--set a.b=value`` into the key path and the YAML-parsed value."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {text}: expected dotted.key=value, e.g. --set calibration.samples=100")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise RecipeError(f"--set {text}: empty part in key path '{key}'")
    return parts, load_yaml_text(value, f"--set {text}") if value.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``dotted.key=value`` set (mappings created as needed)."""
    return _apply_overrides(raw, overrides)[0]


def _apply_overrides(raw: dict[str, Any], overrides: list[str]) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
    """``apply_overrides``, and which key path each override that still counts set (for error messages)."""
    out = copy.deepcopy(raw)
    origin: dict[str, str] = {}
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"--set {text}: '{'.'.join(parts[: i + 1])}' is not a mapping")
            node = child
        node[parts[-1]] = value
        key = ".".join(parts)
        # A later override of a mapping replaces what earlier ones set inside it.
        origin = {k: v for k, v in origin.items() if not k.startswith(key + ".")}
        origin[key] = text.strip()
    return out, tuple(origin.items())


def recipe_sha256(raw: dict[str, Any]) -> str:
    """Hash of the effective recipe (after overrides), independent of YAML formatting."""
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_recipe(path: str | Path, overrides: list[str] | None = None, *, check_files: bool = True) -> Recipe:
    """Read, override and validate a recipe; every problem is a ``RecipeError`` naming file and key.

    With ``check_files`` every file the recipe names must exist and be readable, so
    ``validate`` and ``convert`` find a wrong path before loading anything.
    """
    path = Path(path)
    raw = load_yaml_file(path, "recipe")
    return recipe_from_mapping(raw, path.resolve().parent, overrides, source=path, check_files=check_files)


def recipe_from_mapping(
    raw: Any,
    base_dir: Path,
    overrides: list[str] | None = None,
    *,
    source: Path,
    check_files: bool = True,
) -> Recipe:
    """Validate a recipe given as a mapping (what a recipe file parses to), as ``load_recipe`` does a file.

    ``base_dir`` is where relative paths start; ``source`` names the recipe in errors and the report.
    """
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: expected a mapping of recipe keys at the top level, got {type(raw).__name__}")
    raw, origin = _apply_overrides(raw, overrides or [])
    where = Where(str(source), base_dir, overrides=origin)
    recipe: Recipe = build(Recipe, raw, where)
    _check_targets(recipe, where)
    if check_files:
        _check_files(recipe, where)
    object.__setattr__(recipe, "source", source)
    object.__setattr__(recipe, "sha256", recipe_sha256(raw))
    object.__setattr__(recipe, "overrides", origin)
    return recipe


def _check_targets(recipe: Recipe, where: Where) -> None:
    if not recipe.targets:
        raise where.key("targets").error("empty list; name at least one device profile, e.g. [host]")
    known = available_devices()
    for i, spec in enumerate(recipe.target_specs()):
        at = where.key("targets").key(i)
        if spec.device not in known:
            raise at.error(
                f"unknown device '{spec.device}'{suggest(spec.device, known)}; "
                f"profiles in {devices_dir()}: {', '.join(known)}"
            )
        try:
            profile = load_device(spec.device)
        except RecipeError as e:
            raise at.error(f"device profile is invalid: {e}") from e
        problem = destination_problem(spec.host) if spec.host is not None else None
        if problem:
            raise at.key("host").error(
                f"{spec.host!r} is not an SSH destination: {problem}; write [user@]host, {EXAMPLES}"
            )
        if spec.host and profile.kind != "ssh":
            raise at.key("host").error(f"'{spec.device}' is a {profile.kind} device; only ssh devices take a host")


def _check_files(recipe: Recipe, where: Where) -> None:
    """Every path the recipe names exists and can be read (models and data may be folders)."""
    named: list[tuple[Where, Path, bool]] = [(where.key("model"), recipe.model, True)]
    sources = [("calibration", recipe.data.calibration), ("evaluation", recipe.data.evaluation)]
    named += [(where.key("data").key(k).key("path"), s.path, True) for k, s in sources if s is not None]
    if recipe.tuning.qat is not None:
        named.append((where.key("tuning").key("qat").key("data").key("path"), recipe.tuning.qat.data.path, True))
    for i, spec in enumerate(recipe.target_specs()):
        at = where.key("targets").key(i)
        keys = (("identity", spec.identity), ("known_hosts", spec.known_hosts))
        named += [(at.key(k), p, False) for k, p in keys if p is not None]
    for at, path, folder_ok in named:
        problem = _path_problem(path, folder_ok)
        if problem:
            raise at.error(f"{problem}; check the path (relative paths start at the recipe's folder)")


def _path_problem(path: Path, folder_ok: bool) -> str | None:
    try:
        if path.is_dir():
            if not folder_ok:
                return f"{path} is a folder; name a file"
            return None if os.access(path, os.R_OK | os.X_OK) else f"cannot read the folder {path}"
        if path.is_file():
            return None if os.access(path, os.R_OK) else f"cannot read {path} (permission denied)"
        if path.exists():
            return f"{path} is not a regular file"
    except OSError as e:  # e.g. a name too long for the file system
        return f"cannot look at {path}: {e.strerror or e}"
    return f"not found: {path}"


def recipe_json_schema() -> dict[str, Any]:
    """JSON Schema of the recipe format, for editor completion (``edgeconv schema``)."""
    schema = json_schema(Recipe)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "edgeconv recipe"
    items = schema["properties"]["targets"]["items"]["anyOf"]
    items[0]["enum"] = available_devices()
    items[1]["properties"]["device"]["enum"] = available_devices()
    return schema
