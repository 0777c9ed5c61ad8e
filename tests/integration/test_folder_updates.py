"""deploy, analyze and check change a converted folder whole, under its lock, and only the run they read."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from converter import artifacts
from converter.boards.measure import measure_target
from converter.cli.main import main
from tests.conftest import tiny_recipe
from tests.integration.test_output_transaction import _start, _wait_for
from tests.sshd import loopback_sshd, sshd_available
from tests.unit.test_publish import beside, snapshot


def _run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_check_is_refused_while_a_convert_holds_the_folder(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(tiny_recipe(tiny_model_dir))
    out = tmp_path / "build" / "out"
    assert _run("convert", "--recipe", str(recipe), "--out", str(out)).exit_code == 0
    gate = tmp_path / "gate"
    proc = _start(recipe, out, {artifacts.PAUSE_BEFORE_SWITCH: str(gate)})
    _wait_for(proc, Path(f"{gate}.reached").exists, "the second run's switch")
    before = snapshot(out)
    result = _run("check", "--report", str(out / "report.json"))
    gate.touch()
    assert proc.wait(timeout=120) == 0
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"error: --report {out / 'report.json'}: another edgeconv run (pid {proc.pid}) is writing {out}; nothing was "
        "written: wait for it to finish, then run this command again\n"
    )
    assert set(before) == set(snapshot(out)) and beside(out) == ["out"]


def test_leftover_temporary_files_are_cleaned_not_refused(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(tiny_recipe(tiny_model_dir))
    out = tmp_path / "out"
    assert _run("convert", "--recipe", str(recipe), "--out", str(out)).exit_code == 0
    (out / ".report.md.x1y2z3_4.tmp").write_text("left by a check interrupted under the old writer")
    assert _run("check", "--report", str(out / "report.json")).exit_code == 0
    assert not (out / ".report.md.x1y2z3_4.tmp").exists()
    (out / ".report.json.a1b2c3d4.tmp").write_text("left by a SIGKILLed write_atomic")
    result = _run("convert", "--recipe", str(recipe), "--out", str(out))
    assert result.exit_code == 0, result.output  # was exit 2: "holds files edgeconv did not write"
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []


@pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available()))
def test_deploy_refuses_to_record_into_a_folder_another_run_replaced(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write_recipe(tiny_recipe(tiny_model_dir), "minmax.yaml")
    second = write_recipe(tiny_recipe(tiny_model_dir, calibration={"method": "percentile"}), "pct.yaml")
    out = tmp_path / "build" / "out"
    assert _run("convert", "--recipe", str(first), "--out", str(out)).exit_code == 0
    real = measure_target  # what deploy_recipe calls

    def measured_while_a_convert_publishes(*args: Any, **kw: Any) -> Any:
        result = real(*args, **kw)
        assert _run("convert", "--recipe", str(second), "--out", str(out)).exit_code == 0
        return result

    monkeypatch.setattr("converter.boards.deploy_recipe.measure_target", measured_while_a_convert_publishes)
    with loopback_sshd(tmp_path / "sshd") as sshd:
        ssh = ["--host", sshd.destination, "--port", str(sshd.port), "--identity", str(sshd.identity)]
        ssh += ["--known-hosts", str(sshd.known_hosts), "--python", sys.executable]
        result = _run("deploy", "--recipe", str(first), "--out", str(out), *ssh, "--device", "raspberry-pi-5")
    assert result.exit_code == 2, result.output
    assert result.stderr.endswith(
        f"error: {out / 'report.json'}: report.json changed while this command ran (another edgeconv run "
        f"wrote {out} meanwhile), so its result belongs to files that are gone; nothing was written: the "
        f"measurement was not recorded; run edgeconv deploy --recipe {first} again\n"
    )
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"]["method"] == "percentile" and "raspberry-pi-5" not in report["latency"]
    int8 = (out / "model_int8.tflite").read_bytes()
    assert report["artifacts"]["int8"]["sha256"] == hashlib.sha256(int8).hexdigest()  # one run's files
    assert beside(out) == ["out"]
