"""Model input errors are exit 2 with our own advice: Keras files, quantized sources, a missing extra, the cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from converter import model_cache
from converter.errors import ModelLoadError
from converter.sources.load import load_model
from tests.conftest import ROOT, tiny_recipe

ENV = {"TF_CPP_MIN_LOG_LEVEL": "3"}


def _cli(recipe: Path, out: Path, pythonpath: str = str(ROOT), **env_extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "converter", "convert", "--recipe", str(recipe), "--out", str(out)]
    env = {**os.environ, **ENV, "PYTHONPATH": pythonpath, **env_extra}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)


def _recipe(tmp_path: Path, model_dir: Path, model: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(model_dir, model)))
    return path


@pytest.mark.parametrize("api", ["sequential", "functional"])
def test_missing_custom_class_is_one_paragraph_naming_it_and_the_recipe_key(api: str, tmp_path: Path) -> None:
    """The class's own registered name is given, not the enclosing model's (Keras's config dump names it first)."""
    # Saved in another process: the class is registered there only, as on a user's machine without it.
    script = textwrap.dedent(
        """
        import sys, keras

        @keras.saving.register_keras_serializable(package="edgeconv_test")
        class Doubler(keras.layers.Layer):
            def call(self, x):
                return x * 2

        if sys.argv[2] == "sequential":
            model = keras.Sequential([keras.Input((4,)), Doubler(), keras.layers.Dense(2)])
        else:
            inputs = keras.Input((4,))
            model = keras.Model(inputs, keras.layers.Dense(2)(Doubler()(inputs)))
        model.save(sys.argv[1])
        """
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "custom.keras"), api], check=True, env=ENV)
    with pytest.raises(ModelLoadError) as info:
        load_model(tmp_path / "custom.keras")
    assert str(info.value) == (
        f"model: {tmp_path / 'custom.keras'}: uses the custom class 'Doubler' (registered as 'edgeconv_test>Doubler'), "
        "which is not among the recipe's custom_objects; add the class to the recipe's custom_objects as "
        "'module:Doubler', naming the Python module (importable here) that defines it"
    )


def test_lambda_error_gives_our_advice_not_safe_mode_false(tmp_path: Path) -> None:
    import keras

    keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2)]).save(tmp_path / "lam.keras")
    with pytest.raises(ModelLoadError) as info:
        load_model(tmp_path / "lam.keras")
    message = str(info.value)
    assert "safe_mode=False" not in message and "enable_unsafe_deserialization" not in message
    assert message == (
        f"model: {tmp_path / 'lam.keras'}: refused: Requested the deserialization of a `Lambda` layer whose "
        "`function` is a Python lambda; loading it would run Python code stored in the model file, so edgeconv "
        "keeps Keras safe_mode on. Rewrite the Lambda (or lambda function) as a custom layer class and list it "
        "under the recipe's custom_objects as 'module:Name'"
    )


def _corrupt(folder: Path, name: str, how: str, good: Path) -> Path:
    path = folder / name
    content = good.read_bytes()
    data = {
        "empty": b"",
        "random": np.random.default_rng(0).bytes(5000),
        "truncated": content[: len(content) // 2],
    }[how]
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("empty", "the file is empty (0 bytes); copy or save the model again"),
        ("random", "is not a .keras archive: a .keras file is a zip archive and this one has no zip directory"),
        ("truncated", "is not a .keras archive: a .keras file is a zip archive and this one has no zip directory"),
    ],
)
def test_corrupt_keras_file_says_what_is_wrong(tiny_model_dir: Path, tmp_path: Path, how: str, expected: str) -> None:
    path = _corrupt(tmp_path, "m.keras", how, tiny_model_dir / "tiny.keras")
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    assert str(info.value).startswith(f"model: {path}: {expected}"), str(info.value)
    assert "File not found" not in str(info.value)


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("empty", "the file is empty (0 bytes)"),
        ("random", "is not an HDF5 file: it has no HDF5 signature (h5py: "),
        ("truncated", "is truncated: shorter than its HDF5 header says (h5py: "),
    ],
)
def test_corrupt_h5_file_says_what_is_wrong(tiny_model_dir: Path, tmp_path: Path, how: str, expected: str) -> None:
    path = _corrupt(tmp_path, "m.h5", how, tiny_model_dir / "tiny.h5")
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    assert str(info.value).startswith(f"model: {path}: {expected}"), str(info.value)


def _stock_tflite(kind: str) -> bytes:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    # 64x32 weights: the stock converter leaves tensors under 1024 elements float in dynamic-range mode.
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(3)])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if kind != "float":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "full-int-float-io":
        rows = np.random.default_rng(0).random((20, 64)).astype(np.float32)
        converter.representative_dataset = lambda: ([r[None]] for r in rows)
    if kind == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return bytes(converter.convert())


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("dynamic-range", "is int8 with quantization scales"),
        ("full-int-float-io", "is int8 with quantization scales"),
        ("float16", "is float16 (a float16-weights model)"),
    ],
)
def test_quantized_internals_with_float_io_are_refused(tmp_path: Path, kind: str, reason: str) -> None:
    path = tmp_path / f"{kind}.tflite"
    path.write_bytes(_stock_tflite(kind))
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(f"model: {path}: is not a float model: tensor '") and reason in message, message
    assert "give the float32 .tflite, Keras file or SavedModel it was made from" in message
    assert info.value.exit_code == 2


def test_float_tflite_is_still_taken_as_is(tmp_path: Path) -> None:
    content = _stock_tflite("float")
    (tmp_path / "f.tflite").write_bytes(content)
    assert load_model(tmp_path / "f.tflite").float_tflite == content


@pytest.mark.parametrize(("module", "model"), [("keras", "tiny.keras"), ("tensorflow", "tiny.tflite")])
def test_missing_convert_extra_is_exit_2_naming_the_extra(
    tiny_model_dir: Path, tmp_path: Path, module: str, model: str
) -> None:
    fake = tmp_path / "lean" / module
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n")
    lean = f"{tmp_path / 'lean'}{os.pathsep}{ROOT}"
    # An empty float cache: with a cached float model the .keras source needs no Keras at all.
    result = _cli(_recipe(tmp_path, tiny_model_dir, model), tmp_path / "out", lean, EDGECONV_CACHE_DIR=str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: converting a model needs '{module}', which cannot be imported in this Python (No module named "
        f"'{module}'); the lean install only runs models: install the converter extra with "
        'pip install "edgeconv[convert]"'
    )
    assert not (tmp_path / "out").exists()


SHA = hashlib.sha256(b"model bytes").hexdigest()
CORRUPT_META = [
    "[]",
    "{}",
    "null",
    "not json",
    f'{{"sha256": "{SHA}", "format": "keras"}}',  # no loader
    '{"sha256": "0", "format": "keras", "loader": "keras 3"}',  # the model does not match
]


@pytest.mark.parametrize("meta", CORRUPT_META)
def test_corrupt_cache_entry_is_a_warning_and_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, meta: str
) -> None:
    monkeypatch.setenv("EDGECONV_CACHE_DIR", str(tmp_path))
    model_cache.save("k", b"model bytes", "keras", "keras 3")
    assert model_cache.load("k") == (b"model bytes", {"sha256": SHA, "format": "keras", "loader": "keras 3"})
    meta_path = tmp_path / "float" / "k.json"
    meta_path.write_text(meta)
    with caplog.at_level(logging.WARNING, logger="converter.cache"):
        assert model_cache.load("k") is None
    assert f"warning: float model cache entry {tmp_path / 'float' / 'k.tflite'} is corrupt (" in caplog.text
    assert not meta_path.exists() and not (tmp_path / "float" / "k.tflite").exists()


def test_corrupt_cache_metadata_rebuilds_and_the_run_succeeds(tiny_model_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    recipe = _recipe(tmp_path, tiny_model_dir, "tiny.keras")
    first = _cli(recipe, tmp_path / "out1", EDGECONV_CACHE_DIR=str(cache))
    assert first.returncode == 0, first.stderr
    (meta_path,) = (cache / "float").glob("*.json")
    meta_path.write_text("[]")
    second = _cli(recipe, tmp_path / "out2", EDGECONV_CACHE_DIR=str(cache))
    assert second.returncode == 0, second.stderr
    entry = meta_path.with_suffix(".tflite")
    assert f"warning: float model cache entry {entry} is corrupt ({meta_path.name} holds list, not an object)" in (
        second.stderr
    )
    assert json.loads(meta_path.read_text())["loader"].startswith("keras")  # rebuilt
