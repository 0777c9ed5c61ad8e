"""Output folder ownership and atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from converter.artifacts import check_output_dir, write_atomic, write_outputs
from converter.errors import OutputError


def test_fresh_and_empty_folders_are_fine(tmp_path: Path) -> None:
    check_output_dir(tmp_path / "new", "a", force=False)
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", "a", force=False)


def test_same_recipe_may_overwrite_other_may_not(tmp_path: Path) -> None:
    write_outputs(tmp_path, "a", {"x.bin": b"1"})
    check_output_dir(tmp_path, "a", force=False)
    with pytest.raises(OutputError, match="holds recipe 'a', not 'b'; choose another --out or pass --force"):
        check_output_dir(tmp_path, "b", force=False)
    check_output_dir(tmp_path, "b", force=True)


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "thesis.pdf").write_bytes(b"%PDF")
    with pytest.raises(OutputError, match="files not written by edgeconv"):
        check_output_dir(tmp_path, "a", force=False)


def test_file_as_out_dir(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is not a folder"):
        check_output_dir(tmp_path / "f", "a", force=False)


def test_atomic_write_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.tflite"
    target.write_bytes(b"old")

    def fail(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]


def test_written_files_are_readable_by_others(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a", b"x")
    assert (tmp_path / "a").stat().st_mode & 0o044 == 0o044
