"""The third-party models in ../shared/realdata, as recipe overrides (shared by tests and benchmarks)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from converter.data import load_dataset, prepare
from converter.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("EDGECONV_REALDATA", ROOT.parent / "shared" / "realdata"))

# Paths in recipes/realdata/*.yaml assume ../shared next to the repository; these point them at REALDATA.
REAL_PATHS = {
    "resnet8": {
        "model": "ic-resnet8/pretrainedResnet.h5",
        "data.calibration.path": "ic-resnet8/calibration",
        "data.evaluation.path": "ic-resnet8/evaluation",
    },
    "kws": {
        "model": "kws-dscnn/kws_ref_model",
        "data.calibration.path": "kws-dscnn/calibration.npz",
        "data.evaluation.path": "kws-dscnn/evaluation.npz",
    },
}


def recipe_path(name: str) -> Path:
    return ROOT / "recipes" / "realdata" / f"{name}.yaml"


def overrides(name: str, evaluation: bool = True) -> list[str]:
    """``--set`` overrides that point a real model's recipe at REALDATA."""
    return [
        f"{key}={REALDATA / path}"
        for key, path in REAL_PATHS[name].items()
        if evaluation or not key.startswith("data.evaluation")
    ]


def samples(recipe: Recipe, kind: str, input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """A recipe's preprocessed samples, labels, and whether the data is 8-bit (as the pipeline reads them)."""
    src = getattr(recipe.data, kind)
    ds = load_dataset(
        src.path,
        where=kind,
        samples=src.samples,
        seed=src.seed,
        channels=input_shape[-1],
        image_size=recipe.input.resize,
    )
    return prepare(ds, recipe.preprocess(), input_shape, kind), ds.y, ds.eight_bit
