"""The recipe loader: every kind of bad input gives a RecipeError naming file and key path."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from converter.errors import RecipeError
from converter.recipe import Recipe, load_recipe, recipe_json_schema
from converter.schema import blame_override
from tests.conftest import ROOT

GOOD: dict[str, Any] = {
    "version": 1,
    "name": "demo",
    "model": "models/m.keras",
    "data": {"calibration": {"path": "data/cal.npz", "samples": 50}},
}


@pytest.fixture(autouse=True)
def _named_files(tmp_path: Path) -> None:
    """The files GOOD and the SSH target below name: load_recipe checks that they exist."""
    for name in ("models/m.keras", "data/cal.npz", "kh"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()


def _with(**changes: Any) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in GOOD.items()}
    out.update(changes)
    return out


def _error(write: Callable[..., Path], content: dict[str, Any] | str, overrides: list[str] | None = None) -> str:
    path = write(content)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return str(info.value)


def test_good_recipe_defaults_and_relative_paths(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(GOOD))
    assert recipe.model == tmp_path / "models" / "m.keras"
    assert recipe.data.calibration.path == tmp_path / "data" / "cal.npz"
    assert recipe.data.calibration.samples == 50
    assert recipe.data.evaluation is None
    assert recipe.targets == ("host",)
    assert (recipe.quantization.input_type, recipe.quantization.output_type) == ("int8", "int8")
    assert recipe.quantization.per_channel is True
    assert recipe.calibration.method == "minmax"
    assert recipe.input.resize is None and recipe.input.scale == 1.0 and recipe.input.offset == 0.0
    assert len(recipe.sha256) == 64


def test_recipe_is_frozen(write_recipe: Callable[..., Path]) -> None:
    recipe = load_recipe(write_recipe(GOOD))
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.name = "other"  # type: ignore[misc]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"nope\.yaml: recipe not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_malformed_yaml_names_line(write_recipe: Callable[..., Path]) -> None:
    message = _error(write_recipe, "version: 1\nname: [unclosed\nmodel: x\n")
    assert "recipe.yaml:" in message and "line 3" in message and "malformed YAML" in message


def test_duplicate_key_is_an_error(write_recipe: Callable[..., Path]) -> None:
    message = _error(write_recipe, "version: 1\nname: a\nname: b\n")
    assert "duplicate key 'name'" in message and "line 3" in message


def test_top_level_must_be_mapping(write_recipe: Callable[..., Path]) -> None:
    assert "expected a mapping of recipe keys" in _error(write_recipe, "- 1\n- 2\n")


def test_unknown_top_level_key_suggests(write_recipe: Callable[..., Path]) -> None:
    message = _error(write_recipe, _with(calibraton={"method": "minmax"}))
    assert "recipe.yaml: calibraton: unknown key (did you mean 'calibration'?)" in message


def test_unknown_nested_key_suggests(write_recipe: Callable[..., Path]) -> None:
    message = _error(write_recipe, _with(calibration={"methd": "minmax"}))
    assert "recipe.yaml: calibration.methd: unknown key (did you mean 'method'?)" in message


def test_enum_lists_choices(write_recipe: Callable[..., Path]) -> None:
    message = _error(write_recipe, _with(calibration={"method": "minmaxx"}))
    assert (
        "recipe.yaml: calibration.method: expected one of minmax, percentile, entropy, mse, auto; got str 'minmaxx' "
        "(did you mean 'minmax'?)" in message
    )


def test_wrong_type_names_key_path(write_recipe: Callable[..., Path]) -> None:
    bad = _with(data={"calibration": {"path": "d.npz", "samples": "many"}})
    assert "recipe.yaml: data.calibration.samples: expected an integer, got str 'many'" in _error(write_recipe, bad)


def test_bool_is_not_an_integer(write_recipe: Callable[..., Path]) -> None:
    bad = _with(data={"calibration": {"path": "d.npz", "samples": True}})
    assert "data.calibration.samples: expected an integer, got boolean true" in _error(write_recipe, bad)


def test_lower_bound(write_recipe: Callable[..., Path]) -> None:
    bad = _with(data={"calibration": {"path": "d.npz", "samples": 0}})
    assert "data.calibration.samples: must be at least 1, got 0" in _error(write_recipe, bad)


def test_missing_required_key(write_recipe: Callable[..., Path]) -> None:
    bad = {k: v for k, v in GOOD.items() if k != "model"}
    assert "recipe.yaml: model: required key is missing" in _error(write_recipe, bad)


def test_version_must_be_1(write_recipe: Callable[..., Path]) -> None:
    assert "version: expected one of 1; got int 2" in _error(write_recipe, _with(version=2))


def test_name_pattern(write_recipe: Callable[..., Path]) -> None:
    assert "name: '../evil' does not match" in _error(write_recipe, _with(name="../evil"))


def test_resize_shape(write_recipe: Callable[..., Path]) -> None:
    assert "input.resize: expected a list of 2 items, got 3" in _error(write_recipe, _with(input={"resize": [1, 2, 3]}))
    assert "input: resize: sizes must be positive" in _error(write_recipe, _with(input={"resize": [0, 2]}))


def test_quantization_cross_field(write_recipe: Callable[..., Path]) -> None:
    message = _error(write_recipe, _with(quantization={"activations": "int16", "input_type": "int8"}))
    assert "quantization: input_type: int8 does not go with activations: int16; use one of float32, int16" in message


def test_unknown_target_suggests(write_recipe: Callable[..., Path]) -> None:
    message = _error(write_recipe, _with(targets=["hots"]))
    assert "recipe.yaml: targets[0]: unknown device 'hots' (did you mean 'host'?)" in message


def test_empty_targets(write_recipe: Callable[..., Path]) -> None:
    assert "targets: empty list" in _error(write_recipe, _with(targets=[]))


def test_overrides(write_recipe: Callable[..., Path]) -> None:
    path = write_recipe(GOOD)
    recipe = load_recipe(
        path, ["data.calibration.samples=7", "quantization.input_type=uint8", "input.resize=[4, 5]", "name=other"]
    )
    assert recipe.data.calibration.samples == 7
    assert recipe.quantization.input_type == "uint8"
    assert recipe.input.resize == (4, 5)
    assert recipe.name == "other"
    assert recipe.sha256 != load_recipe(path).sha256


def test_override_errors(write_recipe: Callable[..., Path]) -> None:
    assert "expected dotted.key=value" in _error(write_recipe, GOOD, ["calibration.method"])
    assert "'name' is not a mapping" in _error(write_recipe, GOOD, ["name.x=1"])
    assert "--set calibration.method=kl: expected one of minmax, percentile" in _error(
        write_recipe, GOOD, ["calibration.method=kl"]
    )


def test_sha256_ignores_formatting(write_recipe: Callable[..., Path]) -> None:
    a = load_recipe(write_recipe(GOOD, "a.yaml"))
    b = load_recipe(
        write_recipe(
            "# comment\n"
            + "\n".join(
                [
                    "version: 1",
                    "name: demo",
                    "model: models/m.keras",
                    "data: {calibration: {samples: 50, path: data/cal.npz}}",
                ]
            ),
            "b.yaml",
        )
    )
    assert a.sha256 == b.sha256


def test_every_shipped_recipe_validates() -> None:
    recipes = sorted((ROOT / "recipes").rglob("*.yaml"))
    assert len(recipes) >= 3, "recipes missing"
    for path in recipes:
        recipe = load_recipe(path, check_files="realdata" not in path.parts)
        if "realdata" in path.parts:  # third-party files next to the repository, not in it
            continue
        assert recipe.model.exists(), f"{path}: model {recipe.model} is missing"
        assert recipe.data.calibration.path.exists()


def test_json_schema_matches_dataclasses() -> None:
    schema = recipe_json_schema()
    fields = {f.name for f in dataclasses.fields(Recipe) if f.init}
    assert set(schema["properties"]) == fields
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"version", "name", "model", "data"}
    assert schema["properties"]["calibration"]["properties"]["method"]["enum"] == [
        "minmax",
        "percentile",
        "entropy",
        "mse",
        "auto",
    ]
    assert "host" in schema["properties"]["targets"]["items"]["anyOf"][0]["enum"]


def test_ssh_targets(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    recipe = load_recipe(
        write_recipe(
            _with(
                targets=[
                    "host",
                    {"device": "raspberry-pi-4", "host": "pi@raspberrypi", "port": 2222, "known_hosts": "kh"},
                ]
            )
        )
    )
    specs = recipe.target_specs()
    assert [s.device for s in specs] == ["host", "raspberry-pi-4"]
    assert specs[1].host == "pi@raspberrypi" and specs[1].port == 2222 and specs[1].known_hosts == tmp_path / "kh"
    message = _error(write_recipe, _with(targets=[{"device": "raspberry-pi-4", "hots": "pi@x"}]))
    assert "targets[0].hots: unknown key (did you mean 'host'?)" in message
    assert "targets[0].host: 'host' is a host device; only ssh devices take a host" in _error(
        write_recipe, _with(targets=[{"device": "host", "host": "me@there"}])
    )
    assert "a device is listed twice" in _error(write_recipe, _with(targets=["host", {"device": "host"}]))


def test_every_device_profile_loads() -> None:
    from converter.devices import available_devices, load_device

    names = available_devices()
    assert {"host", "raspberry-pi-4", "raspberry-pi-5", "coral-usb-accelerator", "coral-dev-board"} <= set(names)
    for name in names:
        profile = load_device(name)
        assert profile.name == name
        assert (profile.delegate == "edgetpu") == (profile.runtime == "edgetpu") == profile.needs_compiled_model


def test_an_error_found_while_running_blames_the_set_option_that_gave_the_value() -> None:
    sets = (("input", "input={scale: 0.5}"), ("data.calibration.path", "data.calibration.path=cal2.npz"))
    # The key the option set, stated by the option as validation states it.
    assert (
        blame_override("r.yaml: input: scale applies to single-input models", "r.yaml", sets)
        == "--set input={scale: 0.5}: scale applies to single-input models"
    )
    # A key below a mapping the option set.
    assert blame_override("r.yaml: input.scale: too large", "r.yaml", sets).startswith("--set input={scale: 0.5}: ")
    # A mapping above the option's key, when the message quotes the value it gave.
    assert (
        blame_override("r.yaml: data.calibration: /d/cal2.npz: no array 'x'", "r.yaml", sets)
        == "--set data.calibration.path=cal2.npz: data.calibration: /d/cal2.npz: no array 'x'"
    )
    # Keys the options did not give stay the file's, as do messages of another shape.
    for message in (
        "r.yaml: data.calibration: /d/cal.npz: no array 'x'",
        "r.yaml: data.evaluation: labels missing",
        "r.yaml: model: m.keras: cannot load",
        "something else: input: x",
    ):
        assert blame_override(message, "r.yaml", sets) == message
    assert blame_override("r.yaml: input: x", "r.yaml", ()) == "r.yaml: input: x"
