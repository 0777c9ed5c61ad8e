"""Deployment over SSH against a real sshd on 127.0.0.1 (no mocks), and the runtime's errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from converter.boards.bench import BenchRequest, run_local, run_remote
from converter.boards.deploy import SSHTarget
from converter.cli.main import main
from converter.errors import DeployError, DeviceInputError
from converter.pipeline import convert
from converter.recipe import load_recipe
from tests.conftest import tiny_recipe
from tests.sshd import LoopbackSSH, loopback_sshd, sshd_available

pytestmark = pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available()))

FAST = {"warmup": 1, "runs": 5, "min_seconds": 0.0}
FAST_CLI = ["--runs", "3", "--warmup", "0", "--min-seconds", "0"]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackSSH]:
    with loopback_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="module")
def converted(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model converted once; its folder holds both models and report.json."""
    folder = tmp_path_factory.mktemp("converted")
    recipe = folder / "recipe.yaml"
    recipe.write_text(json.dumps(tiny_recipe(tiny_model_dir)))
    convert(load_recipe(recipe), folder / "out")
    x = np.load(tiny_model_dir / "test.npz")
    np.savez(folder / "eval.npz", x=x["x"], y=x["y"])
    return folder


def _target(sshd: LoopbackSSH, **changes: Any) -> SSHTarget:
    fields: dict[str, Any] = {
        "destination": sshd.destination,
        "port": sshd.port,
        "identity": sshd.identity,
        "known_hosts": sshd.known_hosts,
        "python": sys.executable,
        **changes,
    }
    return SSHTarget(**fields)


def _request(folder: Path, **changes: Any) -> BenchRequest:
    fields: dict[str, Any] = {
        "model": folder / "out" / "model_int8.tflite",
        "float_model": folder / "out" / "model_float.tflite",
        "data": folder / "eval.npz",
        "label": "loopback",
        **FAST,
        **changes,
    }
    return BenchRequest(**fields)


def _cli_ssh(sshd: LoopbackSSH) -> list[str]:
    """The CLI options that reach the loopback server with its key and known_hosts."""
    return [
        "--host",
        sshd.destination,
        "--port",
        str(sshd.port),
        "--identity",
        str(sshd.identity),
        "--known-hosts",
        str(sshd.known_hosts),
        "--python",
        sys.executable,
    ]


@pytest.fixture(autouse=True)
def _own_local_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own local temp folder, so its leftovers are told apart from anyone else's."""
    local = tmp_path / "local-tmp"
    local.mkdir()
    monkeypatch.setenv("TMPDIR", str(local))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches the folder it found first
    return local


def _remote_dirs(sshd: LoopbackSSH) -> set[Path]:
    """The device's working folders: under the loopback server's own $TMPDIR, which only these tests use."""
    return set(sshd.tmp.glob("edgeconv.*"))


def test_remote_bench_matches_local_and_cleans_up(sshd: LoopbackSSH, converted: Path, _own_local_tmp: Path) -> None:
    assert _remote_dirs(sshd) == set()
    remote = run_remote(_request(converted), _target(sshd))
    local = run_local(_request(converted, label="host"))
    assert _remote_dirs(sshd) == set()  # the device's working folder is gone ...
    assert list(_own_local_tmp.iterdir()) == []  # ... and so are the local staging folders
    for result in (remote, local):
        for key in ("model", "float"):
            lat = result["models"][key]["latency"]
            assert lat["runs"] >= 5 and 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        assert result["peak_rss_mb"] > 10
    # Same runtime code and same data on both sides: identical accuracy figures.
    assert remote["accuracy"]["where"] == "loopback"
    for key in ("float", "int8", "agreement", "samples"):
        assert remote["accuracy"][key] == local["accuracy"][key]
    assert remote["accuracy"]["float"] >= 0.95
    assert remote["models"]["model"]["input"]["dtype"] == "int8"


def test_keep_leaves_the_folder(sshd: LoopbackSSH, converted: Path) -> None:
    before = _remote_dirs(sshd)
    run_remote(_request(converted, data=None, float_model=None), _target(sshd), keep=True)
    kept = _remote_dirs(sshd) - before
    assert len(kept) == 1
    folder = kept.pop()
    names = sorted(p.name for p in folder.iterdir())
    shutil.rmtree(folder)
    assert names == ["edgeconv_runtime.pyz", "model_int8.tflite", "run.pid"]  # run.pid: the PID that measured


def test_arguments_are_shell_quoted(sshd: LoopbackSSH, converted: Path, tmp_path: Path) -> None:
    odd = tmp_path / "int8 model;touch PWNED.tflite"
    odd.write_bytes((converted / "out" / "model_int8.tflite").read_bytes())
    result = run_remote(_request(converted, model=odd, float_model=None, data=None), _target(sshd))
    assert result["models"]["model"]["path"] == odd.name
    assert not list(sshd.tmp.glob("edgeconv.*/PWNED.tflite")) and not Path.home().joinpath("PWNED.tflite").exists()


def test_unknown_host_key_is_refused(sshd: LoopbackSSH, converted: Path, tmp_path: Path) -> None:
    other = tmp_path / "known_hosts"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    other.write_text(f"[127.0.0.1]:{sshd.port} {(tmp_path / 'k.pub').read_text()}")
    with pytest.raises(DeployError, match=r"(?i)^connect: .*host key verification failed.*ssh-keyscan") as info:
        run_remote(_request(converted), _target(sshd, known_hosts=other))
    assert info.value.step == "connect"
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(DeployError, match="host key"):
        run_remote(_request(converted), _target(sshd, known_hosts=empty))


def test_wrong_user_and_unreachable_host(sshd: LoopbackSSH, converted: Path) -> None:
    with pytest.raises(DeployError, match=r"^connect: .*authentication failed"):
        run_remote(_request(converted), _target(sshd, destination="nobody-here@127.0.0.1"))
    closed = sshd.port + 1 if sshd.port < 65535 else sshd.port - 1
    with pytest.raises(DeployError, match=r"^connect: .*not reachable"):
        run_remote(_request(converted), _target(sshd, port=closed, connect_timeout=3))


def _venv(tmp_path: Path, with_numpy: bool) -> str:
    """A Python without TFLite interpreters (and without numpy unless asked)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    if with_numpy:  # numpy alone, through a .pth pointing at a folder that holds just a link to it
        only = tmp_path / "only_numpy"
        only.mkdir()
        (only / "numpy").symlink_to(Path(np.__file__).parent)
        site = next((tmp_path / "venv" / "lib").glob("python*/site-packages"))
        (site / "only_numpy.pth").write_text(f"{only}\n")
    return str(tmp_path / "venv" / "bin" / "python")


def test_missing_numpy_on_the_device(sshd: LoopbackSSH, converted: Path, tmp_path: Path) -> None:
    before = _remote_dirs(sshd)
    with pytest.raises(
        DeployError, match=r"^run: .*numpy is not installed on this device; install it: pip install numpy"
    ):
        run_remote(_request(converted), _target(sshd, python=_venv(tmp_path, with_numpy=False)))
    assert _remote_dirs(sshd) == before


def test_missing_interpreter_on_the_device(sshd: LoopbackSSH, converted: Path, tmp_path: Path) -> None:
    with pytest.raises(DeployError, match=r"^run: .*no TFLite interpreter found; install ai-edge-litert"):
        run_remote(_request(converted), _target(sshd, python=_venv(tmp_path, with_numpy=True)))


def test_bad_data_on_the_device_is_a_user_error(sshd: LoopbackSSH, converted: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 5, 5, 3), dtype=np.uint8))
    with pytest.raises(
        DeviceInputError, match=r"samples have shape \[5, 5, 3\] after preprocessing, the model expects"
    ):
        run_remote(_request(converted, data=tmp_path / "wrong.npz"), _target(sshd))
    with pytest.raises(DeviceInputError, match="not a TFLite model"):
        run_remote(_request(converted, model=tmp_path / "wrong.npz", float_model=None, data=None), _target(sshd))


def test_recipe_ssh_target_and_deploy_command(
    sshd: LoopbackSSH, tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    target = {
        "device": "raspberry-pi-4",
        "host": sshd.destination,
        "port": sshd.port,
        "identity": str(sshd.identity),
        "known_hosts": str(sshd.known_hosts),
        "python": sys.executable,
    }
    recipe = write_recipe(tiny_recipe(tiny_model_dir, targets=["host", target]))
    report = convert(load_recipe(recipe), tmp_path / "out").report
    assert report["latency"]["host"]["where"] == "host"
    device = report["latency"]["raspberry-pi-4"]
    assert device["where"] == "device" and device["int8"]["threads"] == 4  # the profile's threads
    assert report["targets"]["raspberry-pi-4"]["accuracy"]["where"] == "raspberry-pi-4"
    assert report["targets"]["raspberry-pi-4"]["accuracy"]["int8"] == report["accuracy"]["int8"]

    plain = write_recipe(tiny_recipe(tiny_model_dir), "plain.yaml")
    runner = CliRunner()
    assert runner.invoke(main, ["convert", "--recipe", str(plain), "--out", str(tmp_path / "p")]).exit_code == 0
    args = [
        "deploy",
        "--recipe",
        str(plain),
        "--out",
        str(tmp_path / "p"),
        *_cli_ssh(sshd),
        "--device",
        "raspberry-pi-5",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "raspberry-pi-5 (device:" in result.stdout and "accuracy on raspberry-pi-5" in result.stdout
    updated = json.loads((tmp_path / "p" / "report.json").read_text())
    assert updated["latency"]["raspberry-pi-5"]["int8"]["threads"] == 4
    assert updated["targets"]["raspberry-pi-5"]["measured"] is True


def test_bench_command_exit_codes(sshd: LoopbackSSH, converted: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = [
        "bench",
        "--model",
        str(converted / "out" / "model_int8.tflite"),
        *FAST_CLI,
    ]
    ok = runner.invoke(main, [*base, "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["models"]["model"]["latency"]["runs"] >= 3
    remote = [*base, *_cli_ssh(sshd)]
    assert runner.invoke(main, remote).exit_code == 0
    (tmp_path / "x.tflite").write_text("not a model")
    bad = runner.invoke(main, ["bench", "--model", str(tmp_path / "x.tflite")])
    assert bad.exit_code == 2 and "is not a TFLite model" in bad.stderr
    assert runner.invoke(main, [*base, "--device", "no-such-board"]).exit_code == 2
    needs_host = runner.invoke(main, [*base, "--device", "raspberry-pi-4"])
    assert needs_host.exit_code == 2 and "add --host user@device" in needs_host.stderr
    unreachable = runner.invoke(main, [*remote, "--port", "1"])
    assert unreachable.exit_code == 3 and "error: connect:" in unreachable.stderr


def test_bundle_runs_without_tensorflow(converted: Path, tmp_path: Path) -> None:
    """The device bundle must not need TensorFlow: make it unimportable and run the bundle."""
    from converter.boards.bundle import bundle_bytes, write_bundle

    assert bundle_bytes() == bundle_bytes()  # deterministic
    bundle = write_bundle(tmp_path)
    blocker = tmp_path / "block" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('TensorFlow is not on this device')\n")
    result = subprocess.run(
        [
            sys.executable,
            str(bundle),
            "bench",
            "--model",
            str(converted / "out" / "model_int8.tflite"),
            "--float",
            str(converted / "out" / "model_float.tflite"),
            "--data",
            str(converted / "eval.npz"),
            *FAST_CLI,
        ],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path / "block"), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["accuracy"]["float"] >= 0.95


def test_deploy_reaches_the_device_the_recipe_describes(
    sshd: LoopbackSSH, tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    """No --host: port, identity, known_hosts and python come from the recipe's target; the CLI overrides each."""
    target = {
        "device": "raspberry-pi-4",
        "host": sshd.destination,
        "port": sshd.port,
        "identity": str(sshd.identity),
        "known_hosts": str(sshd.known_hosts),
        "python": sys.executable,
    }
    recipe = tiny_recipe(tiny_model_dir, targets=["host", target])
    recipe["benchmark"] = {"enabled": False, **FAST}  # convert does not measure; deploy does
    path = write_recipe(recipe)
    runner = CliRunner()
    assert runner.invoke(main, ["convert", "--recipe", str(path), "--out", str(tmp_path / "o")]).exit_code == 0
    recipe["benchmark"]["enabled"] = True
    path = write_recipe(recipe)
    result = runner.invoke(main, ["deploy", "--recipe", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["latency"]["raspberry-pi-4"]["where"] == "device"
    assert report["targets"]["raspberry-pi-4"]["measured"] is True
    # a command-line value wins over the recipe's: this Python does not exist on the device
    wrong = runner.invoke(
        main, ["deploy", "--recipe", str(path), "--out", str(tmp_path / "o"), "--python", "/no/such/python3"]
    )
    assert wrong.exit_code == 3 and "/no/such/python3" in wrong.stderr, wrong.output
    # a device with no host anywhere: a usage error naming both ways to give one
    bare = write_recipe(tiny_recipe(tiny_model_dir, targets=["host"]), "bare.yaml")
    none = runner.invoke(
        main, ["deploy", "--recipe", str(bare), "--out", str(tmp_path / "o"), "--device", "raspberry-pi-5"]
    )
    assert none.exit_code == 2 and "give --host user@device, or set host: in the recipe's target" in none.stderr
