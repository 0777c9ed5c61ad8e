"""The device-side command run locally: delegates, errors, and what it reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from converter.bench import BenchRequest, run_local
from converter.errors import DeployError
from tests.conftest import ROOT

ADD_ONE = ROOT / "tests" / "data" / "add_one_float.tflite"
FAST = {"warmup": 0, "runs": 3, "min_seconds": 0.0}


def test_both_models_use_the_requested_delegate_and_threads() -> None:
    result = run_local(BenchRequest(model=ADD_ONE, float_model=ADD_ONE, delegate="none", threads=1, **FAST))
    for key in ("model", "float"):
        lat = result["models"][key]["latency"]
        assert (lat["delegate"], lat["threads"]) == ("none", 1)
    assert result["machine"]["interpreter"]["package"] in ("ai-edge-litert", "tflite-runtime", "tensorflow")
    assert result["machine"]["cpu_count"] >= 1


def test_edgetpu_without_libedgetpu_says_what_to_install() -> None:
    pytest.importorskip("ai_edge_litert")
    try:
        result = run_local(BenchRequest(model=ADD_ONE, delegate="edgetpu", **FAST))
    except DeployError as e:
        assert "cannot load the Edge TPU delegate libedgetpu.so.1" in str(e)
        assert "install libedgetpu" in str(e)
    else:  # a machine with an Edge TPU attached
        assert result["models"]["model"]["latency"]["delegate"] == "edgetpu"


def test_runtime_errors_are_json_with_exit_codes(tmp_path: Path) -> None:
    def run(*args: str) -> tuple[int, dict[str, object]]:
        proc = subprocess.run(
            [sys.executable, "-m", "converter.runtime", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
        )
        return proc.returncode, json.loads(proc.stdout)

    code, doc = run("bench", "--model", str(tmp_path / "missing.tflite"))
    assert code == 2 and doc["error"] == {
        "kind": "bad_input",
        "message": f"{tmp_path / 'missing.tflite'}: model file not found",
    }
    (tmp_path / "d.npz").write_bytes(b"garbage")
    code, doc = run("bench", "--model", str(ADD_ONE), "--float", str(ADD_ONE), "--data", str(tmp_path / "d.npz"))
    assert code == 2 and "cannot read x[, y]" in str(doc["error"])
    code, doc = run("info")
    assert code == 0 and "machine" in doc
