"""Benchmark: where the time of a PyTorch or ONNX conversion goes, against each toolkit's own float conversion.

For each model the same network is exported to ``.pt2`` and ONNX (``tools/bench_torch_onnx.py``'s export), and
converted in fresh processes, interleaved over the repeats:

- ``litert-torch-float``: ``litert_torch.convert`` of the ``.pt2`` to a float ``.tflite``, nothing else (what
  the ``.pt2`` route needs before quantizing);
- ``onnx2tf-float``: onnx2tf's float conversion, in the virtualenv of ``edgeconv setup onnx`` (what the ONNX route
  needs before quantizing);
- ``edgeconv-pt2`` / ``edgeconv-onnx``: ``edgeconv convert`` converting only (no evaluation, latency or
  analysis), full-integer with int8 I/O, each from an empty cache.

Each edgeconv row also gives its report's steps (load, which holds the toolkit's conversion; calibrate; ...).
The ratio the table gives is edgeconv's median over the toolkit's float conversion plus edgeconv's own
quantization (its ``calibrate`` step): what a user pays for edgeconv's route beyond the toolkit itself.

    python tools/bench_torch_time.py [--models digits,mobilenet_block] [--repeats 3] [--out build/bench]

Writes ``torch_time.json`` and ``torch_time.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converter.sources import onnx_setup  # noqa: E402
from tools.bench_calibration import compile_package, run_child  # noqa: E402
from tools.bench_torch_onnx import case, export  # noqa: E402

FLOAT_PT2 = """
import sys, torch, litert_torch
program = torch.export.load(sys.argv[1])
litert_torch.convert(program.module(), program.example_inputs[0]).export(sys.argv[2])
"""

# onnx2tf downloads sample images for its own calibration unless the file is in the working folder (as
# tools/bench_torch_onnx.py's stock route does): a seeded stand-in keeps it offline.
FLOAT_ONNX = """
import os, sys, numpy as np, onnx2tf
os.chdir(sys.argv[2])
np.save("calibration_image_sample_data_20x128x128x3_float32.npy",
        np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
onnx2tf.convert(input_onnx_file_path=sys.argv[1], output_folder_path=os.path.join(sys.argv[2], "o"),
                non_verbose=True, verbosity="error")
"""


def _edgeconv(source: Path, cal: Path, run: Path, env: dict[str, str]) -> dict[str, Any]:
    recipe = {
        "version": 1,
        "name": "timed",
        "model": str(source),
        "data": {"calibration": {"path": str(cal)}},
        "quantization": {"input_type": "int8", "output_type": "int8"},
        "benchmark": {"enabled": False},
        "analysis": {"samples": 0},
    }
    (run / "recipe.yaml").write_text(json.dumps(recipe))
    cmd = [sys.executable, "-m", "converter", "convert", "--recipe", str(run / "recipe.yaml"), "--out", str(run / "o")]
    cost = run_child(cmd, {**env, "EDGECONV_CACHE_DIR": str(run / "cache")}, run / "log.txt")
    report = json.loads((run / "o" / "report.json").read_text())
    return {**cost, "steps": {s["name"]: s["seconds"] for s in report["steps"]}}


def bench(name: str, work: Path, repeats: int, onnx_python: Path | None) -> dict[str, Any]:
    module, cal, _, _ = case(name)
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    pt2, onnx_path = export(module, cal[:1], folder)
    np.save(folder / "cal.npy", cal)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}
    rows: dict[str, list[dict[str, Any]]] = {}
    for repeat in range(repeats):
        routes = ["litert-torch-float", "edgeconv-pt2"] + (["onnx2tf-float", "edgeconv-onnx"] if onnx_python else [])
        for route in routes:
            run = folder / f"{route}-{repeat}"
            shutil.rmtree(run, ignore_errors=True)
            run.mkdir()
            if route == "litert-torch-float":
                cost = run_child([sys.executable, "-c", FLOAT_PT2, str(pt2), str(run / "f.tflite")], env, run / "log")
            elif route == "onnx2tf-float":
                assert onnx_python is not None
                cost = run_child([str(onnx_python), "-c", FLOAT_ONNX, str(onnx_path), str(run)], env, run / "log")
            else:
                cost = _edgeconv(pt2 if route == "edgeconv-pt2" else onnx_path, folder / "cal.npy", run, env)
            rows.setdefault(route, []).append(cost)
            print(f"{name:16} {route:20} #{repeat} {cost['seconds']:.1f} s", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {}
    for route, runs in rows.items():
        times = [r["seconds"] for r in runs]
        summary[route] = {
            "seconds_min": round(min(times), 2),
            "seconds_median": round(statistics.median(times), 2),
            "peak_mb": round(max(r["peak_mb"] for r in runs)),
        }
        if "steps" in runs[0]:
            names = runs[0]["steps"]
            medians = {k: round(statistics.median(r["steps"][k] for r in runs), 2) for k in names}
            summary[route]["steps_median"] = medians
    for ours, theirs in (("edgeconv-pt2", "litert-torch-float"), ("edgeconv-onnx", "onnx2tf-float")):
        if ours in summary:
            quantize = summary[ours]["steps_median"].get("calibrate", 0.0)
            floor = summary[theirs]["seconds_median"] + quantize
            summary[ours]["vs_toolkit_float_plus_quantization"] = round(summary[ours]["seconds_median"] / floor, 2)
    return {"model": name, "routes": summary, "runs": rows}


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | route | s (min / median) | peak MB | steps (median s) | vs toolkit float + our quantization |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        for route, r in result["routes"].items():
            steps = ", ".join(f"{k} {v}" for k, v in (r.get("steps_median") or {}).items() if v >= 0.05) or "—"
            ratio = r.get("vs_toolkit_float_plus_quantization")
            lines.append(
                f"| {result['model']} | {route} | {r['seconds_min']} / {r['seconds_median']} | {r['peak_mb']:,} | "
                f"{steps} | {f'{ratio}x' if ratio is not None else '—'} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="digits,mobilenet_block")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--onnx-venv", type=Path, default=os.environ.get("EDGECONV_ONNX_VENV"))
    args = parser.parse_args()
    venv = args.onnx_venv or Path.home() / ".cache" / "edgeconv-tests" / "onnx-venv"
    onnx_python = onnx_setup.installed(venv)
    os.environ["EDGECONV_ONNX_VENV"] = str(venv)
    compile_package()
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-torch-time-") as tmp:
        results = [bench(name, Path(tmp), args.repeats, onnx_python) for name in args.models.split(",")]
    loads.append(os.getloadavg()[0])
    doc = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_1min_before_after": loads},
        "repeats": args.repeats,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "torch_time.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "torch_time.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
