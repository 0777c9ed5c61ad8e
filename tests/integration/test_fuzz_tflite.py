"""Seeded mutations of small float .tflite files thrown at ``edgeconv convert``: exit 0, 1 or 2, never a traceback.

Two sources: ``add_one_float.tflite`` and the same with a RESHAPE appended (``test_tflite_hostile.reshape_model``).
Each case mutates one of them by a seeded ``random.Random``: bytes set to 0, 0xff, 0x7f, 0x80, a random value or
one bit flipped; a truncation; a chunk copied over another place; bytes inserted or deleted; or one field of
the flatbuffer changed through the object API (a shape, type, buffer, name, operand, options type, opcode...),
which reaches past LiteRT's flatbuffer verifier into what the kernels and TensorFlow's quantizer read.

What must hold for every case: the exit code is 0, 1 or 2; no traceback and no "unexpected failure" (exit 3
from a Python exception); exit 2 names the recipe and the model file (or the data, for a model whose inputs
changed); nothing outside the case's output folder changes (the inputs, the cache, the working folder: no
marker file anywhere). A native crash of LiteRT or TensorFlow (a signal: ``tests/data/segv_on_open.tflite``
is one) is not a Python traceback and is reported by design (the supervisor, ``converter/supervise.py``) as
exit 3 naming the signal and the step: such a case is rerun through the real ``edgeconv`` entry point, may
give only that as exit 3, and is counted apart.

The cases run in-process (click's ``CliRunner``) in one worker process, so TensorFlow is imported once: about
0.2 s a case instead of seconds. A case that kills the worker is run again alone through the entry point (a
memory error in native code need not repeat: the rerun may also end normally), and the worker is restarted
after it. Counts per exit code are printed (``pytest -s``).
"""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT
from tests.integration.test_tflite_hostile import ADD_ONE, reshape_model

# The cases are the same on every run; set these to search further (e.g. EDGECONV_FUZZ_CASES=1000).
CASES = int(os.environ.get("EDGECONV_FUZZ_CASES", "60"))
SEED = int(os.environ.get("EDGECONV_FUZZ_SEED", "20240611"))
TIMEOUT_S = 900
pytestmark = pytest.mark.full  # the fuzzers run in the full tier


def _field(rng: random.Random, data: bytes) -> bytes:
    """One field of subgraph 0 (or a buffer, an opcode) set to an odd value through the object API."""
    from converter.tflite import flatbuffer_schema as tflite_schema

    model = tflite_schema.load(data)
    subgraph = model.subgraphs[0]
    tensor, op = rng.choice(subgraph.tensors), rng.choice(subgraph.operators)
    n = len(subgraph.tensors)
    what = rng.choice(["shape", "signature", "type", "buffer", "name", "inputs", "outputs", "options", "data", "io"])
    if what == "shape":
        tensor.shape = [rng.choice([0, -1, 1, 2, 3, 7, 2**31 - 1]) for _ in range(rng.randint(0, 4))]
    elif what == "signature":
        tensor.shapeSignature = [rng.choice([-1, 1, 2, 5]) for _ in range(rng.randint(0, 3))]
    elif what == "type":
        tensor.type = rng.randrange(0, 20)
    elif what == "buffer":
        tensor.buffer = rng.randrange(0, len(model.buffers) + 2)
    elif what == "name":
        tensor.name = bytes(rng.randrange(256) for _ in range(rng.randint(0, 6)))
    elif what == "inputs":
        op.inputs = [rng.randrange(-1, n + 1) for _ in range(rng.randint(0, 3))]
    elif what == "outputs":
        op.outputs = [rng.randrange(-1, n + 1) for _ in range(rng.randint(0, 2))]
    elif what == "options":
        op.builtinOptionsType = rng.randrange(0, 130)
    elif what == "data":
        size = rng.choice([0, 1, 3, 4, 8, 16])
        rng.choice(model.buffers).data = np.frombuffer(bytes(rng.randrange(256) for _ in range(size)), np.uint8)
    else:
        subgraph.inputs = [rng.randrange(0, n) for _ in range(rng.randint(0, 2))]
    return bytes(tflite_schema.dump(model))


def mutate(seed: int, source: bytes) -> tuple[str, bytes]:
    """The seed's mutation of ``source``: (kind, bytes)."""
    rng = random.Random(seed)
    data = bytearray(source)
    kind = rng.choice(["bytes", "bytes", "truncate", "splice", "insert/delete", "field", "field", "field"])
    if kind == "field":
        return kind, _field(rng, source)
    if kind == "bytes":
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            flip = data[at] ^ (1 << rng.randrange(8))
            data[at] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256), flip])
    elif kind == "truncate":
        del data[rng.randrange(8, len(data)) :]
    elif kind == "splice":
        start, length, to = rng.randrange(len(data)), rng.randint(1, 32), rng.randrange(len(data))
        chunk = data[start : start + length]
        data[to : to + len(chunk)] = chunk
    else:
        at = rng.randrange(8, len(data))
        if rng.random() < 0.5:
            del data[at : at + rng.randint(1, 8)]
        else:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return kind, bytes(data)


def _worker(cases_file: str, start: int, results_file: str) -> None:
    """Run the cases from ``start`` in this process, one JSON line before and after each (see the module doc)."""
    from click.testing import CliRunner

    from converter.cli.main import main

    cases = json.loads(Path(cases_file).read_text())
    for i in range(start, len(cases)):
        with open(results_file, "a", encoding="utf-8") as f:  # noqa: PTH123 - one line at a time, flushed
            f.write(json.dumps({"case": i, "started": True}) + "\n")
        result = CliRunner().invoke(main, ["convert", "--recipe", cases[i]["recipe"], "--out", cases[i]["out"]])
        line = {"case": i, "code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr}
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            line["exception"] = repr(result.exception)
        with open(results_file, "a", encoding="utf-8") as f:  # noqa: PTH123
            f.write(json.dumps(line) + "\n")


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def _env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "EDGECONV_CACHE_DIR": str(work / "cache"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def _crash_rerun(case: dict[str, Any], work: Path) -> dict[str, Any]:
    """A case that killed the worker, run alone as users run it: the supervised ``edgeconv`` entry point."""
    done = subprocess.run(
        [sys.executable, "-m", "converter", "convert", "--recipe", case["recipe"], "--out", case["out"]],
        cwd=work,
        env=_env(work),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    return {"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr, "rerun": True}


def test_mutated_tflite_sources_never_crash_edgeconv(tmp_path: Path) -> None:
    inputs, outs, work = tmp_path / "in", tmp_path / "outs", tmp_path
    inputs.mkdir()
    outs.mkdir()
    sources = [ADD_ONE.read_bytes(), reshape_model()]
    np.savez(inputs / "cal.npz", x=np.random.default_rng(0).uniform(0, 1, (8, 2)).astype(np.float32))
    cases = []
    for i in range(CASES):
        kind, data = mutate(SEED + i, sources[i % len(sources)])
        model = inputs / f"m{i}.tflite"
        model.write_bytes(data)
        recipe = {
            "version": 1,
            "name": f"fuzz{i}",
            "model": str(model),
            "data": {"calibration": {"path": str(inputs / "cal.npz"), "samples": 8}},
            "calibration": {"cache": False},  # nothing written outside the output folder, no case sees another's
            "benchmark": {"warmup": 0, "runs": 1, "min_seconds": 0.0},
        }
        (inputs / f"r{i}.yaml").write_text(yaml.safe_dump(recipe))
        cases.append({"recipe": str(inputs / f"r{i}.yaml"), "out": str(outs / f"out{i}"), "kind": kind})
    cases_file, results_file, log_file = work / "cases.json", work / "results.jsonl", work / "worker.log"
    cases_file.write_text(json.dumps(cases))
    results_file.touch()
    log_file.touch()  # native output of the in-process runs, for a failing test
    before = _snapshot(inputs)
    top_before = sorted(p.name for p in work.iterdir())

    results: dict[int, dict[str, Any]] = {}
    start = 0
    with log_file.open("a") as log:
        while start < CASES:
            worker = subprocess.run(
                [sys.executable, "-c", "import sys; from tests.integration.test_fuzz_tflite import _worker; "
                 "_worker(sys.argv[1], int(sys.argv[2]), sys.argv[3])", str(cases_file), str(start),
                 str(results_file)],
                cwd=work, env=_env(work), stdout=log, stderr=log, timeout=TIMEOUT_S, check=False,
            )  # fmt: skip
            lines = [json.loads(line) for line in results_file.read_text().splitlines()]
            results.update({line["case"]: line for line in lines if "code" in line})
            if worker.returncode == 0:
                break
            crashed = max(line["case"] for line in lines if line.get("started"))
            assert worker.returncode < 0, f"the worker failed without a signal (exit {worker.returncode})"
            results[crashed] = _crash_rerun(cases[crashed], work)
            start = crashed + 1

    counts: collections.Counter[str] = collections.Counter()
    for i, case in enumerate(cases):
        r = results[i]
        where = f"case {i} ({case['kind']}, {inputs / f'm{i}.tflite'}): exit {r['code']}: {r['stderr'][-2000:]}"
        output = r["stdout"] + r["stderr"]
        assert "Traceback" not in output and "unexpected failure" not in output, where
        assert "exception" not in r, where
        last = (r["stderr"].strip().splitlines() or [""])[-1]
        out = Path(case["out"])
        if r.get("rerun"):
            counts["worker killed by a signal (rerun alone)"] += 1
        if r["code"] == 3:
            # Exit 3 only as the supervisor reports a native crash: by its signal, in a named step. Memory errors
            # in native code need not repeat, so the rerun may also end like any other case.
            assert r.get("rerun"), where
            assert last.startswith("error: edgeconv convert crashed (SIG") and " during step " in last, where
            assert not out.exists(), where
            counts["3 (native crash)"] += 1
            continue
        assert r["code"] in (0, 1, 2), where
        if r["code"] == 2:
            # The recipe and the key: the model file, or the data that no longer fits the mutated model's inputs.
            assert last.startswith(f"error: {case['recipe']}: "), where
            assert f"model: {inputs / f'm{i}.tflite'}: " in last or "data.calibration.path: " in last, where
            assert not out.exists(), where
        else:
            assert (out / "report.json").is_file(), where
        counts[str(r["code"])] += 1

    crashed = {i for i, r in results.items() if r["code"] == 3}  # their staging folder and lock wait for a rerun
    leftovers = {f".out{i}.edgeconv-{end}" for i in crashed for end in ("lock", "new")}
    published = {f"out{i}" for i, r in results.items() if r["code"] in (0, 1)}
    assert {p.name for p in outs.iterdir()} <= published | leftovers  # only the cases' own output folders
    assert _snapshot(inputs) == before  # models, recipes and data untouched
    assert not (work / "cache").exists() or not any((work / "cache").rglob("*"))
    assert sorted(p.name for p in work.iterdir()) == top_before  # no marker or stray file beside them
    print(f"\nfuzzed .tflite sources, {CASES} cases, by exit code: {dict(sorted(counts.items()))}")
    # Not degenerate: some mutations keep a valid model, and most are refused.
    assert counts["0"] >= 1 and counts["2"] >= CASES // 2, counts
