"""A recipe path that is a device, a FIFO or a folder is exit 2 saying so, not "not found", and is never read.

From a hostile-input audit: ``--recipe /dev/zero`` said "recipe not found" (it exists), and reading a FIFO
would have waited for a writer forever. The same holds for the other YAML settings files (device profiles,
fleet files) that ``yamlio.load_yaml_file`` reads, and for recipe files given to ``convert`` and ``matrix``
as arguments.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from converter.cli.main import main
from converter.errors import RecipeError
from converter.recipe import load_recipe


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    os.mkfifo(path)  # nobody writes to it: opening it for reading the usual way would block
    return path


def _refused(result: Result, path: Path, kind: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip() == (
        f"error: {path}: the recipe is not a regular file (it is {kind}); give the path of the recipe's YAML file"
    )


@pytest.mark.parametrize("command", ["validate", "convert"])
def test_dev_zero_as_recipe_is_not_a_regular_file(command: str, tmp_path: Path) -> None:
    """Before: exit 2, "/dev/zero: recipe not found; check the path you passed"."""
    args = [command, "--recipe", "/dev/zero"] + (["--out", str(tmp_path / "out")] if command == "convert" else [])
    _refused(_run(*args), Path("/dev/zero"), "a character device")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["validate", "convert"])
def test_a_fifo_as_recipe_is_refused_without_waiting(command: str, fifo: Path, tmp_path: Path) -> None:
    """Before: exit 2, "recipe.yaml: recipe not found" (a FIFO is not ``is_file()``): the wrong reason."""
    args = [command, "--recipe", str(fifo)] + (["--out", str(tmp_path / "out")] if command == "convert" else [])
    _refused(_run(*args), fifo, "a FIFO, a named pipe")


def test_a_folder_as_recipe_is_refused_by_its_kind(tmp_path: Path) -> None:
    """``load_recipe`` (and every YAML file it reads) says "a folder"; before: "recipe not found (it is a folder)".

    On the command line click refuses a folder for --recipe first ("... is a directory."), also exit 2.
    """
    with pytest.raises(RecipeError) as caught:
        load_recipe(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path}: the recipe is a folder, not a regular file; give the path of the recipe's YAML file"
    )
    result = _run("validate", "--recipe", str(tmp_path))
    assert result.exit_code == 2 and "is a directory" in result.stderr, result.output


def test_a_missing_recipe_is_still_not_found(tmp_path: Path) -> None:
    result = _run("validate", "--recipe", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.yaml'}: recipe not found; check the path you passed"


@pytest.mark.parametrize("command", ["convert", "matrix"])
def test_recipe_arguments_that_are_not_regular_files(command: str, fifo: Path, tmp_path: Path) -> None:
    """``convert a.yaml b.yaml`` and ``matrix``: before, "no such recipe file or folder" for files that exist."""
    result = _run(command, str(fifo), "/dev/null", "--out", str(tmp_path / "build"))
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: {fifo}: is not a regular file (it is a FIFO, a named pipe); give recipe files (*.yaml) or folders "
        "that hold them"
    )
