"""``edgeconv devices`` (the profiles as they are, nothing invented), ``edgeconv init`` (a recipe read from the
model file without running it, that validates and converts once the data is there) and the top-level help."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

import converter
from converter.cli.main import main
from converter.devices import available_devices, load_device
from tests.conftest import ROOT, assert_accuracy_drop_below

PT2 = ROOT / "recipes" / "models" / "digits_cnn.pt2"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _init(model: Path, out: Path, *extra: str) -> tuple[str, dict[str, Any]]:
    result = run("init", str(model), "--out", str(out), *extra)
    assert result.exit_code == 0, result.output
    assert f"wrote {out} for {model}" in result.stdout
    text = out.read_text()
    return text, yaml.safe_load(text)


def _fill_data(recipe: Path, model_dir: Path) -> None:
    """Put data where the starter recipe's placeholders point."""
    shutil.copy(model_dir / "train.npz", recipe.parent / "calibration.npz")
    shutil.copy(model_dir / "test.npz", recipe.parent / "evaluation.npz")


def test_help_names_every_source_format_and_an_example() -> None:
    result = run("--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for source in (".keras", ".h5", "SavedModel", "float .tflite", ".pt2", ".onnx"):
        assert source in text, source
    assert "edgeconv convert --recipe recipe.yaml" in text
    assert "devices " in result.stdout and "init " in result.stdout


def test_devices_table_shows_the_profiles_figures_and_dashes_for_unknown() -> None:
    result = run("devices")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:] if line.strip()}
    assert set(available_devices()) <= rows.keys()
    assert rows["esp32-s3"].split()[1:5] == ["tflm", "mcu", "8", "MiB"]
    assert "512 KiB" in rows["esp32-s3"] and "fits flash and RAM" in rows["esp32-s3"]
    assert rows["host"].split()[1:5] == ["litert", "host", "—", "—"]
    assert "budgets latency_p50_ms 100" in rows["raspberry-pi-4"]
    assert rows["rk3588"].split()[3:5] == ["—", "—"]  # its memory depends on the board: not filled in
    assert rows["rv1103"].split()[3:6] == ["—", "64", "MiB"]  # the NPU's shared DRAM, from its rknn: section


def test_devices_json_is_every_profile_as_loaded() -> None:
    result = run("devices", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [d["name"] for d in listed] == available_devices()
    for entry in listed:
        profile = load_device(entry["name"])
        assert (entry["runtime"], entry["kind"]) == (profile.runtime, profile.kind)
        assert entry["flash_bytes"] == profile.flash_bytes
        shared = [getattr(s, "memory_bytes", None) for s in vars(profile).values() if hasattr(s, "memory_bytes")]
        assert entry["ram_bytes"] == (profile.ram_bytes if profile.ram_bytes is not None else next(iter(shared), None))
        assert entry["profile"]["description"] == profile.description
    by_name = {d["name"]: d for d in listed}
    assert by_name["esp32-s3"]["flash_bytes"] == 8_388_608 and by_name["esp32-s3"]["ram_bytes"] == 524_288
    assert by_name["host"]["flash_bytes"] is None and by_name["host"]["ram_bytes"] is None
    assert by_name["arduino-nano-33-ble-sense"]["budgets"] == {"flash_bytes": 1048576.0, "arena_bytes": 200000.0}


def test_init_a_tflite_reads_the_flatbuffer_and_validates_once_data_is_there(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "recipe.yaml"
    text, raw = _init(tiny_model_dir / "tiny.tflite", recipe, "--target", "host", "--target", "esp32-s3")
    assert raw["version"] == 1 and raw["name"] == "tiny"
    assert (recipe.parent / raw["model"]).resolve() == (tiny_model_dir / "tiny.tflite").resolve()
    assert raw["input"] == {"layout": "nhwc"}
    assert raw["targets"] == ["host", "esp32-s3"]
    assert raw["data"] == {
        "calibration": {"path": "calibration.npz", "samples": 200},
        "evaluation": {"path": "evaluation.npz"},
    }
    assert "# Read from the .tflite flatbuffer" in text and ": float32 [?, 12, 12, 3]" in text
    assert "#   x of shape [N, 12, 12, 3]" in text and "# resize: [12, 12]" in text
    not_yet = run("validate", "--recipe", str(recipe))
    assert not_yet.exit_code == 2
    assert f"data.calibration.path: not found: {tmp_path / 'calibration.npz'}" in not_yet.stderr
    _fill_data(recipe, tiny_model_dir)
    ok = run("validate", "--recipe", str(recipe))
    assert ok.exit_code == 0, ok.output
    assert "ok (recipe 'tiny', targets: host, esp32-s3)" in ok.stdout


def test_init_a_keras_file_converts_once_data_is_there(tiny_model_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "keras" / "recipe.yaml"
    recipe.parent.mkdir()
    text, raw = _init(tiny_model_dir / "tiny.keras", recipe)
    assert raw["input"] == {"layout": "nhwc"} and raw["targets"] == ["host"]
    assert "# Read from config.json in the .keras archive" in text
    assert ": float32 [?, 12, 12, 3]" in text
    assert "the model rescales its input itself" in text  # its Rescaling layer: no scale suggested
    _fill_data(recipe, tiny_model_dir)
    fast = {"benchmark.warmup": 1, "benchmark.runs": 5, "benchmark.min_seconds": 0, "data.calibration.samples": 100}
    result = converter.convert(recipe, overrides=fast, out=tmp_path / "out")
    assert result.int8_model.stat().st_size == result.report["artifacts"]["int8"]["bytes"]
    assert_accuracy_drop_below(result.report, 2.0)
    quantized = run("init", str(result.int8_model), "--out", str(tmp_path / "again.yaml"))
    assert quantized.exit_code == 2
    assert "is already quantized (tensor " in quantized.stderr and "give the float .tflite" in quantized.stderr
    assert not (tmp_path / "again.yaml").exists()


def test_init_a_pt2_reads_its_program_without_torch(tmp_path: Path) -> None:
    text, raw = _init(PT2, tmp_path / "recipe.yaml")
    assert raw["name"] == "digits_cnn"
    assert raw["input"] == {"layout": "nhwc"}  # the device gets channel-last; the model is NCHW
    assert '#   input "input": float32 [1, 1, 8, 8]' in text
    assert "#   x of shape [N, 8, 8, 1] (channel-last) or [N, 1, 8, 8] as the model takes it" in text


def test_init_refuses_to_overwrite_without_force(tiny_model_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("mine\n")
    refused = run("init", str(tiny_model_dir / "tiny.keras"), "--out", str(recipe))
    assert refused.exit_code == 2
    assert f"error: --out {recipe}: already exists and edgeconv init does not overwrite it" in refused.stderr
    assert "--force" in refused.stderr
    assert recipe.read_text() == "mine\n"
    _, raw = _init(tiny_model_dir / "tiny.keras", recipe, "--force")
    assert raw["name"] == "tiny"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "esp32s3"], "--target esp32s3: unknown device (did you mean 'esp32-s3'?)"),
        (["--target", "host", "--target", "host"], "--target: a device is given twice"),
    ],
)
def test_init_refuses_unknown_targets(tiny_model_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = run("init", str(tiny_model_dir / "tiny.keras"), "--out", str(tmp_path / "r.yaml"), *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert not (tmp_path / "r.yaml").exists()


def test_init_refuses_a_pickle_and_unknown_files(tmp_path: Path) -> None:
    (tmp_path / "net.pt").write_bytes(b"\x80\x04")
    result = run("init", str(tmp_path / "net.pt"), "--out", str(tmp_path / "r.yaml"))
    assert result.exit_code == 2 and "is a pickle (torch.save)" in result.stderr
    (tmp_path / "net.bin").write_bytes(b"x")
    result = run("init", str(tmp_path / "net.bin"), "--out", str(tmp_path / "r.yaml"))
    assert result.exit_code == 2 and "unsupported file type '.bin'" in result.stderr
    assert not (tmp_path / "r.yaml").exists()


def test_a_name_in_the_model_cannot_break_out_of_a_comment(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Names come from the file: a newline in one is escaped, so the recipe means what init meant."""
    from converter.tflite import flatbuf

    model = flatbuf.load((tiny_model_dir / "tiny.tflite").read_bytes())
    graph = model.subgraphs[0]
    graph.tensors[graph.inputs[0]].name = b"x\nname: injected\ntargets: [esp32-s3]"
    hostile = tmp_path / "hostile.tflite"
    hostile.write_bytes(flatbuf.dump(model))
    text, raw = _init(hostile, tmp_path / "recipe.yaml")
    assert raw["name"] == "hostile" and raw["targets"] == ["host"]
    assert '#   input "x\\nname: injected\\ntargets: [esp32-s3]": float32' in text


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """``edgeconv devices | head -1``: the closed pipe is 128 + SIGPIPE and no 'unexpected failure'."""
    process = subprocess.Popen(
        [sys.executable, "-m", "converter", "devices"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # gone before the first line is written
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 128 + int(signal.SIGPIPE), stderr
    assert stderr == ""
