"""Exit 3 means a bug in edgeconv, never a bad input: each bad argument or file is exit 2 with one paragraph.

Each case is a bad input that must give neither exit 3, nor a wrong message, nor exit 0.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from converter.cli.main import main
from tests.conftest import ROOT, read_only, tiny_recipe

GOLDEN = ROOT / "tests" / "data" / "golden" / "report_fixed.json"
ADD_ONE = ROOT / "tests" / "data" / "add_one_float.tflite"  # input [1, 2]


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _usage(result: Result, option: str, *phrases: str) -> None:
    """A click usage error (exit 2) that names the option and says what and how."""
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    assert "Traceback" not in result.output


# --- 1. bench / analyze numbers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option", "phrases"),
    [
        (["--runs", "0"], "--runs", ["0 is out of range (at least 1): timed runs", "e.g. --runs 100"]),
        (["--warmup", "-1"], "--warmup", ["-1 is out of range (at least 0): untimed runs", "e.g. --warmup 10"]),
        (["--threads", "0"], "--threads", ["0 is out of range (at least 1): interpreter threads"]),
        (
            ["--resize", "0", "0"],
            "--resize",
            ["0 is out of range (at least 1): the height and width", "--resize 96 96"],
        ),
        (["--min-seconds", "-1"], "--min-seconds", ["-1 is out of range (at least 0)"]),
        (["--min-seconds", "nan"], "--min-seconds", ["nan is not a finite number"]),
        (["--top-k", "1"], "--top-k", ["1 is out of range (at least 2): top-k accuracy needs k >= 2"]),
        (["--host", "pi@pi", "--port", "0"], "--port", ["0 is out of range (1..65535): a TCP port number"]),
    ],
)
def test_bench_numbers_out_of_range(args: list[str], option: str, phrases: list[str]) -> None:
    _usage(_run("bench", "--model", str(ADD_ONE), *args), option, *phrases)


def test_analyze_negative_samples(tmp_path: Path) -> None:
    # Before: exit 3, "unexpected failure (ValueError: negative dimensions are not allowed)".
    result = _run("analyze", "--recipe", str(tmp_path / "r.yaml"), "--samples", "-3")
    _usage(result, "--samples", "-3 is out of range (at least 1): evaluation samples", "e.g. --samples 64")
    _usage(_run("analyze", "--recipe", str(tmp_path / "r.yaml"), "--top", "-1"), "--top", "-1 is out of range")


def test_bench_float_with_another_input_shape(tiny_model_dir: Path) -> None:
    # Before: exit 3, "run: host: ValueError: cannot reshape array of size 432 into shape (1,2)".
    model = tiny_model_dir / "tiny.tflite"
    result = _run("bench", "--model", str(model), "--float", str(ADD_ONE), "--data", str(tiny_model_dir / "test.npz"))
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: --float {ADD_ONE}: its input shape [1, 2] differs from --model {model}'s [1, 12, 12, 3]; "
        "give the float model that tiny.tflite was converted from"
    )


def test_bench_refuses_a_corrupt_model_and_data_that_is_not_npz(tmp_path: Path) -> None:
    fake = tmp_path / "fake.tflite"
    fake.write_bytes(b"\0\0\0\0TFL3" + b"\xff" * 64)
    result = _run("bench", "--model", str(fake))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: --model: {fake} cannot be loaded by the TFLite interpreter (")
    # Before: numpy's "load it unsafely using allow_pickle" advice.
    result = _run("bench", "--model", str(ADD_ONE), "--data", str(ADD_ONE))
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: --data {ADD_ONE}: not an .npz archive; save the raw samples with "
        "numpy.savez(path, x=samples, y=labels)"
    )


# --- 2. check on a malformed report ---------------------------------------------------------------


def _report(tmp_path: Path, change: Any = None, text: str | None = None) -> Path:
    folder = tmp_path / "build"
    folder.mkdir(exist_ok=True)
    doc = json.loads(GOLDEN.read_text())
    if change is not None:
        change(doc)
    path = folder / "report.json"
    path.write_text(text if text is not None else json.dumps(doc))
    return path


def _refused(result: Result, report: Path, tail: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: --report {report}: {tail}"
    assert not (report.parent / "report.md").exists()  # nothing written for a refused report


SHAPE_TAIL = (
    "; this is not a report.json as edgeconv writes it -- use the report.json of an edgeconv convert run "
    "(or run convert again to regenerate it)"
)


@pytest.mark.parametrize(
    ("change", "tail"),
    [
        # Before: exit 3, KeyError: 'int8'.
        (lambda r: r.__setitem__("artifacts", {}), "artifacts.float: missing"),
        # Before: exit 3, AttributeError: 'list' object has no attribute 'get'.
        (lambda r: r.__setitem__("budgets", [1, 2]), "budgets: expected a mapping, got a list"),
        (lambda r: r.__setitem__("targets", ["host"]), "targets: expected a mapping, got a list"),
        (lambda r: r.__setitem__("accuracy", "x"), "accuracy: expected a mapping, got a string"),
        # Before: exit 3, ZeroDivisionError.
        (
            lambda r: r["artifacts"]["float"].__setitem__("bytes", 0),
            "artifacts.float.bytes: expected a positive size, got 0",
        ),
        (
            lambda r: r["budgets"]["targets"]["host"]["recipe"].__setitem__("latency_p50_ms", [1]),
            "budgets.targets.host.recipe.latency_p50_ms: expected a number or a string like '600KB' or '+2%', "
            "got a list",
        ),
        # Before: exit 0, and /etc/passwd embedded in report.html.
        (
            lambda r: r["calibration"].__setitem__("histograms", "/etc/passwd"),
            "calibration.histograms: expected a file name beside report.json, got '/etc/passwd'",
        ),
    ],
)
def test_check_refuses_a_malformed_report(tmp_path: Path, change: Any, tail: str) -> None:
    report = _report(tmp_path, change)
    _refused(_run("check", "--report", str(report)), report, tail + SHAPE_TAIL)


def test_check_refuses_another_schema_version_and_unknown_budgets(tmp_path: Path) -> None:
    # Before: both exit 1 (the gates ran on a report this version cannot read; the unknown budget was ignored).
    report = _report(tmp_path, lambda r: r.__setitem__("schema_version", 999))
    _refused(
        _run("check", "--report", str(report)),
        report,
        "schema_version 999 cannot be compared with 1, the only version this edgeconv reads; check it with the "
        "edgeconv that wrote it, or run edgeconv convert again to rewrite it",
    )
    report = _report(tmp_path, lambda r: r["budgets"]["recipe"].__setitem__("latency_p50", 3))
    result = _run("check", "--report", str(report))
    assert result.exit_code == 2, result.output
    assert "budgets.recipe.latency_p50: unknown budget 'latency_p50' (did you mean 'latency_p50_ms'?)" in (
        result.stderr
    )


def test_check_refuses_nan_and_a_bad_baseline_shape(tmp_path: Path) -> None:
    # Before: exit 3, "ValueError: Out of range float values are not JSON compliant".
    text = GOLDEN.read_text().replace('"agreement": 0.97', '"agreement": NaN', 1)
    assert "NaN" in text
    report = _report(tmp_path, text=text)
    _refused(
        _run("check", "--report", str(report)),
        report,
        "cannot read a JSON report: NaN is not a number JSON allows (edgeconv writes null for what was not "
        "measured); give the report.json of a run",
    )
    good = _report(tmp_path)
    baseline = tmp_path / "baseline.json"
    doc = json.loads(GOLDEN.read_text())
    doc["accuracy"] = "x"
    baseline.write_text(json.dumps(doc))
    result = _run("check", "--report", str(good), "--baseline", str(baseline))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: --baseline {baseline}: accuracy: expected a mapping, got a string")


def test_check_writes_nothing_when_a_file_cannot_be_written(tmp_path: Path) -> None:
    # Before: exit 3 (IsADirectoryError), after report.md had already been replaced.
    report = _report(tmp_path)
    before = report.read_bytes()
    (report.parent / "junit.xml").mkdir()
    result = _run("check", "--report", str(report))
    assert result.exit_code == 2, result.output
    folder = report.parent
    assert result.stderr.strip() == (
        f"error: --report {report}: cannot write report.md, junit.xml, report.html, report.json beside it in "
        f"{folder} ({folder / 'junit.xml'} exists and is not a file); nothing was written. Make the folder "
        "writable, or copy the report into a writable folder and check it there"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["junit.xml", "report.json"]
    assert report.read_bytes() == before


def test_check_in_a_read_only_folder(tmp_path: Path) -> None:
    report = _report(tmp_path)
    with read_only(report.parent):
        result = _run("check", "--report", str(report))
    assert result.exit_code == 2, result.output
    assert re.search(r"\((Permission denied|Read-only file system)\); nothing was written", result.stderr)
    assert sorted(p.name for p in report.parent.iterdir()) == ["report.json"]


def test_an_unwritable_step_summary_is_a_warning_not_the_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = _report(tmp_path)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path))  # a folder: cannot be appended to
    result = _run("check", "--report", str(report))
    assert result.exit_code == 1, result.output  # the gates' verdict, not exit 2 after publishing
    assert f"warning: GITHUB_STEP_SUMMARY {tmp_path}: cannot append report.md to it" in result.stderr


def test_check_still_passes_a_real_report(tmp_path: Path) -> None:
    report = _report(tmp_path)
    result = _run("check", "--report", str(report))
    assert result.exit_code == 1, result.output  # the golden report's budgets fail: exit 1, not 2 or 3
    assert sorted(p.name for p in report.parent.iterdir()) == ["junit.xml", "report.html", "report.json", "report.md"]


# --- 3. SSH destinations --------------------------------------------------------------------------

BAD_HOSTS = [
    ("bad host", "the host name contains a space"),
    ("-oProxyCommand=x", "it starts with '-' (ssh would read it as an option)"),
    ("@host", "the user name before '@' is empty (drop the '@' to use your ssh default user)"),
    ("pi@rasp\x01berry", "the host name contains a control character ('\\x01')"),
    ("pi@", "the host name is empty"),
    ("pi@[zz]", "'zz' in brackets is not an IPv6 address"),
    ("pi@host:22", "'host:22' has a ':' but is not an IPv6 address (give the port with --port or port:)"),
]
EXAMPLES = "write [user@]host, e.g. pi@raspberrypi.local, pi@192.168.1.20 or pi@[fe80::1]"


@pytest.mark.parametrize(("host", "problem"), BAD_HOSTS)
def test_bench_and_deploy_refuse_a_bad_host(tmp_path: Path, host: str, problem: str) -> None:
    # Before: exit 3 after ssh ran ("hostname contains invalid characters", ssh's usage text, "retrying").
    message = f"{host!r} is not an SSH destination: {problem}; {EXAMPLES}"
    _usage(_run("bench", "--model", str(ADD_ONE), "--host", host), "--host", message)
    recipe = tmp_path / "r.yaml"
    _usage(_run("deploy", "--recipe", str(recipe), "--host", host), "--host", message)


def test_recipe_host_is_checked_by_validate(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, targets=[{"device": "raspberry-pi-4", "host": "-oProxyCommand=touch x"}])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = _run("validate", "--recipe", str(path))
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: {path}: targets[0].host: '-oProxyCommand=touch x' is not an SSH destination: it starts with '-' "
        f"(ssh would read it as an option); {EXAMPLES}"
    )


def test_good_destinations_reach_ssh_and_scp_in_their_forms() -> None:
    from converter.boards.deploy import SSHTarget
    from converter.errors import UserInputError

    v6 = SSHTarget("pi@[fe80::1%eth0]")
    assert v6.ssh("true")[-2] == "pi@fe80::1%eth0"  # ssh keeps brackets in the name it resolves
    assert v6.scp([Path("a")], "/tmp/x")[-1] == "pi@[fe80::1%eth0]:/tmp/x/"  # scp needs them
    assert SSHTarget("me@corp@gw.example.com").ssh("true")[-2] == "me@corp@gw.example.com"
    with pytest.raises(UserInputError, match="starts with '-'"):
        SSHTarget("-oProxyCommand=x")


# --- 4. the guard's own messages ------------------------------------------------------------------


def test_debug_output_does_not_say_rerun_with_debug(tmp_path: Path) -> None:
    # Before: exit 3, the traceback and then "rerun with --debug for the traceback".
    report = _report(tmp_path, lambda r: r.__setitem__("artifacts", {}))
    result = _run("check", "--debug", "--report", str(report))
    assert result.exit_code == 2, result.output
    assert "Traceback" in result.stderr and "--debug" not in result.stderr


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_exception_is_reported_as_a_bug(debug: bool, capsys: pytest.CaptureFixture[str]) -> None:
    from converter import __version__
    from converter.cli.common import guarded

    def broken() -> int:
        raise RuntimeError("boom")

    with pytest.raises(SystemExit) as stop:
        guarded(debug, broken)
    assert stop.value.code == 3
    last = capsys.readouterr().err.strip().splitlines()[-1]
    how = (
        "the traceback is above" if debug else "rerun the same command with --debug and include the traceback it prints"
    )
    assert last == (
        f"error: unexpected failure (RuntimeError: boom). This is a bug in edgeconv {__version__}, not a problem "
        f"with your input: please report it with the command you ran; {how}."
    )


# --- 5. an install without the converter extra ----------------------------------------------------


def test_convert_without_the_converter_extra_names_the_pip_command(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Before: exit 3, "unexpected failure (ModuleNotFoundError: No module named 'keras')".
    shadow = tmp_path / "no-keras" / "keras"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'keras'\", name='keras')\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_model_dir)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(shadow.parent), str(ROOT)]),
        "EDGECONV_CACHE_DIR": str(tmp_path / "cache"),  # no cached float model: keras must be imported
    }
    result = subprocess.run(
        [sys.executable, "-m", "converter", "convert", "--recipe", str(recipe), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    # The loader names the missing package where it imports it (the CLI's catch-all is the net behind it).
    assert result.stderr.strip().splitlines()[-1] == (
        "error: converting a model needs 'keras', which cannot be imported in this Python "
        "(No module named 'keras'); the lean install only runs models: install the converter extra with "
        'pip install "edgeconv[convert]"'
    )


# --- 6. imports flow one way ----------------------------------------------------------------------


def test_the_entry_points_still_work() -> None:
    from converter import __version__

    result = subprocess.run(
        [sys.executable, "-m", "converter", "--version"], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert (result.returncode, result.stdout.strip()) == (0, f"edgeconv, version {__version__}")
    names = set(main.commands)  # type: ignore[attr-defined]
    assert {"convert", "validate", "check", "schema", "bench", "deploy", "analyze"} <= names


# --- 7. other bad files found on the way ----------------------------------------------------------


def _out_folder(tmp_path: Path, model_dir: Path, int8: bytes | None = None, report: str | None = None) -> Path:
    """An output folder as convert leaves it, with the parts a test breaks."""
    out = tmp_path / "out"
    out.mkdir()
    float_model = (model_dir / "tiny.tflite").read_bytes()
    (out / "model_float.tflite").write_bytes(float_model)
    (out / "model_int8.tflite").write_bytes(float_model if int8 is None else int8)
    if report is not None:
        (out / "report.json").write_text(report)
    return out


def _recipe(tmp_path: Path, model_dir: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(model_dir)))
    return path


def test_analyze_refuses_a_corrupt_model_and_a_malformed_report(tiny_model_dir: Path, tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, tiny_model_dir)
    # Before: exit 3, "ValueError: The model is not a valid Flatbuffer buffer".
    out = _out_folder(tmp_path, tiny_model_dir, int8=b"\0\0\0\0TFL3" + b"\xff" * 64)
    result = _run("analyze", "--recipe", str(recipe), "--out", str(out), "--samples", "4")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(
        f"error: {out}: {out / 'model_int8.tflite'} cannot be loaded by the TFLite interpreter ("
    )
    assert result.stderr.strip().endswith(f"; run edgeconv convert --recipe {recipe} again")
    # Before: exit 3, "AttributeError: 'list' object has no attribute 'get'".
    (out / "model_int8.tflite").write_bytes((tiny_model_dir / "tiny.tflite").read_bytes())
    (out / "report.json").write_text("[1, 2]")
    result = _run("analyze", "--recipe", str(recipe), "--out", str(out), "--samples", "4")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: {out / 'report.json'}: not an edgeconv report.json (the top level is a list, not a mapping)"
    )
    # Before: exit 3, "KeyError: 'index'" (the recorded ranges are re-read to quantize one layer at a time).
    doc = json.loads(GOLDEN.read_text())
    doc["calibration"]["tensors"] = [{"name": "t"}]
    (out / "report.json").write_text(json.dumps(doc))
    result = _run("analyze", "--recipe", str(recipe), "--out", str(out), "--samples", "4")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {out / 'report.json'}: calibration.tensors[0].index: missing; ")


def test_deploy_refuses_a_malformed_report(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Before: exit 3, "AttributeError: 'list' object has no attribute 'get'" (before any connection).
    recipe = _recipe(tmp_path, tiny_model_dir)
    out = _out_folder(tmp_path, tiny_model_dir, report="[1, 2]")
    result = _run("deploy", "--recipe", str(recipe), "--out", str(out), "--device", "raspberry-pi-4", "--host", "pi@pi")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: {out / 'report.json'}: not an edgeconv report.json (the top level is a list, not a mapping)"
    )


def test_missing_identity_file_is_refused_before_connecting(tmp_path: Path) -> None:
    # Before: exit 3 after ssh tried to connect without the key.
    missing = tmp_path / "id_missing"
    result = _run("bench", "--model", str(ADD_ONE), "--host", "pi@127.0.0.1", "--identity", str(missing))
    _usage(result, "--identity", f"File '{missing}' does not exist.")
