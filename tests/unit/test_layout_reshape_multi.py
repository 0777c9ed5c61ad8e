"""input.layout and input.reshape for models with several inputs: the recipe's mapping form and per-input arranging."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converter.calibration.data import ModelInput, read_samples, reshapes
from converter.errors import DataError, RecipeError
from converter.recipe import load_recipe, recipe_json_schema
from converter.runtime.preprocess import Preprocess

W = "r.yaml: data.calibration"
IMAGE = ModelInput("image", "serving_default_image:0", (1, 4, 5, 3), "float32")  # channel-last, 3 channels
FEATURES = ModelInput("features", "serving_default_features:0", (1, 16), "float32")
INPUTS = (IMAGE, FEATURES)


def _recipe(tmp_path: Path, **input_spec: Any) -> dict[str, Any]:
    np.save(tmp_path / "cal.npy", np.zeros((2, 4), np.float32))
    (tmp_path / "m.tflite").write_bytes(b"x")
    return {"version": 1, "name": "r", "model": "m.tflite", "data": {"calibration": {"path": "cal.npy"}},
            "input": input_spec}  # fmt: skip


def test_reshape_mapping_loads_and_is_in_the_schema(tmp_path: Path, write_recipe: Callable[..., Path]) -> None:
    recipe = load_recipe(write_recipe(_recipe(tmp_path, reshape={"features": [16], "image": [4, 5, 3]})))
    assert recipe.input.reshape == {"features": (16,), "image": (4, 5, 3)}
    path = write_recipe(_recipe(tmp_path))
    assert load_recipe(path, ["input.reshape.features=[4, 4]"]).input.reshape == {"features": (4, 4)}
    schema = recipe_json_schema()["properties"]["input"]["properties"]["reshape"]
    mapping = {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "integer"}}}
    assert mapping in schema["anyOf"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"reshape": {}}, "recipe.yaml: input: reshape: an empty mapping names no input; give input name: shape "
                          "pairs, e.g. {features: [16]}, or remove reshape"),
        ({"reshape": {"features": [4, 0]}}, "recipe.yaml: input: reshape.features: one sample's shape as a list of "
                                            "positive sizes, e.g. [784]; got [4, 0]"),
        ({"reshape": {"features": "16"}}, "recipe.yaml: input.reshape.features: expected a list, got str '16'"),
        ({"reshape": {"features": [1.5]}}, "recipe.yaml: input.reshape.features[0]: expected an integer, "
                                           "got float 1.5"),
        ({"reshape": {3: [16]}}, "recipe.yaml: input.reshape: expected a string as each key, got int 3"),
        ({"reshape": "16"}, "recipe.yaml: input.reshape: expected a list or a mapping, got str '16'"),
    ],
)  # fmt: skip
def test_recipe_errors_name_file_and_key(
    spec: dict[str, Any], message: str, tmp_path: Path, write_recipe: Callable[..., Path]
) -> None:
    path = write_recipe(_recipe(tmp_path, **spec))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert str(caught.value) == message.replace("recipe.yaml", str(path), 1)
    assert caught.value.exit_code == 2


def test_each_input_is_arranged_by_layout_and_its_reshape_entry(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((6, 3, 4, 5)).astype(np.float32)  # stored NCHW, the model takes NHWC
    features = rng.random((6, 2, 8)).astype(np.float32)  # stored [2, 8], the model takes [16]
    np.savez(tmp_path / "d.npz", image=image, features=features, y=np.arange(6))
    x, ds = read_samples(tmp_path / "d.npz", INPUTS, Preprocess(), where=W, reshape={"features": (16,)})
    assert x.dtype.names == (IMAGE.tensor, FEATURES.tensor)
    assert x[IMAGE.tensor].shape == (6, 4, 5, 3) and x[FEATURES.tensor].shape == (6, 16)
    np.testing.assert_array_equal(x[IMAGE.tensor][2, 1, 3], image[2, :, 1, 3])
    np.testing.assert_array_equal(x[FEATURES.tensor][4], features[4].reshape(16))
    np.testing.assert_array_equal(ds.x[IMAGE.tensor], x[IMAGE.tensor])  # the raw data a device gets is arranged too
    assert ds.arranged == {
        "image": "stored nchw, transposed to the model's nhwc (input.layout)",
        "features": "reshaped from [2, 8] to [16] (input.reshape)",
    }
    assert ds.y is not None and ds.y.tolist() == list(range(6))
    # The tensor's name keys the mapping too; data already in the model's shape is taken as stored.
    np.savez(tmp_path / "d.npz", image=image.transpose(0, 2, 3, 1), features=features.reshape(6, 16))
    x2, ds2 = read_samples(tmp_path / "d.npz", INPUTS, Preprocess(), where=W, reshape={FEATURES.tensor: (16,)})
    np.testing.assert_array_equal(x2[IMAGE.tensor], x[IMAGE.tensor])
    assert ds2.arranged == {"image": "stored nhwc, as the model takes it (input.layout)", "features": None}


def test_every_image_input_of_a_channel_first_model_is_transposed(tmp_path: Path) -> None:
    rgb = ModelInput("rgb", "rgb", (1, 3, 4, 5), "float32")
    mask = ModelInput("mask", "mask", (1, 1, 4, 5), "float32")
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 4, 5, 3)).astype(np.float32), rng.random((3, 4, 5)).astype(np.float32)
    np.savez(tmp_path / "d.npz", rgb=a, mask=b)  # channel-last, and a grayscale mask without its channel axis
    x, ds = read_samples(tmp_path / "d.npz", (rgb, mask), Preprocess(), where=W, layout="nchw")
    assert x["rgb"].shape == (3, 3, 4, 5) and x["mask"].shape == (3, 1, 4, 5)
    np.testing.assert_array_equal(x["rgb"][1, :, 2, 3], a[1, 2, 3])
    np.testing.assert_array_equal(x["mask"][:, 0], b)
    assert ds.arranged == {
        "rgb": "stored nhwc, transposed to the model's nchw (input.layout)",
        "mask": "stored nchw, as the model takes it (input.layout)",
    }


def test_reshape_names_must_be_model_inputs() -> None:
    listed = "image [N, 4, 5, 3], features [N, 16]"
    with pytest.raises(RecipeError) as caught:
        reshapes(INPUTS, {"feature": (16,)}, "r.yaml")
    assert str(caught.value) == (
        f"r.yaml: input.reshape.feature: the model has no input named 'feature'; its inputs are {listed} "
        "(report.json lists them under model.inputs); key each shape by one of 'image', 'features'"
    )
    assert caught.value.exit_code == 2
    with pytest.raises(RecipeError) as caught:
        reshapes(INPUTS, (16,), "r.yaml")
    assert str(caught.value) == (
        f"r.yaml: input.reshape: a list is one sample's shape for a single-input model, and this model has 2 inputs "
        f"({listed}); give a mapping of input name to shape for the inputs whose data is stored in another shape, "
        "e.g. input.reshape: {features: [16]}"
    )
    with pytest.raises(RecipeError, match="the input 'features' is named twice"):
        reshapes(INPUTS, {"features": (16,), FEATURES.tensor: (16,)}, "r.yaml")
    # A single-input model takes the list, or a mapping keyed by its one input.
    assert reshapes((FEATURES,), (4, 4), "r.yaml") == {"features": (4, 4)}
    assert reshapes((FEATURES,), {"features": (4, 4)}, "r.yaml") == {"features": (4, 4)}
    with pytest.raises(RecipeError, match=r"^r.yaml: input.reshape.x: the model has no input named 'x'; its inputs"):
        reshapes((FEATURES,), {"x": (16,)}, "r.yaml")


def test_a_reshape_that_does_not_fit_names_the_array_and_key(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", image=np.zeros((2, 4, 5, 3)), features=np.zeros((2, 3, 5)))
    with pytest.raises(DataError) as caught:
        read_samples(tmp_path / "d.npz", INPUTS, Preprocess(), where=W, reshape={"features": (16,)})
    assert str(caught.value) == (
        f"{W}: {tmp_path / 'd.npz'}: array 'features': samples of shape [3, 5] (15 values) cannot take the recipe's "
        "input.reshape.features [16] (16 values); set input.reshape.features to the model's sample shape [16] or "
        "another shape of 15 values"
    )
    np.savez(tmp_path / "d.npz", image=np.zeros((2, 4, 5, 3)), features=np.zeros((2, 4, 4)))
    with pytest.raises(DataError) as caught:  # no reshape given: the hint names the key that would fix it
        read_samples(tmp_path / "d.npz", INPUTS, Preprocess(), where=W)
    assert str(caught.value).endswith(
        "store each input's samples as [N, ...] in the input's shape, or set input.reshape.features: [16] in the recipe"
    )
