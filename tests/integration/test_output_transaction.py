"""``edgeconv convert`` publishes one whole run: failures, signals, kills and concurrent runs never mix sets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from converter import artifacts, pipeline
from converter.cli.main import main
from converter.errors import OutputError
from tests.conftest import ROOT, sigint_default, tiny_recipe
from tests.unit.test_publish import beside, snapshot

HIST = "calibration_histograms.png"


def _convert(recipe: Path, out: Path, *extra: str) -> Result:
    return CliRunner().invoke(main, ["convert", "--recipe", str(recipe), "--out", str(out), *extra])


NO_EXCHANGE = (
    "import converter.artifacts as a; a._exchange = lambda x, y: False; from converter.cli.main import main; main()"
)


def _start(recipe: Path, out: Path, env: dict[str, str] | None = None, exchange: bool = True) -> subprocess.Popen[str]:
    how = ["-m", "converter"] if exchange else ["-c", NO_EXCHANGE]  # the fallback: two renames
    cmd = [sys.executable, *how, "convert", "--recipe", str(recipe), "--out", str(out)]
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default
    )


def _wait_for(proc: subprocess.Popen[str], ready: Callable[[], bool], what: str, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{what} never happened: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)


@pytest.fixture
def recipes(tiny_model_dir: Path, write_recipe: Callable[..., Path]) -> dict[str, Path]:
    """Two recipes of one name that produce different sets: percentile calibration draws histograms."""
    return {
        "percentile": write_recipe(tiny_recipe(tiny_model_dir, calibration={"method": "percentile"}), "pct.yaml"),
        "minmax": write_recipe(tiny_recipe(tiny_model_dir), "minmax.yaml"),
    }


def test_failure_at_each_write_keeps_the_previous_run(
    recipes: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from converter.recipe import load_recipe

    out = tmp_path / "build" / "out"
    assert _convert(recipes["percentile"], out).exit_code == 0
    before = snapshot(out)
    assert HIST in before
    # The steps run once, for real; the failing runs reuse their result, so only the writes differ.
    recipe = load_recipe(recipes["minmax"])
    computed: list[tuple[dict[str, Any], dict[str, bytes]]] = []
    real_run = pipeline._run

    def run_once(*args: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
        if not computed:
            computed.append(real_run(*args))
        return computed[0]

    monkeypatch.setattr(pipeline, "_run", run_once)
    real_write = artifacts.write_file
    writes = 0
    n = 0
    while True:
        n += 1
        calls: list[Path] = []

        def failing(path: Path, data: bytes, n: int = n, calls: list[Path] = calls) -> None:
            calls.append(path)
            if len(calls) == n:
                raise PermissionError(13, "Permission denied", str(path))
            real_write(path, data)

        monkeypatch.setattr(artifacts, "write_file", failing)
        try:
            pipeline.convert(recipe, out)
        except OutputError as e:  # exit 2 naming the folder and the errno text (was an OSError: exit 3)
            assert str(e) == (
                f"--out {out}: cannot write this run's files (Permission denied: {calls[-1]}); nothing of this run "
                f"was published; {out} keeps the previous run's files. Free space or fix the file system, "
                "then run again"
            )
            assert snapshot(out) == before, f"failure at write {n}"
            assert beside(out) == ["out"]
            continue
        finally:
            writes = max(writes, len(calls))
        break
    assert writes == len(computed[0][1]) + 1 and n == writes + 1  # every file and the stamp failed once
    after = snapshot(out)
    assert HIST not in after and set(after) == {*computed[0][1], artifacts.STAMP}
    assert beside(out) == ["out"]


def test_stale_histograms_do_not_survive_a_rerun(recipes: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "build" / "out"
    assert _convert(recipes["percentile"], out).exit_code == 0
    assert (out / HIST).is_file()
    assert _convert(recipes["minmax"], out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".edgeconv.json",
        "junit.xml",
        "model_float.tflite",
        "model_int8.tflite",
        "report.html",
        "report.json",
        "report.md",
    ]
    assert json.loads((out / "report.json").read_text())["calibration"]["histograms"] is None


def test_out_under_a_file_is_refused_at_once(recipes: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    start = time.perf_counter()
    result = _convert(recipes["minmax"], tmp_path / "file" / "out")
    assert time.perf_counter() - start < 2.0
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"error: --out {tmp_path / 'file' / 'out'}: {tmp_path / 'file'} is a file, not a folder; choose another --out\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "minmax.yaml", "pct.yaml"]


@pytest.mark.parametrize(
    ("hook", "sig", "exchange"),
    [
        pytest.param(artifacts.PAUSE_BEFORE_SWITCH, signal.SIGKILL, True, id="before-KILL"),
        pytest.param(artifacts.PAUSE_BEFORE_SWITCH, signal.SIGINT, True, id="before-INT", marks=pytest.mark.full),
        # exchanged, not yet marked published
        pytest.param(artifacts.PAUSE_MID_SWITCH, signal.SIGKILL, True, id="exchanged-KILL", marks=pytest.mark.full),
        pytest.param(artifacts.PAUSE_MID_SWITCH, signal.SIGINT, True, id="exchanged-INT"),
        # between the fallback's two renames
        pytest.param(artifacts.PAUSE_MID_SWITCH, signal.SIGKILL, False, id="fallback-KILL"),
        pytest.param(artifacts.PAUSE_MID_SWITCH, signal.SIGINT, False, id="fallback-INT", marks=pytest.mark.full),
        pytest.param(artifacts.PAUSE_AFTER_SWITCH, signal.SIGINT, True, id="after-INT", marks=pytest.mark.full),
    ],
)
def test_a_run_signalled_before_during_or_after_the_switch_leaves_old_or_new(
    recipes: dict[str, Path], tmp_path: Path, hook: str, sig: int, exchange: bool
) -> None:
    """A signal before the switch keeps the old set; SIGINT during it waits until the switch is over
    (TensorFlow's threads are alive: the kernel may hand it to one of them); SIGKILL in the middle of
    the fallback leaves the old set aside, which the next run restores."""
    out = tmp_path / "build" / "out"
    assert _convert(recipes["percentile"], out).exit_code == 0
    before = snapshot(out)
    gate = tmp_path / "gate"
    proc = _start(recipes["minmax"], out, {hook: str(gate)}, exchange)
    _wait_for(proc, Path(f"{gate}.reached").exists, "the switch")
    proc.send_signal(sig)
    if sig == signal.SIGINT:
        time.sleep(0.5)
        gate.touch()  # a run held in the switch goes on; one held before it has been interrupted already
    _, stderr = proc.communicate(timeout=120)
    switched = hook != artifacts.PAUSE_BEFORE_SWITCH
    if sig == signal.SIGKILL and not exchange:
        assert not out.exists() and snapshot(out.parent / ".out.edgeconv-old") == before
        switched = False
    else:
        now = snapshot(out)
        if switched:
            assert HIST not in now and set(now) == set(before) - {HIST}  # the new set, whole
            assert json.loads(now["report.json"])["calibration"]["method"] == "minmax"
        else:
            assert now == before
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr
        told = (
            f"{out} holds this run's complete set of files"
            if switched
            else f"nothing of this run was published; {out} keeps the previous run's files"
        )
        assert stderr.endswith(f"interrupted (SIGINT); {told}\n"), stderr
        assert beside(out) == ["out"]
    else:
        assert proc.returncode == -signal.SIGKILL
        assert len(beside(out)) > 1  # its lock file (and staging folder) are left behind...
    assert _convert(recipes["minmax"], out).exit_code == 0  # ...and cleaned by the next run
    assert beside(out) == ["out"]


def test_two_runs_into_one_folder_never_interleave(
    recipes: dict[str, Path], tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "build" / "new"
    gate = tmp_path / "gate"
    first = _start(recipes["minmax"], out, {artifacts.PAUSE_BEFORE_SWITCH: str(gate)})
    _wait_for(first, Path(f"{gate}.reached").exists, "the first run's switch")
    other = write_recipe(tiny_recipe(tiny_model_dir, name="other"), "other.yaml")
    second = _convert(other, out)
    assert second.exit_code == 2, second.output
    assert second.stderr == (
        f"error: --out {out}: another edgeconv run (pid {first.pid}) is writing this folder; "
        "wait for it to finish, or choose another --out\n"
    )
    gate.touch()
    assert first.wait(timeout=120) == 0
    assert json.loads((out / ".edgeconv.json").read_text())["recipe"] == "tiny"
    assert beside(out) == ["new"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_an_unreachable_device_keeps_the_conversion(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    port = _closed_port()
    target = {"device": "raspberry-pi-4", "host": "user@127.0.0.1", "port": port}
    recipe = write_recipe(tiny_recipe(tiny_model_dir, targets=["host", target]))
    result = _convert(recipe, tmp_path / "build" / "out")
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "build" / "out" / "report.json").read_text())
    assert (tmp_path / "build" / "out" / "model_int8.tflite").read_bytes()[4:8] == b"TFL3"
    pi = report["targets"]["raspberry-pi-4"]
    error = (
        f"connect: raspberry-pi-4 (user@127.0.0.1): ssh: connect to host 127.0.0.1 port {port}: Connection refused "
        "-- the device is not reachable on that address and port"
    )
    assert pi["measured"] is False and pi["measure_error"] == error
    assert pi["reason"] == f"not measured: user@127.0.0.1 could not be measured: {error}"
    assert report["latency"]["raspberry-pi-4"] is None and report["latency"]["host"] is not None
    failed = [(g["name"], g["target"], g["reason"]) for g in report["gates"] if g["status"] == "failed"]
    assert failed == [("measured", "raspberry-pi-4", error)]
    assert f"FAIL measured [raspberry-pi-4]: failed ({error})" in result.stdout


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_sigterm_during_the_benchmark_leaves_nothing_behind(
    recipes: dict[str, Path], tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "build" / "out"
    assert _convert(recipes["minmax"], out).exit_code == 0
    before = snapshot(out)
    slow = write_recipe(tiny_recipe(tiny_model_dir, benchmark={"runs": 100_000, "min_seconds": 300}), "slow.yaml")
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    proc = _start(slow, out, {"TMPDIR": str(private_tmp)})
    _wait_for(
        proc,
        lambda: any(p.name.startswith("edgeconv-bench-") for p in private_tmp.iterdir()) and bool(_children(proc.pid)),
        "the benchmark",
    )
    children = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.endswith(
        f"interrupted (SIGTERM); nothing of this run was published; {out} keeps the previous run's files\n"
    ), stderr
    assert [pid for pid in children if Path(f"/proc/{pid}").exists()] == []
    assert list(private_tmp.iterdir()) == []
    assert snapshot(out) == before and beside(out) == ["out"]
