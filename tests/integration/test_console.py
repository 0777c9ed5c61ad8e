"""The console shows our steps and the summary, not TensorFlow's C++ start-up and quantizer chatter.

Before: a convert printed about 20 lines of TensorFlow/absl/oneDNN/CUDA banners (an ``E0000 ... failed call to
cuInit`` among them), ``fully_quantize: 0, inference_type: 6`` once per quantization and XNNPACK's "Created
TensorFlow Lite XNNPACK delegate" between the step lines. Now that output is captured at the file-descriptor
level and shown only with --debug or before an exit-3 message.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.conftest import ROOT, tiny_recipe

# Every stderr line of a successful convert of the tiny model, in order (timings vary, the rest does not).
STEP_LINES = [
    r"load +\d+\.\ds",
    r"loaded tiny\.keras \(keras\) with keras [\d.]+ \(safe mode\)(, from the float model cache)?; "
    r"input \[1, 12, 12, 3\]",
    r"data +\d+\.\ds",
    r"calibrate +\d+\.\ds",
    r"evaluate +\d+\.\ds",
    r"tune +\d+\.\ds",
    r"analyze +\d+\.\ds",
    r"targets +\d+\.\ds",
    # measured, or (an earlier test measured this model here) taken from the latency cache
    r"benchmark +host( \(xnnpack, threads all\)|: from the latency cache \(measured \S+ on this machine; "
    r"--remeasure measures again\))",
    r"benchmark +\d+\.\ds",
]
NOISE = ("I0000", "E0000", "W0000", "cuInit", "oneDNN", "fully_quantize", "XNNPACK delegate", "absl")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user's shell has: nothing set
    return subprocess.run(
        [sys.executable, "-m", "converter", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def test_convert_prints_only_its_steps_and_the_summary(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(tiny_recipe(tiny_model_dir))
    done = _run(["convert", "--recipe", str(recipe), "--out", str(tmp_path / "o")], tmp_path)
    assert done.returncode == 0, done.stderr
    # A repeated conversion in the same session reads its statistics from the cache and says so.
    lines = [
        line
        for line in done.stderr.splitlines()
        if not re.fullmatch(r"calibration statistics from the cache \(\w+…\)", line)
    ]
    assert len(lines) == len(STEP_LINES), done.stderr
    for line, pattern in zip(lines, STEP_LINES, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    assert done.stdout.startswith("edgeconv ") and "accuracy (host, top1," in done.stdout
    assert not any(word in done.stdout + done.stderr for word in NOISE)
    assert "\r" not in done.stderr  # not a terminal: no progress drawn at all

    # --debug captures nothing: LiteRT's own lines are there to read (the models now come from the caches).
    debug = _run(["convert", "--recipe", str(recipe), "--out", str(tmp_path / "d"), "--debug"], tmp_path)
    assert debug.returncode == 0, debug.stderr
    assert "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." in debug.stderr


def test_captured_output_is_shown_before_an_exit_3_message(tmp_path: Path) -> None:
    """A step that fails unexpectedly (exit 3): what C++ printed during the run comes first, then our message."""
    script = tmp_path / "fail.py"
    script.write_text(
        "import os\n"
        "from converter.cli.common import guarded\n"
        "def run() -> int:\n"
        "    print('a Python line stays on the terminal', flush=True)\n"
        "    os.write(2, b'native: kernel said no\\n')\n"
        "    os.write(1, b'native stdout line\\n')\n"
        "    raise RuntimeError('boom')\n"
        "guarded(False, run, capture=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert done.stdout == "a Python line stays on the terminal\n"  # the native stdout line was captured
    assert done.stderr.splitlines()[:4] == [
        "--- printed by TensorFlow/LiteRT during this run (last 60 lines) ---",
        "native: kernel said no",
        "native stdout line",
        "---",
    ]
    assert done.stderr.splitlines()[4].startswith("error: unexpected failure (RuntimeError: boom)")


def test_a_user_error_does_not_show_the_captured_output(tmp_path: Path) -> None:
    """Exit 2 (the user's input) gets our one paragraph only."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"version": 1, "name": "x", "model": str(tmp_path / "missing.keras")}))
    done = _run(["convert", "--recipe", str(recipe)], tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "printed by TensorFlow" not in done.stderr


def test_a_terminal_sees_progress_and_keeps_only_the_step_lines(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    """On a terminal (a real pty) the running step ticks in place; what stays on screen is the step lines."""
    recipe = write_recipe(tiny_recipe(tiny_model_dir, calibration={"cache": False}))
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    command = [sys.executable, "-m", "converter", "convert", "--recipe", str(recipe), "--out", str(tmp_path / "o")]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def pump() -> None:  # read as it comes: a full pty buffer would block the child
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=pump)
    reader.start()
    stdout, _ = proc.communicate(timeout=900)
    reader.join(timeout=30)
    os.close(master)
    raw = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    assert proc.returncode == 0, raw
    assert re.search(r"\r\w[\w ]* +\d+\.\ds …", raw), raw  # a step ticked in place
    assert re.search(r"\rcalibrate +\[#*\.*\] \d+/100", raw), raw  # the calibration bar
    screen = [line.rsplit("\r", 1)[-1].strip() for line in raw.split("\n")]
    screen = [line for line in screen if line and not line.startswith("import tf ")]  # calibration.cache: false
    assert len(screen) == len(STEP_LINES), screen
    for line, pattern in zip(screen, STEP_LINES, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    assert b"\r" not in stdout and stdout.startswith(b"edgeconv ")
