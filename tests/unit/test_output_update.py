"""deploy, analyze and check change a published folder as a whole, under its lock, or not at all;
signals during a switch are deferred for the whole process; a killed edgeconv takes its benchmark along."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from converter import artifacts
from converter.artifacts import Interrupted, OutputFolder, sha256_of, update_outputs, write_outputs
from converter.errors import OutputError
from tests.conftest import ROOT
from tests.unit.test_publish import OLD, beside, expected, snapshot

FIX = "make it writable"
AGAIN = "run it again"


def update(out: Path, changes: dict[str, bytes], based_on: dict[str, str | None] | None = None) -> None:
    update_outputs(out, changes, where="cmd", fix=FIX, again=AGAIN, based_on=based_on)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "build" / "out"
    write_outputs(folder, "r", {**OLD, "report.json": b"{}"})
    return folder


def test_an_update_replaces_some_files_and_keeps_the_rest(out: Path) -> None:
    (out / ".report.json.ab12cd_9.tmp").write_bytes(b"half")  # left by a SIGKILLed write_atomic
    before = (out / "model_int8.tflite").stat()
    update(
        out, {"report.json": b'{"deployed": 1}', "report.md": b"# md"}, {"report.json": sha256_of(out / "report.json")}
    )
    assert snapshot(out) == expected({**OLD, "report.json": b'{"deployed": 1}', "report.md": b"# md"})
    assert beside(out) == ["out"]  # no lock, no staging, no old set left
    assert (out / "model_int8.tflite").stat().st_ino == before.st_ino  # linked, not copied


def test_an_update_based_on_a_report_that_changed_is_refused(out: Path) -> None:
    read = sha256_of(out / "report.json")
    write_outputs(out, "r", {"model_int8.tflite": b"run B", "report.json": b'{"run": "B"}'})  # published meanwhile
    after = snapshot(out)
    with pytest.raises(OutputError) as refused:
        update(out, {"report.json": b'{"run": "A", "latency": 1}'}, {"report.json": read})
    assert str(refused.value) == (
        f"cmd: report.json changed while this command ran (another edgeconv run wrote {out} meanwhile), "
        f"so its result belongs to files that are gone; nothing was written: {AGAIN}"
    )
    assert refused.value.exit_code == 2
    assert snapshot(out) == after and beside(out) == ["out"]


def test_an_update_waits_for_no_run_and_never_interleaves(out: Path) -> None:
    with OutputFolder(out, "r"), pytest.raises(OutputError) as refused:
        update(out, {"report.json": b"x"})
    assert str(refused.value) == (
        f"cmd: another edgeconv run (pid {os.getpid()}) is writing {out}; nothing was written: "
        "wait for it to finish, then run this command again"
    )
    assert snapshot(out) == expected({**OLD, "report.json": b"{}"})


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_a_failed_update_leaves_the_folder_as_it_was(
    out: Path, exchange: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not exchange:
        monkeypatch.setattr(artifacts, "_exchange", lambda a, b: False)
    before = snapshot(out)
    real = artifacts.write_file
    for n in (1, 2, 3):  # report.json, report.md, the stamp
        calls: list[Path] = []

        def failing(path: Path, data: bytes, n: int = n, calls: list[Path] = calls) -> None:
            calls.append(path)
            if len(calls) == n:
                raise OSError(28, "No space left on device", str(path))
            real(path, data)

        monkeypatch.setattr(artifacts, "write_file", failing)
        with pytest.raises(OutputError) as failed:
            update(out, {"report.json": b"new", "report.md": b"md"})
        assert str(failed.value) == (
            f"cmd: cannot write report.json, report.md beside it in {out} (No space left on device: {calls[-1]}); "
            f"nothing was written; {out} is unchanged. {FIX}"
        )
        assert snapshot(out) == before and beside(out) == ["out"]


def test_a_folder_without_stamp_is_updated_file_by_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "copied"
    folder.mkdir()
    (folder / "report.json").write_bytes(b"{}")
    (folder / "notes.txt").write_bytes(b"mine")
    update(folder, {"report.json": b"new", "junit.xml": b"<x/>"})
    assert snapshot(folder) == {"junit.xml": b"<x/>", "notes.txt": b"mine", "report.json": b"new"}
    # Ctrl-C while the files are staged: nothing replaced, no temporary file left.
    real = artifacts._stage
    staged: list[Path] = []

    def interrupted(path: Path, data: bytes) -> Path:
        if staged:
            raise KeyboardInterrupt
        staged.append(real(path, data))
        return staged[-1]

    monkeypatch.setattr(artifacts, "_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        update(folder, {"report.json": b"newer", "junit.xml": b"<y/>"})
    assert snapshot(folder) == {"junit.xml": b"<x/>", "notes.txt": b"mine", "report.json": b"new"}
    assert not staged[0].exists()


def test_temporary_files_edgeconv_left_are_leftovers_not_foreign_files(out: Path) -> None:
    (out / ".report.md.k3j9x_0a.tmp").write_bytes(b"half")  # check's old writer, interrupted
    (out / ".model_int8.tflite.0123abcd.tmp").write_bytes(b"half")  # write_atomic, SIGKILLed
    write_outputs(out, "r", {"report.json": b"{}"})  # refused before: "holds files edgeconv did not write"
    assert snapshot(out) == expected({"report.json": b"{}"})
    (out / ".thesis.pdf.0123abcd.tmp").write_bytes(b"%PDF")  # not the name of a file edgeconv writes there
    with pytest.raises(OutputError, match=r"holds files edgeconv did not write \(\.thesis\.pdf\.0123abcd\.tmp\)"):
        write_outputs(out, "r", {"report.json": b"{}"})


@pytest.mark.usefixtures("sigint_raises")
def test_a_signal_during_the_cleanup_after_the_switch_is_raised_once_it_is_done(
    out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.rmtree

    def rmtree_interrupted(path: Path) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the old set (now in the staging name) is deleted
        real(path)

    with pytest.raises(Interrupted) as caught, OutputFolder(out, "r") as folder:
        folder.publish({"report.json": b"new"})
        monkeypatch.setattr(shutil, "rmtree", rmtree_interrupted)
    assert caught.value.signum == signal.SIGINT
    assert caught.value.outcome == f"{out} holds this run's complete set of files"
    assert snapshot(out) == expected({"report.json": b"new"}) and beside(out) == ["out"]


@pytest.mark.usefixtures("sigint_raises")
def test_a_signal_delivered_to_another_thread_during_the_switch_is_deferred(
    out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait, daemon=True)  # the kernel may pick this thread for the signal
    helper.start()
    real = artifacts._exchange

    def exchange_interrupted(a: Path, b: Path) -> bool:
        done = real(a, b)
        os.kill(os.getpid(), signal.SIGINT)  # after the exchange, before the run marks itself published
        time.sleep(0.1)
        return done

    monkeypatch.setattr(artifacts, "_exchange", exchange_interrupted)
    try:
        with pytest.raises(Interrupted) as caught:
            write_outputs(out, "r", {"report.json": b"new"})
    finally:
        stop.set()
    assert caught.value.outcome == f"{out} holds this run's complete set of files"
    assert snapshot(out) == expected({"report.json": b"new"})
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the previous handler is back


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_edgeconv_takes_its_benchmark_child_along(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    parent = (
        f"import sys; from converter.boards.bench import run_child; run_child([sys.executable, '-c', {child!r}], 300)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_sha256_of_a_missing_file_is_none(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"abc")
    assert sha256_of(tmp_path / "a") == hashlib.sha256(b"abc").hexdigest()
    assert sha256_of(tmp_path / "missing") is None
