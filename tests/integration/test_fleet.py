"""A fleet of loopback "boards" (real sshd, own users and Pythons without TensorFlow), timeouts, retries, host keys."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from converter.boards.bench import BenchRequest, run_remote
from converter.boards.deploy import SSHTarget
from converter.cli.main import main
from tests.conftest import tiny_recipe
from tests.sshd import (
    LoopbackSSH,
    base_python,
    board_python,
    board_user,
    can_add_users,
    loopback_sshd,
    packages_usable_by_others,
    sshd_available,
)

pytestmark = pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available()))

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "data" / "add_one_float.tflite"
FAST = ["--runs", "3", "--warmup", "0", "--min-seconds", "0"]
# None: each board logs in as a user of its own (root, useradd, and packages other users can read)
NO_USERS = can_add_users() or packages_usable_by_others()


@dataclass(frozen=True)
class Fleet:
    """Three boards (c is switched off), the Python each runs, and a folder other users can read."""

    boards: dict[str, LoopbackSSH]
    python: Path
    folder: Path


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    python = base_python()
    if python is None:
        pytest.skip("no Python of this version that other users can run (for the boards' venvs)")
    # Not under pytest's tmp (mode 700): the boards' users must reach their folders and Python.
    folder = Path(tempfile.mkdtemp(prefix="edgeconv-fleet-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        venv = board_python(folder / "python", python)
        with ExitStack() as stack:
            boards = {}
            for i, name in enumerate(("pi-a", "pi-b", "pi-c")):
                user = None
                if NO_USERS is None:
                    user = stack.enter_context(board_user(f"ecboard{i}p{os.getpid()}", folder / f"home-{name}"))
                boards[name] = stack.enter_context(loopback_sshd(folder / name, user))
            boards["pi-c"].stop()  # switched off: connection refused
            yield Fleet(boards, venv, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _fleet_file(fleet: Fleet, path: Path, **extra: Any) -> Path:
    boards = [
        {
            "name": name,
            "device": "raspberry-pi-4",
            "host": s.destination,
            "port": s.port,
            "identity": str(s.identity),
            "known_hosts": str(s.known_hosts),
            "python": str(fleet.python),
            "timeout_s": 120,
            **extra,
        }
        for name, s in fleet.boards.items()
    ]
    path.write_text(yaml.safe_dump({"boards": boards}, sort_keys=False))
    return path


def test_boards_have_their_own_users_ports_and_python(fleet: Fleet) -> None:
    ports = {s.port for s in fleet.boards.values()}
    assert len(ports) == 3
    if NO_USERS is None:
        assert len({s.user for s in fleet.boards.values()}) == 3
    probe = subprocess.run(
        [str(fleet.python), "-c", "import numpy, ai_edge_litert; import tensorflow"], capture_output=True, text=True
    )
    assert probe.returncode == 1 and "No module named 'tensorflow'" in probe.stderr


def test_bench_fleet_two_measured_one_unreachable(fleet: Fleet, tmp_path: Path) -> None:
    path = _fleet_file(fleet, tmp_path / "fleet.yaml")
    runner = CliRunner()
    result = runner.invoke(main, ["bench", "--model", str(MODEL), *FAST, "--fleet", str(path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    status = {b["name"]: b["status"] for b in doc["boards"]}
    assert status == {"pi-a": "measured", "pi-b": "measured", "pi-c": "unreachable"}
    for board in doc["boards"][:2]:
        assert board["result"]["models"]["model"]["latency"]["runs"] >= 3
        assert board["result"]["accuracy"] is None or board["result"]["accuracy"]["where"] == board["name"]
    assert doc["boards"][2]["reason"].startswith("connect: pi-c (") and "not reachable" in doc["boards"][2]["reason"]
    text = runner.invoke(main, ["bench", "--model", str(MODEL), *FAST, "--fleet", str(path)])
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0].split()[:4] == ["board", "device", "host", "status"]
    assert [line.split()[0] for line in lines[1:4]] == ["pi-a", "pi-b", "pi-c"]
    assert lines[1].split()[3] == "measured" and lines[3].split()[3] == "unreachable"
    assert lines[-1] == (
        "2 measured, 1 unreachable (bench checks no budgets, so an unreachable board is not a failure); exit 0"
    )
    for s in fleet.boards.values():
        assert list(s.tmp.iterdir()) == []  # nothing left on the boards


def test_bench_fleet_all_unreachable_is_exit_3(fleet: Fleet, tmp_path: Path) -> None:
    off = fleet.boards["pi-c"]
    doc = {"boards": [{"name": "only-c", "device": "raspberry-pi-4", "host": off.destination, "port": off.port}]}
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(main, ["bench", "--model", str(MODEL), *FAST, "--fleet", str(tmp_path / "f.yaml")])
    assert result.exit_code == 3, result.output
    assert result.stdout.splitlines()[-1] == "1 unreachable: no board could be measured; exit 3"


@pytest.fixture(scope="module")
def converted(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("fleet-converted")
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_model_dir)))
    result = CliRunner().invoke(main, ["convert", "--recipe", str(recipe), "--out", str(folder / "out")])
    assert result.exit_code == 0, result.output
    return recipe, folder / "out"


def test_deploy_fleet_merges_every_board_into_the_report(
    fleet: Fleet, converted: tuple[Path, Path], tmp_path: Path
) -> None:
    recipe, out = converted
    work = tmp_path / "out"
    shutil.copytree(out, work)
    path = _fleet_file(fleet, tmp_path / "fleet.yaml")
    runner = CliRunner()
    result = runner.invoke(main, ["deploy", "--recipe", str(recipe), "--out", str(work), "--fleet", str(path)])
    assert result.exit_code == 0, result.output
    assert (
        "pi-c: unreachable: connect: pi-c (" in result.stdout
        and "-- not a failure: no budget of the recipe needs its figure (the device profile's latency_p50_ms is "
        "skipped)"
        in result.stdout
    )
    report = json.loads((work / "report.json").read_text())
    for name in ("pi-a", "pi-b"):
        assert report["latency"][name]["where"] == "device"
        assert report["targets"][name]["measured"] is True and report["targets"][name]["device"] == "raspberry-pi-4"
        device_acc = report["targets"][name]["accuracy"]
        assert device_acc["where"] == name and device_acc["int8"] == report["accuracy"]["int8"]
    assert report["latency"]["pi-c"] is None
    assert report["targets"]["pi-c"]["unreachable"] is True and report["targets"]["pi-c"]["measured"] is False
    gates = {(g["name"], g["target"]): g for g in report["gates"]}
    assert gates[("latency_p50_ms", "pi-a")]["status"] == "passed"  # the profile's budget, for an unlisted device
    assert gates[("latency_p50_ms", "pi-c")]["status"] == "skipped"
    assert gates[("latency_p50_ms", "pi-c")]["reason"].startswith("unreachable: connect: pi-c")
    md = (work / "report.md").read_text()
    assert "### On devices" in md
    row = next(line for line in md.splitlines() if line.startswith("| pi-a | measured |"))
    assert f"int8 {100 * report['accuracy']['int8']:.2f}%" in row
    assert "| pi-c | unreachable: connect: pi-c (" in md
    assert "<h2>On devices</h2>" in (work / "report.html").read_text()

    # A budget the recipe set (as if converted with budgets.latency_p50_ms) needs every board's figure:
    # now the unreachable board fails the run.
    report["budgets"]["recipe"]["latency_p50_ms"] = 1000
    (work / "report.json").write_text(json.dumps(report))
    strict = runner.invoke(main, ["deploy", "--recipe", str(recipe), "--out", str(work), "--fleet", str(path)])
    assert strict.exit_code == 1, strict.output
    assert "-- a failure: the recipe's latency_p50_ms (recipe) needs its figure" in strict.stdout
    assert "measured [pi-c]: failed (unreachable: connect: pi-c" in strict.stdout


def test_deploy_checks_the_profile_budgets_of_an_unlisted_device(
    fleet: Fleet, converted: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe, out = converted
    work = tmp_path / "out"
    shutil.copytree(out, work)
    devices = tmp_path / "devices"
    shutil.copytree(ROOT / "devices", devices)
    profile = devices / "raspberry-pi-5.yaml"
    profile.write_text(profile.read_text().replace("latency_p50_ms: 50", "latency_p50_ms: 0.000001"))
    monkeypatch.setenv("EDGECONV_DEVICES", str(devices))
    s = fleet.boards["pi-a"]
    args = ["deploy", "--recipe", str(recipe), "--out", str(work), "--device", "raspberry-pi-5", "--host"]
    args += [s.destination, "--port", str(s.port), "--identity", str(s.identity), "--known-hosts"]
    args += [str(s.known_hosts), "--python", str(fleet.python)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output  # the profile's budget is a gate although the recipe lists no pi-5
    report = json.loads((work / "report.json").read_text())
    gate = next(g for g in report["gates"] if g["target"] == "raspberry-pi-5")
    assert (gate["name"], gate["status"], gate["source"]) == ("latency_p50_ms", "failed", "device profile")
    assert "accuracy on raspberry-pi-5" in result.stdout


def _target(s: LoopbackSSH, python: Path | str, **changes: Any) -> SSHTarget:
    return SSHTarget(
        s.destination, port=s.port, identity=s.identity, known_hosts=s.known_hosts, python=str(python), **changes
    )


def _script(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def _listed(pattern: str) -> str:
    """``pgrep -f``'s list of the processes whose command line matches ``pattern`` (zombies left out)."""
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    alive = [pid for pid in found if not _zombie(pid)]
    return " ".join(alive)


def _zombie(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True  # gone already


def test_timeout_names_the_stalled_step_and_ends_it(fleet: Fleet) -> None:
    s = fleet.boards["pi-b"]
    sleeper = _script(fleet.folder, "sleepy-python", "#!/bin/sh\nexec sleep 120\n")
    args = ["bench", "--model", str(MODEL), *FAST, "--host", s.destination, "--port", str(s.port), "--identity"]
    args += [str(s.identity), "--known-hosts", str(s.known_hosts), "--python", str(sleeper), "--timeout", "4"]
    start = time.monotonic()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 3, result.output
    assert time.monotonic() - start < 40
    assert "error: run: ssh (" in result.stderr and "the run step stalled: no answer within" in result.stderr
    assert "the board's timeout of 4 s ran out" in result.stderr
    assert "ended the runtime still running there (killed" in result.stderr
    # The stalled "runtime" was killed on the board. A process killed a moment ago can stay listed until its
    # parent (the board's sshd session, itself ending) reaps it, so the list is read until it empties (an
    # unkilled one would stay there for 120 s).
    deadline = time.monotonic() + 10
    while (left := _listed("sleep 120$")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == ""
    assert list(s.tmp.iterdir()) == []


def test_a_lost_connection_ends_the_first_run_before_the_retry(fleet: Fleet) -> None:
    s = fleet.boards["pi-a"]
    log = fleet.folder / "runs.log"
    log.write_text("")
    log.chmod(0o666)
    # The board's "python" records each start and end around the real runtime, and takes 4 s more than it
    # (the add-one model is measured in a blink; a real benchmark runs for seconds).
    wrapper = _script(
        fleet.folder,
        "logging-python",
        f'#!/bin/sh\necho "start $$" >> {log}\nsleep 4\n{fleet.python} "$@"\nrc=$?\necho "end $$" >> {log}\nexit $rc\n',
    )
    request = BenchRequest(model=MODEL, warmup=0, runs=3, min_seconds=0.0, label="pi-a")
    outcome: dict[str, Any] = {}

    def measure() -> None:
        outcome["result"] = run_remote(request, _target(s, wrapper, name="pi-a"))

    thread = threading.Thread(target=measure)
    thread.start()
    deadline = time.monotonic() + 30
    while "start" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    for pid in s.sessions():  # cut the connection the way a dropped link does: the board's sshd session dies
        os.kill(pid, 9)
    thread.join(timeout=120)
    lines = log.read_text().split()
    starts = [int(lines[i + 1]) for i in range(0, len(lines), 2) if lines[i] == "start"]
    ends = [int(lines[i + 1]) for i in range(0, len(lines), 2) if lines[i] == "end"]
    assert len(starts) == 2, lines
    assert ends == [starts[1]], lines  # the first run never finished: it was killed before the second started
    retries = outcome["result"]["retries"]
    assert len(retries) == 1 and retries[0]["step"] == "run"
    assert retries[0]["first_run"].startswith("killed ")
    assert retries[0]["reason"].startswith("ssh lost the connection (exit 255")


def test_insecure_host_key_options_are_refused_unless_asked(fleet: Fleet, tmp_path: Path) -> None:
    s = fleet.boards["pi-a"]
    other = tmp_path / "changed_known_hosts"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    other.write_text(f"[127.0.0.1]:{s.port} {(tmp_path / 'k.pub').read_text()}")  # the board's key "changed"
    base = ["bench", "--model", str(MODEL), *FAST, "--host", s.destination, "--port", str(s.port)]
    base += ["--identity", str(s.identity), "--known-hosts", str(other), "--python", str(fleet.python)]
    runner = CliRunner()
    for option in ("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "CheckHostIP=no"):
        refused = runner.invoke(main, [*base, "--ssh-option", option])
        assert refused.exit_code == 2, refused.output
        assert f"Invalid value for --ssh-option '{option}': not allowed:" in refused.stderr
        assert "pass --insecure-host-key as well" in refused.stderr
    checked = runner.invoke(main, base)  # the default: a changed key is an error
    assert checked.exit_code == 3 and "host key verification failed" in checked.stderr.lower()
    allowed = runner.invoke(main, [*base, "--ssh-option", "StrictHostKeyChecking=no", "--insecure-host-key", "--json"])
    assert allowed.exit_code == 0, allowed.output
    assert "warning: host-key checking is weakened for this run (StrictHostKeyChecking=no" in allowed.stderr
    assert "(ecboard0" in allowed.stderr or NO_USERS is not None
    assert "ssh: WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!" in allowed.stderr
    warnings = json.loads(allowed.stdout)["ssh_warnings"]
    assert any("REMOTE HOST IDENTIFICATION HAS CHANGED" in w for w in warnings)


def test_fleet_and_recipe_files_may_never_turn_host_keys_off(
    fleet: Fleet, tmp_path: Path, tiny_model_dir: Path, write_recipe: Callable[..., Path]
) -> None:
    path = _fleet_file(fleet, tmp_path / "fleet.yaml", ssh_options=["StrictHostKeyChecking=accept-new"])
    result = CliRunner().invoke(
        main, ["bench", "--model", str(MODEL), "--fleet", str(path), "--insecure-host-key"]
    )  # the flag is for the command line's own options
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {path}: boards[0]: ssh_options[0]: 'StrictHostKeyChecking=accept-new'")
    assert "A recipe or fleet file may never turn host-key checking off" in result.stderr
    target = {"device": "raspberry-pi-4", "host": "pi@b", "ssh_options": ["UserKnownHostsFile=/dev/null"]}
    recipe = write_recipe(tiny_recipe(tiny_model_dir, targets=["host", target]))
    bad = CliRunner().invoke(main, ["validate", "--recipe", str(recipe)])
    assert bad.exit_code == 2 and "targets[1]: ssh_options[0]" in bad.stderr


@pytest.mark.parametrize(
    ("board", "message"),
    [
        ({"nme": "x"}, "boards[0].nme: unknown key (did you mean 'name'?)"),
        ({"name": "a b"}, "boards[0].name: 'a b' does not match"),
        ({"device": "raspberry-pi-9"}, "boards[0].device: unknown device 'raspberry-pi-9' (did you mean"),
        ({"device": "stm32h7"}, "boards[0].device: 'stm32h7' is a mcu device; a fleet holds boards reached over SSH"),
        ({"host": "-oProxyCommand=x"}, "boards[0].host: '-oProxyCommand=x' is not an SSH destination"),
        ({"identity": "no-such-key"}, "boards[0].identity: not found:"),
        ({"timeout_s": 0}, "boards[0].timeout_s: must be at least 1, got 0"),
        ({"name": "host"}, "boards[0].name: 'host' is the name of another device profile"),
        ({"ssh_options": ["ProxyCommand=id"]}, "boards[0]: ssh_options[0]: 'ProxyCommand=id': not allowed"),
    ],
)
def test_fleet_file_errors_name_the_file_and_key(tmp_path: Path, board: dict[str, Any], message: str) -> None:
    doc = {"boards": [{"name": "pi-a", "device": "raspberry-pi-4", "host": "pi@10.0.0.7", **board}]}
    if "nme" in board:
        del doc["boards"][0]["name"]
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(main, ["bench", "--model", str(MODEL), "--fleet", str(path)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {path}: {message}"), result.stderr


def test_fleet_usage_errors(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"boards": [{"name": "a", "device": "raspberry-pi-4", "host": "pi@a"}] * 2}))
    runner = CliRunner()
    dup = runner.invoke(main, ["bench", "--model", str(MODEL), "--fleet", str(path)])
    assert dup.exit_code == 2 and "boards[1].name: 'a' is used twice (also boards[0])" in dup.stderr
    both = runner.invoke(main, ["bench", "--model", str(MODEL), "--fleet", str(path), "--host", "pi@x"])
    assert both.exit_code == 2 and "--host and --fleet both say where to measure" in both.stderr
    jobs = runner.invoke(main, ["bench", "--model", str(MODEL), "--jobs", "2"])
    assert jobs.exit_code == 2 and "add --fleet FILE" in jobs.stderr
