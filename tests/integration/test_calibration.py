"""Calibration end to end: equivalence with the stock converter, every method, rules, cache."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converter.calibration import calib_cache
from converter.calibration.calibrate import choose_ranges, ranges_of
from converter.calibration.data import load_dataset, prepare, select
from converter.calibration.stats import collect
from converter.errors import RecipeError
from converter.pipeline import convert
from converter.quantization.arithmetic import asymmetric
from converter.quantization.tflite_quantizer import quantize_with_ranges, stock_quantize, stock_ranges
from converter.recipe import CalibrationSpec, load_recipe
from converter.runtime.interpreter import make_interpreter
from converter.runtime.preprocess import Preprocess
from converter.sources.load import load_model
from converter.tflite.inspect_model import list_ops
from tests.conftest import ROOT, assert_accuracy_drop_below, tiny_data, tiny_recipe


@pytest.fixture(scope="module")
def demo() -> tuple[bytes, np.ndarray]:
    """The demo MobileNetV2 (residual ADDs included) as float .tflite, with 64 calibration samples."""
    model = load_model(ROOT / "recipes" / "models" / "mobilenet_v2_digits.keras")
    ds = load_dataset(ROOT / "recipes" / "data" / "digits.npz", where="demo", samples=64)
    x = prepare(ds, Preprocess(resize=(32, 32), scale=1 / 255), model.input_shape, "demo")
    return model.float_tflite, x


def _add_outputs(model: bytes) -> dict[int, list[int]]:
    """For every tensor that feeds an ADD, the ADD's output tensor(s)."""
    interpreter = make_interpreter(model_content=model, delegate="none")
    out: dict[int, list[int]] = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] == "ADD":
            for i in op["inputs"]:
                out.setdefault(int(i), []).append(int(op["outputs"][0]))
    return out


def test_minmax_statistics_equal_the_stock_calibrator(demo: tuple[bytes, np.ndarray]) -> None:
    model, x = demo
    ours = {t.index: (t.min, t.max) for t in collect(model, x).tensors}
    stock = stock_ranges(model, x)
    assert set(ours) == set(stock)
    add_outputs = _add_outputs(model)
    exceptions = []
    for i in ours:
        if np.allclose(ours[i], stock[i], rtol=1e-6, atol=1e-7):
            continue
        # The one known difference: TFLite runs ADD in place over an input buffer, and the stock
        # calibrator logs ADD's inputs after the op ran, so a residual branch's input gets the
        # *sum's* range. We read every tensor after the run with all tensors preserved, so ours
        # is the tensor's true range; the stock value equals the ADD output's.
        assert i in add_outputs, f"tensor {i}: ours {ours[i]} vs stock {stock[i]}"
        assert any(np.allclose(stock[i], ours[o], rtol=1e-6) for o in add_outputs[i])
        exceptions.append(i)
    assert len(exceptions) <= len(add_outputs)
    assert len(ours) - len(exceptions) >= 50  # most tensors compared exactly


def _scales_by_name(model: bytes) -> dict[str, tuple[float, int]]:
    interpreter = make_interpreter(model_content=model, delegate="none")
    out = {}
    for d in interpreter.get_tensor_details():
        scales, zps = d["quantization_parameters"]["scales"], d["quantization_parameters"]["zero_points"]
        if len(scales) == 1 and np.dtype(d["dtype"]) == np.int8:
            out[d["name"]] = (float(scales[0]), int(zps[0]))
    return out


def _weight_scales(model: bytes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel quantized int8 weights: name -> (scales, int8 values), as the interpreter reads them."""
    interpreter = make_interpreter(model_content=model, delegate="none")
    out = {}
    for d in interpreter.get_tensor_details():
        scales = d["quantization_parameters"]["scales"]
        if len(scales) > 1 and np.dtype(d["dtype"]) == np.int8:
            out[d["name"]] = (np.asarray(scales, dtype=np.float32), interpreter.get_tensor(d["index"]))
    return out


def test_minmax_model_equals_stock_model_except_add_inputs(demo: tuple[bytes, np.ndarray]) -> None:
    model, x = demo
    stats = collect(model, x)
    spec = CalibrationSpec(method="minmax", input_range="observed")
    records = choose_ranges(stats, spec)
    ours = quantize_with_ranges(
        model,
        ranges_of(records),
        input_type="int8",
        output_type="int8",
        per_channel=True,
    )
    stock = stock_quantize(model, x, input_type="int8", output_type="int8", per_channel=True, activations="int8")
    a, b = _scales_by_name(ours), _scales_by_name(stock)
    shared = set(a) & set(b)
    assert len(shared) >= 0.9 * len(b)
    add_fed = {r.stats.name for r in records if r.stats.index in _add_outputs(model)}
    # Our interpreter (LiteRT, 2 threads) and TensorFlow's calibrator sum convolutions in a
    # different order, so ranges agree to float32 rounding (1e-6), not bit for bit.
    differing = {n for n in shared if not (np.isclose(a[n][0], b[n][0], rtol=1e-5) and abs(a[n][1] - b[n][1]) <= 1)}
    assert differing <= add_fed, differing - add_fed
    # Weights are untouched by activation ranges: per-channel scales equal the stock model's,
    # tensor by tensor and channel by channel. Both models come from the same quantizer, which
    # computes each channel's scale as max|w| / 127 in float32 from the same float weights, so
    # they agree exactly; rtol=1e-7 (under one float32 ulp, 6e-8 relative) only forgives a
    # different summation order, not a different rule (max/255 or per-tensor scales differ
    # by far more). The int8 weights themselves must then be equal too.
    ours_w, stock_w = _weight_scales(ours), _weight_scales(stock)
    assert len(stock_w) >= 50  # every conv, depthwise and dense weight of MobileNetV2
    assert set(ours_w) == set(stock_w), set(ours_w) ^ set(stock_w)
    for name, (scales, values) in stock_w.items():
        assert ours_w[name][0].shape == scales.shape, name
        np.testing.assert_allclose(ours_w[name][0], scales, rtol=1e-7, atol=0, err_msg=name)
        np.testing.assert_array_equal(ours_w[name][1], values, err_msg=name)


def test_our_scale_and_zero_point_equal_what_tflite_wrote(demo: tuple[bytes, np.ndarray]) -> None:
    model, x = demo
    records = choose_ranges(collect(model, x), CalibrationSpec(method="entropy"))
    quant = quantize_with_ranges(
        model,
        ranges_of(records),
        input_type="int8",
        output_type="int8",
        per_channel=True,
    )
    written = _scales_by_name(quant)
    # SOFTMAX, LOGISTIC and TANH outputs have fixed int8 parameters in TFLite's kernels
    # (1/256 with -128; 1/128 with 0) whatever the calibrated range: not ours to choose.
    interpreter = make_interpreter(model_content=model, delegate="none")
    names = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
    fixed = {
        names[int(o)]
        for op in interpreter._get_ops_details()
        if op["op_name"] in ("SOFTMAX", "LOGISTIC", "TANH")
        for o in op["outputs"]
    }
    checked = 0
    for r in records:
        if r.stats.name not in written or r.stats.name in fixed:
            continue
        p = asymmetric(np.asarray(r.choice.lo, np.float32), np.asarray(r.choice.hi, np.float32))
        scale, zp = written[r.stats.name]
        assert scale == pytest.approx(float(p.scale), rel=1e-6), r.stats.name
        assert abs(zp - int(p.zero_point)) <= 1, r.stats.name  # float32 vs float64 rounding at .5
        checked += 1
    assert checked >= 0.8 * len(records)


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse", "auto"])
def test_every_method_end_to_end(
    method: str, tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    report = convert(
        load_recipe(write_recipe(tiny_recipe(tiny_model_dir, calibration={"method": method}))), tmp_path / "out"
    ).report
    assert_accuracy_drop_below(report, 2.0)
    tensors = report["calibration"]["tensors"]
    assert tensors and all(t["method"].split(":")[0] in (method, "contract", "fixed") for t in tensors)
    assert tensors[-1]["method"] == "fixed" and tensors[-1]["range"] == [0.0, 1.0]  # the softmax output
    for t in tensors:
        lo, hi = t["range"]
        assert np.isfinite([lo, hi]).all() and lo <= hi
        assert 0 <= t["clipped_fraction"] < 0.05 and 1 <= t["levels_used"] <= 256
    if method == "minmax":
        assert all(t["clipped_fraction"] == 0 for t in tensors)
        assert report["calibration"]["histograms"] is None
    else:
        assert (tmp_path / "out" / "calibration_histograms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rules_override_per_tensor_later_rule_wins(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    rules = [{"tensors": "*", "method": "mse"}, {"tensors": "*conv2d*", "method": "percentile", "percentile": 99.0}]
    recipe = tiny_recipe(tiny_model_dir, calibration={"method": "minmax", "rules": rules})
    report = convert(load_recipe(write_recipe(recipe)), tmp_path / "out").report
    methods = {t["name"]: t["method"] for t in report["calibration"]["tensors"]}
    conv = [n for n in methods if "conv2d" in n.lower()]
    assert conv and all(methods[n] == "percentile" for n in conv if "conv2d" in n)
    others = [n for n in methods if "conv2d" not in n]
    assert others and all(methods[n] in ("mse", "percentile", "fixed") for n in others)
    assert "mse" in methods.values()


def test_input_range_policies(tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    explicit = tiny_recipe(tiny_model_dir, calibration={"input_range": [-10.0, 245.0]})
    report = convert(load_recipe(write_recipe(explicit)), tmp_path / "a").report
    assert report["quantization"]["input"]["scale"] == pytest.approx(1.0, rel=1e-6)
    assert report["quantization"]["input"]["zero_point"] == -118
    observed = tiny_recipe(tiny_model_dir, calibration={"input_range": "observed"})
    report = convert(load_recipe(write_recipe(observed)), tmp_path / "b").report
    x, _ = tiny_data()
    cal = x[:300][select(300, 100, 0)]
    first = report["calibration"]["tensors"][0]  # the model input is observed first
    assert first["observed"] == [float(cal.min()), float(cal.max())]
    assert cal.max() < 255
    assert report["quantization"]["input"]["scale"] == pytest.approx(float(cal.max() - min(0, cal.min())) / 255)


def test_cache_hit_on_method_change_and_rebuild_when_corrupt(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # No accuracy loop: entropy ranges put the tiny model below 20 dB, and the loop's other methods would read the
    # rebuilt statistics before the report is made.
    recipe = tiny_recipe(tiny_model_dir, name="cached", tuning={"enabled": False})
    recipe["data"]["calibration"]["samples"] = 77  # a sample set no other test uses
    first_report = convert(load_recipe(write_recipe(recipe)), tmp_path / "a").report
    first = first_report["calibration"]
    assert first["cache"]["hit"] is False
    entry, _ = calib_cache.STORE.paths(first["cache"]["key"])
    assert entry.is_file()
    recipe["calibration"] = {"method": "entropy"}
    second_report = convert(load_recipe(write_recipe(recipe)), tmp_path / "b").report
    second = second_report["calibration"]
    # The float reference came from the model cache too, byte for byte.
    assert "from the float model cache" in second_report["model"]["loader"]
    assert second_report["artifacts"]["float"] == first_report["artifacts"]["float"]
    assert second["cache"] == {**first["cache"], "hit": True}
    assert [t["observed"] for t in second["tensors"]] == [t["observed"] for t in first["tensors"]]
    # A corruption the cheap checks cannot see: a well-formed .npz whose histograms changed
    # (one count off) while the entry's sidecar stayed. Only its sha256 catches it.
    key = first["cache"]["key"]
    good = calib_cache.load(key)
    assert good is not None
    with np.load(entry, allow_pickle=False) as npz:
        parts = {name: npz[name] for name in npz.files}
    parts["hist"] = parts["hist"].copy()
    parts["hist"][0, 0] += 1
    np.savez(entry, **parts)
    sidecar = entry.with_suffix(".json")
    sidecar_bytes = sidecar.read_bytes()
    caplog.set_level(logging.WARNING, logger="converter.cache")
    corrupt = (
        f"warning: calibration cache entry {entry} is corrupt ({entry.name} does not match the sha256 in "
        f"{key}.json); deleted it, building it again"
    )
    assert calib_cache.load(key) is None  # read, digest checked, refused ...
    assert corrupt in caplog.messages
    assert not entry.exists() and not sidecar.exists()  # ... and deleted
    np.savez(entry, **parts)  # corrupt again, now for the pipeline to find
    sidecar.write_bytes(sidecar_bytes)
    caplog.clear()
    third = convert(load_recipe(write_recipe(recipe)), tmp_path / "c").report["calibration"]
    assert corrupt in caplog.messages
    assert third["cache"]["hit"] is False
    assert [t["range"] for t in third["tensors"]] == [t["range"] for t in second["tensors"]]
    rebuilt = calib_cache.load(key)  # rebuilt from a fresh run: the original statistics
    assert rebuilt is not None
    np.testing.assert_array_equal(np.stack([t.hist for t in rebuilt.tensors]), np.stack([t.hist for t in good.tensors]))
    recipe["calibration"]["cache"] = False
    fourth = convert(load_recipe(write_recipe(recipe)), tmp_path / "d").report["calibration"]
    assert fourth["cache"]["hit"] is None


def _dead_relu_model(folder: Path) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    dead = keras.layers.Dense(4, activation="relu", bias_initializer=keras.initializers.Constant(-1000.0))(inp)
    live = keras.layers.Dense(4)(inp)
    out = keras.layers.Dense(3)(keras.layers.Concatenate()([dead, live]))
    model = keras.Model(inp, out)
    model.save(folder / "dead.keras")
    return folder / "dead.keras"


def test_constant_tensor_gets_a_defined_range_and_a_warning(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    path = _dead_relu_model(tmp_path)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32))
    recipe = {
        "version": 1,
        "name": "dead",
        "model": str(path),
        "data": {"calibration": {"path": str(tmp_path / "d.npz")}},
    }
    report = convert(load_recipe(write_recipe(recipe)), tmp_path / "out").report
    warnings = report["calibration"]["warnings"]
    assert any("constant 0 during calibration; range set to [0, 1]" in w for w in warnings), warnings
    quant = (tmp_path / "out" / "model_int8.tflite").read_bytes()
    scales = [s for s, _ in _scales_by_name(quant).values()]
    assert scales and np.isfinite(scales).all() and min(scales) > 0
    assert {op.name for op in list_ops(quant)} >= {"FULLY_CONNECTED"}


def test_bad_calibration_settings(write_recipe: Callable[..., Path], tiny_model_dir: Path) -> None:
    def error(calibration: dict[str, Any], **extra: Any) -> str:
        with pytest.raises(RecipeError) as info:
            load_recipe(write_recipe(tiny_recipe(tiny_model_dir, calibration=calibration, **extra)))
        return str(info.value)

    assert "calibration.method: expected one of minmax, percentile, entropy, mse" in error({"method": "kl"})
    assert "calibration.percentile: must be at most 100, got 101" in error({"percentile": 101})
    assert "percentile: must be in (0, 100], got 0.0" in error({"percentile": 0})
    assert "calibration.rules[0].method: expected one of" in error({"rules": [{"tensors": "*", "method": "x"}]})
    assert "16x8 (activations: int16) supports method minmax only" in error(
        {"method": "entropy"}, quantization={"activations": "int16", "input_type": "float32", "output_type": "float32"}
    )


def test_report_lists_every_tensor(tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    convert(load_recipe(write_recipe(tiny_recipe(tiny_model_dir))), tmp_path / "out")
    cal = json.loads((tmp_path / "out" / "report.json").read_text())["calibration"]
    assert cal["route"] == "edgeconv" and cal["batch"] in (1, 8)
    row = cal["tensors"][0]
    assert set(row) == {
        "name",
        "index",
        "method",
        "observed",
        "range",
        "threshold",
        "clipped_fraction",
        "levels_used",
        "utilisation",
        "note",
    }
    assert row["method"] == "contract" and row["range"] == [0.0, 255.0]
