"""The Python API: one call that converts a recipe, for notebooks and scripts.

``convert`` takes a recipe file or a recipe built in code (a mapping with the keys of the YAML), with
overrides that mean what the command line's ``--set`` means, and runs the same pipeline as ``edgeconv
convert``. Problems are ``converter.errors`` exceptions (``RecipeError``, ``ModelLoadError``, ...), never
``SystemExit``: printing and exit codes belong to the command line.

Importing this module is cheap (no TensorFlow, no numpy): the pipeline is imported when ``convert`` runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converter.errors import RecipeError

if TYPE_CHECKING:
    from converter.recipe import Recipe

# What a recipe given as a mapping is called in errors and in report.json's recipe.path.
MAPPING_SOURCE = "<recipe mapping>"

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class ConvertResult:
    """What ``convert`` produced: report.json's content and where the files are.

    Attributes:
        report: report.json as a dict (sizes, quantization, accuracy, latency, targets, gates).
        out_dir: the output folder.
        int8_model: the full-integer model, ``out_dir/model_int8.tflite``.
        float_model: the float reference model, ``out_dir/model_float.tflite``.
        report_json: ``out_dir/report.json``.
    """

    report: dict[str, Any]
    out_dir: Path
    int8_model: Path
    float_model: Path
    report_json: Path

    @property
    def passed(self) -> bool:
        """False when a gate failed (a missed budget, a target the model does not fit): what exits 1 on the CLI.

        A failed gate is a result, not an exception: ``report["gates"]`` says which and by how much.
        """
        return self.report.get("passed") is not False


def convert(
    recipe: PathLike | Mapping[str, Any],
    *,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    out: PathLike | None = None,
    base_dir: PathLike | None = None,
    force: bool = False,
    baseline: PathLike | None = None,
    allow_custom_objects: bool = False,
) -> ConvertResult:
    """Convert a recipe's model to full-integer TFLite, measure it and check its budgets.

    Args:
        recipe: a recipe file, or a mapping with the same keys as the YAML (validated by the same strict
            loader: an unknown key or a wrong value is a ``RecipeError`` naming the key path).
        overrides: recipe keys to replace, as ``{"calibration.method": "entropy"}`` or as the command
            line's ``--set`` texts (``["calibration.samples=100"]``); a dotted key reaches into mappings,
            creating them where missing, exactly as ``--set`` does.
        out: the output folder [``build/<name>``, relative to the current folder].
        base_dir: where relative paths of a mapping recipe start [the current folder]; a recipe file's
            relative paths always start at its own folder.
        force: overwrite an output folder that holds another recipe's artifacts.
        baseline: a previous report.json: show deltas and check relative budgets (``model_bytes: "+2%"``).
        allow_custom_objects: import the Python modules the recipe's ``custom_objects`` name (their code runs).

    Returns:
        The report and the paths of the files written.

    Raises:
        converter.errors.ConverterError: a subclass saying what went wrong, where and how to fix it:
            ``RecipeError``, ``ModelLoadError``, ``DataError``, ``OutputError`` (bad input, exit 2 on the
            command line), ``ConversionError``, ``CalibrationError``, ... (a step failed, exit 3).
    """
    from converter.pipeline import convert as run_pipeline
    from converter.reports.gates import load_baseline
    from converter.reports.report import FLOAT_NAME, INT8_NAME, REPORT_NAME

    loaded = validate(recipe, overrides=overrides, base_dir=base_dir)
    previous = load_baseline(str(baseline)) if baseline is not None else None
    result = run_pipeline(
        loaded,
        Path(out) if out is not None else None,
        force=force,
        baseline=previous,
        baseline_path=str(baseline) if baseline is not None else None,
        allow_custom_objects=allow_custom_objects,
    )
    folder = result.out_dir
    return ConvertResult(
        report=result.report,
        out_dir=folder,
        int8_model=folder / INT8_NAME,
        float_model=folder / FLOAT_NAME,
        report_json=folder / REPORT_NAME,
    )


def validate(
    recipe: PathLike | Mapping[str, Any],
    *,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    base_dir: PathLike | None = None,
) -> Recipe:
    """Read and validate a recipe (a file or a mapping) with overrides, without converting anything.

    What ``edgeconv validate`` checks: every key and value, the targets, and that every file named exists.
    The arguments mean what they mean for ``convert``.

    Returns:
        The validated recipe (``converter.recipe.Recipe``, a frozen dataclass).

    Raises:
        converter.errors.RecipeError: what is wrong, with the key path (``data.calibration.path: ...``).
    """
    from converter.recipe import load_recipe, recipe_from_mapping

    sets = override_texts(overrides)
    if isinstance(recipe, Mapping):
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        return recipe_from_mapping(_plain(recipe), base.resolve(), sets, source=Path(MAPPING_SOURCE))
    if isinstance(recipe, str | os.PathLike):
        if base_dir is not None:
            raise RecipeError(
                f"base_dir: a recipe file's relative paths start at its own folder ({Path(recipe).parent}); "
                "give base_dir only with a recipe built as a mapping"
            )
        return load_recipe(Path(recipe), sets)
    raise RecipeError(
        f"recipe: expected a recipe file (a path) or a mapping of recipe keys, got {type(recipe).__name__}"
    )


def override_texts(overrides: Mapping[str, Any] | Iterable[str] | None) -> list[str]:
    """Overrides as the command line's ``--set key=value`` texts, so both go through the same code.

    A mapping's values are written as YAML, which ``--set`` reads back to the same value.
    """
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise RecipeError(
            f"overrides: got the string {overrides!r}; give a mapping ({{'calibration.samples': 100}}) "
            "or a list of 'key=value' texts"
        )
    if not isinstance(overrides, Mapping):
        texts = list(overrides)
        for text in texts:
            if not isinstance(text, str):
                raise RecipeError(f"overrides: expected 'key=value' texts, got {type(text).__name__} {text!r}")
        return texts
    out = []
    for key, value in overrides.items():
        if not isinstance(key, str) or "=" in key:
            raise RecipeError(f"overrides: {key!r}: a key is a dotted recipe key such as 'calibration.method'")
        out.append(f"{key}={_yaml_value(_plain(value), key)}")
    return out


def _yaml_value(value: Any, key: str) -> str:
    """One flow-style YAML line that reads back as ``value`` (``None`` as the empty text ``--set`` reads as null)."""
    import yaml

    if value is None:
        return ""
    try:
        text: str = yaml.safe_dump(value, default_flow_style=True, width=2**31 - 1, allow_unicode=True)
    except yaml.YAMLError as e:
        raise RecipeError(
            f"overrides[{key!r}]: {type(value).__name__} cannot be a recipe value ({e}); give a number, string, "
            "boolean, list or mapping"
        ) from e
    return text.removesuffix("\n").removesuffix("\n...")


def _plain(value: Any) -> Any:
    """``value`` as a recipe file would hold it: paths as strings, tuples as lists, numpy scalars as numbers."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # np.int64(100), an array of sizes
        return _plain(value.tolist())
    return value
