"""Benchmark: how much memory quantizing a float .tflite needs before any work, against ai-edge-quantizer's whole run.

    python tools/bench_memory_floor.py --from build/bench/calib-a [--models kws,demo,...] [--repeats 3]

edgeconv's float-``.tflite`` route writes the MLIR quantizer's bytes, and that quantizer exists only as native
code: TensorFlow's ``_pywrap_converter_api`` extension (over ``libtensorflow_cc.so.2``) and, without TensorFlow,
LiteRT's ``libLiteRTCompilerMLIR.so`` (``litert-converter``, installed with litert-torch), which exposes no
quantize entry point. Each row is a fresh process measured as ``tools/bench_calibration.py`` measures a
conversion (peak RSS, ``ru_maxrss`` via ``os.wait4``); the probes do only what their name says:

- ``python``: the interpreter, nothing imported;
- ``litert``: numpy and LiteRT with the model's interpreter allocated (what every route needs to calibrate);
- ``litert + tf-quantizer``: that, and TensorFlow's quantizer extension loaded as edgeconv loads it;
- ``litert + litert-converter``: that, and litert-converter imported with the model read into MLIR;
- ``edgeconv``: ``edgeconv convert`` from the float ``.tflite``, conversion only (empty cache every repeat);
- ``ai-edge-quantizer``: its static int8 recipe and calibration (``tools/aeq_convert.py``, its own virtualenv).

It reads what ``tools/bench_calibration.py`` leaves for each model under ``--from``: ``stock_float.tflite`` and
``calibration.npy``; the ``edgeconv`` row also needs the model's recipe as that benchmark writes or finds it.
Writes ``memory_floor.json`` and ``memory_floor.md`` to ``--out`` (default: ``--from``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import realdata  # noqa: E402
from tools.bench_calibration import compile_package, default_aeq_python, recipe_for, run_child  # noqa: E402

LITERT = (
    "import sys, numpy\n"
    "from ai_edge_litert.interpreter import Interpreter\n"
    "interpreter = Interpreter(model_path=sys.argv[1])\n"
    "interpreter.allocate_tensors()\n"
)
TF_QUANTIZER = (
    "from converter.quantization import native_quantizer\n"
    "assert native_quantizer.module() is not None, 'TensorFlow quantizer extension not loadable'\n"
)
LITERT_CONVERTER = (
    "from litert_converter.mlir import ir\n"
    "from litert_converter import converter_api_ext, model_utils_ext\n"
    "with ir.Context() as context:\n"
    "    converter_api_ext.prepare_mlir_context(context)\n"
    "    module = model_utils_ext.flatbuffer_to_mlir(open(sys.argv[1], 'rb').read(), context)\n"
)
PROBES = {
    "python": "pass\n",
    "litert": LITERT,
    "litert + tf-quantizer": LITERT + TF_QUANTIZER,
    "litert + litert-converter": LITERT + LITERT_CONVERTER,
}
CONVERT_ONLY = ["--set=data.evaluation=null", "--set=benchmark.enabled=false", "--set=analysis.samples=0"]


def has_litert_converter() -> bool:
    import importlib.util

    return importlib.util.find_spec("litert_converter") is not None


Command = tuple[list[str], dict[str, str]]  # argv and environment


def commands(name: str, folder: Path, args: argparse.Namespace, cache: Path) -> dict[str, Command]:
    """Each row's command and environment for one model."""
    model = folder / "stock_float.tflite"
    ours = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows = {
        key: ([sys.executable, "-c", code, str(model)], ours)
        for key, code in PROBES.items()
        if key != "litert + litert-converter" or has_litert_converter()
    }
    recipe, sets = recipe_for(name, args.work, Path(tempfile.mkdtemp(prefix="memfloor-")))
    rows["edgeconv"] = (
        [
            sys.executable,
            "-m",
            "converter",
            "convert",
            "--recipe",
            str(recipe.source),
            "--force",
            "--out",
            str(cache / "out"),
            *[f"--set={s}" for s in sets],
            *CONVERT_ONLY,
            f"--set=model={model}",
        ],
        {**ours, "EDGECONV_CACHE_DIR": str(cache / "cache")},
    )
    if args.aeq_python is not None:
        aeq = [str(args.aeq_python), str(ROOT / "tools" / "aeq_convert.py"), str(model)]
        rows["ai-edge-quantizer"] = (
            [*aeq, str(folder / "calibration.npy"), str(cache / "aeq_int8.tflite")],
            {k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
    return rows


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    folder = args.source / name
    if not (folder / "stock_float.tflite").is_file() or not (folder / "calibration.npy").is_file():
        raise SystemExit(f"{folder}: no stock_float.tflite and calibration.npy; run tools/bench_calibration.py first")
    scratch = Path(tempfile.mkdtemp(prefix=f"memfloor-{name}-"))
    rows = commands(name, folder, args, scratch)
    peaks: dict[str, list[float]] = {key: [] for key in rows}
    seconds: dict[str, list[float]] = {key: [] for key in rows}
    for repeat in range(args.repeats):  # interleaved: every row once, then again
        for key, (cmd, env) in rows.items():
            if key == "edgeconv":
                for sub in ("out", "cache"):
                    path = scratch / sub
                    if path.exists():
                        shutil.rmtree(path)
            result = run_child(cmd, env, scratch / f"{key.replace(' ', '_')}.log")
            peaks[key].append(result["peak_mb"])
            seconds[key].append(result["seconds"])
            line = f"{name:13} #{repeat + 1} {key:26} {result['seconds']:6.1f} s {result['peak_mb']:7.0f} MB"
            print(line, flush=True)
    return {
        "model": name,
        "float_tflite_bytes": (folder / "stock_float.tflite").stat().st_size,
        "rows": {
            key: {
                "peak_mb_min": min(peaks[key]),
                "peak_mb_median": statistics.median(peaks[key]),
                "peak_mb_max": max(peaks[key]),
                "seconds_median": statistics.median(seconds[key]),
                "repeats": [{"peak_mb": p, "seconds": s} for p, s in zip(peaks[key], seconds[key], strict=True)],
            }
            for key in rows
        },
    }


def markdown(results: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in results for k in r["rows"]))
    lines = [
        "| model | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for r in results:
        aeq = r["rows"].get("ai-edge-quantizer", {}).get("peak_mb_max")
        cells = []
        for key in keys:
            row = r["rows"].get(key)
            if row is None:
                cells.append("—")
                continue
            ratio = f" ({row['peak_mb_max'] / aeq:.2f}×)" if aeq and key != "ai-edge-quantizer" else ""
            cells.append(f"{row['peak_mb_max']:,.0f} MB{ratio}")
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", type=Path, required=True, help="a tools/bench_calibration.py --out")
    parser.add_argument("--models", default="demo,resnet8,kws,mobilenet224")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="where the JSON and Markdown go (default: --from)")
    parser.add_argument("--work", type=Path, help="where mobilenet_v2_224.keras is (default: --from's parent)")
    parser.add_argument("--aeq-python", type=Path, help="ai-edge-quantizer's virtualenv python (as bench_calibration)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.source = args.source.resolve()
    args.out = (args.out or args.source).resolve()
    args.work = (args.work or args.source.parent).resolve()
    args.aeq_python = args.aeq_python or default_aeq_python(args.work)
    if args.aeq_python is None:
        print("no ai-edge-quantizer virtualenv (see tools/aeq_convert.py): its row is left out", file=sys.stderr)
    compile_package()
    results = realdata.run_models(args.models, lambda name: bench_model(name, args))
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_1min": os.getloadavg()[0]}
    realdata.write_results(args.out, "memory_floor", results, markdown, **meta)


if __name__ == "__main__":
    main()
