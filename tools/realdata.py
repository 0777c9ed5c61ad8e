"""The third-party models in ../shared/realdata, as recipe overrides (shared by tests and benchmarks)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from converter.calibration.data import load_dataset, prepare
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


def bench_main(
    doc: str | None,
    default_models: str,
    stem: str,
    bench_model: Callable[[str, Path], dict[str, Any]],
    markdown: Callable[[list[dict[str, Any]]], str],
    **meta: Any,
) -> None:
    """The benchmarks' shared command line: --models, --out; writes STEM.json and STEM.md."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=default_models)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench")
    args = parser.parse_args()
    out = args.out.resolve()
    results = run_models(args.models, lambda name: bench_model(name, out))
    write_results(out, stem, results, markdown, **meta)


def run_models(models: str, bench_model: Callable[[str], dict[str, Any]]) -> list[dict[str, Any]]:
    """``bench_model`` for each of the comma-separated ``models``; real ones skipped, and said, without REALDATA."""
    names = [n for n in models.split(",") if n]
    missing = [n for n in names if n in REAL_PATHS and not REALDATA.is_dir()]
    if missing:
        print(f"skipping {', '.join(missing)}: {REALDATA} not found", file=sys.stderr)
    return [bench_model(n) for n in names if n not in missing]


def write_results(
    out: Path, stem: str, results: list[dict[str, Any]], markdown: Callable[[list[dict[str, Any]]], str], **meta: Any
) -> None:
    """STEM.json (the machine and the results) and STEM.md into ``out``; the Markdown printed too."""
    out.mkdir(parents=True, exist_ok=True)
    machine = {
        "machine": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        **meta,
    }
    (out / f"{stem}.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))
