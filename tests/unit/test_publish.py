"""The output folder is one whole run: failures, kills and concurrent runs leave the old set or the new one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from converter import artifacts
from converter.artifacts import STAMP, Interrupted, OutputFolder, write_outputs
from converter.boards.bench import run_child
from converter.errors import OutputError
from tests.conftest import ROOT, read_only, sigint_default

OLD = {"model_int8.tflite": b"old int8", "calibration_histograms.png": b"old png", "firmware/model.cc": b"old cc"}
NEW = {"model_int8.tflite": b"new int8", "report.json": b'{"new": 1}', "firmware/model.cc": b"new cc"}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), the stamp included."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def expected(files: dict[str, bytes], recipe: str = "r") -> dict[str, bytes]:
    stamp = json.dumps({"recipe": recipe, "files": sorted(files)}).encode() + b"\n"
    return {**files, STAMP: stamp}


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "build" / "out"
    write_outputs(folder, "r", OLD)
    assert snapshot(folder) == expected(OLD)
    return folder


def beside(folder: Path) -> list[str]:
    """What lies in the output folder's parent: only the folder itself once a run is over."""
    return sorted(p.name for p in folder.parent.iterdir())


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_failure_at_every_write_leaves_the_previous_set(
    out: Path, exchange: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not exchange:
        monkeypatch.setattr(artifacts, "_exchange", lambda a, b: False)
    real_write = artifacts.write_file
    writes = len(NEW) + 1  # the files and the stamp
    for n in range(1, writes + 1):
        calls: list[Path] = []

        def failing(path: Path, data: bytes, n: int = n, calls: list[Path] = calls) -> None:
            calls.append(path)
            if len(calls) == n:
                raise OSError(28, "No space left on device")
            real_write(path, data)

        monkeypatch.setattr(artifacts, "write_file", failing)
        with pytest.raises(OutputError) as failed:
            write_outputs(out, "r", NEW)
        assert str(failed.value) == (
            f"--out {out}: cannot write this run's files (No space left on device); nothing of this run was "
            f"published; {out} keeps the previous run's files. Free space or fix the file system, then run again"
        )
        assert failed.value.exit_code == 2
        assert len(calls) == n
        assert snapshot(out) == expected(OLD), f"failure at write {n}"
        assert beside(out) == ["out"]
    monkeypatch.setattr(artifacts, "write_file", real_write)
    write_outputs(out, "r", NEW)
    assert snapshot(out) == expected(NEW)  # nothing of the old set survives (the histogram is gone)
    assert beside(out) == ["out"]


def test_failure_of_the_switch_itself(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(a: Path, b: Path) -> bool:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(artifacts, "_exchange", refuse)
    with pytest.raises(OutputError) as failed:
        write_outputs(out, "r", NEW)
    assert str(failed.value) == (
        f"--out {out}: cannot write this run's files (Input/output error); nothing of this run was published; "
        f"{out} keeps the previous run's files. Free space or fix the file system, then run again"
    )
    assert snapshot(out) == expected(OLD) and beside(out) == ["out"]

    # Fallback: the old set is moved aside, then moving the new one in fails: the old set comes back.
    monkeypatch.setattr(artifacts, "_exchange", lambda a, b: False)
    real_rename = Path.rename

    def rename(self: Path, target: Path) -> Path:
        if self.name.endswith(".edgeconv-new"):
            raise OSError(5, "Input/output error")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OutputError, match=r"cannot write this run's files \(Input/output error\); nothing of this"):
        write_outputs(out, "r", NEW)
    assert snapshot(out) == expected(OLD) and beside(out) == ["out"]


def test_a_keyboard_interrupt_says_what_the_folder_holds(out: Path) -> None:
    with pytest.raises(Interrupted) as caught, OutputFolder(out, "r"):
        raise KeyboardInterrupt
    assert caught.value.signum == signal.SIGINT
    assert caught.value.outcome == f"nothing of this run was published; {out} keeps the previous run's files"
    assert snapshot(out) == expected(OLD) and beside(out) == ["out"]
    with pytest.raises(Interrupted) as caught, OutputFolder(out, "r") as folder:
        folder.publish(NEW)
        raise Interrupted(signal.SIGTERM)
    assert caught.value.signum == signal.SIGTERM
    assert caught.value.outcome == f"{out} holds this run's complete set of files"
    assert snapshot(out) == expected(NEW)


def test_leftovers_of_killed_runs_are_cleaned_or_restored(out: Path) -> None:
    parent = out.parent
    # Killed after the exchange: the staging name holds the previous set; the output is complete.
    (parent / ".out.edgeconv-new").mkdir()
    (parent / ".out.edgeconv-new" / "model_int8.tflite").write_bytes(b"older")
    with OutputFolder(out, "r"):
        assert sorted(p.name for p in parent.iterdir()) == [".out.edgeconv-lock", ".out.edgeconv-new", "out"]
        assert not any((parent / ".out.edgeconv-new").iterdir())  # a fresh, empty staging folder
    assert snapshot(out) == expected(OLD) and beside(out) == ["out"]
    # Killed between the fallback's two renames: no output folder, the previous set aside: it is moved back.
    out.rename(parent / ".out.edgeconv-old")
    (parent / ".out.edgeconv-new").mkdir()
    (parent / ".out.edgeconv-new" / "report.json").write_bytes(b"half")
    with OutputFolder(out, "r") as folder:
        folder.publish(NEW)
    assert snapshot(out) == expected(NEW) and beside(out) == ["out"]


def test_a_second_run_is_refused_while_the_first_holds_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "new"
    with OutputFolder(out, "first"):
        with pytest.raises(OutputError) as refused:
            write_outputs(out, "second", NEW)
        assert str(refused.value) == (
            f"--out {out}: another edgeconv run (pid {os.getpid()}) is writing this folder; "
            "wait for it to finish, or choose another --out"
        )
    assert not out.exists() and beside(out) == []
    write_outputs(out, "second", NEW)
    assert snapshot(out) == expected(NEW, "second")


def test_out_under_a_file_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "a" / "out"
    with pytest.raises(OutputError) as refused:
        OutputFolder(out, "r").__enter__()
    assert str(refused.value) == f"--out {out}: {tmp_path / 'file'} is a file, not a folder; choose another --out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_parents_made_for_an_unpublished_run_are_removed(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), OutputFolder(tmp_path / "a" / "b" / "out", "r"):
        raise RuntimeError("step failed")
    assert list(tmp_path.iterdir()) == []


def test_files_edgeconv_did_not_write_are_never_deleted(out: Path, tmp_path: Path) -> None:
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"holds files edgeconv did not write \(notes.txt\); .* pass --force"):
        write_outputs(out, "r", NEW)
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "thesis.pdf").write_bytes(b"%PDF")
    for force in (False, True):
        with pytest.raises(OutputError, match=r"holds files not written by edgeconv \(thesis.pdf\)"):
            write_outputs(foreign, "r", NEW, force=force)
    assert snapshot(foreign) == {"thesis.pdf": b"%PDF"}


def test_read_only_parent_is_refused_before_work(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro"), pytest.raises(OutputError, match="cannot write in"):
        OutputFolder(tmp_path / "ro" / "out", "r").__enter__()
    assert list((tmp_path / "ro").iterdir()) == []


KILLED = """
import sys, threading, time
from pathlib import Path
from converter.artifacts import Interrupted, write_outputs
# A second thread, as TensorFlow's are: the kernel may deliver a process signal to it.
threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
try:
    write_outputs(Path(sys.argv[1]), "r", {"model_int8.tflite": b"new int8", "report.json": b"{}"})
except Interrupted as e:
    sys.exit(f"interrupted ({e}): {e.outcome}")
"""
NO_EXCHANGE = "import converter.artifacts as a; a._exchange = lambda x, y: False\n"


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
@pytest.mark.parametrize(
    ("hook", "sig"),
    [
        (artifacts.PAUSE_BEFORE_SWITCH, signal.SIGKILL),
        (artifacts.PAUSE_MID_SWITCH, signal.SIGKILL),
        (artifacts.PAUSE_BEFORE_SWITCH, signal.SIGINT),
        (artifacts.PAUSE_MID_SWITCH, signal.SIGINT),
        (artifacts.PAUSE_AFTER_SWITCH, signal.SIGINT),
    ],
    ids=["before-SIGKILL", "mid-SIGKILL", "before-SIGINT", "mid-SIGINT", "after-SIGINT"],
)
def test_killed_during_the_switch_leaves_old_or_new(
    out: Path, tmp_path: Path, hook: str, sig: int, exchange: bool
) -> None:
    """PAUSE_MID_SWITCH: the old set has left the output name (exchanged, or moved aside by the fallback)
    and the run has not yet marked itself published; a SIGINT there waits until the switch is over."""
    gate = tmp_path / "gate"
    env = {**os.environ, hook: str(gate), "PYTHONPATH": str(ROOT)}
    script = KILLED if exchange else NO_EXCHANGE + KILLED
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(out)], env=env, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default
    )
    deadline = time.monotonic() + 60
    while not Path(f"{gate}.reached").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.02)
    proc.send_signal(sig)
    if sig == signal.SIGINT:
        time.sleep(0.3)  # the signal is handled (recorded) in the pause...
        gate.touch()  # ...then the run goes on
    _, stderr = proc.communicate(timeout=60)
    new = {"model_int8.tflite": b"new int8", "report.json": b"{}"}
    switched = hook != artifacts.PAUSE_BEFORE_SWITCH
    if hook == artifacts.PAUSE_MID_SWITCH and not exchange and sig == signal.SIGKILL:
        # Between the fallback's two renames (SIGKILL cannot be deferred): no output folder,
        # the old set aside. The next run restores it, then publishes its own.
        assert not out.exists() and snapshot(out.parent / ".out.edgeconv-old") == expected(OLD)
    else:
        assert snapshot(out) == (expected(new) if switched else expected(OLD))
    if sig == signal.SIGINT:
        told = (
            f"{out} holds this run's complete set of files"
            if switched
            else f"nothing of this run was published; {out} keeps the previous run's files"
        )
        assert proc.returncode == 1 and stderr == f"interrupted (SIGINT): {told}\n", stderr
        assert beside(out) == ["out"]
    with OutputFolder(out, "r") as folder:  # the next run cleans up before it starts
        kept_new = switched and (exchange or sig == signal.SIGINT)
        assert snapshot(out) == (expected(new) if kept_new else expected(OLD))
        assert not any(folder.staging.iterdir())
    assert beside(out) == ["out"]


def test_a_timed_out_child_takes_its_own_children_along(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    )
    with pytest.raises(subprocess.TimeoutExpired):
        run_child([sys.executable, "-c", script], timeout=3)
    grandchild = int(pid_file.read_text())
    time.sleep(0.2)
    assert _state(grandchild) in (None, "Z")  # gone (or dead, waiting for init to reap it)


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None
