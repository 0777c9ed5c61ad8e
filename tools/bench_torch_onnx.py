"""Benchmark: PyTorch models through edgeconv's two front doors and each toolkit's own int8, in one run.

For each model (``tools/torch_models.py``'s four test models and the committed digits demo) the same
PyTorch network is exported to ``.pt2`` (``torch.export``) and to ONNX (opset 17) and quantized four ways,
each in a fresh process with an empty cache, timed wall-clock with its peak RSS (``os.wait4``: the
process and the children it waited for, so litert-torch's and onnx2tf's workers count):

- ``edgeconv-pt2`` / ``edgeconv-onnx``: ``edgeconv convert --recipe R`` converting only (no evaluation, host
  latency or per-layer analysis, like the stock routes), full-integer with int8 I/O, from calibration data
  stored as PyTorch stores it (NCHW).
- ``litert-torch-pt2e`` (the stock route for ``.pt2``): litert-torch's documented PT2E recipe
  (``PT2EQuantizer`` with ``get_symmetric_quantization_config(is_per_channel=True)``, ``prepare_pt2e``, one
  pass over the calibration samples, ``convert_pt2e``, ``litert_torch.convert``); float I/O, NCHW.
- ``onnx2tf-int8`` (the stock route for ONNX): onnx2tf's own full-integer quantization
  (``output_integer_quantized_tflite``, per-channel, the calibration samples via
  ``custom_input_op_name_np_data_path``) in the virtualenv of ``edgeconv setup onnx``; int8 I/O.

Measured afterwards, here, with one runtime: the float reference against PyTorch (max abs), and the int8
model's outputs on the evaluation samples against PyTorch's: cosine similarity and SQNR (dB) over all
outputs, top-1 where there are labels, whether every op is integer, and the int8 file's bytes. Also the
install sizes of the ``[torch]`` extra (what it adds to the ``convert`` extra) and of the ONNX virtualenv.

    python tools/bench_torch_onnx.py [--models cnn,mobilenet_block,lstm,transformer,digits] [--out build/bench]
        [--onnx-venv DIR]

Writes ``torch_onnx.json`` and ``torch_onnx.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converter.runtime.model import TFLiteModel  # noqa: E402
from converter.sources import onnx_setup  # noqa: E402
from converter.tflite.inspect_model import float_ops  # noqa: E402
from tools.bench_calibration import run_child  # noqa: E402

MODELS = ("cnn", "mobilenet_block", "lstm", "transformer", "digits")

STOCK_PT2 = """
import sys, numpy as np, torch, litert_torch
from litert_torch.quantize import pt2e_quantizer, quant_config
from torchao.quantization.pt2e import quantize_pt2e
pt2, cal, out = sys.argv[1:4]
program = torch.export.load(pt2)
example = program.example_inputs[0]
quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
    pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
module = quantize_pt2e.prepare_pt2e(program.module(), quantizer)
for x in np.load(cal):
    module(torch.from_numpy(x[None]))
module = quantize_pt2e.convert_pt2e(module, fold_quantize=False)
edge = litert_torch.convert(module, example, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
edge.export(out)
"""

STOCK_ONNX = """
import os, sys, numpy as np, onnx2tf
onnx_path, cal, work, keep = sys.argv[1:5]
os.chdir(work)
np.save("calibration_image_sample_data_20x128x128x3_float32.npy",
        np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
onnx2tf.convert(input_onnx_file_path=onnx_path, output_folder_path=os.path.join(work, "out"),
                output_integer_quantized_tflite=True, quant_type="per-channel",
                custom_input_op_name_np_data_path=[["x", cal, 0.0, 1.0]],
                keep_shape_absolutely_input_names=["x"] if keep == "1" else None,
                enable_rnn_unroll=True, non_verbose=True, verbosity="error")
"""


def case(name: str) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """The PyTorch module, 200 calibration and the evaluation samples (PyTorch's layout), labels."""
    if name == "digits":
        import torch

        from tools import train_torch_digits

        program = torch.export.load(str(ROOT / "recipes" / "models" / "digits_cnn.pt2"))
        module = train_torch_digits.build()  # the committed weights in a plain module (the ONNX export needs one)
        module.load_state_dict({**program.state_dict, **program.constants}, strict=False)
        module.eval()
        cal, _ = train_torch_digits.load("digits.npz")
        x, y = train_torch_digits.load("digits_test.npz")
        return module, cal[:200], x, y
    from tools import torch_models

    model, cal_x, eval_x, eval_y, _ = torch_models.case(name)
    return model, cal_x, eval_x, eval_y


def torch_outputs(module: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(x[i : i + 1])).numpy() for i in range(len(x))])


def export(module: Any, example: np.ndarray, folder: Path) -> tuple[Path, Path]:
    import torch

    sample = (torch.from_numpy(example),)
    pt2, onnx_path = folder / "model.pt2", folder / "model.onnx"
    torch.export.save(torch.export.export(module, sample), str(pt2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, sample, str(onnx_path), opset_version=17, dynamo=False, input_names=["x"])
    return pt2, onnx_path


def compare(model: Path, x: np.ndarray, want: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """An int8 model's outputs against PyTorch's: cosine, SQNR, top-1, integer-only, bytes."""
    tflite = TFLiteModel(model_path=str(model))
    if tflite.inputs[0].shape != (1, *x.shape[1:]) and x.ndim == 4:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # a channel-last model
    got = tflite.predict(x)[0].astype(np.float64).reshape(want.shape)
    ref = want.astype(np.float64)
    noise = float(np.sum((ref - got) ** 2))
    return {
        "cosine": float(np.sum(ref * got) / (np.linalg.norm(ref) * np.linalg.norm(got))),
        "sqnr_db": float(10 * np.log10(np.sum(ref**2) / noise)) if noise else None,
        "top1": float(np.mean(got.argmax(1) == y)),
        "top1_agreement": float(np.mean(got.argmax(1) == ref.argmax(1))),
        "full_integer": float_ops(model.read_bytes()) == [],
        "bytes": model.stat().st_size,
    }


def float_diff(model: Path, x: np.ndarray, want: np.ndarray) -> float:
    tflite = TFLiteModel(model_path=str(model))
    if tflite.inputs[0].shape != (1, *x.shape[1:]) and x.ndim == 4:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return float(np.max(np.abs(tflite.predict(x)[0].reshape(want.shape) - want)))


def bench_model(name: str, work: Path, onnx_python: Path | None) -> dict[str, Any]:
    module, cal, x, y = case(name)
    want = torch_outputs(module, x)
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    pt2, onnx_path = export(module, cal[:1], folder)
    np.save(folder / "cal.npy", cal)
    np.savez(folder / "eval.npz", x=x, y=y)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    rows: dict[str, Any] = {}
    routes = [("edgeconv-pt2", pt2), ("litert-torch-pt2e", pt2)]
    if onnx_python is not None:
        routes += [("edgeconv-onnx", onnx_path), ("onnx2tf-int8", onnx_path)]
    for route, source in routes:
        run = folder / route
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir()
        float_model: Path | None = None
        if route.startswith("edgeconv"):
            recipe = {
                "version": 1,
                "name": f"{name}-{route}",
                "model": str(source),
                "data": {"calibration": {"path": str(folder / "cal.npy")}},  # evaluated here, below, like the rest
                "quantization": {"input_type": "int8", "output_type": "int8"},
                "benchmark": {"enabled": False},
                "analysis": {"samples": 0},
            }
            (run / "recipe.yaml").write_text(json.dumps(recipe))
            cmd = [
                sys.executable,
                "-m",
                "converter",
                "convert",
                "--recipe",
                str(run / "recipe.yaml"),
                "--out",
                str(run / "out"),
            ]
            cost = run_child(cmd, {**env, "EDGECONV_CACHE_DIR": str(run / "cache")}, run / "log.txt")
            int8, float_model = run / "out" / "model_int8.tflite", run / "out" / "model_float.tflite"
        elif route == "litert-torch-pt2e":
            int8 = run / "int8.tflite"
            cmd = [sys.executable, "-c", STOCK_PT2, str(source), str(folder / "cal.npy"), str(int8)]
            cost = run_child(cmd, env, run / "log.txt")
        else:
            assert onnx_python is not None
            nhwc = np.load(folder / "cal.npy")
            if nhwc.ndim == 4:
                nhwc = np.ascontiguousarray(nhwc.transpose(0, 2, 3, 1))
            np.save(run / "cal_nhwc.npy", nhwc)
            keep = "1" if cal.ndim == 3 else "0"
            cmd = [str(onnx_python), "-c", STOCK_ONNX, str(source), str(run / "cal_nhwc.npy"), str(run), keep]
            cost = run_child(cmd, {**env, "CUDA_VISIBLE_DEVICES": "-1"}, run / "log.txt")
            int8 = run / "out" / "model_full_integer_quant.tflite"
            float_model = run / "out" / "model_float32.tflite"
        row = {**compare(int8, x, want, y), **cost}
        row["float_vs_torch_max_abs"] = float_diff(float_model, x, want) if float_model else None
        rows[route] = row
        print(f"{name:16} {route:18} {json.dumps(row)}", flush=True)
    return {"model": name, "samples": len(x), "torch_top1": float(np.mean(want.argmax(1) == y)), "routes": rows}


def _size(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        if p.is_file():
            total += p.stat().st_size
    return total


def _closure(names: list[str]) -> set[str]:
    """Every installed distribution ``names`` need, transitively (extras ignored)."""
    import re

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[ ;<>=!~\[(]", req.strip(), maxsplit=1)[0])
    return seen


def install_sizes(onnx_venv: Path | None) -> dict[str, Any]:
    """MB the [torch] extra adds to [convert] in this environment, and the ONNX virtualenv's MB."""
    convert = _closure(["tensorflow", "tf-keras", "keras", "h5py", "ai-edge-litert", "matplotlib", "tflite-micro"])
    torch_extra = _closure(["litert-torch", "torch"]) - convert
    added = 0
    for name in torch_extra:
        files = metadata.distribution(name).files or []
        added += _size([Path(str(f.locate())) for f in files])
    du = subprocess.run(["du", "-sb", str(onnx_venv)], capture_output=True, text=True) if onnx_venv else None
    return {
        "torch_extra_packages": len(torch_extra),
        "torch_extra_mb": round(added / 2**20),
        "torch": metadata.version("torch"),
        "litert_torch": metadata.version("litert-torch"),
        "onnx_venv_mb": round(int(du.stdout.split()[0]) / 2**20) if du and du.returncode == 0 else None,
    }


def markdown(results: list[dict[str, Any]], sizes: dict[str, Any]) -> str:
    lines = [
        "| model | route | float vs PyTorch, max abs | int8 cosine | int8 SQNR | int8 top-1 (PyTorch float) "
        "| integer-only | int8 bytes | time | peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for route, r in result["routes"].items():
            diff = f"{r['float_vs_torch_max_abs']:.1e}" if r["float_vs_torch_max_abs"] is not None else "—"
            sqnr = f"{r['sqnr_db']:.1f} dB" if r["sqnr_db"] is not None else "exact"
            lines.append(
                f"| {result['model']} | {route} | {diff} | {r['cosine']:.5f} | {sqnr} | {r['top1']:.2%} "
                f"({result['torch_top1']:.2%}) | {'yes' if r['full_integer'] else 'no'} | {r['bytes']:,} | "
                f"{r['seconds']:.1f} s | {r['peak_mb']:,.0f} MB |"
            )
    lines.append("")
    lines.append(
        f"Install sizes: the `[torch]` extra adds {sizes['torch_extra_packages']} packages, "
        f"{sizes['torch_extra_mb']:,} MB "
        f"(torch {sizes['torch']}, litert-torch {sizes['litert_torch']}); the ONNX virtualenv is "
        f"{sizes['onnx_venv_mb'] if sizes['onnx_venv_mb'] is not None else '—'} MB."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--work", type=Path, help="scratch folder [a temporary one]")
    parser.add_argument("--onnx-venv", type=Path, default=os.environ.get("EDGECONV_ONNX_VENV"))
    args = parser.parse_args()
    venv = args.onnx_venv or Path.home() / ".cache" / "edgeconv-tests" / "onnx-venv"
    onnx_python = onnx_setup.installed(venv)
    if onnx_python is None:
        print(f"no ONNX virtualenv at {venv}: the ONNX routes are left out (edgeconv setup onnx)", file=sys.stderr)
    os.environ["EDGECONV_ONNX_VENV"] = str(venv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-torch-onnx-"))
    results = [bench_model(name, work, onnx_python) for name in args.models.split(",")]
    sizes = install_sizes(venv if onnx_python else None)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg()},
        "install_sizes": sizes,
        "results": results,
    }
    (args.out / "torch_onnx.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "torch_onnx.md").write_text(markdown(results, sizes))
    print(markdown(results, sizes))


if __name__ == "__main__":
    main()
