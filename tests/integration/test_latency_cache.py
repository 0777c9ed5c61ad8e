"""Host latency is kept per machine: an unchanged recipe re-run here takes the figure measured before, says so,
and ``--remeasure`` measures again and replaces it. A changed setting, model or machine measures again."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from converter.boards import latency_cache
from converter.cli.main import main
from tests.conftest import tiny_recipe


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache folder of the test's own: another test's latency for the tiny model is not this one's to find."""
    monkeypatch.setenv("EDGECONV_CACHE_DIR", str(tmp_path / "cache"))


def _run(recipe: Path, out: Path, *args: str) -> tuple[dict[str, Any], str]:
    result = CliRunner().invoke(main, ["convert", "--recipe", str(recipe), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())["latency"]["host"], result.output


def test_a_rerun_takes_the_latency_measured_before_and_remeasure_replaces_it(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    # Settings no other test uses: the session's cache may hold the tiny model's latency under the defaults.
    recipe = write_recipe(tiny_recipe(tiny_model_dir, targets=["host"], benchmark={"runs": 7, "warmup": 2}))
    first, said = _run(recipe, tmp_path / "a")
    assert first["from_cache"] is False and first["measured_at"]
    assert "from the latency cache" not in said

    again, said = _run(recipe, tmp_path / "b")
    assert again["from_cache"] is True and again["measured_at"] == first["measured_at"]
    assert again["int8"] == first["int8"] and again["float"] == first["float"]  # the same figures, not new ones
    assert f"latency host (host, from the latency cache, measured {first['measured_at']})" in said
    assert f"from the latency cache, measured {first['measured_at']}" in (tmp_path / "b" / "report.md").read_text()
    assert "from the latency cache" in (tmp_path / "b" / "report.html").read_text()
    counts = [json.loads((tmp_path / run / "report.json").read_text())["cache"]["latency"] for run in "ab"]
    assert counts == [{"hits": 0, "misses": 1}, {"hits": 1, "misses": 0}]

    fresh, said = _run(recipe, tmp_path / "c", "--remeasure")
    assert fresh["from_cache"] is False and fresh["measured_at"] >= first["measured_at"]
    assert "from the latency cache" not in said
    after, _ = _run(recipe, tmp_path / "d")  # the remeasured figure is the one kept now
    assert after["from_cache"] is True and after["int8"] == fresh["int8"]


def test_other_settings_or_another_machine_measure_again(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tiny_recipe(tiny_model_dir, targets=["host"])
    first, _ = _run(write_recipe(spec), tmp_path / "a")
    assert _run(write_recipe(spec), tmp_path / "same")[0]["from_cache"] is True

    spec["benchmark"] = {**spec["benchmark"], "runs": 6}
    assert _run(write_recipe(spec, "runs.yaml"), tmp_path / "runs")[0]["from_cache"] is False

    identity = latency_cache.machine_identity()
    monkeypatch.setattr(latency_cache, "machine_identity", lambda: {**identity, "cpu": "another processor"})
    assert _run(write_recipe(spec, "runs.yaml"), tmp_path / "other")[0]["from_cache"] is False

    monkeypatch.setattr(latency_cache, "machine_identity", lambda: identity)
    off = {**spec, "benchmark": {**spec["benchmark"], "cache": False}}
    assert _run(write_recipe(off, "off.yaml"), tmp_path / "off")[0]["from_cache"] is False


def test_a_corrupt_entry_is_measured_again(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(tiny_recipe(tiny_model_dir, targets=["host"], benchmark={"runs": 4, "warmup": 3}))
    _run(recipe, tmp_path / "a")
    entries = sorted(latency_cache.STORE.folder().glob("*.latency"))
    assert entries
    for entry in entries:
        entry.write_text('{"models": "not what was stored"}')
    lat, said = _run(recipe, tmp_path / "b")
    assert lat["from_cache"] is False
    assert "warning: host latency cache entry" in said and "is corrupt" in said, said
