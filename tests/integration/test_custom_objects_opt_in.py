"""A recipe's custom_objects are imported (their code runs) only with --allow-custom-objects."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ROOT, tiny_recipe

MODULE = """
from pathlib import Path
Path({marker!r}).write_text("imported")
Thing = object
"""


def _convert(recipe: Path, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path / "mods")])}
    cmd = [sys.executable, "-m", "converter", "convert", "--recipe", str(recipe), "--out", str(tmp_path / "out")]
    return subprocess.run([*cmd, *flags], env=env, capture_output=True, text=True, timeout=600)


def test_custom_objects_are_not_imported_without_the_flag(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "pr_module.py").write_text(MODULE.format(marker=str(marker)))
    recipe = tiny_recipe(tiny_model_dir, custom_objects=["pr_module:Thing"], targets=["host"])
    recipe["benchmark"]["enabled"] = False
    recipe["analysis"] = {"samples": 0}
    path = write_recipe(recipe)

    refused = _convert(path, tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "custom_objects: importing pr_module:Thing would run the code" in refused.stderr
    assert "--allow-custom-objects" in refused.stderr
    assert not marker.exists()
    assert not (tmp_path / "out").exists()

    allowed = _convert(path, tmp_path, "--allow-custom-objects")
    assert allowed.returncode == 0, allowed.stderr
    assert marker.read_text() == "imported"
    assert (tmp_path / "out" / "model_int8.tflite").is_file()
