"""Seeded mutation fuzzing of the PyTorch (.pt2) and ONNX sources through ``edgeconv convert``.

Each case mutates a clean model in one of the ways a crafted file would (member names and case twins,
declared sizes, JSON configs and pickled payloads for .pt2; external-data entries, initializers, shapes,
custom domains and raw bytes for .onnx) and runs the real ``convert``. Whatever the mutation, the run ends
with exit 0, 1 or 2 (never 3, never a traceback), no payload runs (its marker file never appears) and no
file outside the output folder changes. The seeds are fixed, so a failure reproduces; the counts per exit
code are printed (``-s``) for the record.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import random
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from converter.cli.main import main

CASES = 16  # per source: about a minute each on 2 cores (most cases are refused before any conversion)
pytestmark = pytest.mark.full  # the fuzzers run in the full tier


class _Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _snapshot(folder: Path, out: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file under ``folder`` except the output folder and its staging/lock siblings."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink() and not p.name.startswith(f".{out.name}.") and out not in p.parents
    }


def _convert(work: Path, model: Path) -> tuple[int, str]:
    """``edgeconv convert`` on ``model`` with four calibration rows of shape [4]; exit code and output."""
    np.save(work / "cal.npy", np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4))
    recipe = {"version": 1, "name": "fuzz", "model": str(model), "data": {"calibration": {"path": "cal.npy"}}}
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["convert", "--recipe", str(work / "recipe.yaml"), "--out", str(work / "out")])
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    return (-1 if crashed else result.exit_code), result.output + (repr(result.exception) if crashed else "")


def _fuzz(tmp_path: Path, name: str, mutate: Callable[[random.Random, Path, Path], Path], seeds: range) -> Counter[int]:
    counts: Counter[int] = Counter()
    for seed in seeds:
        work = tmp_path / f"{name}-{seed}"
        work.mkdir()
        marker = work / "ran"
        model = mutate(random.Random(seed), work, marker)
        out = work / "out"
        before = _snapshot(work, out)
        code, output = _convert(work, model)
        counts[code] += 1
        where = f"{name} seed {seed}: exit {code}\n{output[-1500:]}"
        assert code in (0, 1, 2), where
        assert "Traceback" not in output, where
        assert not marker.exists(), f"{where}\nthe payload ran"
        after = _snapshot(work, out)
        changed = sorted(k for k in before if after.get(k) != before[k] and not k.endswith(("cal.npy", "recipe.yaml")))
        assert not changed and set(after) <= set(before) | {str(work / "cal.npy"), str(work / "recipe.yaml")}, where
    print(f"\n{name}: {CASES} cases, exit codes {dict(sorted(counts.items()))}")
    return counts


# --- .pt2 -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_pt2(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    missing = [m for m in ("torch", "litert_torch") if importlib.util.find_spec(m) is None]
    if missing and os.environ.get("EDGECONV_REQUIRE_TORCH") != "1":
        pytest.skip(f"{', '.join(missing)} not installed")
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    path = tmp_path_factory.mktemp("pt2") / "clean.pt2"
    torch.export.save(torch.export.export(model, (torch.ones(1, 4),)), str(path))
    return path.read_bytes()


def _members(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _swap_case(rng: random.Random, name: str) -> str:
    head, tail = name.rsplit("/", 1)
    flipped = "".join(c.swapcase() if c.isalpha() and rng.random() < 0.5 else c for c in tail)
    return f"{head}/{flipped if flipped != tail else tail.upper()}"


def _pickled(marker: Path) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(_Payload(marker), buffer)
    return buffer.getvalue()


def _mutate_json(rng: random.Random, text: bytes, marker: Path) -> bytes:
    """Change one field of a config or program: pickling, file names, sizes, dtypes, node targets."""
    document = json.loads(text)
    entries = document.get("config") if isinstance(document, dict) else None
    if isinstance(entries, dict) and entries:
        meta = entries[rng.choice(sorted(entries))]
        field = rng.choice(["use_pickle", "path_name", "sizes", "dtype", "storage_offset"])
        if field == "use_pickle":
            meta["use_pickle"] = True
        elif field == "path_name":
            meta["path_name"] = rng.choice(["../../x", "weight_99", "opaque_0", "WEIGHT_0", ""])
        elif field == "sizes":
            meta["tensor_meta"]["sizes"] = [{"as_int": rng.choice([0, 7, 1 << 31, -1])}]
        elif field == "dtype":
            meta["tensor_meta"]["dtype"] = rng.choice([0, 8, 99, "x"])
        else:
            meta["tensor_meta"]["storage_offset"] = {"as_int": rng.choice([1, 1 << 40])}
    elif isinstance(document, dict) and "graph_module" in document:
        nodes = document["graph_module"]["graph"]["nodes"]
        if rng.random() < 0.5 and nodes:
            nodes[0]["target"] = rng.choice(["torch.os.system", "builtins.eval", "torch.ops.aten.mm.default"])
        else:
            document["guards_code"] = [f"__import__('os').system('touch {marker}') == 0"]
    return json.dumps(document).encode()


def _mutate_pt2(clean: bytes) -> Callable[[random.Random, Path, Path], Path]:
    def mutate(rng: random.Random, work: Path, marker: Path) -> Path:
        members = _members(clean)
        root = members[0][0].split("/", 1)[0] + "/"
        kind = rng.choice(["twin", "rename", "duplicate", "traversal", "unknown", "json", "pickle", "drop", "bytes"])
        index = rng.randrange(len(members))
        name, data = members[index]
        if kind == "twin":
            members.insert(rng.choice([index, index + 1, len(members)]), (_swap_case(rng, name), _pickled(marker)))
        elif kind == "rename":
            members[index] = (_swap_case(rng, name), data)
        elif kind == "duplicate":
            members.append((name, _pickled(marker)))
        elif kind == "traversal":
            members.append((rng.choice([f"{root}../evil", "/etc/evil", f"{root}a//b", "other/x"]), b"x"))
        elif kind == "unknown":
            members.append((root + rng.choice(["models/extra.json", "data/x.bin", "code/__init__.py"]), b"{}"))
        elif kind in ("json", "pickle"):
            jsons = [i for i, (n, _) in enumerate(members) if n.endswith(".json")]
            index = rng.choice(jsons)
            name, data = members[index]
            if kind == "json":
                members[index] = (name, _mutate_json(rng, data, marker))
            else:
                sample = next(i for i, (n, _) in enumerate(members) if n.endswith("sample_inputs/model.pt"))
                members[sample] = (members[sample][0], _pickled(marker))
        elif kind == "drop":
            del members[index]
        path = work / "model.pt2"
        with zipfile.ZipFile(path, "w") as out:
            for member, payload in members:
                out.writestr(member, payload)
        if kind == "bytes":  # raw damage anywhere in the file, directory included
            raw = bytearray(path.read_bytes())
            for _ in range(rng.randint(1, 8)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            path.write_bytes(bytes(raw[: rng.choice([len(raw), rng.randrange(len(raw))])]))
        return path

    return mutate


def test_fuzz_pt2(clean_pt2: bytes, tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile's "Duplicate name" while writing the duplicates
        counts = _fuzz(tmp_path, "pt2", _mutate_pt2(clean_pt2), range(1000, 1000 + CASES))
    assert counts[2] >= CASES // 2  # most mutations are refused as the user's file


# --- .onnx ----------------------------------------------------------------------------------------------------


def _onnx_model(rng: random.Random, work: Path, marker: Path) -> Path:
    """x [1, 4] + w -> relu -> y with ``w`` in ``w.bin``, then one mutation."""
    import onnx
    from onnx import TensorProto, helper

    (work / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (work / "secret").write_bytes(b"root:x:0:0:" + b"\0" * 5)
    (work / "link.bin").symlink_to(work / "secret")
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    entries = [("location", "w.bin"), ("offset", "0"), ("length", "16")]
    nodes = [helper.make_node("Add", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])]
    kind = rng.choice(["entry", "location", "dims", "data", "shape", "bomb", "domain", "bytes", "none"])
    if kind == "entry":
        entries.insert(rng.randrange(4), (rng.choice(["location", "offset", "length", "basepath"]), "link.bin"))
    elif kind == "location":
        entries[0] = ("location", rng.choice(["/etc/passwd", "../secret", "link.bin", "w.bin/", "", "nothere"]))
    elif kind == "dims":
        weight.dims[:] = [rng.choice([0, 3, 8, 1 << 40])]
    elif kind == "data":
        entries[rng.choice([1, 2])] = (rng.choice(["offset", "length"]), str(rng.choice([3, 17, 2**62, 2**64])))
    elif kind == "shape":
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rng.choice([1, 0, 5]), rng.choice([4, 1, 9])])]
    elif kind == "bomb":
        size = helper.make_tensor("size", TensorProto.INT64, [2], [1 << rng.randint(14, 20), 1 << rng.randint(14, 20)])
        fill = helper.make_tensor("v", TensorProto.FLOAT, [1], [0])
        nodes[1:1] = [
            helper.make_node("Constant", [], ["size"], value=size),
            helper.make_node("ConstantOfShape", ["size"], ["big"], value=fill),
            helper.make_node("ReduceMax", ["big"], ["m"], keepdims=0),
        ]
        nodes[-1] = helper.make_node("Add", ["a", "m"], ["r"])
        nodes.append(helper.make_node("Relu", ["r"], ["y"]))
    elif kind == "domain":
        nodes[1] = helper.make_node("Relu", ["a"], ["y"], domain=rng.choice(["com.example", "ai.onnx.contrib"]))
    for key, value in entries:
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight]
    )
    opsets = [
        helper.make_opsetid("", 17),
        helper.make_opsetid("com.example", 1),
        helper.make_opsetid("ai.onnx.contrib", 1),
    ]
    path = work / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=8), str(path))
    if kind == "bytes":
        raw = bytearray(path.read_bytes())
        for _ in range(rng.randint(1, 6)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        path.write_bytes(bytes(raw))
    return path


def test_fuzz_onnx(onnx_env: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    counts = _fuzz(tmp_path, "onnx", _onnx_model, range(2000, 2000 + CASES))
    assert counts[2] >= CASES // 2
