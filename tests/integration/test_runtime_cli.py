"""The device-side command run locally: delegates, errors, and what it reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converter.boards.bench import BenchRequest, run_local
from converter.errors import DeployError
from converter.runtime.cli import _load
from tests.conftest import ROOT

ADD_ONE = ROOT / "tests" / "data" / "add_one_float.tflite"
FAST: dict[str, Any] = {"warmup": 0, "runs": 3, "min_seconds": 0.0}


def test_the_report_records_the_requested_delegate_and_threads() -> None:
    """What the bundle reports; that the interpreter really did it is checked by the two tests below."""
    result = run_local(BenchRequest(model=ADD_ONE, float_model=ADD_ONE, delegate="none", threads=1, **FAST))
    for key in ("model", "float"):
        lat = result["models"][key]["latency"]
        assert (lat["delegate"], lat["threads"]) == ("none", 1)
    assert result["machine"]["interpreter"]["package"] in ("ai-edge-litert", "tflite-runtime", "tensorflow")
    assert result["machine"]["cpu_count"] >= 1


@pytest.mark.parametrize(("delegate", "nodes"), [("none", ["ADD"]), ("xnnpack", ["ADD", "DELEGATE"])])
def test_the_interpreter_applies_the_requested_delegate(delegate: str, nodes: list[str]) -> None:
    """The bundle's own loader: with XNNPACK the ADD is taken over by a DELEGATE node; without, it runs alone.

    LiteRT lists every node it created, a delegate's included (``_get_ops_details``; its
    execution plan is not exposed), so an XNNPACK the runtime failed to apply, or one applied
    when ``none`` was asked for, changes the list.
    """
    model = _load(ADD_ONE, 1, delegate)
    assert [op["op_name"] for op in model.interpreter._get_ops_details()] == nodes
    x = np.full(model.inputs[0].shape, 2.0, np.float32)
    np.testing.assert_array_equal(model.run(x)[0], x + 1)


_COUNT_THREADS = """
import os, sys
from pathlib import Path
import numpy as np
from converter.runtime.cli import _load
before = len(os.listdir("/proc/self/task"))
model = _load(Path(sys.argv[1]), int(sys.argv[2]), "xnnpack")
model.run(np.zeros(model.inputs[0].shape, np.float32))
print(len(os.listdir("/proc/self/task")) - before)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts OS threads through Linux /proc")
@pytest.mark.parametrize("threads", [1, 3])
def test_xnnpack_runs_with_the_requested_threads(threads: int) -> None:
    """XNNPACK's thread pool has threads - 1 workers beside the caller: counted in a fresh process.

    LiteRT's Python API has no getter for the thread count, so the OS is asked. Without a
    delegate the builtin kernels start their workers only for ops large enough to split,
    so the thread count of ``--delegate none`` is a request, not something checked here.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _COUNT_THREADS, str(ADD_ONE), str(threads)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    assert int(proc.stdout.split()[-1]) == threads - 1, proc.stderr


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
    np.savez(tmp_path / "keyed.npz", image=np.zeros((2, 1), np.float32), features=np.zeros((2, 1), np.float32))
    code, doc = run("bench", "--model", str(ADD_ONE), "--float", str(ADD_ONE), "--data", str(tmp_path / "keyed.npz"))
    assert code == 2 and "no array 'x'; it has image, features. This model has one input" in str(doc["error"]), doc
    code, doc = run("info")
    assert code == 0 and "machine" in doc
