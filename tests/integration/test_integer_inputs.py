# mypy: disable-error-code="no-untyped-call,no-any-return,union-attr"
# (torch's own annotations, not ours: untyped modules, Any-returning forward)
"""Models whose inputs are integers (token ids, indices), from PyTorch through .pt2 and ONNX, end to end.

``Tok`` is the smallest text model: Embedding(50, 16) -> relu -> mean over the 12 ids -> Linear(16, 4), its
input ``ids`` int64 [1, 12] as PyTorch exports it (both routes' float .tflite take int32: the ONNX route's
int64 index arithmetic is narrowed on load, ``float_rewrites.narrow_int64``).
``FeaturesAndIndex`` mixes a float feature vector and an integer index (an embedding row
added to a dense layer's output). Nothing is trained: labels are PyTorch's own argmax, so top-1 is agreement
with PyTorch. Each converts full-integer with ``python -m converter convert``: the ids reach the float model,
the statistics pass, TensorFlow's quantizer, the evaluation, the analysis, bias correction, TFLite Micro and
the device runtime as integers, and the int8 model's id input stays integer.

TFLite Micro: the .pt2 route's EMBEDDING_LOOKUP and the ONNX route's GATHER run (measured: every output value
equal to LiteRT's); TFLM's GATHER takes int32 positions only, which the narrowing gives an ONNX model exported
with int64 ids (PyTorch's default).

Skipped without the torch extra as ``test_torch_source`` is (EDGECONV_REQUIRE_TORCH=1 makes that a failure);
the ONNX cases skip without the onnx2tf virtualenv unless EDGECONV_REQUIRE_ONNX=1.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converter.boards.bench import BenchRequest, run_local, write_eval_npz
from converter.calibration.data import model_inputs
from converter.reports.report import FLOAT_NAME, INT8_NAME
from converter.runtime.model import TFLiteModel, pack_inputs
from tests.integration.test_torch_source import MCU, MISSING, _convert_cli, _float_ops, _onnx_env, _recipe

assert not MISSING  # importing test_torch_source skips this module without the torch extra (or fails it in CI)
import torch  # noqa: E402
from torch import nn  # noqa: E402

VOCAB, LENGTH, CLASSES = 50, 12, 4
MIN_AGREEMENT = 0.97  # int8 top-1 against PyTorch's on the 100 held-out samples (measured 0.98-0.99)
FIGURES: dict[str, dict[str, Any]] = {}


class Tok(nn.Module):
    """Token ids -> embedding -> relu -> mean over the sequence -> class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.emb(ids)).mean(1))


class FeaturesAndIndex(nn.Module):
    """A float feature vector and an integer index (an embedding row added to a dense layer's output)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.lin = nn.Linear(8, 8)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.lin(features) + self.emb(idx)))


def _export_onnx(model: nn.Module, example: tuple[torch.Tensor, ...], names: list[str], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, example, str(path), opset_version=17, dynamo=False, input_names=names)
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The model, its .pt2 (ONNX exports: ``_source``), the ids and PyTorch's outputs on the held-out 100."""
    folder = tmp_path_factory.mktemp("tok")
    torch.manual_seed(0)
    model = Tok().eval()
    ids = np.random.default_rng(0).integers(0, VOCAB, (300, LENGTH)).astype(np.int64)
    with torch.no_grad():
        logits = model(torch.from_numpy(ids)).numpy()
    np.savez(folder / "cal.npz", x=ids[:200])
    np.savez(folder / "eval.npz", x=ids[200:], y=logits[200:].argmax(1))
    example = torch.from_numpy(ids[:1])
    torch.export.save(torch.export.export(model, (example,)), str(folder / "tok.pt2"))
    return {"folder": folder, "ids": ids, "want": logits[200:], "model": model, "pt2": folder / "tok.pt2"}


def _source(tok: dict[str, Any], route: str) -> Path:
    """The model file of ``route``; ONNX files are exported on first use, after ``_onnx_env`` let the case run."""
    if route not in tok:
        example = torch.from_numpy(tok["ids"][:1])
        if route == "onnx-int32":
            example = example.to(torch.int32)
        tok[route] = _export_onnx(tok["model"], (example,), ["ids"], tok["folder"] / f"tok-{route}.onnx")
    return Path(tok[route])


def _labels(tok: dict[str, Any]) -> np.ndarray:
    """The held-out samples' labels: PyTorch's own top-1."""
    return np.asarray(tok["want"].argmax(1))


def _agreement(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement and SQNR (dB) of int8 outputs against PyTorch's."""
    got = got.astype(np.float64)
    sqnr = float(10 * np.log10(np.sum(want.astype(np.float64) ** 2) / np.sum((want - got) ** 2)))
    return float(np.mean(got.argmax(1) == want.argmax(1))), sqnr


# (route, integer dtype of the .tflite models' id input, targets)
ROUTES = [("pt2", "int32", ["host", MCU]), ("onnx", "int32", ["host", MCU]), ("onnx-int32", "int32", ["host", MCU])]
FULL_TIER_ROUTES = {"pt2", "onnx"}  # the default tier converts the onnx-int32 case


@pytest.mark.parametrize(
    ("route", "dtype", "targets"),
    [pytest.param(*r, id=r[0], marks=[pytest.mark.full] if r[0] in FULL_TIER_ROUTES else []) for r in ROUTES],
)
def test_token_ids_convert_full_integer_and_stay_integer(
    route: str, dtype: str, targets: list[str], tok: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = _onnx_env(request) if route.startswith("onnx") else {}
    recipe = {
        **_recipe(_source(tok, route), tok["folder"] / "cal.npz", tok["folder"] / "eval.npz"),
        "targets": targets,
        "analysis": {"samples": 20},
        "calibration": {"bias_correction": True},
    }
    done, out = _convert_cli(tmp_path, recipe, env)
    # Before: exit 3, "running the float model on calibration data failed: Cannot set tensor: Got value of
    # type FLOAT32 but expected type INT32 for input 0" (INT64 for the ONNX route).
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [i["dtype"] for i in report["model"]["inputs"]] == [dtype]
    assert report["model"]["inputs"][0]["fed"].startswith(f"integers as stored, cast to {dtype}")
    assert f"I/O    {dtype} in (ids/indices, fed as integers), int8 out" in done.stdout, done.stdout[-2000:]
    # The int8 model's id input is still integer (TensorFlow's quantizer changes float inputs only) ...
    q_in = report["quantization"]["inputs"][0]
    assert (q_in["name"], q_in["dtype"], q_in["scale"]) == ("ids", dtype, None), q_in
    int8 = TFLiteModel(model_path=str(out / INT8_NAME))
    assert int8.inputs[0].dtype == dtype and int8.inputs[0].scale is None
    # ... and everything else is integer: no op reads or writes a float tensor.
    assert _float_ops(out / INT8_NAME) == []
    held_out = tok["ids"][200:]
    float_out = TFLiteModel(model_path=str(out / FLOAT_NAME)).predict(held_out)[0]
    assert float(np.max(np.abs(float_out - tok["want"]))) < 1e-4
    agreement, sqnr = _agreement(int8.predict(held_out)[0], tok["want"])
    acc = report["accuracy"]
    assert acc["samples"] == 100 and acc["float"] == 1.0 and acc["drop"] <= 0.03, acc
    assert agreement >= MIN_AGREEMENT, (agreement, sqnr)
    assert report["analysis"]["samples"] == 20 and report["analysis"]["layers"]
    assert report["quantization"]["bias_correction"]["layers"] >= 1
    figures: dict[str, Any] = {"agreement_vs_torch": agreement, "sqnr_vs_torch_db": round(sqnr, 2)}
    if MCU in targets:
        target = report["targets"][MCU]
        tflm = target["tflm"]
        assert target["compatible"] is True, target["problems"]
        assert tflm["loaded"] and tflm["samples"] == 100 and tflm["top1_agreement"] >= 0.98, tflm
        figures.update(tflm_top1_agreement=tflm["top1_agreement"], tflm_exact_match=tflm["exact_match"])
        figures["arena_bytes"] = target["arena_bytes"]
    if route == "onnx":  # PyTorch's int64 ids, narrowed on load
        assert "int64 index tensors narrowed to int32" in report["model"]["loader"], report["model"]["loader"]
    if route == "pt2":
        # The device runtime (the bundle edgeconv ships over SSH, here in a local process) reads the raw ids.
        data = write_eval_npz(tmp_path / "eval_raw.npz", held_out, _labels(tok))
        device = run_local(
            BenchRequest(out / INT8_NAME, out / FLOAT_NAME, data=data, warmup=1, runs=2, min_seconds=0.0)
        )
        assert device["models"]["model"]["inputs"][0]["dtype"] == "int32"
        assert device["accuracy"]["agreement"] == acc["agreement"] and device["accuracy"]["int8"] == acc["int8"]
        figures["device_runtime_agreement"] = device["accuracy"]["agreement"]
    FIGURES[f"tok {route}"] = figures
    print(f"\nFIGURES tok {route} {json.dumps(figures)}")


def _failing(tok: dict[str, Any], tmp_path: Path, cal: np.ndarray, ev: np.ndarray | None = None) -> tuple[int, str]:
    """Exit code and stderr of converting the .pt2 with ``cal`` (and ``ev``) as the data files."""
    np.savez(tmp_path / "cal.npz", x=cal)
    ev = tok["ids"][200:] if ev is None else ev
    np.savez(tmp_path / "eval.npz", x=ev, y=_labels(tok))
    done, _ = _convert_cli(tmp_path, _recipe(tok["pt2"], tmp_path / "cal.npz", tmp_path / "eval.npz"))
    return done.returncode, done.stderr


@pytest.mark.full  # the other two refusals of the ids run by default
def test_float_ids_are_exit_2_naming_the_input(tok: dict[str, Any], tmp_path: Path) -> None:
    code, said = _failing(tok, tmp_path, tok["ids"][:200].astype(np.float32))
    # Before: exit 3 from the statistics pass ("Got value of type FLOAT32 but expected type INT32").
    assert code == 2, said[-2000:]
    assert f"data.calibration.path: {tmp_path / 'cal.npz'}: array 'x': holds float32 values" in said
    assert "model input 'ids' (ids [N, 12] int32)" in said and "store them as integers" in said


def test_an_id_beyond_int32_is_exit_2_naming_the_row(tok: dict[str, Any], tmp_path: Path) -> None:
    cal = tok["ids"][:200].copy()
    cal[37, 5] = 2**40  # a cast would wrap it into another, valid-looking id
    code, said = _failing(tok, tmp_path, cal)
    assert code == 2, said[-2000:]
    assert "do not fit the model input 'ids', which takes int32" in said
    assert f"row 37 of cal.npz holds {2**40}" in said


def test_an_id_beyond_the_vocabulary_is_exit_2_naming_the_row(tok: dict[str, Any], tmp_path: Path) -> None:
    ev = tok["ids"][200:].copy()
    ev[21, 2] = VOCAB  # fits int32, but the embedding has rows 0..49: LiteRT's lookup refuses it
    code, said = _failing(tok, tmp_path, tok["ids"][:200], ev)
    assert code == 2, said[-2000:]
    assert f"data.evaluation.path: {tmp_path / 'eval.npz'}: row 21 of eval.npz holds an index" in said
    assert "index out of bounds" in said and "this model's tokenizer or vocabulary" in said


@pytest.mark.full  # a second integer-input model from both routes
@pytest.mark.parametrize("route", ["pt2", "onnx"])
def test_float_features_and_an_integer_index_convert(
    route: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two inputs, one float and one integer, from an .npz with one array per input."""
    env = _onnx_env(request) if route == "onnx" else {}
    torch.manual_seed(0)
    model = FeaturesAndIndex().eval()
    rng = np.random.default_rng(0)
    features = rng.standard_normal((300, 8)).astype(np.float32)
    idx = rng.integers(0, 10, 300).astype(np.int64)
    with torch.no_grad():
        want = model(torch.from_numpy(features), torch.from_numpy(idx)).numpy()
    np.savez(tmp_path / "cal.npz", features=features[:200], idx=idx[:200])
    np.savez(tmp_path / "eval.npz", features=features[200:], idx=idx[200:], y=want[200:].argmax(1))
    example = (torch.from_numpy(features[:1]), torch.from_numpy(idx[:1]))
    if route == "pt2":
        source = tmp_path / "two.pt2"
        torch.export.save(torch.export.export(model, example), str(source))
    else:
        source = _export_onnx(model, example, ["features", "idx"], tmp_path / "two.onnx")
    targets = ["host", MCU]  # the ONNX export's int64 index is narrowed to int32 for TFLM's GATHER
    recipe = {**_recipe(source, tmp_path / "cal.npz", tmp_path / "eval.npz"), "targets": targets}
    done, out = _convert_cli(tmp_path, recipe, env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    fed = {i["name"]: (i["dtype"], i["fed"]) for i in report["model"]["inputs"]}
    assert fed["features"] == ("float32", "float32") and fed["idx"][1].startswith("integers as stored"), fed
    q = {i["name"]: (i["dtype"], i["scale"] is None) for i in report["quantization"]["inputs"]}
    assert q == {"features": ("int8", False), "idx": (fed["idx"][0], True)}, q
    assert _float_ops(out / INT8_NAME) == []
    int8 = TFLiteModel(model_path=str(out / INT8_NAME))
    by_name: dict[str, np.ndarray] = {"features": features[200:], "idx": idx[200:]}
    ours = {i.name: i.tensor for i in model_inputs(TFLiteModel(model_path=str(out / FLOAT_NAME)))}
    packed = pack_inputs({ours[name]: by_name[name] for name in ours})
    agreement, sqnr = _agreement(int8.predict(packed)[0], want[200:])
    assert agreement >= MIN_AGREEMENT, (agreement, sqnr)
    assert report["accuracy"]["drop"] <= 0.03, report["accuracy"]
    figures: dict[str, Any] = {"agreement_vs_torch": agreement, "sqnr_vs_torch_db": round(sqnr, 2)}
    if MCU in targets:
        target = report["targets"][MCU]
        assert target["compatible"] is True, target["problems"]
        assert target["tflm"]["top1_agreement"] >= 0.98, target["tflm"]
        figures["tflm_top1_agreement"] = target["tflm"]["top1_agreement"]
        # The device runtime: packed raw samples, the index kept integer.
        raw = pack_inputs({ours[name]: by_name[name] for name in ours})
        data = write_eval_npz(tmp_path / "eval_raw.npz", raw, want[200:].argmax(1))
        device = run_local(
            BenchRequest(out / INT8_NAME, out / FLOAT_NAME, data=data, warmup=1, runs=2, min_seconds=0.0)
        )
        assert device["accuracy"]["agreement"] == report["accuracy"]["agreement"], device["accuracy"]
        figures["device_runtime_agreement"] = device["accuracy"]["agreement"]
    FIGURES[f"features+index {route}"] = figures
    print(f"\nFIGURES features+index {route} {json.dumps(figures)}")
