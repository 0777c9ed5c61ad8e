"""Shared fixtures: tiny Keras models built and trained in seconds, their data, recipe files."""

from __future__ import annotations

import os
import signal
import subprocess
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


def pytest_sessionstart(session: pytest.Session) -> None:
    """CI sets EDGECONV_REQUIRE_REALDATA=1 where the real models are: then they must not be skipped."""
    if os.environ.get("EDGECONV_REQUIRE_REALDATA") == "1" and not REALDATA.is_dir():
        raise pytest.UsageError(f"EDGECONV_REQUIRE_REALDATA=1 but {REALDATA} is not a folder")


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
