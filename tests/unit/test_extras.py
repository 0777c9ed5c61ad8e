"""A missing package of the convert extra is exit 2 with the pip command; a moved private API is not."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from converter.errors import UserInputError
from converter.extras import missing_extra


def test_only_a_missing_top_level_package_counts() -> None:
    assert missing_extra(ModuleNotFoundError("No module named 'keras'", name="keras")) == "keras"
    # An installed TensorFlow whose private module moved is our bug (exit 3), not a missing extra.
    moved = ModuleNotFoundError("No module named 'tensorflow.python.foo'", name="tensorflow.python.foo")
    assert missing_extra(moved) is None
    assert missing_extra(ImportError("cannot import name 'x' from 'tensorflow'", name="tensorflow")) is None
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = ModuleNotFoundError("No module named 'h5py'", name="h5py")
    assert missing_extra(wrapped) == "h5py"


def test_mcu_targets_without_tflite_micro_are_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from converter.pipeline import convert
    from converter.recipe import load_recipe

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tflite_micro" else real(name, *a)
    )
    model = Path(__file__).resolve().parents[1] / "data" / "add_one_float.tflite"
    np.save(tmp_path / "cal.npy", np.zeros((4, 1), np.float32))
    raw: dict[str, Any] = {
        "version": 1,
        "name": "mcu",
        "model": str(model),
        "data": {"calibration": {"path": str(tmp_path / "cal.npy")}},
        "targets": ["arduino-nano-33-ble-sense"],
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    recipe = load_recipe(tmp_path / "r.yaml")
    with pytest.raises(UserInputError) as error:
        convert(recipe, tmp_path / "out")
    assert "converting a model needs 'tflite_micro'" in str(error.value)
    assert "target arduino-nano-33-ble-sense (TFLite Micro) needs it" in str(error.value)
    assert "published for Linux x86_64 only" in str(error.value)
    assert not (tmp_path / "out").exists()
