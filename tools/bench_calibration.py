"""Benchmark: the stock TFLite converter vs edgeconv with each calibration method, in one run.

For each model, on the same preprocessed calibration samples: wall time of a fresh
process doing the conversion (stock: tools/stock_convert.py; ours: ``edgeconv convert``
without evaluation), then int8 top-1 and float-vs-int8 agreement on held-back data,
measured here with the same runtime for every model. Ours runs ``minmax`` first with an
empty calibration cache (cold), then the other methods with the statistics cached (warm).

    python tools/bench_calibration.py [--models resnet8,kws,mobilenet224] [--out build/bench]

Writes ``calibration.json`` and ``calibration.md`` into the output folder. Timings are
single runs on whatever machine this is; they are not used by any test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converter.load import load_model  # noqa: E402
from converter.recipe import Recipe, load_recipe  # noqa: E402
from converter.runtime.accuracy import compare  # noqa: E402
from converter.runtime.model import TFLiteModel  # noqa: E402
from tools import realdata  # noqa: E402
from tools.realdata import samples  # noqa: E402

METHODS = ("minmax", "percentile", "entropy", "mse", "auto")


def mobilenet224_recipe(work: Path) -> Path:
    """A recipe for MobileNetV2 (alpha 1.0, 224x224) on the digits, trained once (seeded) if missing."""
    model = work / "mobilenet_v2_224.keras"
    if not model.is_file():
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "tools" / "train_demo.py"),
                "--size",
                "224",
                "--alpha",
                "1.0",
                "--epochs",
                "3",
                "--out",
                str(model),
            ],
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    recipe = work / "mobilenet224.yaml"
    data = ROOT / "recipes" / "data"
    recipe.write_text(
        "version: 1\nname: mobilenet224\n"
        f"model: {model}\n"
        "input: {resize: [224, 224], scale: 0.00392156862745098}\n"
        f"data:\n  calibration: {{path: {data / 'digits.npz'}, samples: 200}}\n"
        f"  evaluation: {{path: {data / 'digits_test.npz'}}}\n"
    )
    return recipe


def recipe_for(name: str, work: Path) -> Recipe:
    if name == "mobilenet224":
        return load_recipe(mobilenet224_recipe(work))
    return load_recipe(realdata.recipe_path(name), realdata.overrides(name))


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}… failed:\n{result.stderr[-2000:]}")
    return seconds


def accuracy(float_out: np.ndarray, model: Path, x: np.ndarray, y: np.ndarray | None) -> dict[str, Any]:
    acc = compare([float_out], [TFLiteModel(model_path=str(model)).predict(x)[0]], y)
    return {"int8": acc.int8, "agreement": acc.agreement, "samples": acc.samples}


def bench_model(name: str, work: Path) -> dict[str, Any]:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    recipe = recipe_for(name, work)
    model = load_model(recipe.model)
    cal_x, _, _ = samples(recipe, "calibration", model.input_shape)
    eval_x, eval_y, _ = samples(recipe, "evaluation", model.input_shape)
    np.save(folder / "calibration.npy", cal_x)
    float_out = TFLiteModel(model_content=model.float_tflite).predict(eval_x)[0]
    float_top1 = float(np.mean(np.argmax(float_out, 1) == eval_y)) if eval_y is not None else None
    env = {**os.environ, "EDGECONV_CACHE_DIR": str(folder / "cache"), "PYTHONPATH": str(ROOT)}
    subprocess.run(["rm", "-rf", str(folder / "cache")], check=True)

    rows = []
    stock_out = folder / "stock_int8.tflite"
    stock_s = timed(
        [
            sys.executable,
            str(ROOT / "tools" / "stock_convert.py"),
            str(recipe.model),
            str(folder / "calibration.npy"),
            str(stock_out),
        ],
        env,
    )
    rows.append(
        {
            "converter": "stock TFLiteConverter",
            "method": "minmax",
            "cache": None,
            "seconds": stock_s,
            "bytes": stock_out.stat().st_size,
            **accuracy(float_out, stock_out, eval_x, eval_y),
        }
    )
    for method in METHODS:
        out = folder / f"edgeconv_{method}"
        cmd = [
            sys.executable,
            "-m",
            "converter",
            "convert",
            "--recipe",
            str(recipe.source),
            "--out",
            str(out),
            "--force",
            "--set",
            f"calibration.method={method}",
            "--set",
            "data.evaluation=null",
            # Conversion only, as the stock converter does: no latency runs, no per-layer analysis.
            "--set",
            "benchmark.enabled=false",
            "--set",
            "analysis.samples=0",
        ]
        if name in realdata.REAL_PATHS:
            cmd += [f"--set={o}" for o in realdata.overrides(name, evaluation=False)]
        seconds = timed(cmd, env)
        report = json.loads((out / "report.json").read_text())
        rows.append(
            {
                "converter": "edgeconv",
                "method": method,
                "cache": report["calibration"]["cache"]["hit"],
                "seconds": seconds,
                "steps": report["steps"],
                "bytes": report["artifacts"]["int8"]["bytes"],
                **accuracy(float_out, out / "model_int8.tflite", eval_x, eval_y),
            }
        )
        print(f"{name:13} {method:10} {seconds:6.1f}s  int8 {rows[-1]['int8']}", flush=True)
    return {
        "model": name,
        "source": str(recipe.model),
        "calibration_samples": len(cal_x),
        "evaluation_samples": len(eval_x),
        "float_top1": float_top1,
        "rows": rows,
    }


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | converter | method | cache | wall s | vs stock | int8 top-1 | agreement | int8 bytes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        stock = r["rows"][0]["seconds"]
        for row in r["rows"]:
            cache = {None: "", False: "cold", True: "warm"}[row["cache"]]
            top1 = "n/a" if row["int8"] is None else f"{100 * row['int8']:.2f}%"
            lines.append(
                f"| {r['model']} (float {100 * r['float_top1']:.2f}%, n={r['evaluation_samples']}) | "
                f"{row['converter']} | {row['method']} | {cache} | {row['seconds']:.1f} | "
                f"{row['seconds'] / stock:.2f} | {top1} | {100 * row['agreement']:.2f}% | {row['bytes']:,} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    realdata.bench_main(__doc__, "resnet8,kws,mobilenet224", "calibration", bench_model, markdown)


if __name__ == "__main__":
    main()
