"""Benchmark: float vs int8 latency on this machine, XNNPACK on/off, 1 and 2 threads.

For the demo MobileNetV2 and the MLPerf Tiny ResNet-8 and DS-CNN KWS (from
../shared/realdata, skipped when absent): convert each with its recipe, then measure
both models with the runtime bundle (a fresh process per measurement, as on a device)
five times per configuration, and report the median p50/p90 and the spread of p50
across the repetitions.

    python tools/bench_runtime.py [--models mobilenet,resnet8,kws] [--repeats 5] [--out build/bench]

Writes ``runtime.json`` and ``runtime.md``. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converter.boards.bench import BenchRequest, run_local  # noqa: E402
from converter.pipeline import convert  # noqa: E402
from converter.recipe import load_recipe  # noqa: E402
from tools import realdata  # noqa: E402

RECIPES = {
    "mobilenet": (ROOT / "recipes" / "mobilenet.yaml", []),
    **{name: (realdata.recipe_path(name), realdata.overrides(name)) for name in realdata.REAL_PATHS},
}
CONFIGS = [(delegate, threads) for delegate in ("xnnpack", "none") for threads in (1, 2)]


def measure(folder: Path, delegate: str, threads: int, repeats: int) -> dict[str, Any]:
    reps: dict[str, list[dict[str, float]]] = {"int8": [], "float": []}
    for _ in range(repeats):
        result = run_local(
            BenchRequest(
                model=folder / "model_int8.tflite",
                float_model=folder / "model_float.tflite",
                threads=threads,
                delegate=delegate,
                warmup=20,
                runs=100,
                min_seconds=1.0,
            )
        )
        reps["int8"].append(result["models"]["model"]["latency"])
        reps["float"].append(result["models"]["float"]["latency"])
    out: dict[str, Any] = {"delegate": delegate, "threads": threads}
    for key, runs in reps.items():
        p50s = [r["p50_ms"] for r in runs]
        out[key] = {
            "p50_ms": statistics.median(p50s),
            "p90_ms": statistics.median(r["p90_ms"] for r in runs),
            "p50_spread_ms": [min(p50s), max(p50s)],
            "p50_runs": p50s,
        }
    out["int8_speedup"] = out["float"]["p50_ms"] / out["int8"]["p50_ms"]
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | kernels | threads | float p50 / p90 ms | int8 p50 / p90 ms | int8 speed-up "
        "| p50 spread (5 runs) float; int8 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for c in r["configs"]:
            f, q = c["float"], c["int8"]
            kernels = "XNNPACK" if c["delegate"] == "xnnpack" else "builtin"
            lines.append(
                f"| {r['model']} | {kernels} | {c['threads']} | {f['p50_ms']:.3f} / {f['p90_ms']:.3f} | "
                f"{q['p50_ms']:.3f} / {q['p90_ms']:.3f} | {c['int8_speedup']:.2f}x | "
                f"{f['p50_spread_ms'][0]:.3f}-{f['p50_spread_ms'][1]:.3f}; "
                f"{q['p50_spread_ms'][0]:.3f}-{q['p50_spread_ms'][1]:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mobilenet,resnet8,kws")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench")
    args = parser.parse_args()
    results = []
    for name in [n for n in args.models.split(",") if n]:
        if name != "mobilenet" and not realdata.REALDATA.is_dir():
            print(f"skipping {name}: {realdata.REALDATA} not found", file=sys.stderr)
            continue
        path, overrides = RECIPES[name]
        folder = args.out / "runtime" / name
        recipe = load_recipe(path, [*overrides, "benchmark.min_seconds=0", "benchmark.runs=1", "benchmark.warmup=0"])
        convert(recipe, folder, force=True)
        configs = []
        for delegate, threads in CONFIGS:
            configs.append(measure(folder, delegate, threads, args.repeats))
            c = configs[-1]
            print(
                f"{name:10} {delegate:8} {threads}t  float {c['float']['p50_ms']:.3f} ms  "
                f"int8 {c['int8']['p50_ms']:.3f} ms  x{c['int8_speedup']:.2f}",
                flush=True,
            )
        results.append({"model": name, "configs": configs})
    meta = {"machine": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtime.json").write_text(json.dumps({"machine": meta, "results": results}, indent=2) + "\n")
    (args.out / "runtime.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
