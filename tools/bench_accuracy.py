"""Benchmark: int8 accuracy of the stock converter vs each edgeconv method, auto, bias correction and the loop.

For each model, in one run, on the same calibration and evaluation samples: float top-1;
the stock ``TFLiteConverter`` (min/max, a fresh process: tools/stock_convert.py); the
upstream int8 reference where the model ships one; ours with each range method, ``auto``,
``auto`` + bias correction; and the accuracy loop with a 0.3-point budget, once for a CPU
target (host: float layers and 16x8 allowed) and once for an integer-only target (Coral:
full-integer fixes only). Keras 2 models (.h5, SavedModel) also get a QAT row: 3 epochs on
the calibration data (the only labelled training data the real models come with; all of it,
not the calibration subset), and the loop may use QAT too. Every row has top-1, drop, agreement with float, sample count
and size. The loop chooses on the evaluation data it is scored on (as the CI gate does),
so its rows are optimistic by construction; the fixed-method rows are not.

    python tools/bench_accuracy.py [--models demo,resnet8,kws,outlier,...] [--out build/bench]

Writes ``accuracy.json`` and ``accuracy.md``. No timings are compared; none feed a test.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converter.analysis.evaluate import evaluate_host  # noqa: E402
from converter.devices import load_device  # noqa: E402
from converter.quantization.qat import QAT_FORMATS, quantize_qat  # noqa: E402
from converter.quantization.quantize import Plan, Quantized, quantize  # noqa: E402
from converter.quantization.tune import tune  # noqa: E402
from converter.recipe import DataSource, Method, QatSpec, Recipe, load_recipe  # noqa: E402
from converter.runtime.accuracy import Accuracy  # noqa: E402
from converter.sources.load import load_model  # noqa: E402
from tools import outlier_model, realdata  # noqa: E402
from tools.realdata import samples  # noqa: E402

METHODS: tuple[Method, ...] = ("minmax", "percentile", "entropy", "mse", "auto")
BUDGET = 0.003  # 0.3 points of top-1
UPSTREAM = {
    "resnet8": "ic-resnet8/pretrainedResnet_quant.tflite",
    "kws": "kws-dscnn/kws_ref_model.tflite",
}


def recipe_for(name: str, work: Path) -> Recipe:
    if name == "demo":
        return load_recipe(ROOT / "recipes" / "mobilenet.yaml")
    if name.startswith("outlier"):
        model = work / (f"{name}.h5" if name.endswith("-h5") else f"{name}.keras")
        if not model.is_file():
            outlier_model.build(model, pooled="pooled" in name)
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(outlier_model.recipe(model), sort_keys=False))
        return load_recipe(path)
    return load_recipe(realdata.recipe_path(name), realdata.overrides(name))


def row(label: str, acc: Accuracy, model: bytes, plan: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "variant": label,
        "int8": acc.int8,
        "drop": acc.drop,
        "agreement": acc.agreement,
        "samples": acc.samples,
        "bytes": len(model),
        "plan": plan,
    }


def stock_model(recipe: Recipe, cal_x: np.ndarray, folder: Path) -> bytes:
    np.save(folder / "calibration.npy", cal_x)
    out = folder / "stock_int8.tflite"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "stock_convert.py"),
            str(recipe.model),
            str(folder / "calibration.npy"),
            str(out),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return out.read_bytes()


def bench_model(name: str, work: Path) -> dict[str, Any]:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    recipe = recipe_for(name, work)
    model = load_model(recipe.model)
    cal_x, _, eight_bit = samples(recipe, "calibration", model.input_shape)
    eval_x, eval_y, _ = samples(recipe, "evaluation", model.input_shape)
    prep = recipe.preprocess()

    def ours(plan: Plan) -> Quantized:
        if plan.qat and recipe.tuning.qat is not None:
            spec = recipe.tuning.qat
            train_x, train_y, _ = samples(
                dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, calibration=spec.data)),
                "calibration",
                model.input_shape,
            )
            assert train_y is not None
            return quantize_qat(recipe, model.format, plan, train_x, train_y, cal_x)
        return quantize(model.float_tflite, cal_x, recipe, prep, eight_bit_data=eight_bit, plan=plan)

    def score(q: bytes) -> Accuracy:
        return evaluate_host(model.float_tflite, q, eval_x, eval_y)

    rows = []
    stock = stock_model(recipe, cal_x, folder)
    first = score(stock)
    float_top1 = first.float
    rows.append(row("stock TFLiteConverter (minmax)", first, stock))
    if name in UPSTREAM:
        upstream = (realdata.REALDATA / UPSTREAM[name]).read_bytes()
        rows.append(row("upstream int8 reference", score(upstream), upstream))
    base = Plan.of(recipe)
    results: dict[str, tuple[Quantized, Accuracy]] = {}
    for method in METHODS:
        q = ours(dataclasses.replace(base, method=method))
        results[method] = (q, score(q.model))
        rows.append(row(f"edgeconv {method}", results[method][1], q.model, q.to_json()))
    for label, variant in (
        ("auto + equalization", dataclasses.replace(base, method="auto", equalization=True)),
        ("auto + bias correction", dataclasses.replace(base, method="auto", bias_correction=True)),
    ):
        q = ours(variant)
        rows.append(row(f"edgeconv {label}", score(q.model), q.model, q.to_json()))
    if model.format in QAT_FORMATS:
        train = dataclasses.replace(recipe.data.calibration, samples=None)
        if name.startswith("outlier"):
            train = DataSource(outlier_model.DIGITS / "digits.npz")
        spec = QatSpec(train, epochs=3)
        recipe = dataclasses.replace(recipe, tuning=dataclasses.replace(recipe.tuning, qat=spec))
        q = ours(dataclasses.replace(base, qat=True))
        rows.append(
            row(f"edgeconv QAT ({spec.epochs} epochs, {train.path.name})", score(q.model), q.model, q.to_json())
        )
    first_q, first_acc = results[base.method]
    for label, target in (("CPU target (host)", "host"), ("integer-only target (Coral)", "coral-usb-accelerator")):
        loop_recipe = dataclasses.replace(recipe, targets=(target,))
        budgets = dataclasses.replace(recipe.budgets, accuracy_drop=BUDGET)
        tuned = tune(
            dataclasses.replace(loop_recipe, budgets=budgets),
            {target: load_device(target)},
            model.float_tflite,
            first_q,
            first_acc,
            eval_x,
            eval_y,
            ours,
        )
        chosen = next((a for a in tuned.section["attempts"] if a["chosen"]), None)
        step = chosen["step"] if chosen else "recipe (met)"
        r = row(f"edgeconv loop, {label}: {step}", tuned.accuracy, tuned.chosen.model, tuned.chosen.to_json())
        r["loop"] = tuned.section
        rows.append(r)
    for r in rows:
        print(f"{name:8} {r['variant']:60} int8 {r['int8']:.4f} drop {100 * r['drop']:+.2f} pts", flush=True)
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
        "| model (float top-1, eval samples) | variant | int8 top-1 | drop (points) | agreement | bytes |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for x in r["rows"]:
            lines.append(
                f"| {r['model']} ({100 * r['float_top1']:.2f}%, n={r['evaluation_samples']}) | {x['variant']} | "
                f"{100 * x['int8']:.2f}% | {100 * x['drop']:+.2f} | {100 * x['agreement']:.2f}% | {x['bytes']:,} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    realdata.bench_main(
        __doc__,
        "demo,resnet8,kws,outlier,outlier-pooled,outlier-pooled-h5",
        "accuracy",
        bench_model,
        markdown,
        budget=BUDGET,
    )


if __name__ == "__main__":
    main()
