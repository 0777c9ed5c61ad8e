"""Shared fixtures: tiny Keras models built and trained in seconds, their data, recipe files; the two test
tiers (``--full``); the onnx2tf and RKNN virtualenvs, made on first use where ``edgeconv setup`` puts them."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("EDGECONV_REALDATA", ROOT.parent / "shared" / "realdata"))


def _setup_locations() -> dict[str, Path]:
    """Where ``edgeconv setup onnx`` / ``edgeconv setup rknn`` put their virtualenvs on this machine
    (``$EDGECONV_ONNX_VENV`` / ``$EDGECONV_RKNN_VENV``, else under the cache folder), resolved once at import,
    before ``_isolated_cache`` points ``EDGECONV_CACHE_DIR`` at a per-session folder: the tests use the
    machine's one copy and make it there when it is missing."""
    from converter.sources import onnx_setup
    from converter.targets import rknn_setup

    return {"onnx": onnx_setup.venv_dir(), "rknn": rknn_setup.venv_dir()}


VENVS = _setup_locations()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        default=False,
        help="edgeconv: run the full tier as well (the tests marked 'full'; .ci/run does); without it they are "
        "deselected unless -m names the mark",
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    """CI sets EDGECONV_REQUIRE_REALDATA=1 where the real models are: then they must not be skipped."""
    if os.environ.get("EDGECONV_REQUIRE_REALDATA") == "1" and not REALDATA.is_dir():
        raise pytest.UsageError(f"EDGECONV_REQUIRE_REALDATA=1 but {REALDATA} is not a folder")


def _full_tier(config: pytest.Config) -> bool:
    """``--full``, or a ``-m`` expression that names the mark (``-m full``, ``-m "full and realdata"``)."""
    return bool(config.getoption("--full")) or re.search(r"\bfull\b", config.getoption("markexpr") or "") is not None


def pytest_report_header(config: pytest.Config) -> str:
    if _full_tier(config):
        return "edgeconv tier: full (tests marked 'full' included)"
    return "edgeconv tier: default (tests marked 'full' deselected; --full runs them)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The default tier: tests marked ``full`` are deselected (and counted as such) unless asked for."""
    if _full_tier(config):
        return
    kept = [item for item in items if item.get_closest_marker("full") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("full") is not None])
        items[:] = kept


def _provision(kind: str) -> Path:
    """The ``kind`` ("onnx" or "rknn") virtualenv at ``VENVS[kind]``, made by the real ``edgeconv setup`` when
    it is not ready (onnx: ~93 s and 2.6 GB the first time; nothing to do when it is). pytest-xdist workers
    wait on one lock: one makes it, the others then find it ready. When it cannot be made (offline, no
    CPython 3.11) the test skips with setup's message, or fails where ``EDGECONV_REQUIRE_<KIND>=1``."""
    from converter.sources import onnx_setup
    from converter.targets import rknn_setup

    installed = {"onnx": onnx_setup.installed, "rknn": rknn_setup.installed}[kind]
    venv, required = VENVS[kind], f"EDGECONV_REQUIRE_{kind.upper()}"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / f".{venv.name}.test-lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed(venv) is not None:
            return venv
        command = [sys.executable, "-m", "converter", "setup", kind, "--venv", str(venv)]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=1800,
            check=False,
        )
    if done.returncode == 0 and installed(venv) is not None:
        return venv
    said = (done.stderr or done.stdout).strip()[-600:]
    setup = f"python {' '.join(command[1:])}"
    message = f"the {kind} virtualenv could not be made at {venv}: `{setup}` exited {done.returncode}: {said}"
    if os.environ.get(required) == "1":
        pytest.fail(f"{required}=1 but {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def onnx_venv() -> Iterator[Path]:
    """onnx2tf's virtualenv (``edgeconv setup onnx``), exported as ``$EDGECONV_ONNX_VENV`` for this session
    and the processes it starts; made on first use (see ``_provision``)."""
    venv = _provision("onnx")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGECONV_ONNX_VENV", str(venv))
        yield venv


@pytest.fixture(scope="session")
def rknn_venv() -> Iterator[Path]:
    """rknn-toolkit2's virtualenv (``edgeconv setup rknn``), exported as ``$EDGECONV_RKNN_VENV``; see ``onnx_venv``."""
    venv = _provision("rknn")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGECONV_RKNN_VENV", str(venv))
        yield venv


DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens: any download onnx2tf tries fails at once


@pytest.fixture
def onnx_env(onnx_venv: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The ONNX virtualenv, and every HTTP(S) proxy pointing at a closed port: onnx2tf must download nothing."""
    monkeypatch.setenv("EDGECONV_ONNX_VENV", str(onnx_venv))
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(name, DEAD_PROXY)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield onnx_venv


@pytest.fixture
def rknn_env(rknn_venv: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("EDGECONV_RKNN_VENV", str(rknn_venv))
    yield rknn_venv


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` read-only for this process, also as root (CI runs as root, and root ignores
    mode bits): there a read-only bind mount of the folder onto itself; skipped where neither works."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"root ignores mode bits and cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        remount = subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True, check=False, text=True
        )
        if remount.returncode != 0:
            pytest.skip(f"root ignores mode bits and cannot remount read-only here: {remount.stderr.strip()}")
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt in this process, even when pytest runs as a background job
    (a shell starts those with SIGINT ignored, and Python then installs no handler)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def sigint_default() -> None:
    """``preexec_fn`` for a child a test interrupts: a shell's background job (CI) starts with SIGINT
    ignored, which Python children inherit, so Ctrl-C would never reach them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tiny_data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """12x12x3 images in 0..255 whose class is the quadrant with the brightest blob (4 classes)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 80, size=(n, 12, 12, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=n)
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, r * 6 + 1 : r * 6 + 5, c * 6 + 1 : c * 6 + 5, :] += 150
    return np.round(x).astype(np.uint8), y.astype(np.int64)


def build_tiny_model(seed: int = 0) -> Any:
    """Conv → depthwise → pool → dense, trained to ~100% on ``tiny_data`` (about 3 s)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.DepthwiseConv2D(3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    x, y = tiny_data()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x.astype(np.float32), y, epochs=15, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tiny model in every source format and its data as .npz."""
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("tiny")
    model = build_tiny_model()
    model.save(folder / "tiny.keras")
    model.save(folder / "tiny.h5")
    model.export(str(folder / "tiny_savedmodel"), verbose=False)
    float_tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    (folder / "tiny.tflite").write_bytes(float_tflite)
    x, y = tiny_data()
    np.savez(folder / "train.npz", x=x[:300], y=y[:300])
    np.savez(folder / "test.npz", x=x[300:], y=y[300:])
    return folder


@pytest.fixture
def write_recipe(tmp_path: Path) -> Callable[..., Path]:
    """Write a recipe dict (or text) to ``tmp_path/recipe.yaml`` and return its path."""

    def write(content: dict[str, Any] | str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


def tiny_recipe(model_dir: Path, model: str = "tiny.keras", **extra: Any) -> dict[str, Any]:
    """A valid recipe for the tiny model, with absolute paths so it can live anywhere."""
    recipe: dict[str, Any] = {
        "version": 1,
        "name": "tiny",
        "model": str(model_dir / model),
        "data": {
            "calibration": {"path": str(model_dir / "train.npz"), "samples": 100},
            "evaluation": {"path": str(model_dir / "test.npz")},
        },
        "benchmark": {"warmup": 1, "runs": 5, "min_seconds": 0.0},  # latency figures are not under test here
    }
    recipe.update(extra)
    return recipe


def reproducible_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The report figures a repeated conversion must reproduce exactly (timings and paths left out)."""
    calibration = {k: v for k, v in report["calibration"].items() if k != "seconds"}
    keys = ("artifacts", "quantization", "accuracy", "analysis")
    return {"calibration": calibration, **{k: report[k] for k in keys}}


def assert_accuracy_drop_below(report: dict[str, Any], points: float) -> None:
    """The int8 model loses at most ``points`` percentage points of top-1 on the host."""
    acc = report["accuracy"]
    assert acc["metric"] == "top1", acc
    assert acc["drop"] * 100 <= points, f"int8 top-1 {acc['int8']:.4f} vs float {acc['float']:.4f}"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibration statistics go to a per-session folder, never the user's ~/.cache."""
    monkeypatch.setenv("EDGECONV_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "calibration-cache"))


def native_and_tensorflow(
    argv: Callable[[str], list[str]], env: Callable[[str], dict[str, str]] = lambda mode: {}
) -> dict[str, str]:
    """A command run in two fresh processes, with TensorFlow's native pieces (mode ``native``) and with
    ``EDGECONV_NATIVE_TENSORFLOW=off`` (``off``): each one's stdout; each must exit 0. ``argv(mode)`` is the
    command, ``env(mode)`` more variables."""
    out = {}
    for mode in ("native", "off"):
        extra = {"EDGECONV_NATIVE_TENSORFLOW": "off"} if mode == "off" else {}
        done = subprocess.run(
            argv(mode),
            env={**os.environ, "PYTHONPATH": str(ROOT), **extra, **env(mode)},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        out[mode] = done.stdout
    return out
