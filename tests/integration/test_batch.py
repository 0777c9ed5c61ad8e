"""Many recipes in one ``edgeconv convert``: long-lived worker processes, one shared cache, the same bytes.

Eight variants of the tiny model (calibration methods, per-tensor weights, 16x8, uint8 I/O, sample
counts) are converted one by one, then all at once with ``--jobs 2`` sharing one fresh cache, and every
artifact but the timing-bearing reports must be byte-identical. A recipe whose gate fails (exit 1) and
one whose data is missing (exit 2) do not stop the others; the batch's exit code is the worst.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, tiny_recipe

VARIANTS: dict[str, dict[str, Any]] = {
    "minmax": {},
    "percentile": {"calibration": {"method": "percentile", "percentile": 99.9}},
    "entropy": {"calibration": {"method": "entropy"}},
    "mse": {"calibration": {"method": "mse"}},
    "per-tensor": {"quantization": {"per_channel": False}},
    "a16w8": {"quantization": {"activations": "int16", "input_type": "int16", "output_type": "int16"}},
    "uint8-io": {"quantization": {"input_type": "uint8", "output_type": "uint8"}},
    "fewer-samples": {"data": {"calibration": {"samples": 40}}},
}
# Files whose bytes carry timings or paths (reports) are compared on their measured content instead.
VOLATILE = {"report.json", "report.md", "report.html", "junit.xml"}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _write(folder: Path, name: str, recipe: dict[str, Any]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**recipe, "name": name, "benchmark": {"enabled": False}}, sort_keys=False))
    return path


def _convert(args: list[str], cache: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGECONV_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "converter", "convert", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in VOLATILE
    }


@pytest.fixture(scope="module")
def recipes(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("recipes")
    base = tiny_recipe(tiny_model_dir)
    for name, extra in VARIANTS.items():
        _write(folder, name, _merge(base, extra))
    return folder


@pytest.mark.full  # about 2 minutes: every variant converted one by one, then again with --jobs 2
def test_jobs_2_gives_the_bytes_of_one_by_one_with_one_shared_cache(recipes: Path, tmp_path: Path) -> None:
    for name in VARIANTS:
        done = _convert(["--recipe", str(recipes / f"{name}.yaml"), "--out", str(tmp_path / "one" / name)],
                        tmp_path / "cache-one", tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
    batch = _convert([str(recipes), "--jobs", "2", "--out", str(tmp_path / "many")], tmp_path / "cache-many", tmp_path)
    assert batch.returncode == 0, batch.stderr
    assert "converting 8 recipes, 2 (--jobs) at a time" in batch.stderr
    assert batch.stderr.count("done ") == 8
    for name in VARIANTS:
        one, many = _files(tmp_path / "one" / name), _files(tmp_path / "many" / name)
        assert one.keys() == many.keys() and "model_int8.tflite" in one, name
        assert one == many, f"{name}: {[k for k in one if one[k] != many[k]]} differ"
        a = json.loads((tmp_path / "one" / name / "report.json").read_text())
        b = json.loads((tmp_path / "many" / name / "report.json").read_text())
        assert a["accuracy"] == b["accuracy"] and a["artifacts"] == b["artifacts"], name
    # the table: one row per recipe, with its bytes and accuracy
    rows = {line.split()[0]: line for line in batch.stdout.splitlines()[1:]}
    assert set(rows) == set(VARIANTS)
    size = json.loads((tmp_path / "many" / "a16w8" / "report.json").read_text())["artifacts"]["int8"]["bytes"]
    assert f"{size:,}" in rows["a16w8"] and "top-1 " in rows["a16w8"]
    # the shared cache holds one float model for the eight recipes (they share the model file)
    assert len(list((tmp_path / "cache-many" / "float").glob("*.tflite"))) == 1


def test_a_failing_recipe_does_not_stop_the_others(recipes: Path, tmp_path: Path) -> None:
    base = yaml.safe_load((recipes / "minmax.yaml").read_text())
    folder = tmp_path / "set"
    folder.mkdir()
    _write(folder, "ok", base)
    _write(folder, "gate", {**base, "budgets": {"model_bytes": 100}})  # the int8 model is bigger: exit 1
    broken = _merge(base, {"data": {"calibration": {"path": str(tmp_path / "missing.npz")}}})
    _write(folder, "no-data", broken)  # exit 2
    (folder / "not-yaml.yaml").write_text("version: 1\nname: [unclosed\n")  # exit 2, refused before running
    done = _convert([str(folder), "--jobs", "2", "--out", str(tmp_path / "o")], tmp_path / "cache", tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    codes = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()[1:]}
    assert codes == {"ok": "0", "gate": "1", "no-data": "2", "not-yaml": "2"}, done.stdout
    assert (tmp_path / "o" / "ok" / "model_int8.tflite").is_file()
    assert (tmp_path / "o" / "gate" / "model_int8.tflite").is_file()
    assert "missing.npz" in done.stdout  # the failed recipe's own error, in its row
    listed = _convert([str(folder / "ok.yaml"), str(folder / "gate.yaml"), "--json"], tmp_path / "cache", tmp_path)
    assert listed.returncode == 1
    doc = json.loads(listed.stdout)
    assert [(r["name"], r["exit_code"], r["passed"]) for r in doc] == [("ok", 0, True), ("gate", 1, False)]


def test_one_worker_loads_tensorflow_once_for_its_recipes(recipes: Path, tmp_path: Path) -> None:
    """--jobs 1: one worker converts both recipes; the second finds TensorFlow loaded by the first."""
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("minmax", "mse"):
        (folder / f"{name}.yaml").write_text((recipes / f"{name}.yaml").read_text())
    done = _convert([str(folder), "--jobs", "1", "--out", str(tmp_path / "o")], tmp_path / "cache", tmp_path)
    assert done.returncode == 0, done.stderr
    loaded = [json.loads((tmp_path / "o" / n / "report.json").read_text())["cache"]["tensorflow_loaded"] for n in
              ("minmax", "mse")]  # fmt: skip
    assert loaded == [True, None], loaded  # None: loaded before the run began, by the same process


def test_two_recipes_with_one_name_are_refused_before_any_work(recipes: Path, tmp_path: Path) -> None:
    twin = tmp_path / "twin.yaml"
    twin.write_text((recipes / "minmax.yaml").read_text())
    done = _convert([str(recipes / "minmax.yaml"), str(twin), "--out", str(tmp_path / "o")], tmp_path / "c", tmp_path)
    assert done.returncode == 2
    assert "are both named 'minmax'" in done.stderr and not (tmp_path / "o").exists()


def test_ctrl_c_stops_every_worker_and_publishes_nothing_half_done(recipes: Path, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while both workers convert.

    The batch process gets it twice (from the terminal, and forwarded by its supervising parent); a stop cut
    short by the second left one worker converting until it published, and the workers it did kill were
    reported as crashes (exit 3, "ended with -9") with their staging folders left behind.
    """
    import signal
    import time

    out = tmp_path / "o"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGECONV_CACHE_DIR": str(tmp_path / "cache")}
    names = ("minmax", "mse", "entropy", "percentile")
    batch = subprocess.Popen(
        [sys.executable, "-m", "converter", "convert", *(str(recipes / f"{n}.yaml") for n in names), "--jobs", "2"]
        + ["--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob(".*.edgeconv-new"))) < 2 and batch.poll() is None:
        time.sleep(0.05)  # both workers inside a recipe: their staging folders exist
    assert len(list(out.glob(".*.edgeconv-new"))) == 2, "the workers never got to convert"
    time.sleep(0.5)
    os.killpg(batch.pid, signal.SIGINT)
    _, stderr = batch.communicate(timeout=60)
    assert batch.returncode == 130, stderr
    left = subprocess.run(["pgrep", "-g", str(batch.pid)], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes of the batch still running: {left}"
    rows = [line for line in stderr.splitlines() if line.startswith("done ")]
    assert rows and not any("ended with" in r or "(exit 3)" in r for r in rows), stderr
    published = {p.name for p in out.iterdir()} if out.exists() else set()
    for row in rows:  # published exactly when its row says it finished (exit 0 or 1)
        name = row.split()[2]
        assert (name in published) == ("(exit 0)" in row or "(exit 1)" in row), (row, published)
        assert "(exit 130): interrupted" in row or name in published, row
    leftovers = [p.name for p in out.glob(".*")] if out.exists() else []
    assert leftovers == [], f"staging or lock files left: {leftovers}"
    assert stderr.rstrip().endswith("every other one published nothing"), stderr


def test_the_table_counts_skipped_gates_apart_from_passed_ones() -> None:
    from converter.cli.batch import Job, JobResult
    from converter.cli.main import batch_table

    gates = [{"status": s} for s in ("passed", "passed", "failed", "skipped")]
    report = {"gates": gates, "accuracy": {}, "artifacts": {"int8": {"bytes": 5112}}}
    table = batch_table([JobResult(Job(Path("r.yaml"), "r", Path("b")), 1, 2.0, report, None)])
    assert "2 ok, 1 failed, 1 skipped" in table, table
