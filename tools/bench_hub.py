"""The hub conformance zoo: real hub architectures through edgeconv's PyTorch routes, beside the peers' int8.

Each model of ``tools/hub_models.py`` (transformers' own classes from small configs, and a few paper blocks) is
exported to ``.pt2`` and ONNX (opset 17) and quantized seven ways, each in a fresh process with an empty cache, as
``tools/bench_torch_onnx.py`` does for its models: ``edgeconv-pt2``, ``edgeconv-onnx`` and ``edgeconv-tflite``
(``edgeconv convert`` full-integer, int8 I/O, converting only; the last from the float ``.tflite`` that
litert-torch's own ``convert`` writes from the ``.pt2``, as a user of litert-torch has it, channel-first inputs
included), ``litert-torch-pt2e`` (litert-torch's PT2E recipe), ``onnx2tf-int8`` (onnx2tf's full-integer quantization
in the virtualenv of ``edgeconv setup onnx``) and ``aeq-int8`` / ``aeq-int8-minmax`` (ai-edge-quantizer's static
int8 recipe on litert-torch's float ``.tflite``, with its moving-average ranges and with min/max over every sample,
in its own virtualenv given by ``--aeq-python``). Unlike that benchmark, a route that fails is a result, not an
error: its exit code and the first error line a user sees are recorded, and the run goes on. Models have several
inputs (token ids and the attention mask, integers) and several outputs (detection heads): inputs are matched by
name, outputs by shape (a 4-D output may come back channel-last).

Recorded per route, against PyTorch's float outputs on the 200 evaluation samples: exit code, first error line,
whether every op is integer (and which ops still compute in float), the worst output's SQNR and cosine,
argmax agreement with PyTorch (top-1 for classifiers, per cell/pixel for detection and segmentation maps),
top-1 against the labels, the int8 file's bytes, wall seconds and peak RSS.

    python tools/bench_hub.py [--models vit,bert,...] [--out build/bench] [--docs docs/hub-zoo.md]
    python tools/bench_hub.py --docs-only --out build/bench --docs docs/hub-zoo.md   # the page from hub.json

Writes ``hub.json`` and ``hub.md`` into ``--out`` (and, with ``--docs``, the docs page). Each route's recipe,
log and output stay under ``--work`` (default ``--out``/hub-work/<model>/<route>) to reproduce a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converter.runtime.model import TFLiteModel  # noqa: E402
from converter.sources import onnx_setup  # noqa: E402
from converter.tflite.inspect_model import float_ops  # noqa: E402

ROUTES = (
    "edgeconv-pt2",
    "edgeconv-onnx",
    "edgeconv-tflite",
    "litert-torch-pt2e",
    "onnx2tf-int8",
    "aeq-int8",
    "aeq-int8-minmax",
)
TIMEOUT_S = 900  # one route of one model; a hang is recorded as exit 124

STOCK_PT2 = """
import sys, numpy as np, torch, litert_torch
from litert_torch.quantize import pt2e_quantizer, quant_config
from torchao.quantization.pt2e import quantize_pt2e
pt2, cal, out = sys.argv[1:4]
program = torch.export.load(pt2)
example = program.example_inputs[0]
data = np.load(cal)
names = list(data.files)
quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
    pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
module = quantize_pt2e.prepare_pt2e(program.module(), quantizer)
for i in range(len(data[names[0]])):
    module(*(torch.from_numpy(data[n][i : i + 1]) for n in names))
module = quantize_pt2e.convert_pt2e(module, fold_quantize=False)
edge = litert_torch.convert(module, example, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
edge.export(out)
"""

FLOAT_TFLITE = """
import sys, torch, litert_torch
pt2, out = sys.argv[1:3]
program = torch.export.load(pt2)
litert_torch.convert(program.module(), program.example_inputs[0]).export(out)
"""

STOCK_ONNX = """
import json, os, sys, numpy as np, onnx2tf
onnx_path, spec, work = sys.argv[1:4]
spec = json.loads(spec)  # [[input name, calibration .npy (NHWC for images), keep its shape]]
os.chdir(work)
np.save("calibration_image_sample_data_20x128x128x3_float32.npy",
        np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
keep = [name for name, _, k in spec if k]
onnx2tf.convert(input_onnx_file_path=onnx_path, output_folder_path=os.path.join(work, "out"),
                output_integer_quantized_tflite=True, quant_type="per-channel",
                custom_input_op_name_np_data_path=[[name, path, 0.0, 1.0] for name, path, _ in spec],
                keep_shape_absolutely_input_names=keep or None,
                enable_rnn_unroll=True, non_verbose=True, verbosity="error")
"""

# ai-edge-quantizer in its own virtualenv (--aeq-python), on litert-torch's float .tflite: its static int8
# recipe, calibrated through the model's one signature on the same samples (keyed by position, as that model
# names its inputs), each cast to the input's own dtype (token ids stay integer). Its calibration keeps a
# moving average of each step's min and max; "minmax" gives its Calibrator ``qsv_utils.min_max_update``
# instead (the range over every sample, as the other routes take it).
AEQ = """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
from ai_edge_quantizer import calibrator, quantizer, recipe
from ai_edge_quantizer.utils import qsv_utils
float_path, cal_path, out, ranges = sys.argv[1:5]
cal = np.load(cal_path)
interpreter = Interpreter(model_path=float_path)
((key, signature),) = interpreter.get_signature_list().items()
dtypes = {n: interpreter.get_signature_runner(key).get_input_details()[n]["dtype"] for n in signature["inputs"]}
count = len(cal[signature["inputs"][0]])
steps = [{n: cal[n][i : i + 1].astype(dtypes[n]) for n in signature["inputs"]} for i in range(count)]
qt = quantizer.Quantizer(float_path)
qt.load_quantization_recipe(recipe.static_wi8_ai8())
if ranges == "minmax":
    calib = calibrator.Calibrator(float_path, qsv_update_func=qsv_utils.min_max_update)
    calib.calibrate({key: steps}, qt._recipe_manager)
    qsvs = calib.get_model_qsvs()
else:
    qsvs = qt.calibrate({key: steps})
result = qt.quantize(qsvs, enable_progress_report=False)
open(out, "wb").write(bytes(result.quantized_model))
"""

WRAPPER = """
import json, os, signal, sys, time
log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
limit = int(sys.argv[2])
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.setsid()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.execv(sys.argv[3], sys.argv[3:])
def stop(*_):
    os.killpg(pid, signal.SIGKILL)
signal.signal(signal.SIGALRM, stop)
signal.alarm(limit)
_, status, usage = os.wait4(pid, 0)
signal.alarm(0)
code = os.waitstatus_to_exitcode(status)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "maxrss_kb": usage.ru_maxrss, "exit": 124 if code == -9 else code}))
"""


def run_child(cmd: list[str], env: dict[str, str], log: Path, limit: int = TIMEOUT_S) -> dict[str, Any]:
    """Exit code, wall seconds and peak RSS (MB, ``os.wait4``: the process and the children it waited for) of
    one fresh process, its output in ``log``; killed (exit 124) after ``limit`` seconds."""
    wrapper = subprocess.run(
        [sys.executable, "-I", "-S", "-c", WRAPPER, str(log), str(limit), *cmd], env=env, capture_output=True, text=True
    )
    if wrapper.returncode != 0:
        raise RuntimeError(f"the timing wrapper failed: {wrapper.stderr[-2000:]}")
    result = json.loads(wrapper.stdout)
    return {"exit": result["exit"], "seconds": result["seconds"], "peak_mb": result["maxrss_kb"] / 1024}


_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Failure)|[\w.]+Error)\b.*")


def first_error(log: Path, code: int) -> str | None:
    """The error line a user of the route reads first: edgeconv's ``error:`` line, else a Python exception's
    last line (the message, not the traceback), else the log's last line."""
    if code == 0:
        return None
    if code == 124:
        return f"killed after {TIMEOUT_S} s"
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))  # onnx2tf colours its errors
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if re.match(r"^(edgeconv: )?error: ", ln):
            return ln[:400]
    exceptions = [ln for ln in lines if _EXCEPTION.match(ln)]
    if exceptions:
        return exceptions[-1][:400]
    for ln in lines:
        if ln.startswith("ERROR:") and "trace log" not in ln:
            return ln[:400]
    return lines[-1][:400] if lines else f"exit {code}, no output"


def feed(model: TFLiteModel, x: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Each of the model's inputs from ``x``: matched by name (the .tflite input's name contains it), else by
    position; image arrays transposed to channel-last where the model takes it; integers cast to its dtype."""
    names = list(x)
    arrays = []
    for pos, info in enumerate(model.inputs):
        matches = [n for n in names if n == info.name or n in info.name]
        a = x[max(matches, key=len) if matches else names[pos]]
        shape = tuple(info.shape[1:])
        if a.shape[1:] != shape and a.ndim == 4 and (a.shape[2], a.shape[3], a.shape[1]) == shape:
            a = np.ascontiguousarray(a.transpose(0, 2, 3, 1))
        if np.dtype(info.dtype).kind in "iu" and a.dtype.kind in "iu":
            a = a.astype(info.dtype)
        arrays.append(a)
    return arrays


def predict(path: Path, x: dict[str, np.ndarray]) -> list[np.ndarray]:
    model = TFLiteModel(model_path=str(path))
    arrays = feed(model, x)
    outs: list[list[np.ndarray]] = [[] for _ in model.outputs]
    for i in range(len(arrays[0])):
        for slot, value in zip(outs, model.run(*(a[i : i + 1] for a in arrays)), strict=True):
            slot.append(value)
    return [np.concatenate(o) for o in outs]


def match(want: list[np.ndarray], got: list[np.ndarray]) -> list[np.ndarray]:
    """``got`` reordered (and channel-last 4-D outputs transposed back) to line up with PyTorch's outputs."""
    free = list(range(len(got)))
    lined: list[np.ndarray] = []
    for w in want:
        pick = None
        for j in free:
            g = got[j]
            if g.shape == w.shape:
                pick = (j, g)
                break
            if g.ndim == 4 and g.shape == (w.shape[0], w.shape[2], w.shape[3], w.shape[1]):
                pick = (j, g.transpose(0, 3, 1, 2))
                break
            if g.size == w.size and pick is None:
                pick = (j, g.reshape(w.shape))
        if pick is None:
            raise ValueError(f"no output of shape {w.shape} among {[g.shape for g in got]}")
        free.remove(pick[0])
        lined.append(pick[1])
    return lined


def measure(path: Path, x: dict[str, np.ndarray], want: list[np.ndarray], case: Any) -> dict[str, Any]:
    """The int8 model against PyTorch: worst output's SQNR and cosine, argmax agreement, top-1, integer-only."""
    got = match(want, predict(path, x))
    sqnrs, cosines = [], []
    for w, g in zip(want, got, strict=True):
        w64, g64 = w.astype(np.float64), g.astype(np.float64)
        noise = float(np.sum((w64 - g64) ** 2))
        sqnrs.append(float(10 * np.log10(np.sum(w64**2) / noise)) if noise else float("inf"))
        cosines.append(float(np.sum(w64 * g64) / (np.linalg.norm(w64) * np.linalg.norm(g64) or 1.0)))
    axis = case.class_axis
    floats = sorted({op.name for op in float_ops(path.read_bytes())})
    worst = min(sqnrs)
    return {
        "sqnr_db": None if worst == float("inf") else worst,
        "sqnr_db_per_output": [None if s == float("inf") else round(s, 2) for s in sqnrs],
        "cosine": min(cosines),
        "agreement": float(np.mean(got[0].argmax(axis) == want[0].argmax(axis))),
        "top1": float(np.mean(got[0].argmax(axis) == case.labels)) if case.labels is not None else None,
        "full_integer": not floats,
        "float_ops": floats,
        "bytes": path.stat().st_size,
    }


def float_diff(path: Path, x: dict[str, np.ndarray], want: list[np.ndarray]) -> float:
    got = match(want, predict(path, x))
    return max(float(np.max(np.abs(g - w))) for g, w in zip(got, want, strict=True))


def bench_model(
    name: str, work: Path, onnx_python: Path | None, routes: tuple[str, ...], aeq_python: Path | None = None
) -> dict[str, Any]:
    from tools import hub_models

    started = time.perf_counter()
    case = hub_models.case(name)
    want = hub_models.torch_outputs(case)
    folder = work / name
    pt2, onnx_path = hub_models.export(case, folder)
    build_s = time.perf_counter() - started
    cal: dict[str, Any] = dict(case.cal)  # (Any: numpy's stub types savez's keywords as its own options)
    np.savez(folder / "cal.npz", **cal)
    evaluation: dict[str, Any] = {**case.eval_x, **({"y": case.labels} if case.labels is not None else {})}
    np.savez(folder / "eval.npz", **evaluation)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    x = case.eval_x
    result: dict[str, Any] = {
        "model": name,
        "family": case.family,
        "source": hub_models.SOURCE[name],
        "inputs": {k: [list(v.shape[1:]), str(v.dtype)] for k, v in case.cal.items()},
        "outputs": [list(w.shape[1:]) for w in want],
        "parameters": sum(p.numel() for p in case.module.parameters()),
        "samples": len(want[0]),
        "torch_top1": float(np.mean(want[0].argmax(case.class_axis) == case.labels))
        if case.labels is not None
        else None,
        "build_seconds": round(build_s, 1),
        "routes": {},
    }
    for route in routes:
        if route in ("edgeconv-onnx", "onnx2tf-int8") and onnx_python is None:
            continue
        if route.startswith("aeq-int8") and aeq_python is None:
            continue
        run = folder / route
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir()
        float_model: Path | None = None
        from_tflite = route in ("edgeconv-tflite", "aeq-int8", "aeq-int8-minmax")
        source = {"edgeconv-pt2": pt2, "edgeconv-onnx": onnx_path}.get(route, run / "float.tflite")
        if from_tflite:  # litert-torch's float model first, its time apart from ours
            made = run_child([sys.executable, "-c", FLOAT_TFLITE, str(pt2), str(source)], env, run / "float.txt")
            if made["exit"] != 0:
                failed = {**made, "error": "litert-torch: " + (first_error(run / "float.txt", made["exit"]) or "")}
                result["routes"][route] = failed
                print(f"{name:18} {route:18} {json.dumps(failed)}", flush=True)
                continue
        cal_path = folder / "cal.npz"
        if from_tflite:  # litert-torch names the inputs by position (args_0, ...), not forward's
            cal_path = run / "cal.npz"
            positional: dict[str, Any] = {f"args_{i}": a for i, a in enumerate(case.cal.values())}
            np.savez(cal_path, **positional)
        if route.startswith("edgeconv"):
            recipe = {
                "version": 1,
                "name": f"{name}-{route}",
                "model": str(source),
                "data": {"calibration": {"path": str(cal_path)}},
                "quantization": {"input_type": "int8", "output_type": "int8"},
                "benchmark": {"enabled": False},
                "analysis": {"samples": 0},
            }
            (run / "recipe.yaml").write_text(json.dumps(recipe, indent=1))
            cmd = [sys.executable, "-m", "converter", "convert", "--recipe", str(run / "recipe.yaml")]
            cmd += ["--out", str(run / "out")]
            cost = run_child(cmd, {**env, "EDGECONV_CACHE_DIR": str(run / "cache")}, run / "log.txt")
            int8, float_model = run / "out" / "model_int8.tflite", run / "out" / "model_float.tflite"
        elif route.startswith("aeq-int8"):
            assert aeq_python is not None
            int8 = run / "int8.tflite"
            ranges = "minmax" if route.endswith("minmax") else "default"
            cmd = [str(aeq_python), "-c", AEQ, str(source), str(cal_path), str(int8), ranges]
            cost = run_child(cmd, env, run / "log.txt")
        elif route == "litert-torch-pt2e":
            int8 = run / "int8.tflite"
            cmd = [sys.executable, "-c", STOCK_PT2, str(pt2), str(folder / "cal.npz"), str(int8)]
            cost = run_child(cmd, env, run / "log.txt")
        else:
            assert onnx_python is not None
            spec = []
            for input_name, a in case.cal.items():
                if a.ndim == 4:
                    a = np.ascontiguousarray(a.transpose(0, 2, 3, 1))
                np.save(run / f"cal_{input_name}.npy", a)
                spec.append([input_name, str(run / f"cal_{input_name}.npy"), a.ndim != 4])
            cmd = [str(onnx_python), "-c", STOCK_ONNX, str(onnx_path), json.dumps(spec), str(run)]
            cost = run_child(cmd, {**env, "CUDA_VISIBLE_DEVICES": "-1"}, run / "log.txt")
            int8 = run / "out" / "model_full_integer_quant.tflite"
            float_model = run / "out" / "model_float32.tflite"
        row: dict[str, Any] = {**cost, "error": first_error(run / "log.txt", cost["exit"])}
        if cost["exit"] == 0 and not int8.exists():
            row["error"] = f"exit 0 but no int8 model ({int8.name})"
        if int8.exists():
            try:
                row.update(measure(int8, x, want, case))
            except Exception as e:  # noqa: BLE001 - a model the runtime cannot run is a result too
                row["error"] = row["error"] or f"measuring the int8 model: {type(e).__name__}: {str(e)[:300]}"
        if float_model is not None and float_model.exists():
            try:
                row["float_vs_torch_max_abs"] = float_diff(float_model, x, want)
            except Exception as e:  # noqa: BLE001
                row["float_vs_torch_max_abs"] = None
                row["float_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        result["routes"][route] = row
        print(f"{name:18} {route:18} {json.dumps(row)}", flush=True)
    return result


def versions() -> dict[str, Any]:
    names = ("torch", "transformers", "litert-torch", "tensorflow", "ai-edge-litert", "onnx")
    got: dict[str, Any] = {}
    for n in names:
        try:
            got[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            got[n] = None
    return got


def _cell(r: dict[str, Any] | None) -> str:
    """One route's result in a table cell: exit code, integer-only, worst SQNR, argmax agreement."""
    if r is None:
        return "—"
    if "sqnr_db" not in r:
        if r["exit"] == 0:  # an int8 model written that LiteRT cannot run
            select = "Select TensorFlow op" in (r.get("error") or "")
            return f"exit 0, **not runnable** ({'TF Select ops' if select else 'the second table says why'})"
        return f"**exit {r['exit']}**"
    sqnr = "exact" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f} dB"
    integer = "int" if r["full_integer"] else f"float: {', '.join(r['float_ops'][:3])}"
    lead = f"exit {r['exit']}, " if r["exit"] else ""
    return f"{lead}{integer}, {sqnr}, {r['agreement']:.1%}"


def markdown(doc: dict[str, Any]) -> str:
    routes = [r for r in ROUTES if any(r in res["routes"] for res in doc["results"])]
    lines = [
        "| model | family | inputs | PyTorch top-1 | " + " | ".join(f"`{r}`" for r in routes) + " |",
        "|---|---|---|---|" + "---|" * len(routes),
    ]
    for res in doc["results"]:
        inputs = ", ".join(
            f"{k} {'×'.join(map(str, s))}{' ' + d if d.startswith('int') else ''}"
            for k, (s, d) in res["inputs"].items()
        )
        cells = " | ".join(_cell(res["routes"].get(r)) for r in routes)
        top1 = "—" if res["torch_top1"] is None else f"{res['torch_top1']:.1%}"
        lines.append(f"| {res['model']} | {res['family']} | {inputs} | {top1} | {cells} |")
    failures = [
        (res["model"], route, r)
        for res in doc["results"]
        for route, r in res["routes"].items()
        if r.get("error") or not r.get("full_integer", False) or (r.get("float_vs_torch_max_abs") or 0) > 1e-3
    ]
    if failures:
        lines += ["", "| model | route | exit | first error line / float ops |", "|---|---|---|---|"]
        for model, route, r in failures:
            what = r.get("error") or ""
            if not what and not r.get("full_integer", False):
                what = f"float ops: {', '.join(r.get('float_ops', []))}"
            if (r.get("float_vs_torch_max_abs") or 0) > 1e-3:
                what = f"{what}; " if what else ""
                what += f"float reference off PyTorch by {r['float_vs_torch_max_abs']:.2g} (max abs), no warning"
            if "Select TensorFlow op" in what:
                what = "the int8 model holds TF Select (Flex) ops: LiteRT's interpreter cannot run it"
            what = what.replace(str(ROOT) + "/", "").replace("|", "\\|")
            what = what if len(what) <= 240 else what[:240] + "…"
            lines.append(f"| {model} | `{route}` | {r['exit']} | {what} |")
    return "\n".join(lines) + "\n"


# Where edgeconv misses the zoo's aim (25 dB, or the best peer plus 1 dB, integer-only), which layer and why.
# Prose, with the figures of the run the page was written from: rerunning the zoo means reading it again.
SHORTFALLS = """## Where it falls short, and why

- **ViT, DeiT, DINOv2, BEiT (every route alike):** the first LayerNorm's input. The patch
  embeddings plus the class token and the position embedding are one int8 tensor with one scale, and on these
  images blank patches and the class token spread 0.06-0.07 (standard deviation over channels, ViT) where
  textured patches reach 3.4, so they keep about one int8 step; LayerNorm then divides by their small spread
  and magnifies that error. Without a budget
  the accuracy loop computes every LayerNorm with `L2_NORMALIZATION` (a per-token norm inside one int8 kernel;
  [accuracy](accuracy.md)), which took ViT from 11.6 to 19.7 dB, BEiT from 16.7 to 23.9 dB and DINOv2 from 12.4
  to 17.2 dB, but it cannot give back what the input's single scale lost. int16 activations for those blocks
  would. litert-torch's PT2E, which leaves LayerNorm float, reaches 22.6 dB on ViT but is no closer on the
  others (DINOv2 18.3 dB, DeiT 11.3 dB; on BEiT its observer fails). 16x8 for the whole model
  (`quantization.activations: int16`) is closed to ViT: TensorFlow 2.21's 16x8 quantizer has no kernel for
  the SELECT_V2 litert-torch writes there (DeiT's and DINOv2's graphs have one too), and edgeconv stops with
  exit 2 naming it.
- **Swin, 19.9 dB from `.pt2` (20.1 dB from ONNX):** the evaluation images go where the calibration images never
  went. 11 of the 200 drive a logit below -2.9, the lowest the 200 calibration images produce, down to -5.0; the
  int8 output clips them, and 10 images carry 95 % of the error (the median image is at 29.6 dB). Widening the
  output's range alone to cover them gives 25.5 dB. On the 40 calibration samples held out to measure it, it is at
  30.6 dB, so the accuracy loop, which runs below 20 dB, does not start. Given the evaluation images as
  `data.evaluation`, edgeconv warns that they reach beyond the calibrated ranges and names the output (0.94 % of its
  values clipped, the farthest 36 % of its range beyond it); the remedy is calibration images like them.
- **Swin, SegFormer and PoolFormer from ONNX, converted twice:** at the zoo's 32x32 images each model has a
  [1, 16, 16, 16] tensor, and onnx2tf 1.29.24, which infers layouts by comparing shapes, cannot tell its
  channels from its height and width: its float model computes something else (3.0, 3.5 and 20.7 dB against
  onnxruntime on random inputs; traced node by node, PoolFormer pools over channels and height, Swin slices
  height and channels). edgeconv then converts again with onnx2tf's `param_replacement_file` set so that its
  guess is true (each such Reshape's output transposed to channel-last, and the Transposes and Slices that read
  it adjusted: 17, 3 and 2 replacements) and keeps that model only because the float check then passes (80.1,
  82.8 and 77.8 dB). The second onnx2tf run costs 18-36 s on 2 cores.
- **Against ai-edge-quantizer with min/max ranges (`aeq-int8-minmax`), 0.03-0.7 dB short on nine integer-only
  models** (ResNet 38.2 against 38.4, MobileNetV2 25.5 / 26.2, BiT 29.7 / 30.4, Wav2Vec2 35.4 / 36.0, LR-ASPP 35.6
  / 35.7, U-Net 40.0 / 40.1, and YOLO, Swin and MobileViT-DeepLab by 0.03-0.05 dB): both take min/max activation
  ranges and symmetric per-channel weights, and the difference is the data. Without evaluation data edgeconv
  calibrates on 160 of the 200 samples and holds 40 out to measure itself (see MobileNetV2 below); calibrated on
  all 200 as the peer is (`data.holdout: false`), it gives ResNet 38.4, BiT 30.4, Wav2Vec2 36.0, YOLO 33.5 and
  MobileNetV2 26.3 dB. With its default moving-average ranges (`aeq-int8`) ai-edge-quantizer clips far more and is
  below edgeconv on every model; both variants give EfficientNet 0.0 dB (litert-torch's zero-padded global pool,
  which edgeconv rewrites: [how it converts](how-it-converts.md)) and write for ConvNeXt an int8 model LiteRT
  refuses to open.
- **MobileNetV2, 25.5 dB against onnx2tf's 26.3:** without evaluation data edgeconv holds out 40 of the 200
  calibration samples to measure itself and writes the model it measured; calibrated on all 200
  (`data.holdout: false`), as the peers are, it measures 26.3 dB, and with `percentile` ranges 27.0 dB.
  Calibrating on all 200 after the measurement would not help on average: on the 31 models of this zoo it moved
  the figures by -2.6 to +0.8 dB (mean -0.3).
- **MobileViT-DeepLab, 39.1 dB against onnx2tf's 40.7:** min/max ranges; with `percentile` ranges 40.6 dB (the
  hold-out changes nothing: 39.2 dB on all 200). `percentile` is no better default: on the other models below a
  peer it gives MobileNetV2 +1.6 dB, U-Net +0.3, LR-ASPP +0.2, but LeViT -0.7.
- **U-Net, 40.0 dB against PT2E's 41.2:** TFLite's int8 CONCATENATION takes one scale for all its inputs, and
  TensorFlow's quantizer gives the encoder's skip tensor the decoder concatenation's wider range, which the
  encoder below pays for too; edgeconv keeps that tensor at its own scale and requantizes it into the
  concatenation, as PT2E does (39.8 dB without that step, 40.0 dB with it; 40.4 dB with `mse` ranges). Layer
  by layer, with `mse` ranges, it is as close to float as PT2E's model or closer until the last two
  convolutions. What is left is within the spread of the figure itself: moving that model's six encoder
  activation scales by up to 1 % at random (12 draws) spreads it over 38.7-41.4 dB (standard deviation 0.8 dB).
"""


def docs_page(doc: dict[str, Any]) -> str:
    m, v = doc["machine"], doc["versions"]
    per_route = []
    for route in ROUTES:
        rows = [res["routes"][route] for res in doc["results"] if route in res["routes"]]
        if rows:
            ok = sum(1 for r in rows if r["exit"] == 0 and r.get("full_integer"))
            per_route.append(f"`{route}` {ok} of {len(rows)}")
    skipped = any(route not in res["routes"] for res in doc["results"] for route in ROUTES)
    left_out = (
        " A route left out for a model (—) was not run on it (the PT2E recipe takes about 2 minutes a model on 2 "
        "cores)."
        if skipped
        else ""
    )
    return f"""# Hub model zoo

Real hub architectures through edgeconv from three sources (the `.pt2`, its ONNX export, and the float `.tflite`
litert-torch's own `convert` writes from the `.pt2`, channel-first as a user of litert-torch has it) and, beside
them, the peers' own int8 routes: litert-torch's PT2E recipe for `.pt2`, onnx2tf's full-integer quantization
for ONNX, and ai-edge-quantizer's static int8 recipe (`static_wi8_ai8`, its defaults) for the float `.tflite`.
None comes as `.keras`: `transformers` 5 has no TensorFlow classes left, and the Keras sources have a
zoo of their own ([coverage](coverage.md)).

The models are the model classes of Hugging Face `transformers` built from small configs (a few layers, 32×32
images, 16-token text, 0.1 s of audio), and a few architectures written from their papers' blocks (MobileNetV3
with hardswish, SSD- and YOLO-style detection heads, LR-ASPP, a U-Net), in `tools/hub_models.py`. Nothing is
downloaded: each model is seeded, trained for a few seconds on scikit-learn's digits (upscaled to 32×32 RGB) or
on seeded synthetic data (tones, keyword sequences, shapes on noise), and its BatchNorm statistics are
recalibrated on the training data. Text models take integer `input_ids` and `attention_mask`; litert-torch's
float `.tflite` names its inputs by position (`args_0`, `args_1`), so that route's data is keyed so (keyed by
the forward's names, edgeconv stops with exit 2 and names the inputs the model has).

Each route runs in a fresh process with an empty cache, from 200 calibration samples (edgeconv with its default
settings, full-integer with int8 I/O, its accuracy loop included); the int8 model's outputs are compared with
PyTorch's float outputs on 200 held-out samples. A cell reads: integer-only (`int`) or the ops still computing in
float, the worst output's SQNR against PyTorch, and argmax agreement with PyTorch (top-1 for classifiers; per
anchor, cell or pixel for detection and segmentation maps). A failed route shows its exit code; its first error
line is in the second table.

Full-integer and converted: {", ".join(per_route)}.{left_out} Every model trains for 150-200 steps only: a
low PyTorch top-1 (BEiT and Swin reach 25 %) still compares the int8 model with the same float network, but
an SQNR on logits that hardly vary says little.

{markdown(doc)}
{SHORTFALLS}
Measured on {m["cpus"]} shared CPU cores, Python {m["python"]}, torch {v["torch"]}, transformers {v["transformers"]},
litert-torch {v["litert-torch"]}, TensorFlow {v["tensorflow"]}, onnx2tf {m.get("onnx2tf") or "—"}, {m["date"]}.
Regenerate with `python tools/bench_hub.py --docs docs/hub-zoo.md` (the whole zoo: about an hour on 2 cores);
`--models vit,bert` runs a subset. Per route and model the recipe, log and output stay under
`build/bench/hub-work/<model>/<route>/`. `tests/integration/test_hub_zoo.py` runs a subset through edgeconv's
routes and checks these numbers.
"""


def main() -> None:
    from tools import hub_models

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(hub_models.NAMES))
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--work", type=Path, help="where each model's files go [--out/hub-work]")
    parser.add_argument("--docs", type=Path, help="also write the docs page (docs/hub-zoo.md)")
    parser.add_argument("--docs-only", action="store_true", help="write the docs page from --out's hub.json")
    parser.add_argument("--merge", help="with --docs-only: comma-separated folders whose hub.json are joined")
    parser.add_argument("--onnx-venv", type=Path, default=os.environ.get("EDGECONV_ONNX_VENV"))
    parser.add_argument(
        "--aeq-python",
        type=Path,
        default=os.environ.get("EDGECONV_AEQ_PYTHON"),
        help="ai-edge-quantizer's virtualenv Python, for the aeq-int8 route (left out without it)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.docs_only:
        parts = [Path(f) for f in args.merge.split(",")] if args.merge else [args.out]
        docs = [json.loads((f / "hub.json").read_text()) for f in parts]
        # The same model from several runs: routes joined, the model's own facts (top-1, size) from the last run
        joined: dict[str, dict[str, Any]] = {}
        for d in docs:
            for r in d["results"]:
                merged = {**joined.get(r["model"], {}).get("routes", {}), **r["routes"]}
                joined[r["model"]] = {**r, "routes": merged}
        runs = {day for d in docs for day in d["machine"]["date"].split(" and ")}  # a merged file lists several
        dates = " and ".join(sorted(runs))  # the runs the rows come from
        doc = {**docs[0], "machine": {**docs[0]["machine"], "date": dates}, "results": list(joined.values())}
        work = args.work or args.out / "hub-work"
        for r in doc["results"]:  # failures' first lines read again from the logs (the reading may have improved)
            for route, row in r["routes"].items():
                log = work / r["model"] / route / "log.txt"
                if row["exit"] != 0 and log.is_file():
                    row["error"] = first_error(log, row["exit"])
        order = {n: i for i, n in enumerate(hub_models.NAMES)}
        doc["results"].sort(key=lambda r: order.get(r["model"], len(order)))
        (args.out / "hub.json").write_text(json.dumps(doc, indent=1) + "\n")
    else:
        venv = args.onnx_venv or Path.home() / ".cache" / "edgeconv-tests" / "onnx-venv"
        onnx_python = onnx_setup.installed(venv)
        if onnx_python is None:
            print(f"no ONNX virtualenv at {venv}: the ONNX routes are left out (edgeconv setup onnx)", file=sys.stderr)
        os.environ["EDGECONV_ONNX_VENV"] = str(venv)
        work = (args.work or args.out / "hub-work").resolve()  # recipes name files by absolute path
        onnx2tf = None
        if onnx_python is not None:
            done = subprocess.run(
                [str(onnx_python), "-c", "from importlib.metadata import version; print(version('onnx2tf'))"],
                capture_output=True,
                text=True,
            )
            onnx2tf = done.stdout.strip() or None
        doc = {
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "onnx2tf": onnx2tf,
                "date": time.strftime("%Y-%m-%d"),
            },
            "versions": versions(),
            "results": [],
        }
        routes = tuple(args.routes.split(","))
        for name in args.models.split(","):
            try:
                doc["results"].append(bench_model(name, work, onnx_python, routes, args.aeq_python))
            except Exception as e:  # noqa: BLE001 - a model that does not build or export is reported, not fatal
                print(f"{name}: building or exporting failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            (args.out / "hub.json").write_text(json.dumps(doc, indent=1) + "\n")  # after each model: partial runs
        doc["machine"]["load"] = os.getloadavg()
        (args.out / "hub.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "hub.md").write_text(markdown(doc))
    if args.docs:
        args.docs.write_text(docs_page(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
