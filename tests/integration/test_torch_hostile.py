"""Hostile .pt2 archives: each would run code through torch.export.load / ep.module(); edgeconv refuses them.

Every payload only creates a marker file in the test's folder. The "proof" tests show the payload is real
(plain PyTorch runs it, in a child process); the refusal tests show edgeconv runs nothing (exit 2, no marker).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from converter.errors import ModelLoadError
from converter.sources.pt2_guard import check_pt2

MISSING = [m for m in ("torch", "litert_torch") if importlib.util.find_spec(m) is None]
if MISSING and os.environ.get("EDGECONV_REQUIRE_TORCH") != "1":
    pytest.skip(f"{', '.join(MISSING)} not installed: pip install -e '.[convert,test,torch]'", allow_module_level=True)

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this runs ``touch <marker>`` (os.system), as a hostile file would run anything."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def clean_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    path = tmp_path_factory.mktemp("pt2") / "clean.pt2"
    torch.export.save(torch.export.export(model, (torch.ones(1, 4),)), str(path))
    return path


def _rewrite(
    src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None], add: dict[str, bytes] | None = None
) -> Path:
    """A copy of ``src`` with members changed by ``edit`` (name without the root folder, bytes) and ``add``ed."""
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
        root = archive.namelist()[0].split("/", 1)[0] + "/"
        for info in archive.infolist():
            data = edit(info.filename[len(root) :], archive.read(info))
            if data is not None:
                out.writestr(info.filename, data)
        for name, data in (add or {}).items():
            out.writestr(root + name, data)
    return dst


def _program_edit(change: Callable[[dict[str, Any]], None]) -> Callable[[str, bytes], bytes]:
    def edit(name: str, data: bytes) -> bytes:
        if name != "models/model.json":
            return data
        program = json.loads(data)
        change(program)
        return json.dumps(program).encode()

    return edit


def _pickled_inputs(marker: Path) -> Callable[[str, bytes], bytes]:
    def edit(name: str, data: bytes) -> bytes:
        if name != "data/sample_inputs/model.pt":
            return data
        buffer = io.BytesIO()
        torch.save(_Payload(marker), buffer)
        return buffer.getvalue()

    return edit


def _guard_code(marker: Path) -> Callable[[str, bytes], bytes]:
    return _program_edit(lambda p: p.__setitem__("guards_code", [f"__import__('os').system('touch {marker}') == 0"]))


def _plain_torch(path: Path) -> subprocess.CompletedProcess[str]:
    """What PyTorch alone does with the file: load it, build the module, run it once."""
    code = (
        "import torch, sys\n"
        "ep = torch.export.load(sys.argv[1])\n"
        "m = ep.module()\n"
        "m(*ep.example_inputs[0]) if isinstance(ep.example_inputs, tuple) else None\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)


def _edgeconv(tmp_path: Path, model: Path) -> subprocess.CompletedProcess[str]:
    import numpy as np

    np.save(tmp_path / "cal.npy", np.ones((4, 4), np.float32))
    recipe = {"version": 1, "name": "hostile", "model": str(model), "data": {"calibration": {"path": "cal.npy"}}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return subprocess.run(
        [sys.executable, "-m", "converter", "convert", "--recipe", str(tmp_path / "recipe.yaml"), "--out",
         str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


@pytest.mark.full  # proves the attack files are real; the refusals run in the default tier
@pytest.mark.parametrize("attack", ["pickled_sample_inputs", "guards_code"])
def test_the_payload_is_real_plain_torch_runs_it(attack: str, clean_pt2: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    edit = _pickled_inputs(marker) if attack == "pickled_sample_inputs" else _guard_code(marker)
    hostile = _rewrite(clean_pt2, tmp_path / "hostile.pt2", edit)
    _plain_torch(hostile)
    assert marker.exists(), "the crafted archive no longer runs code in plain PyTorch: update this test's payload"


@pytest.mark.parametrize("attack", ["pickled_sample_inputs", "guards_code"])
def test_edgeconv_refuses_and_runs_nothing(attack: str, clean_pt2: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    edit = _pickled_inputs(marker) if attack == "pickled_sample_inputs" else _guard_code(marker)
    hostile = _rewrite(clean_pt2, tmp_path / "hostile.pt2", edit)
    done = _edgeconv(tmp_path, hostile)
    assert done.returncode == 2, done.stderr[-2000:]
    assert not marker.exists()
    expected = "are not plain tensors" if attack == "pickled_sample_inputs" else "is not a comparison of input sizes"
    assert expected in done.stderr
    assert "torch.export.save" in done.stderr  # says how to make a file edgeconv takes


def _set_target(program: dict[str, Any]) -> None:
    program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"


def _add_expression(program: dict[str, Any]) -> None:
    program["graph_module"]["graph"]["sym_int_values"] = {"x": {"as_expr": {"expr_str": "__import__('os').getpid()"}}}


def _add_srepr_expression(program: dict[str, Any]) -> None:
    """A payload inside srepr's form, the form torch.export.save writes for a dynamic size (which passes)."""
    payload = "Add(Symbol('s0', positive=True, integer=True), Symbol('s1').__class__.__init__.__globals__)"
    program["graph_module"]["graph"]["sym_int_values"] = {"x": {"as_expr": {"expr_str": payload}}}


def _pickle_weight(name: str, data: bytes) -> bytes:
    if not name.endswith("_weights_config.json"):
        return data
    config = json.loads(data)
    next(iter(config["config"].values()))["use_pickle"] = True
    return json.dumps(config).encode()


@pytest.mark.parametrize(
    ("edit", "add", "message"),
    [
        (_program_edit(_set_target), None, "the graph calls 'torch.os.system', which is not an ATen operator"),
        (_program_edit(_add_expression), None, "the shape expression \"__import__('os').getpid()\""),
        (_program_edit(_add_srepr_expression), None, "the shape expression \"Add(Symbol('s0', positive=True"),
        (_pickle_weight, None, "is stored as a pickled Python object"),
        (lambda n, d: d, {"data/aotinductor/model/model.so": b"\x7fELF"}, "holds an AOTInductor package"),
        (lambda n, d: None if n == "archive_version" else d, None, "archive format 'pt2' version ''"),
        (lambda n, d: d, {"data/weights/model.pt": b"x"}, "stores its weights in the legacy pickled form"),
    ],
    ids=[
        "node_target",
        "sympy_expression",
        "srepr_expression",
        "pickled_weight",
        "aotinductor",
        "legacy_layout",
        "legacy_weights",
    ],
)
def test_guard_refuses_before_torch_reads(
    edit: Callable[[str, bytes], bytes | None], add: dict[str, bytes] | None, message: str, clean_pt2: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    hostile = _rewrite(clean_pt2, tmp_path / "hostile.pt2", edit, add)
    with pytest.raises(ModelLoadError) as caught:
        check_pt2(hostile)
    assert message in str(caught.value)
    assert str(hostile) in str(caught.value)


def test_clean_archive_passes_the_guard(clean_pt2: Path, tmp_path: Path) -> None:
    check_pt2(clean_pt2)
    # A copy rewritten member by member (as the hostile ones are) still passes: the refusals above are the edits.
    check_pt2(_rewrite(clean_pt2, tmp_path / "copy.pt2", lambda n, d: d))


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_pickled_module_file_is_refused(suffix: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    model = tmp_path / f"net{suffix}"
    torch.save(_Payload(marker), model)
    done = _edgeconv(tmp_path, model)
    assert done.returncode == 2, done.stderr[-2000:]
    assert not marker.exists()
    assert f"a '{suffix}' file is a pickle (torch.save) or TorchScript archive" in done.stderr
    assert "edgeconv never loads it" in done.stderr and "set model: model.pt2" in done.stderr


# --- What is checked is what is loaded: torch's reader finds members without regard to case ---------------------


def _with_twin(clean: Path, dst: Path, original: str, twin: str, data: bytes, extra: dict[str, bytes]) -> Path:
    """A copy of ``clean`` with ``twin`` (a case variant of ``original``) placed where torch's reader finds it.

    Which of two names equal but for case torch's reader returns depends on where its binary search over
    the sorted directory lands, so the twin is tried before, after and at the end, as an attacker would.
    """
    with zipfile.ZipFile(clean) as archive:
        root = archive.namelist()[0].split("/", 1)[0] + "/"
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    for place in ("before", "after", "end"):
        with zipfile.ZipFile(dst, "w") as out:
            for name, payload in members:
                if name == root + original and place == "before":
                    out.writestr(root + twin, data)
                out.writestr(name, payload)
                if name == root + original and place == "after":
                    out.writestr(root + twin, data)
            if place == "end":
                out.writestr(root + twin, data)
            for name, payload in extra.items():
                out.writestr(root + name, payload)
        if torch._C.PyTorchFileReader(str(dst)).get_record(original) == data:  # noqa: SLF001
            return dst
    raise AssertionError("torch's reader never read the twin: update this test's archive")


def _pickled(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(_Payload(marker), buffer)
    return buffer.getvalue()


def _twin_config(marker: Path) -> Callable[[Path, Path], Path]:
    """Keep the checked weights config and add a case twin that makes torch unpickle a payload."""

    def build(clean: Path, dst: Path) -> Path:
        original = "data/weights/model_weights_config.json"
        with zipfile.ZipFile(clean) as archive:
            config = json.loads(archive.read(archive.namelist()[0].split("/", 1)[0] + "/" + original))
        for meta in config["config"].values():
            meta["use_pickle"], meta["path_name"] = True, "pickled"
        twin = json.dumps(config).encode()
        extra = {"data/weights/pickled": _pickled(marker)}
        return _with_twin(clean, dst, original, "data/weights/model_weights_config.JSON", twin, extra)

    return build


def _twin_sample_inputs(marker: Path) -> Callable[[Path, Path], Path]:
    """A case twin of the example inputs that fails weights_only=True, so torch retries with weights_only=False."""

    def build(clean: Path, dst: Path) -> Path:
        original = "data/sample_inputs/model.pt"
        return _with_twin(clean, dst, original, "data/sample_inputs/model.PT", _pickled(marker), {})

    return build


TWINS = {"config_twin": _twin_config, "sample_inputs_twin": _twin_sample_inputs}


@pytest.mark.full  # proves the attack files are real; the refusals run in the default tier
@pytest.mark.parametrize("attack", sorted(TWINS))
def test_case_twins_run_code_in_plain_torch(attack: str, clean_pt2: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hostile = TWINS[attack](marker)(clean_pt2, tmp_path / "hostile.pt2")
    _plain_torch(hostile)
    assert marker.exists(), "torch no longer reads the case twin: update this test's payload"


@pytest.mark.parametrize("attack", sorted(TWINS))
def test_case_twins_are_refused_naming_both_members(attack: str, clean_pt2: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hostile = TWINS[attack](marker)(clean_pt2, tmp_path / "hostile.pt2")
    done = _edgeconv(tmp_path, hostile)
    assert done.returncode == 2, done.stderr[-2000:]
    assert not marker.exists()
    twin = "model_weights_config.JSON" if attack == "config_twin" else "data/sample_inputs/model.PT"
    assert twin in done.stderr and "without regard to case" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("attack", sorted(TWINS))
def test_torch_side_check_refuses_on_its_own(attack: str, clean_pt2: Path, tmp_path: Path) -> None:
    """The worker's second check, through torch's own reader, refuses even if the first were bypassed."""
    from converter.sources.torch_worker import _check_as_torch_reads

    marker = tmp_path / "ran"
    hostile = TWINS[attack](marker)(clean_pt2, tmp_path / "hostile.pt2")
    with pytest.raises(ModelLoadError, match="without regard to case"):
        _check_as_torch_reads(hostile)
    assert not marker.exists()
    _check_as_torch_reads(clean_pt2)  # the clean archive passes the same check


def _with_members(clean: Path, dst: Path, members: list[tuple[str, bytes]], *, root: str | None = None) -> Path:
    """A copy of ``clean`` with raw member names appended (not under the root unless given so)."""
    with zipfile.ZipFile(clean) as archive, zipfile.ZipFile(dst, "w") as out:
        if root is not None:
            out.writestr(root + "version", b"3")
        for info in archive.infolist():
            out.writestr(info.filename, archive.read(info))
        for name, data in members:
            out.writestr(name, data)
    return dst


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("clean/data/weights/../../../etc/x", b"1")], "is not a plain relative path"),
        ([("/abs/clean/x", b"1")], "is an absolute path"),
        ([("clean/models/other.json", b"{}")], "holds members that torch.export.save does not write"),
        ([("clean/models/model.JSON", b"{}")], "without regard to case"),
        ([("clean/archive_format", b"pt2")], "twice"),
        ([("elsewhere/version", b"3")], "is outside the archive's root folder"),
        ([("clean/extra/x\x01y", b"1")], "has non-ASCII or control characters"),
    ],
    ids=["traversal", "absolute", "unknown_member", "model_json_twin", "duplicate", "outside_root", "control_char"],
)
def test_archive_names_are_refused(
    members: list[tuple[str, bytes]], message: str, clean_pt2: Path, tmp_path: Path
) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it writes
        hostile = _with_members(clean_pt2, tmp_path / "hostile.pt2", members)
    with pytest.raises(ModelLoadError) as caught:
        check_pt2(hostile)
    assert message in str(caught.value)
    assert str(hostile) in str(caught.value) and "torch.export.save" in str(caught.value)


def test_a_root_folder_other_than_the_first_members_is_refused(clean_pt2: Path, tmp_path: Path) -> None:
    """torch takes the first member's folder as the root; an archive led by another folder is refused."""
    hostile = _with_members(clean_pt2, tmp_path / "hostile.pt2", [], root="decoy/")  # decoy/version first
    with pytest.raises(ModelLoadError, match="outside the archive's root folder 'decoy/'"):
        check_pt2(hostile)


def test_payload_sizes_beyond_the_stored_bytes_are_refused(clean_pt2: Path, tmp_path: Path) -> None:
    """An empty member becomes torch.zeros(sizes): sizes a file declares must fit the bytes it stores."""

    def grow(name: str, data: bytes) -> bytes:
        if not name.endswith("_weights_config.json"):
            return data
        config = json.loads(data)
        next(iter(config["config"].values()))["tensor_meta"]["sizes"] = [{"as_int": 1 << 20}, {"as_int": 1 << 20}]
        return json.dumps(config).encode()

    hostile = _rewrite(clean_pt2, tmp_path / "hostile.pt2", grow)
    with pytest.raises(ModelLoadError, match=r"describes a tensor of [0-9,]+ bytes stored in data/weights/weight_0"):
        check_pt2(hostile)


_BOMB_CHECK = """
import sys
from pathlib import Path
from converter.errors import ModelLoadError
from converter.sources.pt2_guard import check_pt2
try:
    check_pt2(Path(sys.argv[1]))
    print("accepted")
except ModelLoadError as e:
    print("refused", e)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("peak_mb", int(hwm.split()[1]) / 1024)  # this process's own peak (ru_maxrss would carry pytest's over exec)
"""


def test_a_zip_bomb_is_refused_from_its_directory(clean_pt2: Path, tmp_path: Path) -> None:
    """A 1 GiB member stored in about 1 MB is refused before a byte of it is inflated."""
    hostile = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(clean_pt2) as archive, zipfile.ZipFile(hostile, "w") as out:
        for info in archive.infolist():
            if info.filename.endswith("models/model.json"):
                bomb = zipfile.ZipInfo(info.filename)
                bomb.compress_type = zipfile.ZIP_DEFLATED
                with out.open(bomb, "w", force_zip64=True) as member:
                    chunk = b" " * (1 << 20)
                    for _ in range(1024):
                        member.write(chunk)
            else:
                out.writestr(info.filename, archive.read(info))
    assert hostile.stat().st_size < 2 << 20
    done = subprocess.run(
        [sys.executable, "-c", _BOMB_CHECK, str(hostile)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused" in done.stdout and "a zip bomb" in done.stdout, done.stdout
    peak = float(done.stdout.split("peak_mb")[1])
    assert peak < 200, f"the guard peaked at {peak:.0f} MB on a 1 GiB member"
