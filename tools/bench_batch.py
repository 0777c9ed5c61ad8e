"""Benchmark: many recipes through ``edgeconv convert --jobs N`` against the same recipes one process each.

Eight variants of the demo recipe (calibration methods, per-tensor weights, 16x8, uint8 I/O, fewer samples;
evaluation and per-layer analysis as a user runs them, host latency off so parallel runs do not time each
other) are converted three ways, each from a fresh cache folder, interleaved over the repeats:

- ``sequential``: eight ``edgeconv convert --recipe R`` processes one after another (TensorFlow imported by
  each that needs it);
- ``jobs-1`` / ``jobs-2``: ``edgeconv convert <folder> --jobs N``: N long-lived workers, each importing
  TensorFlow once for the recipes it converts.

Recorded per run: wall seconds, recipes per minute, peak RSS of the largest process (``ru_maxrss`` of the
children, from ``os.wait4``), the 1-minute load average before it, and the sha256 of every int8 model, which
must be the same in every mode. Timings are min and median over the repeats.

    python tools/bench_batch.py [--repeats 3] [--out build/bench]

Writes ``batch.json`` and ``batch.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.bench_calibration import compile_package  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "minmax": {},
    "percentile": {"calibration": {"method": "percentile", "percentile": 99.9}},
    "entropy": {"calibration": {"method": "entropy"}},
    "mse": {"calibration": {"method": "mse"}},
    "per-tensor": {"quantization": {"per_channel": False}},
    "a16w8": {"quantization": {"activations": "int16", "input_type": "int16", "output_type": "int16"}},
    "uint8-io": {"quantization": {"input_type": "uint8", "output_type": "uint8"}},
    "fewer-samples": {"data": {"calibration": {"samples": 100}}},
}
MODES = ("sequential", "jobs-1", "jobs-2")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_recipes(folder: Path) -> list[Path]:
    """The eight demo variants, with absolute paths, host latency off."""
    base = yaml.safe_load((ROOT / "recipes" / "mobilenet.yaml").read_text())
    base["model"] = str(ROOT / "recipes" / base["model"])
    for key in ("calibration", "evaluation"):
        base["data"][key]["path"] = str(ROOT / "recipes" / base["data"][key]["path"])
    base["benchmark"] = {"enabled": False}
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, extra in VARIANTS.items():
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**_merge(base, extra), "name": name}, sort_keys=False))
        paths.append(path)
    return paths


def _run(commands: list[list[str]], cache: Path) -> tuple[float, float, list[int]]:
    """Run the commands one after another; wall seconds, the largest child's peak RSS (MB), exit codes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGECONV_CACHE_DIR": str(cache)}
    start, peak, codes = time.perf_counter(), 0, []
    for command in commands:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # noqa: S603
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        codes.append(proc.returncode)
        if proc.returncode not in (0, 1):
            print(err[-2000:], file=sys.stderr)
        peak = max(peak, usage.ru_maxrss)
    return time.perf_counter() - start, peak / 1024, codes


def run_mode(mode: str, recipes: list[Path], work: Path) -> dict[str, Any]:
    out = work / "out"
    cli = [sys.executable, "-m", "converter", "convert"]
    if mode == "sequential":
        commands = [[*cli, "--recipe", str(r), "--out", str(out / r.stem)] for r in recipes]
    else:
        jobs = mode.split("-")[1]
        commands = [[*cli, str(recipes[0].parent), "--jobs", jobs, "--out", str(out)]]
    load = os.getloadavg()[0]
    seconds, peak_mb, codes = _run(commands, work / "cache")
    digests = {r.stem: hashlib.sha256((out / r.stem / "model_int8.tflite").read_bytes()).hexdigest() for r in recipes}
    return {"seconds": seconds, "peak_rss_mb": round(peak_mb, 1), "codes": codes, "load_1min": load, "int8": digests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench")
    args = parser.parse_args()
    compile_package()
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="edgeconv-bench-batch-") as tmp:
        recipes = write_recipes(Path(tmp) / "recipes")
        for repeat in range(args.repeats):
            for mode in MODES:
                work = Path(tmp) / f"{mode}-{repeat}"
                runs[mode].append(run_mode(mode, recipes, work))
                print(f"{mode:<10} repeat {repeat}: {runs[mode][-1]['seconds']:.1f} s", file=sys.stderr)
    reference = runs["sequential"][0]["int8"]
    rows = []
    for mode in MODES:
        times = [r["seconds"] for r in runs[mode]]
        median = statistics.median(times)
        rows.append(
            {
                "mode": mode,
                "recipes": len(VARIANTS),
                "seconds_min": round(min(times), 2),
                "seconds_median": round(median, 2),
                "recipes_per_minute": round(len(VARIANTS) * 60 / median, 2),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[mode]),
                "identical_int8": all(r["int8"] == reference for r in runs[mode]),
                "exit_codes": sorted({c for r in runs[mode] for c in r["codes"]}),
                "load_1min": [round(r["load_1min"], 2) for r in runs[mode]],
            }
        )
    base = next(r for r in rows if r["mode"] == "sequential")["seconds_median"]
    for row in rows:
        row["time_vs_sequential"] = round(row["seconds_median"] / base, 3)
    result = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "repeats": args.repeats,
        "rows": rows,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch.json").write_text(json.dumps(result, indent=2))
    lines = [
        "| mode | recipes | s (min / median) | recipes per minute | vs sequential | peak RSS (MB) | same int8 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['recipes']} | {r['seconds_min']} / {r['seconds_median']} | {r['recipes_per_minute']} "
            f"| {r['time_vs_sequential']}x | {r['peak_rss_mb']} | {'yes' if r['identical_int8'] else 'no'} |"
        )
    (args.out / "batch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
