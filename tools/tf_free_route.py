"""Evaluation: quantize our float .tflite with ai-edge-quantizer fed our ranges, instead of TensorFlow's quantizer.

For each benchmark model, edgeconv's own pipeline (``python -m converter convert``, no
latency runs or per-layer analysis) gives the float model, the chosen per-tensor ranges (``report.json``
``calibration.tensors``) and our int8 model. The same float model and exactly those ranges then go to

- ours: ``tflite_quantizer.quantize_with_ranges`` in a fresh process (TensorFlow import + MLIR quantizer);
  its output must equal the pipeline's int8 byte for byte, which proves the ranges are the ones we used;
- ai-edge-quantizer: ``tools/aeq_with_ranges.py`` in its own virtualenv (``--aeq-python``), with our
  ranges as its calibration result (its moving-average min/max never runs); it writes int8 model I/O itself.

Both children run ``--repeats`` times interleaved (ours, AEQ, ours, AEQ, ...): wall time, the child's phases
and its peak RSS (``os.wait4``). Both int8 models are then scored here on the recipe's evaluation data with
the runtime edgeconv uses (top-1, agreement with float), compared with each other output by output, and
inspected: bytes, whether they prepare in
LiteRT and in TFLite Micro, ops, float ops left, bias dtypes, and how many activation tensors got the same
scale and zero point.

    python tools/tf_free_route.py [--models mobilenet,resnet8,kws,mobilenet224] [--out build/tf-free-route]

Writes ``tf_free_route.json`` and ``tf_free_route.md`` into ``--out``; the decision (keep or drop) is in both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converter.analysis.evaluate import evaluate_host  # noqa: E402
from converter.calibration.data import model_inputs, read_samples  # noqa: E402
from converter.recipe import Recipe, load_recipe  # noqa: E402
from converter.runtime.interpreter import make_interpreter  # noqa: E402
from converter.runtime.model import TFLiteModel  # noqa: E402
from converter.tflite.inspect_model import float_ops, list_ops  # noqa: E402
from tools import realdata  # noqa: E402

# python3 -m venv .venv-aeq && .venv-aeq/bin/pip install ai-edge-quantizer
AEQ_PYTHON = Path(os.environ.get("EDGECONV_AEQ_PYTHON", ".venv-aeq/bin/python"))
MOBILENET224 = Path("/work/bench-work/mobilenet_v2_224.keras")
LINEAR = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
TFLM_SAMPLES = 20  # evaluation samples TFLM runs per model (its reference kernels are slow)


def recipe_for(name: str, work: Path) -> tuple[Path, list[str]] | None:
    """Recipe file and ``--set`` overrides of a benchmark model; None when its files are not on this machine."""
    if name == "mobilenet":
        return ROOT / "recipes" / "mobilenet.yaml", []
    if name in realdata.REAL_PATHS:
        return (realdata.recipe_path(name), realdata.overrides(name)) if realdata.REALDATA.is_dir() else None
    if name == "mobilenet224":
        if not MOBILENET224.is_file():
            return None
        from tools.bench_calibration import mobilenet224_recipe

        work.mkdir(parents=True, exist_ok=True)
        link = work / MOBILENET224.name
        if not link.exists():
            link.symlink_to(MOBILENET224)
        return mobilenet224_recipe(work, work), []  # finds the model in work: trains nothing
    raise SystemExit(f"unknown model {name!r}")


def spawn(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Wall time, peak RSS (MB) and the last JSON line of stdout of one child (reaped by ``os.wait4``)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # tell Popen it is reaped
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}… exit {proc.returncode}:\n{err.decode(errors='replace')[-3000:]}")
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    return {"wall": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "child": json.loads(lines[-1]) if lines else {}}


def child_ours(float_path: Path, ranges_path: Path, out_path: Path) -> None:
    """The "ours" child: TensorFlow's converter import and ``quantize_with_ranges``, no cache; prints JSON."""
    t0 = time.perf_counter()
    from converter.quantization.tflite_quantizer import import_tensorflow, quantize_with_ranges

    import_tensorflow()
    t_import = time.perf_counter() - t0
    spec = json.loads(ranges_path.read_text())
    t1 = time.perf_counter()
    model = quantize_with_ranges(
        float_path.read_bytes(),
        {int(k): (float(v[0]), float(v[1])) for k, v in spec["by_index"].items()},
        input_type=spec["input_type"],
        output_type=spec["output_type"],
        per_channel=spec["per_channel"],
        cache=False,
    )
    t_quantize = time.perf_counter() - t1
    out_path.write_bytes(model)
    print(json.dumps({"seconds": {"import": round(t_import, 3), "quantize": round(t_quantize, 3)}}))


def activation_params(model: bytes) -> dict[str, tuple[tuple[float, ...], tuple[int, ...], str]]:
    """Name -> (scales, zero points, dtype) of every tensor an op writes, and of the model inputs."""
    interpreter = make_interpreter(model_content=model, delegate="none")
    written = {int(i) for op in interpreter._get_ops_details() for i in op["outputs"]}  # noqa: SLF001
    written |= {int(d["index"]) for d in interpreter.get_input_details()}
    out = {}
    for d in interpreter.get_tensor_details():
        if int(d["index"]) in written:
            q = d["quantization_parameters"]
            out[d["name"]] = (
                tuple(float(s) for s in q["scales"]),
                tuple(int(z) for z in q["zero_points"]),
                np.dtype(d["dtype"]).name,
            )
    return out


def constants(model: bytes) -> dict[str, np.ndarray]:
    """Name -> data of every tensor no op writes and that is not a model input (weights, biases, shapes)."""
    interpreter = make_interpreter(model_content=model, delegate="none")
    written = {int(i) for op in interpreter._get_ops_details() for i in op["outputs"]}  # noqa: SLF001
    written |= {int(d["index"]) for d in interpreter.get_input_details()}
    out = {}
    for d in interpreter.get_tensor_details():
        if int(d["index"]) not in written:
            try:
                out[d["name"]] = np.array(interpreter.get_tensor(d["index"]))
            except ValueError:  # a tensor without data (optional input)
                continue
    return out


def compare_params(ours: bytes, aeq: bytes) -> dict[str, Any]:
    """How many activation tensors (by name) got identical int8 parameters, and constants identical data."""
    ca, cb = constants(ours), constants(aeq)
    shared = sorted(set(ca) & set(cb))
    data_same = [n for n in shared if ca[n].dtype == cb[n].dtype and np.array_equal(ca[n], cb[n])]
    data_diff = [
        {
            "name": n,
            "dtype": [ca[n].dtype.name, cb[n].dtype.name],
            "values_differing": int(np.sum(ca[n] != cb[n])) if ca[n].shape == cb[n].shape else None,
            "max_abs_diff": float(np.max(np.abs(ca[n].astype(np.int64) - cb[n].astype(np.int64))))
            if ca[n].shape == cb[n].shape
            else None,
        }
        for n in shared
        if n not in data_same
    ]
    a, b = activation_params(ours), activation_params(aeq)
    common = sorted(set(a) & set(b))
    same = [n for n in common if a[n][:2] == b[n][:2]]
    differ = []
    for n in common:
        if a[n][:2] == b[n][:2]:
            continue
        sa, sb = a[n][0], b[n][0]
        rel = abs(sa[0] - sb[0]) / sa[0] if sa and sb and sa[0] else None
        differ.append({"name": n, "ours": list(a[n]), "aeq": list(b[n]), "scale_rel_diff": rel})
    differ.sort(key=lambda d: -float(d["scale_rel_diff"] or 0))  # type: ignore[arg-type]
    return {
        "activations_ours": len(a),
        "activations_aeq": len(b),
        "same_name": len(common),
        "identical_params": len(same),
        "differing": differ[:8],
        "differing_count": len(differ),
        "constants_same_name": len(shared),
        "constants_identical": len(data_same),
        "constants_differing": data_diff[:8],
    }


def inspect(model: bytes, eval_x: np.ndarray, tflm: bool) -> dict[str, Any]:
    """Bytes, LiteRT and TFLM preparation, ops, float ops left, bias and I/O dtypes."""
    info: dict[str, Any] = {"bytes": len(model)}
    try:
        lite = TFLiteModel(model_content=model, delegate="none")
        lite.predict(eval_x[:1])
        info["litert_prepares"] = True
        info["io"] = [i.dtype for i in lite.inputs] + [o.dtype for o in lite.outputs]
    except (RuntimeError, ValueError) as e:
        info.update(litert_prepares=False, litert_error=str(e)[-300:])
        return info
    ops = list_ops(model)
    counts: dict[str, int] = {}
    for op in ops:
        counts[op.name] = counts.get(op.name, 0) + 1
    info["ops"] = counts
    info["float_ops"] = [f"{op.name}#{op.index}" for op in float_ops(model)]
    biases: dict[str, int] = {}
    for op in ops:
        if op.name in LINEAR and len(op.input_dtypes) > 2 and op.input_dtypes[2] != "none":
            key = f"{op.name}:{op.input_dtypes[2]}"
            biases[key] = biases.get(key, 0) + 1
    info["bias_dtypes"] = biases
    if tflm:
        from converter.targets import tflm_interpreter as tflm_mod

        result = tflm_mod.validate(model, eval_x[:TFLM_SAMPLES])
        info["tflm"] = {
            "prepares": result.loaded,
            "arena_bytes": result.arena_bytes,
            "exact_match": result.exact_match,
            "top1_agreement": result.top1_agreement,
            "error": result.error,
        }
    return info


def stats(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "n": len(values)}


def bench_model(name: str, out: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    folder = out / name
    found = recipe_for(name, folder)
    if found is None:
        print(f"skipping {name}: its files are not on this machine", file=sys.stderr)
        return None
    recipe_file, sets = found
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGECONV_CACHE_DIR": str(folder / "cache")}
    convert_dir = folder / "edgeconv"
    cmd = [sys.executable, "-m", "converter", "convert", "--recipe", str(recipe_file), "--out", str(convert_dir)]
    cmd += ["--force", "--set", "benchmark.enabled=false", "--set", "analysis.samples=0"]
    cmd += [f"--set={s}" for s in sets]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"edgeconv convert {name} exit {done.returncode}:\n{done.stderr[-3000:]}")
    pipeline_seconds = time.perf_counter() - start
    report = json.loads((convert_dir / "report.json").read_text())
    float_path, ours_pipeline = convert_dir / "model_float.tflite", convert_dir / "model_int8.tflite"
    tensors = report["calibration"]["tensors"]
    names = [t["name"] for t in tensors]
    if len(set(names)) != len(names):
        raise RuntimeError(f"{name}: tensor names are not unique; ranges by name would be ambiguous")
    recipe: Recipe = load_recipe(recipe_file, sets)
    q = recipe.quantization
    ranges_path = folder / "ranges.json"
    ranges_path.write_text(
        json.dumps(
            {
                "ranges": {t["name"]: t["range"] for t in tensors},
                "by_index": {str(t["index"]): t["range"] for t in tensors},
                "input_type": q.input_type,
                "output_type": q.output_type,
                "per_channel": q.per_channel,
                "method": report["calibration"]["method"],
            },
            indent=1,
        )
    )
    ours_cmd = [sys.executable, str(Path(__file__).resolve()), "--child-ours", str(float_path), str(ranges_path)]
    aeq_cmd = [str(args.aeq_python), str(ROOT / "tools" / "aeq_with_ranges.py"), str(float_path), str(ranges_path)]
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "aeq": []}
    for i in range(args.repeats):  # interleaved: ours, AEQ, ours, AEQ, ...
        runs["ours"].append(spawn([*ours_cmd, str(folder / f"ours_{i}.tflite")], env))
        runs["aeq"].append(spawn([*aeq_cmd, str(folder / f"aeq_{i}.tflite")], env))
        print(
            f"{name:13} run {i}: ours {runs['ours'][-1]['wall']:.2f}s {runs['ours'][-1]['peak_rss_mb']:.0f} MB, "
            f"aeq {runs['aeq'][-1]['wall']:.2f}s {runs['aeq'][-1]['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    ours_model = (folder / "ours_0.tflite").read_bytes()
    aeq_model = (folder / "aeq_0.tflite").read_bytes()
    stable = all((folder / f"aeq_{i}.tflite").read_bytes() == aeq_model for i in range(args.repeats))
    same_as_pipeline = ours_model == ours_pipeline.read_bytes()

    float_tflite = float_path.read_bytes()
    inputs = model_inputs(TFLiteModel(model_content=float_tflite, delegate="none"))
    ev = recipe.data.evaluation
    assert ev is not None
    eval_x, ds = read_samples(
        ev.path, inputs, recipe.preprocess(), where="evaluation", samples=ev.samples, seed=ev.seed
    )
    scored = {}
    for label, model in (("ours", ours_model), ("aeq", aeq_model)):
        inspected = inspect(model, eval_x, tflm=not args.no_tflm)
        if inspected["litert_prepares"]:
            acc = evaluate_host(float_tflite, model, eval_x, ds.y, metric=ev.metric)
            inspected["accuracy"] = {
                "metric": acc.metric,
                "float": acc.float,
                "int8": acc.int8,
                "agreement": acc.agreement,
                "samples": acc.samples,
            }
        scored[label] = inspected
    exported = folder / "aeq_0.exported.tflite"  # as ai-edge-quantizer wrote it, weights outside the flatbuffer
    if exported.is_file() and not args.no_tflm:
        scored["aeq"]["as_exported"] = inspect(exported.read_bytes(), eval_x, tflm=True).get("tflm")
        scored["aeq"]["as_exported"]["bytes"] = exported.stat().st_size
    same_outputs = None
    if scored["aeq"]["litert_prepares"]:
        a, b = (
            TFLiteModel(model_content=ours_model).predict(eval_x),
            TFLiteModel(model_content=aeq_model).predict(eval_x),
        )
        same_outputs = {
            "equal_values": float(np.mean([np.mean(x == y) for x, y in zip(a, b, strict=True)])),
            "max_abs_diff": float(max(np.max(np.abs(x - y)) for x, y in zip(a, b, strict=True))),
            "top1_agreement": float(np.mean(np.argmax(a[0], 1) == np.argmax(b[0], 1))) if a[0].ndim == 2 else None,
        }
    return {
        "model": name,
        "recipe": str(recipe_file),
        "method": report["calibration"]["method"],
        "ranges": len(tensors),
        "pipeline_seconds": round(pipeline_seconds, 2),
        "ours_equals_pipeline_int8": same_as_pipeline,
        "aeq_deterministic": stable,
        "aeq_unknown_names": runs["aeq"][0]["child"].get("unknown_names"),
        "aeq_external_buffers_inlined": runs["aeq"][0]["child"].get("external_buffers_inlined"),
        "aeq_loaded_tensorflow": runs["aeq"][0]["child"].get("tensorflow_loaded"),
        "timing": {
            label: {
                "wall": stats([r["wall"] for r in rs]),
                "peak_rss_mb": stats([r["peak_rss_mb"] for r in rs]),
                "phases": {k: stats([r["child"]["seconds"][k] for r in rs]) for k in rs[0]["child"]["seconds"]},
            }
            for label, rs in runs.items()
        },
        "ours": scored["ours"],
        "aeq": scored["aeq"],
        "ours_vs_aeq_outputs": same_outputs,
        "params": compare_params(ours_model, aeq_model) if scored["aeq"]["litert_prepares"] else None,
        "faults": faults(scored["aeq"], scored["ours"]),
    }


def faults(info: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """What would stop the AEQ route from replacing ours, whatever its accuracy."""
    found = []
    if not info["litert_prepares"]:
        found.append(f"does not prepare in LiteRT: {info.get('litert_error')}")
        return found
    if info["float_ops"]:
        found.append(f"float ops left: {', '.join(info['float_ops'])}")
    bad = [k for k in info["bias_dtypes"] if not k.endswith(":int32")]
    if bad:
        found.append(f"biases not int32: {', '.join(bad)}")
    if any(t != "int8" for t in info.get("io", [])):
        found.append(f"model I/O not int8: {info['io']}")
    if "tflm" in info and not info["tflm"]["prepares"]:
        found.append(f"does not prepare in TFLite Micro: {info['tflm']['error']}")
    elif "tflm" in info and (info["tflm"]["exact_match"] or 0) < (ours["tflm"]["exact_match"] or 0):
        found.append(f"TFLite Micro agrees less with LiteRT: {info['tflm']['exact_match']} < ours")
    return found


def decide(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Keep only if AEQ is identical or better on every model's metric and agreement, with no fault."""
    reasons = []
    for r in results:
        ours, aeq = r["ours"].get("accuracy"), r["aeq"].get("accuracy")
        if r["faults"]:
            reasons.append(f"{r['model']}: {'; '.join(r['faults'])}")
        if aeq is None or ours is None:
            continue
        if aeq["int8"] < ours["int8"]:
            reasons.append(f"{r['model']}: int8 {aeq['metric']} {aeq['int8']:.4f} < ours {ours['int8']:.4f}")
        if aeq["agreement"] is not None and ours["agreement"] is not None and aeq["agreement"] < ours["agreement"]:
            reasons.append(f"{r['model']}: agreement {aeq['agreement']:.4f} < ours {ours['agreement']:.4f}")
    return {"keep": not reasons and bool(results), "reasons": reasons}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def markdown(results: list[dict[str, Any]], decision: dict[str, Any]) -> str:
    lines = [
        "| model | route | int8 top-1 | agreement | bytes | LiteRT | TFLM | float ops | biases | I/O "
        "| quantize wall s min/med | peak RSS MB | same params |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for label, route in (("ours", "edgeconv (TF MLIR quantizer)"), ("aeq", "ai-edge-quantizer + our ranges")):
            info, t = r[label], r["timing"][label]
            acc = info.get("accuracy") or {}
            tflm = info.get("tflm", {})
            params = r["params"]
            same = f"{params['identical_params']}/{params['same_name']}" if params and label == "aeq" else ""
            lines.append(
                f"| {r['model']} (float {_pct(acc.get('float'))}, n={acc.get('samples')}) | {route} | "
                f"{_pct(acc.get('int8'))} | {_pct(acc.get('agreement'))} | {info['bytes']:,} | "
                f"{'yes' if info['litert_prepares'] else 'NO'} | "
                f"{'' if not tflm else ('yes' if tflm['prepares'] else 'NO')} | {len(info.get('float_ops', []))} | "
                f"{', '.join(f'{k} x{v}' for k, v in info.get('bias_dtypes', {}).items())} | "
                f"{'/'.join(info.get('io', []))} | {t['wall']['min']:.2f} / {t['wall']['median']:.2f} | "
                f"{t['peak_rss_mb']['min']:.0f} / {t['peak_rss_mb']['median']:.0f} | {same} |"
            )
    verdict = "KEEP" if decision["keep"] else "DROP"
    lines += ["", f"Decision: **{verdict}**" + (": " + "; ".join(decision["reasons"]) if decision["reasons"] else "")]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child-ours":
        child_ours(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mobilenet,resnet8,kws,mobilenet224")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "tf-free-route")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--aeq-python", type=Path, default=AEQ_PYTHON, help="python of a venv with ai-edge-quantizer")
    parser.add_argument("--no-tflm", action="store_true", help="skip the TFLite Micro checks")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    aeq_versions = subprocess.run(
        [str(args.aeq_python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True
    ).stdout
    results = [r for n in args.models.split(",") if n and (r := bench_model(n, out, args)) is not None]
    decision = decide(results)
    meta = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "aeq_venv": {p["name"]: p["version"] for p in json.loads(aeq_versions)},
    }
    (out / "tf_free_route.json").write_text(
        json.dumps({"machine": meta, "results": results, "decision": decision}, indent=2) + "\n"
    )
    (out / "tf_free_route.md").write_text(markdown(results, decision))
    print(markdown(results, decision))


if __name__ == "__main__":
    main()
