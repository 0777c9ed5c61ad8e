"""Target checks: TFLite Micro validation and arena, firmware export, Edge TPU mapping, fit."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converter.devices import devices_dir
from converter.pipeline import convert
from converter.recipe import load_recipe
from converter.targets.edgetpu import parse_log, predict
from converter.targets.firmware import op_resolver
from converter.tflite.inspect_model import OpInfo, list_ops
from converter.tflite.ops import TFLM_RESOLVER, tflm_missing
from tests.conftest import ROOT, tiny_recipe
from tests.tflm_symbols import method_key, registration_key, tflm_library, tflm_registrations

MCU = ["arduino-nano-33-ble-sense", "esp32-s3", "stm32h7"]


@pytest.fixture(scope="module")
def mcu_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("mcu")
    recipe = folder / "recipe.yaml"
    import json

    recipe.write_text(json.dumps(tiny_recipe(tiny_model_dir, targets=[*MCU, "coral-usb-accelerator"])))
    return folder / "out", convert(load_recipe(recipe), folder / "out").report


def _probe(model: Path, arena: int, folder: Path) -> int:
    sample = folder / "sample.npy"
    np.save(sample, np.zeros((1, 12, 12, 3), dtype=np.int8))
    cmd = [sys.executable, "-m", "converter.targets.tflm_probe", str(model), str(arena), str(sample)]
    return subprocess.run(cmd, cwd=ROOT, timeout=120, check=False).returncode


def test_mcu_targets_fit_with_the_measured_arena(mcu_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, report = mcu_run
    arenas = set()
    for name in MCU:
        t = report["targets"][name]
        assert t["compatible"] is True, t["problems"]
        assert t["tflm"]["loaded"] and t["tflm"]["missing_ops"] == []
        assert t["tflm"]["samples"] == 100 and t["tflm"]["top1_agreement"] >= 0.98
        assert t["flash_bytes"] == report["artifacts"]["int8"]["bytes"] + t["overheads"]["flash_bytes"]
        assert t["ram_bytes"] == t["arena_bytes"] + t["overheads"]["ram_bytes"]
        assert t["cost"]["macs"] > 0 and t["cost"]["latency_estimate"]["kind"] == "estimate"
        assert report["latency"][name] is None and "estimate" in t["reason"]
        arenas.add(t["arena_bytes"])
    (arena,) = arenas  # one model, one TFLM build: one arena
    assert arena % 16 == 0 and arena >= report["targets"][MCU[0]]["tflm"]["recorded_arena_bytes"]
    model = out / "model_int8.tflite"
    assert _probe(model, arena, tmp_path) == 0  # the measured arena works ...
    assert _probe(model, arena - 16, tmp_path) == 1  # ... and 16 bytes less does not


def test_resolver_table_names_real_tflm_registrations() -> None:
    """Every op we would register has a kernel in tflite-micro's own library, under the same name.

    The registrations come from the wheel's ``_runtime.so`` (``tflite::Register_<OP>()``), not
    from our table, so a typo or an op TFLM lacks fails here. The resolver's ``Add*`` methods
    are inline templates the library does not export: they are matched to ``Register_*`` by
    name without case and underscores (``AddConv2D`` <-> ``CONV_2D``), which is TFLM's own
    convention; the exact spelling is checked by compiling against the real header in firmware CI.
    """
    registered = tflm_registrations()
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= registered, sorted(registered)
    keys = {registration_key(op): op for op in registered}
    assert len(keys) == len(registered)  # the name matching below is unambiguous
    for op, method in TFLM_RESOLVER.items():
        assert op in registered, f"{op}: no tflite::Register_{op}() in {tflm_library()}"
        assert keys.get(method_key(method)) == op, f"{method}() does not name Register_{op}()"


def _emitted_methods(resolver_h: str) -> list[str]:
    return re.findall(r"resolver\.(Add\w+)\(\)", resolver_h)


@pytest.fixture(scope="module")
def demo_resolver() -> str:
    """``op_resolver.h`` for the demo MobileNetV2 (full-integer conversion keeps its operators one for one)."""
    from converter.sources.load import load_model

    model = load_model(ROOT / "recipes" / "models" / "mobilenet_v2_digits.keras")
    return op_resolver(list_ops(model.float_tflite))


def test_firmware_files_compile_and_hold_the_model(
    mcu_run: tuple[Path, dict[str, Any]], demo_resolver: str, tmp_path: Path
) -> None:
    if shutil.which("g++") is None:
        pytest.skip("g++ not installed")
    out, report = mcu_run
    fw = out / "firmware"
    assert sorted(p.name for p in fw.iterdir()) == ["model_data.cc", "model_data.h", "op_resolver.h"]
    resolver = (fw / "op_resolver.h").read_text()
    assert "MicroMutableOpResolver<kNumOps>" in resolver and "AddConv2D()" in resolver
    assert "AddDepthwiseConv2D()" in resolver and "AddAveragePool2D" not in resolver
    # Every Add*() emitted for the test and demo models must name a kernel the real TFLM library
    # registers (read from its shared object, independent of our op table).
    real = {registration_key(op) for op in tflm_registrations()}
    emitted = {"tiny": _emitted_methods(resolver), "demo": _emitted_methods(demo_resolver)}
    assert len(emitted["tiny"]) == 6 and len(emitted["demo"]) >= 6, emitted
    for model, methods in emitted.items():
        unknown = [m for m in methods if method_key(m) not in real]
        assert not unknown, f"{model}: {unknown} register no kernel of {tflm_library()}"
    # A stand-in for TFLM's header declaring only methods backed by a real registration: the
    # generated code must compile against it and call each method once.
    stub = tmp_path / "tensorflow" / "lite" / "micro"
    stub.mkdir(parents=True)
    backed = sorted({m for methods in emitted.values() for m in methods if method_key(m) in real})
    declarations = "\n".join(f"  TfLiteStatus {m}() {{ ++added; return kTfLiteOk; }}" for m in backed)
    (stub / "micro_mutable_op_resolver.h").write_text(
        "#pragma once\nenum TfLiteStatus { kTfLiteOk = 0, kTfLiteError = 1 };\nnamespace tflite {\n"
        "template <unsigned int N> class MicroMutableOpResolver {\n public:\n  unsigned int added = 0;\n"
        f"{declarations}\n}};\n}}\n"
    )
    demo_include = tmp_path / "demo"
    demo_include.mkdir()
    (demo_include / "demo_resolver.h").write_text(demo_resolver.replace("EDGECONV_OP_RESOLVER_H_", "DEMO_RESOLVER_H_"))
    main = tmp_path / "main.cc"
    main.write_text(
        '#include <cstdio>\n#include "model_data.h"\n#include "op_resolver.h"\n'
        'namespace demo {\n#include "demo_resolver.h"\n}\n'
        "int main() { ModelOpResolver r; if (RegisterOps(r) != kTfLiteOk || r.added != kNumOps) return 1;\n"
        "  demo::ModelOpResolver d; if (demo::RegisterOps(d) != kTfLiteOk || d.added != demo::kNumOps) return 2;\n"
        '  std::printf("%u %zu %d\\n", g_tiny_model_len, kTensorArenaSize, (int)g_tiny_model[4]); return 0; }\n'
    )
    binary = tmp_path / "check"
    subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-Wall",
            "-Werror",
            "-I",
            str(fw),
            "-I",
            str(tmp_path),
            "-I",
            str(demo_include),
            str(main),
            str(fw / "model_data.cc"),
            "-o",
            str(binary),
        ],
        check=True,
        timeout=120,
    )
    length, arena, byte4 = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout.split()
    assert int(length) == report["artifacts"]["int8"]["bytes"]
    assert int(arena) == report["targets"][MCU[0]]["arena_bytes"]
    assert int(byte4) == ord("T")  # the flatbuffer identifier "TFL3" starts at byte 4


def test_edgetpu_section_is_a_labelled_prediction(mcu_run: tuple[Path, dict[str, Any]]) -> None:
    _, report = mcu_run
    tpu = report["targets"]["coral-usb-accelerator"]["edgetpu"]
    assert tpu["prediction"]["kind"] == "prediction"
    assert tpu["prediction"]["mapped_ops"] == tpu["prediction"]["total_ops"] > 0
    if shutil.which("edgetpu_compiler") is None:
        assert tpu["compiler"] == {"available": False, "reason": pytest.approx(tpu["compiler"]["reason"])}
        assert "not installed here" in tpu["compiler"]["reason"]


def _op(index: int, name: str, dtype: str = "int8") -> OpInfo:
    return OpInfo(index, name, (dtype,), (dtype,), ((1, 4, 4, 8),), ((1, 4, 4, 8),))


def test_edgetpu_prediction_names_the_split() -> None:
    ops = [_op(0, "CONV_2D"), _op(1, "RELU"), _op(2, "ARG_MAX"), _op(3, "CONV_2D")]
    p = predict(ops, "int8", "int8")
    assert (p.mapped_ops, p.total_ops) == (2, 4)
    assert p.first_cpu_op == {"index": 2, "op": "ARG_MAX", "reason": "ARG_MAX is not supported by the Edge TPU"}
    assert "it and the 1 ops after it run on the CPU" in p.problems[0]
    assert "float model I/O" in predict([_op(0, "CONV_2D")], "float32", "int8").problems[0]


def test_compiler_log_parser_on_real_logs() -> None:
    partial = parse_log((ROOT / "tests" / "data" / "edgetpu_compiler_partial.log").read_text())
    assert (partial.mapped_ops, partial.cpu_ops) == (83, 10)
    assert partial.on_chip_bytes == int(6.86 * 1024**2) and partial.off_chip_bytes == int(1.22 * 1024**2)
    assert {"op": "ADD", "count": 10, "status": "Mapped to Edge TPU"} in partial.operations
    assert {"op": "LOGISTIC", "count": 1, "status": "More than one subgraph is not supported"} in partial.operations
    full = parse_log((ROOT / "tests" / "data" / "edgetpu_compiler_full.log").read_text())
    assert (full.mapped_ops, full.cpu_ops) == (246, 0)
    assert full.off_chip_bytes == int(41.75 * 1024)


def test_missing_tflm_op_is_reported_by_name() -> None:
    assert tflm_missing([_op(0, "CONV_2D"), _op(1, "REDUCE_PROD"), _op(2, "TOPK_V2")]) == ["REDUCE_PROD", "TOPK_V2"]


def test_over_the_flash_limit_is_incompatible(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boards = tmp_path / "devices"
    shutil.copytree(devices_dir(), boards)
    (boards / "tiny-mcu.yaml").write_text(
        "name: tiny-mcu\ndescription: a board with 8 KB of flash\nruntime: tflm\nkind: mcu\ndelegate: none\n"
        "flash_bytes: 8192\nram_bytes: 1024\nruntime_flash_bytes: 4096\nper_channel_fully_connected: false\n"
    )
    monkeypatch.setenv("EDGECONV_DEVICES", str(boards))
    report = convert(
        load_recipe(write_recipe(tiny_recipe(tiny_model_dir, targets=["tiny-mcu"]))), tmp_path / "o"
    ).report
    t = report["targets"]["tiny-mcu"]
    assert t["compatible"] is False
    assert any(p.startswith("flash: model ") and "exceeds 8,192" in p for p in t["problems"]), t["problems"]
    assert any(p.startswith("RAM: arena ") for p in t["problems"])
    assert any("per-channel FULLY_CONNECTED" in p for p in t["problems"])  # warned before conversion too
