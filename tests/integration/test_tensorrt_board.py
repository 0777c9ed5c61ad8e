"""TensorRT boards over SSH: ``edgeconv bench --device jetson-*`` against a real sshd on 127.0.0.1.

No Jetson and no GPU here: the board runs ``tests/doubles/trtexec_test_double.sh``, a test double of trtexec
that checks its arguments, writes a 4096-byte stand-in engine and prints the performance summary of a real
trtexec run (TensorRT 10.3.0 on a Jetson, from a public log). What this tests is the SSH plumbing (copy, the
argument list, the run, the engine's size read back, clean-up, errors) and the parsing of trtexec's summary; that
an engine builds and how fast it runs is not tested anywhere (docs/targets/tensorrt.md says so).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from converter.boards.deploy import SSHTarget
from converter.boards.trtexec import build_command, measure, parse_summary
from converter.cli.main import main
from converter.errors import DeployError
from tests.conftest import tiny_recipe
from tests.sshd import LoopbackSSH, loopback_sshd, sshd_available

ROOT = Path(__file__).resolve().parents[2]
DOUBLE = ROOT / "tests" / "doubles" / "trtexec_test_double.sh"
MODEL = ROOT / "recipes" / "models" / "digits_cnn.onnx"  # any ONNX file: the double builds nothing from it
SUMMARY_P = {"p50_ms": 3.14062, "p90_ms": 3.14587, "p95_ms": 3.14771, "p99_ms": 3.15039}

needs_sshd = pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available()))


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackSSH]:
    if sshd_available() is not None:
        pytest.skip(str(sshd_available()))
    with loopback_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def _target(sshd: LoopbackSSH) -> SSHTarget:
    return SSHTarget(sshd.destination, sshd.port, sshd.identity, sshd.known_hosts, name="jetson-orin-nano")


def _remote_dirs(sshd: LoopbackSSH) -> set[Path]:
    return set(sshd.tmp.glob("edgeconv.*"))


@needs_sshd
def test_trtexec_builds_and_times_on_the_board(sshd: LoopbackSSH) -> None:
    before = _remote_dirs(sshd)
    result = measure(_target(sshd), MODEL, str(DOUBLE))
    assert result["latency"] == {**SUMMARY_P, "mean_ms": 3.14068, "min_ms": 3.12671, "max_ms": 3.15479}
    assert result["engine_bytes"] == 4096 and result["tensorrt"] == "100300"
    assert result["command"] == [DOUBLE.name, "--onnx=digits_cnn.onnx", "--int8", "--fp16", "--saveEngine=model.engine"]
    assert result["accuracy"] is None and "tensorrt Python bindings" in result["accuracy_reason"]
    assert _remote_dirs(sshd) == before  # the working folder is removed


@needs_sshd
def test_bench_cli_prints_trtexec_figures(sshd: LoopbackSSH) -> None:
    ssh = ["--host", sshd.destination, "--port", str(sshd.port), "--identity", str(sshd.identity)]
    ssh += ["--known-hosts", str(sshd.known_hosts)]
    args = ["bench", "--model", str(MODEL), "--device", "jetson-orin-nano", "--trtexec", str(DOUBLE), *ssh]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "p50 3.14 ms  p90 3.15 ms  p99 3.15 ms" in result.output, result.output
    assert "engine 4,096 bytes" in result.output
    doc = json.loads(CliRunner().invoke(main, [*args, "--json"]).output)
    assert doc["latency"]["p99_ms"] == 3.15039


@needs_sshd
def test_deploy_records_trtexec_figures_and_gates_them(sshd: LoopbackSSH, tiny_model_dir: Path, tmp_path: Path) -> None:
    """convert writes the Q/DQ model; deploy builds and times it on the board and judges the TensorRT gates."""
    pytest.importorskip("tf2onnx")
    budgets = {"latency_p50_ms": "5ms", "latency_p90_ms": "3ms", "engine_bytes": 8192}
    target = {"device": "jetson-orin-nano", "budgets": budgets}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps(tiny_recipe(tiny_model_dir, targets=["host", target])))
    out = tmp_path / "out"
    converted = CliRunner().invoke(main, ["convert", "--recipe", str(recipe), "--out", str(out)])
    assert converted.exit_code == 0, converted.output
    ssh = ["--host", sshd.destination, "--port", str(sshd.port), "--identity", str(sshd.identity)]
    ssh += ["--known-hosts", str(sshd.known_hosts), "--trtexec", str(DOUBLE)]
    args = ["deploy", "--recipe", str(recipe), "--out", str(out), "--device", "jetson-orin-nano", *ssh]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output  # p90 3.15 ms is over its 3 ms budget
    assert "engine 4,096 bytes" in result.output and "p50 3.14 ms" in result.output
    report = json.loads((out / "report.json").read_text())
    latency = report["latency"]["jetson-orin-nano"]
    assert latency["int8"]["p50_ms"] == 3.14062 and latency["engine_bytes"] == 4096
    section = report["targets"]["jetson-orin-nano"]
    assert section["gpu"]["engine_bytes"] == 4096 and section["accuracy"]["where"] == "onnxruntime-qdq"
    gates = {g["name"]: g for g in report["gates"] if g["target"] == "jetson-orin-nano"}
    assert gates["latency_p50_ms"]["status"] == "passed" and gates["engine_bytes"]["status"] == "passed"
    assert gates["latency_p90_ms"]["status"] == "failed" and gates["latency_p90_ms"]["value"] == 3.14587


@needs_sshd
def test_a_missing_trtexec_is_a_run_error_naming_it(sshd: LoopbackSSH) -> None:
    with pytest.raises(DeployError) as error:
        measure(_target(sshd), MODEL, "/nonexistent/trtexec")
    assert error.value.step == "run" and "/nonexistent/trtexec" in str(error.value)


def test_bench_refuses_a_tflite_model_for_a_tensorrt_device(tmp_path: Path) -> None:
    model = tmp_path / "model_int8.tflite"
    model.write_bytes(b"TFL3")
    args = ["bench", "--model", str(model), "--device", "jetson-orin-nano", "--host", "u@127.0.0.1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "jetson-orin-nano runs TensorRT, which builds from ONNX: give firmware/jetson-orin-nano/model_qdq.onnx" in (
        result.output
    )


def test_precision_flags_follow_the_tensorrt_version() -> None:
    assert build_command("trtexec", "m.onnx", "m.engine", "10.3.0") == [
        "trtexec", "--onnx=m.onnx", "--int8", "--fp16", "--saveEngine=m.engine"
    ]  # fmt: skip
    assert build_command("trtexec", "m.onnx", "m.engine", "11.5.0")[2:] == ["--stronglyTyped", "--saveEngine=m.engine"]


def test_summary_of_older_trtexec_has_only_p99() -> None:
    text = (
        "[07/24/2022-22:56:49] [I] === Performance summary ===\n"
        "[07/24/2022-22:56:49] [I] Throughput: 37538.6 qps\n"
        "[07/24/2022-22:56:49] [I] Latency: min = 852.214 ms, max = 1882.35 ms, mean = 1671.06 ms, "
        "median = 1755.81 ms, percentile(99%) = 1882.35 ms\n"
        "[07/24/2022-22:56:49] [I] H2D Latency: min = 16.5605 ms, max = 115.081 ms, mean = 39.1974 ms, "
        "median = 17.144 ms, percentile(99%) = 115.081 ms\n"
    )
    got = parse_summary(text)
    assert got["p50_ms"] == 1755.81 and got["p99_ms"] == 1882.35 and got["p90_ms"] is None
    with pytest.raises(ValueError, match="no '=== Performance summary ===' section"):
        parse_summary("&&&& FAILED TensorRT.trtexec")


@needs_sshd
def test_convert_measures_a_jetson_target_with_a_host(
    sshd: LoopbackSSH, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recipe target with a host: convert builds and times the Q/DQ model there, and gates it, in one run.

    The profiles are copied and jetson-orin-nano's ``tensorrt.trtexec`` pointed at the test double
    ($EDGECONV_DEVICES), the one thing a recipe cannot set.
    """
    pytest.importorskip("tf2onnx")
    import shutil

    import yaml

    devices = tmp_path / "devices"
    shutil.copytree(ROOT / "devices", devices)
    profile = yaml.safe_load((devices / "jetson-orin-nano.yaml").read_text())
    profile["tensorrt"]["trtexec"] = str(DOUBLE)
    (devices / "jetson-orin-nano.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.setenv("EDGECONV_DEVICES", str(devices))
    target = {
        "device": "jetson-orin-nano",
        "host": sshd.destination,
        "port": sshd.port,
        "identity": str(sshd.identity),
        "known_hosts": str(sshd.known_hosts),
        "budgets": {"latency_p50_ms": "5ms", "engine_bytes": "4KB"},
    }
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps(tiny_recipe(tiny_model_dir, targets=["host", target])))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", "--recipe", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["latency"]["jetson-orin-nano"]["int8"]["p99_ms"] == 3.15039
    section = report["targets"]["jetson-orin-nano"]
    assert section["gpu"]["engine_bytes"] == 4096 and section["accuracy"]["where"] == "onnxruntime-qdq"
    gates = {g["name"]: g["status"] for g in report["gates"] if g["target"] == "jetson-orin-nano"}
    assert gates == {"compatible": "passed", "latency_p50_ms": "passed", "engine_bytes": "passed"}, gates
