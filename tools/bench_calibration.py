"""Benchmark: edgeconv against the stock TFLite converter and Google's ai-edge-quantizer, in one run.

For each model, on the same preprocessed calibration samples, each conversion is a fresh process,
timed wall-clock and with its peak RSS (``ru_maxrss`` from ``os.wait4``, which on Linux covers the
process and the children it waited for). Rows:

- ``stock``: the stock ``TFLiteConverter`` (tools/stock_convert.py: ``Optimize.DEFAULT``,
  ``representative_dataset`` of one sample a step, ``TFLITE_BUILTINS_INT8``, int8 input and output).
- ``ours-convert``: ``edgeconv convert`` doing conversion only (no evaluation, ``benchmark.enabled=false``,
  ``analysis.samples=0``), with an empty cache folder of its own every repeat.
- ``ours-default``: ``edgeconv convert --recipe R`` as a user runs it (evaluation, per-layer analysis and
  host latency included), with an empty cache folder every repeat.
- ``ours-warm``: the same command again (same output and cache folders) right after ``ours-default``; the
  row says what the run took from the caches (report.json's ``cache`` section) and which steps it ran.
- ``ours-<method>``: the same command with ``--set calibration.method=<method>`` on that cache (each
  method follows the previous one); the row says what it reused.
- ``ours-tflite``: ``edgeconv convert`` doing conversion only from the float .tflite the ``aeq`` row reads
  (``--set model=...``), with an empty cache folder every repeat: the same input as ai-edge-quantizer's.
- ``aeq``: ai-edge-quantizer's documented static int8 recipe (tools/aeq_convert.py, in its own virtualenv)
  on the float .tflite the stock converter makes from the source, with its ``serving_default`` signature,
  which ai-edge-quantizer's calibration needs. It cannot read Keras or SavedModel sources: that float
  conversion is made once beforehand and not timed.

The rows run interleaved, every repeat once each in the order above, and every timing is given as min
and median over the repeats; ratios are medians over the stock converter's median. Accuracy (int8 top-1
and top-1 agreement with the float model on the held-out data) is measured afterwards, here, with the
same runtime for every model; every repeat's int8 bytes are hashed, and the table says when a row's
repeats did not write identical models. The 1-minute load average before each repeat is recorded:
other work on the machine lengthens wall times.

    python tools/bench_calibration.py [--models demo,resnet8,kws,mobilenet224] [--repeats 3]
        [--out build/bench] [--work DIR] [--methods entropy,mse,percentile,auto] [--aeq-python PY]

``mobilenet224`` is MobileNetV2 (alpha 1.0, 224x224) on the digits, 200 calibration samples; its
model is taken from ``--work`` (default: ``--out``) and trained there once (seeded) when missing.
Writes ``calibration.json`` and ``calibration.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converter.recipe import Recipe, load_recipe  # noqa: E402
from converter.runtime.accuracy import compare  # noqa: E402
from converter.runtime.model import TFLiteModel  # noqa: E402
from converter.sources.load import load_model  # noqa: E402
from tools import realdata  # noqa: E402
from tools.realdata import samples  # noqa: E402

DEFAULT_METHODS = "entropy,mse,percentile,auto"
DEMO_RECIPE = ROOT / "recipes" / "mobilenet.yaml"
STOCK_SETTINGS = "Optimize.DEFAULT, representative_dataset, TFLITE_BUILTINS_INT8, int8 I/O"
AEQ_SETTINGS = "recipe.static_wi8_ai8() (its min/max algorithm, weights per channel), calibrate() with its defaults"


def mobilenet224_recipe(work: Path, out: Path) -> Path:
    """A recipe for MobileNetV2 (alpha 1.0, 224x224) on the digits; the model is trained once (seeded) if missing."""
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
    recipe = out / "mobilenet224.yaml"
    data = ROOT / "recipes" / "data"
    recipe.write_text(
        "version: 1\nname: mobilenet224\n"
        f"model: {model}\n"
        "input: {resize: [224, 224], scale: 0.00392156862745098}\n"
        f"data:\n  calibration: {{path: {data / 'digits.npz'}, samples: 200}}\n"
        f"  evaluation: {{path: {data / 'digits_test.npz'}}}\n"
    )
    return recipe


def recipe_for(name: str, work: Path, out: Path) -> tuple[Recipe, list[str]]:
    """The model's recipe and the ``--set`` overrides the command line needs to find its files."""
    if name == "mobilenet224":
        return load_recipe(mobilenet224_recipe(work, out)), []
    if name == "demo":
        return load_recipe(DEMO_RECIPE), []
    if name in realdata.REAL_PATHS:
        return load_recipe(realdata.recipe_path(name), realdata.overrides(name)), realdata.overrides(name)
    raise SystemExit(f"unknown model {name!r}: expected demo, resnet8, kws or mobilenet224")


# Measures one command from a fresh, small process: a child forked from this one (which holds TensorFlow
# and the models) would inherit this process's peak RSS in its ru_maxrss, which survives exec.
WRAPPER = """
import json, os, sys, time
log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "maxrss_kb": usage.ru_maxrss, "exit": os.waitstatus_to_exitcode(status)}))
"""


def run_child(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Wall seconds and peak RSS (MB: ``ru_maxrss`` via ``os.wait4``) of one fresh process, output to ``log``."""
    wrapper = subprocess.run(
        [sys.executable, "-I", "-S", "-c", WRAPPER, str(log), *cmd], env=env, capture_output=True, text=True
    )
    if wrapper.returncode != 0:
        raise RuntimeError(f"the timing wrapper failed: {wrapper.stderr[-2000:]}")
    result = json.loads(wrapper.stdout)
    if result["exit"] != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(cmd[:5])}… exited {result['exit']} (log {log}):\n{tail}")
    return {"seconds": result["seconds"], "peak_mb": result["maxrss_kb"] / 1024}  # Linux reports kilobytes


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reuse_note(report: dict[str, Any]) -> str:
    """What a run took from the caches and what it made again, from its report.json's ``cache`` section."""
    cache = report.get("cache") or {}
    q = cache.get("quantized_models") or {}
    hits, total = q.get("hits", 0), q.get("hits", 0) + q.get("misses", 0)
    return "; ".join(
        [
            f"float model {'from the cache' if cache.get('float_model') else 'converted'}",
            f"statistics {'from the cache' if cache.get('statistics') else 'computed'}",
            f"{hits} of {total} quantized models from the cache",
            "TensorFlow imported" if cache.get("tensorflow_loaded") else "TensorFlow not imported",
        ]
    )


def step_medians(runs: list[dict[str, Any]]) -> str:
    """Each step's median seconds over the repeats, from report.json's ``steps`` (where the time went)."""
    names = list(dict.fromkeys(s["name"] for r in runs for s in r["steps"]))
    medians = {
        n: statistics.median(sum(s["seconds"] for s in r["steps"] if s["name"] == n) for r in runs) for n in names
    }
    return ", ".join(f"{n} {v:.1f}" for n, v in medians.items() if v >= 0.05)


def io_types(model: Path) -> dict[str, Any]:
    """Input and output types (ai-edge-quantizer picks its own) and the float range the first input holds."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model))
    kinds = [interpreter.get_input_details(), interpreter.get_output_details()]
    first = kinds[0][0]
    scale, zero = first["quantization"]
    info = np.iinfo(first["dtype"]) if np.dtype(first["dtype"]).kind in "iu" else None
    return {
        "io": "/".join(",".join(np.dtype(d["dtype"]).name for d in details) for details in kinds),
        # e.g. a calibrator that averages per-sample ranges clips the input: compare with the data's range
        "input_range": [(info.min - zero) * scale, (info.max - zero) * scale] if info and scale else None,
    }


def accuracy(float_out: np.ndarray, model: Path, x: np.ndarray, y: np.ndarray | None) -> dict[str, Any]:
    try:
        acc = compare([float_out], [TFLiteModel(model_path=str(model)).predict(x)[0]], y)
    except Exception as e:  # a peer's model that does not prepare is a result, not a crash of the benchmark
        return {"int8": None, "agreement": None, "error": f"{type(e).__name__}: {e}"[:300]}
    return {"int8": acc.int8, "agreement": acc.agreement, "samples": acc.samples}


class Row:
    """One converter configuration: its command, its output model, and its repeats."""

    def __init__(self, key: str, label: str, settings: str, cmd: list[str], env: dict[str, str], model: Path):
        self.key, self.label, self.settings, self.cmd, self.env, self.model = key, label, settings, cmd, env, model
        self.runs: list[dict[str, Any]] = []

    def run(self, folder: Path) -> None:
        result = run_child(self.cmd, self.env, folder / f"{self.key}.log")
        result["sha256"], result["bytes"] = sha256(self.model), self.model.stat().st_size
        if self.key.startswith("ours"):
            data = json.loads((self.model.parent / "report.json").read_text())
            result.update(steps=data["steps"], cache=data.get("cache"), note=reuse_note(data))
        self.runs.append(result)
        # Several rows write into the same output folder (a user's re-run does): keep this row's model.
        shutil.copyfile(self.model, self.kept(folder))

    def kept(self, folder: Path) -> Path:
        return folder / "int8" / f"{self.key}.tflite"

    def summary(self) -> dict[str, Any]:
        seconds = [r["seconds"] for r in self.runs]
        peaks = [r["peak_mb"] for r in self.runs]
        notes = sorted({r["note"] for r in self.runs if "note" in r})
        return {
            "key": self.key,
            "converter": self.label,
            "settings": self.settings,
            "seconds_min": min(seconds),
            "seconds_median": statistics.median(seconds),
            "peak_mb_min": min(peaks),
            "peak_mb_median": statistics.median(peaks),
            "peak_mb_max": max(peaks),
            "identical_models": len({r["sha256"] for r in self.runs}) == 1,
            "reuses": " / ".join(notes) if notes else None,
            "step_seconds_median": step_medians(self.runs) if notes else None,
            "bytes": self.runs[-1]["bytes"],
            "repeats": self.runs,
        }


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    folder = out / name
    (folder / "int8").mkdir(parents=True, exist_ok=True)
    recipe, sets = recipe_for(name, args.work, out)
    model = load_model(recipe.model)
    cal_x, _, _ = samples(recipe, "calibration", model.input_shape)
    eval_x, eval_y, _ = samples(recipe, "evaluation", model.input_shape)
    np.save(folder / "calibration.npy", cal_x)
    aeq_float = folder / "stock_float.tflite"
    if args.aeq_python is not None:  # ai-edge-quantizer's input, as its users make it (with a signature); untimed
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        stock = [sys.executable, str(ROOT / "tools" / "stock_convert.py")]
        subprocess.run([*stock, "--float", str(recipe.model), str(aeq_float)], check=True, env=env)
    float_out = TFLiteModel(model_content=model.float_tflite).predict(eval_x)[0]
    float_top1 = float(np.mean(np.argmax(float_out, 1) == eval_y)) if eval_y is not None else None
    del model

    base = {**os.environ, "PYTHONPATH": str(ROOT)}
    edgeconv = [sys.executable, "-m", "converter", "convert", "--recipe", str(recipe.source), "--force"]
    default_sets = [f"--set={o}" for o in sets]
    convert_only = ["--set=data.evaluation=null", "--set=benchmark.enabled=false", "--set=analysis.samples=0"]
    if name in realdata.REAL_PATHS:
        convert_only += [f"--set={o}" for o in realdata.overrides(name, evaluation=False)]
    cold_env = {**base, "EDGECONV_CACHE_DIR": str(folder / "cache-convert")}
    warm_env = {**base, "EDGECONV_CACHE_DIR": str(folder / "cache-default")}
    rows = [
        Row(
            "stock",
            "stock TFLiteConverter",
            STOCK_SETTINGS,
            [
                sys.executable,
                str(ROOT / "tools" / "stock_convert.py"),
                str(recipe.model),
                str(folder / "calibration.npy"),
                str(folder / "stock_int8.tflite"),
            ],
            base,
            folder / "stock_int8.tflite",
        ),
        Row(
            "ours-convert",
            "edgeconv, conversion only, cold cache",
            "no evaluation, benchmark.enabled=false, analysis.samples=0; empty cache folder",
            [*edgeconv, "--out", str(folder / "ours-convert"), *convert_only],
            cold_env,
            folder / "ours-convert" / "model_int8.tflite",
        ),
        Row(
            "ours-default",
            "edgeconv convert (default), cold cache",
            "the recipe as is: evaluation, per-layer analysis, host latency; empty cache folder",
            [*edgeconv, "--out", str(folder / "ours-default"), *default_sets],
            warm_env,
            folder / "ours-default" / "model_int8.tflite",
        ),
        Row(
            "ours-warm",
            "edgeconv convert (default), warm re-run, unchanged recipe",
            "same command and cache folder as the cold default run, nothing changed",
            [*edgeconv, "--out", str(folder / "ours-default"), *default_sets],
            warm_env,
            folder / "ours-default" / "model_int8.tflite",
        ),
    ]
    for method in args.methods:
        rows.append(
            Row(
                f"ours-{method}",
                f"edgeconv convert (default), method change to {method}, warm",
                f"--set calibration.method={method}, cache folder of the runs above",
                [
                    *edgeconv,
                    "--out",
                    str(folder / "ours-default"),
                    *default_sets,
                    f"--set=calibration.method={method}",
                ],
                warm_env,
                folder / "ours-default" / "model_int8.tflite",
            )
        )
    aeq = args.aeq_python is not None
    if aeq:
        rows.append(
            Row(
                "ours-tflite",
                "edgeconv, conversion only, from the float .tflite",
                "the float .tflite ai-edge-quantizer reads (--set model=...), conversion only; empty cache folder",
                [*edgeconv, "--out", str(folder / "ours-tflite"), *convert_only, f"--set=model={aeq_float}"],
                {**base, "EDGECONV_CACHE_DIR": str(folder / "cache-tflite")},
                folder / "ours-tflite" / "model_int8.tflite",
            )
        )
        rows.append(
            Row(
                "aeq",
                "ai-edge-quantizer",
                AEQ_SETTINGS + "; from the stock converter's float .tflite (made beforehand, not timed)",
                [
                    str(args.aeq_python),
                    str(ROOT / "tools" / "aeq_convert.py"),
                    str(aeq_float),
                    str(folder / "calibration.npy"),
                    str(folder / "aeq_int8.tflite"),
                ],
                {k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                folder / "aeq_int8.tflite",
            )
        )

    loads = []
    for repeat in range(args.repeats):
        loads.append(os.getloadavg()[0])
        for cache in ("cache-convert", "cache-default", "cache-tflite"):
            shutil.rmtree(folder / cache, ignore_errors=True)
        for row in rows:
            row.run(folder)
            last = row.runs[-1]
            print(
                f"{name:13} #{repeat + 1} {row.key:16} {last['seconds']:6.1f} s {last['peak_mb']:7.0f} MB",
                file=sys.stderr,
                flush=True,
            )
    loads.append(os.getloadavg()[0])

    results = [row.summary() for row in rows]
    for row, result in zip(rows, results, strict=True):
        result.update(io_types(row.kept(folder)), **accuracy(float_out, row.kept(folder), eval_x, eval_y))
    return {
        "model": name,
        "source": str(recipe.model),
        "calibration_samples": len(cal_x),
        "calibration_range": None if cal_x.dtype.names else [float(cal_x.min()), float(cal_x.max())],
        "evaluation_samples": len(eval_x),
        "float_top1": float_top1,
        "repeats": args.repeats,
        "load_average_1min": loads,
        "rows": results,
    }


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | converter | wall s min / med | × stock | peak MB | int8 bytes | I/O | int8 top-1 | agreement |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in results:
        stock = next(row for row in r["rows"] if row["key"] == "stock")["seconds_median"]
        head = f"{r['model']} (float {pct(r['float_top1'])}, n={r['evaluation_samples']})"
        for row in r["rows"]:
            top1 = f"not run: {row['error']}" if row.get("error") else pct(row["int8"])
            lines.append(
                f"| {head} | {row['converter']} | {row['seconds_min']:.1f} / {row['seconds_median']:.1f} | "
                f"{row['seconds_median'] / stock:.2f} | {row['peak_mb_max']:,.0f} | {row['bytes']:,} | {row['io']} | "
                f"{top1} | {pct(row['agreement'])} |"
            )
            if row["reuses"]:
                notes.append(
                    f"- {r['model']}, {row['converter']}: {row['reuses']}; "
                    f"steps (median s): {row['step_seconds_median'] or 'none over 0.05 s'}"
                )
            if not row["identical_models"]:
                notes.append(f"- {r['model']}, {row['converter']}: the repeats wrote different models")
        ranges = [
            f"{row['key']} [{row['input_range'][0]:.4g}, {row['input_range'][1]:.4g}]"
            for row in r["rows"]
            if row["key"] in ("stock", "ours-convert", "ours-tflite", "aeq") and row.get("input_range")
        ]
        if r.get("calibration_range") and ranges:
            lo, hi = r["calibration_range"]
            notes.append(f"- {r['model']}: calibration data [{lo:.4g}, {hi:.4g}]; int8 input range {', '.join(ranges)}")
        loads = ", ".join(f"{x:.1f}" for x in r["load_average_1min"])
        notes.append(f"- {r['model']}: {r['repeats']} repeats; 1-minute load average before each, and after: {loads}")
    settings = {row["converter"]: row["settings"] for r in results for row in r["rows"]}
    notes += [f"- {name}: {text}" for name, text in settings.items()]
    return "\n".join(lines) + "\n\nPeak RSS is the largest over the repeats.\n\n" + "\n".join(notes) + "\n"


def default_aeq_python(work: Path) -> Path | None:
    env = os.environ.get("EDGECONV_AEQ_PYTHON")
    if env:
        return Path(env)
    candidate = work / "aeq-venv" / "bin" / "python"
    return candidate if candidate.is_file() else None


def compile_package() -> None:
    """Byte-compile edgeconv as ``pip install`` does for an installed package.

    An editable checkout run with ``PYTHONDONTWRITEBYTECODE`` set compiles every edgeconv module again on every
    run (0.3 s of a conversion here), which no installed copy does; TensorFlow's and Keras's modules, installed
    by pip, are compiled already.
    """
    compileall.compile_dir(ROOT / "converter", quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo,resnet8,kws,mobilenet224")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--work", type=Path, help="where mobilenet_v2_224.keras and aeq-venv are (default: --out)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="warm method-change rows, in order ('' for none)")
    parser.add_argument(
        "--aeq-python",
        type=Path,
        help="ai-edge-quantizer's virtualenv python (default: $EDGECONV_AEQ_PYTHON, else WORK/aeq-venv/bin/python)",
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.out = args.out.resolve()
    args.work = (args.work or args.out).resolve()
    args.methods = [m for m in args.methods.split(",") if m]
    args.aeq_python = args.aeq_python or default_aeq_python(args.work)
    if args.aeq_python is not None:
        args.aeq_python = args.aeq_python.absolute()
    if args.aeq_python is None:
        print("no ai-edge-quantizer virtualenv (see tools/aeq_convert.py): its rows are left out", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    compile_package()
    names = [n for n in args.models.split(",") if n]
    missing = [n for n in names if n in realdata.REAL_PATHS and not realdata.REALDATA.is_dir()]
    if missing:
        print(f"skipping {', '.join(missing)}: {realdata.REALDATA} not found", file=sys.stderr)
    results = []
    for name in names:
        if name in missing:
            continue
        results.append(bench_model(name, args))
        write(args.out, results)  # after every model, so a long run keeps what it measured
    print(markdown(results))


def write(out: Path, results: list[dict[str, Any]]) -> None:
    machine = {
        "machine": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "bytecode": "edgeconv byte-compiled before the runs (compile_package), as pip install does",
    }
    (out / "calibration.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    (out / "calibration.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
