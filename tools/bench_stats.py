"""Benchmark: the calibration statistics pass against the XNNPACK forward-pass floor.

On one float model and N preprocessed calibration samples, interleaved (floor, before, after,
floor, ...) and repeated:

- ``floor``: a plain LiteRT interpreter with its default delegate (XNNPACK), the same threads
  and the same batching the new pass uses, running the samples (``floor_loop``: the loop only;
  ``floor``: with creating and resizing the interpreter, which the statistics pass also pays);
- ``before``: ``converter/stats.py`` as it was before its streaming rewrite (read from git, ``--before``);
- ``after``: today's ``converter.calibration.stats.collect``.

It also profiles where each pass spends its time (interpreter vs folding, and folding per tensor
and per step for ``before``), compares the recorded statistics field by field, and measures the
peak RSS of a fresh process running each pass on 50 and on N samples (``--memory``).

    python tools/bench_stats.py --model mobilenet224 --work /work/bench-work --out build/bench/stats.json
    python tools/bench_stats.py --model demo --samples 200 --memory

``--model``: demo, resnet8, kws, mobilenet224 (the recipes tools/bench_calibration.py uses) or a
path to a float .tflite with ``--data`` (an .npy of preprocessed samples). Timings are for this
machine at this moment; no test reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converter.calibration import stats as after  # noqa: E402
from converter.calibration.stats import BINS, CalibrationStats  # noqa: E402
from converter.runtime.interpreter import make_interpreter  # noqa: E402

BEFORE = "84113fa"  # the last commit with the statistics pass before its streaming rewrite


def before_module(rev: str) -> types.ModuleType:
    """``converter/stats.py`` at ``rev``, imported as ``converter._stats_before`` (its relative imports work)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:converter/stats.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType("converter._stats_before")
    module.__package__ = "converter"
    sys.modules[module.__name__] = module
    exec(compile(source, f"{rev}:converter/stats.py", "exec"), module.__dict__)  # noqa: S102 - our own history
    return module


def prepare(name: str, work: Path, data: Path | None) -> tuple[Path, Path]:
    """The float .tflite and the preprocessed samples (.npy) of ``name``, written once into ``work``."""
    if name.endswith(".tflite"):
        if data is None:
            raise SystemExit("--data (an .npy of preprocessed samples) is needed with a .tflite model")
        return Path(name), data
    folder = work / "stats" / name
    model, samples = folder / "float.tflite", folder / "samples.npy"
    if not (model.is_file() and samples.is_file()):
        from converter.sources.load import load_model
        from tools.realdata import samples as recipe_samples

        recipe = recipe_for(name, work)
        loaded = load_model(recipe.model)
        x, _, _ = recipe_samples(recipe, "calibration", loaded.input_shape)
        folder.mkdir(parents=True, exist_ok=True)
        model.write_bytes(loaded.float_tflite)
        np.save(samples, x)
    return model, samples


def recipe_for(name: str, work: Path) -> Any:
    """The recipe tools/bench_calibration.py uses for ``name`` (MobileNetV2-224: its model trained into ``work``)."""
    from converter.recipe import load_recipe
    from tools import realdata

    if name == "demo":
        return load_recipe(ROOT / "recipes" / "mobilenet.yaml")
    if name in realdata.REAL_PATHS:
        return load_recipe(realdata.recipe_path(name), realdata.overrides(name))
    if name != "mobilenet224":
        raise SystemExit(f"unknown model {name!r}: expected demo, resnet8, kws, mobilenet224 or a .tflite")
    model = work / "mobilenet_v2_224.keras"
    if not model.is_file():
        raise SystemExit(
            f"{model} is missing: tools/bench_calibration.py trains it (or tools/train_demo.py --size 224)"
        )
    data = ROOT / "recipes" / "data"
    recipe = work / "stats" / "mobilenet224.yaml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(
        "version: 1\nname: mobilenet224\n"
        f"model: {model}\n"
        "input: {resize: [224, 224], scale: 0.00392156862745098}\n"
        f"data:\n  calibration: {{path: {data / 'digits.npz'}, samples: 200}}\n"
        f"  evaluation: {{path: {data / 'digits_test.npz'}}}\n"
    )
    return load_recipe(recipe)


def take(x: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` samples, repeating the set when it has fewer."""
    return x[:n] if n <= len(x) else np.concatenate([x] * (n // len(x) + 1))[:n]


def floor(model: bytes, x: np.ndarray, batch: int, threads: int) -> tuple[float, float]:
    """(seconds with creating the interpreters, seconds of the loop alone) for a plain XNNPACK pass."""
    start = time.perf_counter()
    single = make_interpreter(model_content=model, num_threads=threads)
    index = single.get_input_details()[0]["index"]
    batched = None
    if batch > 1:
        batched = make_interpreter(model_content=model, num_threads=threads)
        batched.resize_tensor_input(index, [batch, *x.shape[1:]], strict=False)
        batched.allocate_tensors()
    loop = time.perf_counter()
    n_batched = (len(x) // batch) * batch if batched is not None else 0
    for i in range(0, n_batched, batch):
        batched.set_tensor(index, x[i : i + batch])  # type: ignore[union-attr]
        batched.invoke()  # type: ignore[union-attr]
    for i in range(n_batched, len(x)):
        single.set_tensor(index, x[i : i + 1])
        single.invoke()
    end = time.perf_counter()
    return end - start, end - loop


@contextmanager
def patched(owner: Any, name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, wrap(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def timer(into: dict[str, float], key: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                into[key] += time.perf_counter() - start

        return timed

    return wrap


def profile_before(module: types.ModuleType, model: bytes, x: np.ndarray) -> dict[str, Any]:
    """Where the old pass spends its time: running the model vs folding, per tensor and per step.

    The old ``TensorStats.update`` is replaced by a copy that does the same numpy calls, timed step
    by step (finite check, min/max, histogram binning); the subsample gather is timed in ``fold_into``.
    """
    parts: dict[str, float] = defaultdict(float)
    per_tensor: dict[str, float] = defaultdict(float)
    sizes: dict[str, int] = {}
    original_update = module.TensorStats.update

    def update(self: Any, values: np.ndarray, sample: np.ndarray) -> None:
        t0 = time.perf_counter()
        finite = np.isfinite(values)
        all_finite = bool(finite.all())
        t1 = time.perf_counter()
        parts["fold: isfinite check"] += t1 - t0
        if not all_finite:
            original_update(self, values, sample)
            return
        lo, hi = float(values.min()), float(values.max())
        t2 = time.perf_counter()
        parts["fold: min/max"] += t2 - t1
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += values.size
        need = max(abs(lo), abs(hi))
        if need > 0 and self.half_range == 0.0:
            self.half_range = need
        while need > self.half_range:
            merged = self.hist.reshape(-1, 2).sum(axis=1)
            self.hist = np.zeros(BINS, dtype=np.int64)
            self.hist[BINS // 4 : 3 * BINS // 4] = merged
            self.half_range *= 2
        if self.half_range == 0.0:
            self.hist[BINS // 2] += sample.size
        else:
            pos = ((sample.astype(np.float64) + self.half_range) * (BINS / (2 * self.half_range))).astype(np.int64)
            self.hist += np.bincount(np.clip(pos, 0, BINS - 1), minlength=BINS)
        t3 = time.perf_counter()
        parts["fold: histogram"] += t3 - t2
        per_tensor[self.name] += t3 - t0
        sizes[self.name] = values.size

    def fold_into(self: Any, stats: dict[int, Any], rows: int) -> None:
        for d in self.tensors:
            t0 = time.perf_counter()
            view = self.interpreter.tensor(d["index"])().reshape(-1)
            idx = self.indices(d["index"], view.size, rows)
            sample = view if idx is None else view[idx]
            t1 = time.perf_counter()
            parts["fold: tensor view + subsample gather"] += t1 - t0
            per_tensor[d["name"]] += t1 - t0
            stats[d["index"]].update(view, sample)

    with (
        patched(module._Observer, "run", timer(parts, "interpreter: set inputs + invoke")),
        patched(module._Observer, "fold_into", lambda _: fold_into),
        patched(module.TensorStats, "update", lambda _: update),
    ):
        start = time.perf_counter()
        module.collect(model, x)
        total = time.perf_counter() - start
    return breakdown(total, parts, per_tensor, sizes)


def profile_after(model: bytes, x: np.ndarray) -> dict[str, Any]:
    """Where the new pass spends its time: running the model vs folding (all tensors at once)."""
    parts: dict[str, float] = defaultdict(float)
    with (
        patched(after._Observer, "run", timer(parts, "interpreter: set inputs + invoke")),
        patched(after._Folder, "fold", timer(parts, "fold: all tensors")),
    ):
        start = time.perf_counter()
        after.collect(model, x)
        total = time.perf_counter() - start
    return breakdown(total, parts, {}, {})


def breakdown(
    total: float, parts: dict[str, float], per_tensor: dict[str, float], sizes: dict[str, int]
) -> dict[str, Any]:
    out: dict[str, Any] = {"total_s": total, "parts_s": dict(parts)}
    out["parts_s"]["other (interpreter creation, batch check, ...)"] = total - sum(parts.values())
    if per_tensor:
        top = sorted(per_tensor.items(), key=lambda kv: -kv[1])[:10]
        out["fold_per_tensor_top10_s"] = [
            {"tensor": name, "elements_per_batch": sizes.get(name), "seconds": s} for name, s in top
        ]
        out["fold_tensors"] = len(per_tensor)
    return out


def compare(a: CalibrationStats, b: CalibrationStats) -> dict[str, Any]:
    """Field by field: how many tensors differ, by how much, and how many histogram counts moved."""
    if [t.index for t in a.tensors] != [t.index for t in b.tensors]:
        return {"same_tensors": False}
    pairs = list(zip(a.tensors, b.tensors, strict=True))
    out: dict[str, Any] = {"same_tensors": True, "tensors": len(pairs), "batch": [a.batch, b.batch]}
    for f in ("name", "op", "shape", "min", "max", "count", "nonfinite", "half_range"):
        out[f"{f}_differs"] = sum(getattr(s, f) != getattr(t, f) for s, t in pairs)
    out["hist_differs"] = sum(not np.array_equal(s.hist, t.hist) for s, t in pairs)
    rel = [
        abs(getattr(s, f) - getattr(t, f)) / max(abs(getattr(s, f)), 1e-30)
        for s, t in pairs
        for f in ("min", "max", "half_range")
        if getattr(s, f) != getattr(t, f)
    ]
    out["max_relative_difference_min_max_R"] = max(rel, default=0.0)
    out["hist_counts_total"] = int(sum(s.hist.sum() for s, _ in pairs))
    out["hist_counts_moved"] = sum(int(np.abs(s.hist - t.hist).sum()) // 2 for s, t in pairs)

    def folded(h: np.ndarray) -> np.ndarray:  # the |x| histogram entropy and mse read
        half = BINS // 2
        result: np.ndarray = h[half:] + h[:half][::-1]
        return result

    out["abs_hist_counts_moved"] = sum(int(np.abs(folded(s.hist) - folded(t.hist)).sum()) // 2 for s, t in pairs)
    out["identical"] = (
        all(out[f"{f}_differs"] == 0 for f in ("name", "op", "shape", "min", "max", "count", "nonfinite", "half_range"))
        and out["hist_differs"] == 0
        and a.batch == b.batch
    )
    return out


def summary(values: list[float]) -> dict[str, Any]:
    return {"min": min(values), "median": statistics.median(values), "runs": values}


def child(variant: str, model_path: Path, data: Path, n: int, rev: str, batch: int) -> None:
    """One pass in this (fresh) process, for the parent to read its peak RSS."""
    model = model_path.read_bytes()
    x = take(np.load(data), n)
    if variant == "before":
        before_module(rev).collect(model, x)
    elif variant == "after":
        after.collect(model, x)
    elif variant == "floor":
        floor(model, x, batch, os.cpu_count() or 1)
    # "baseline": imports, the model and the samples only


WRAPPER = (
    "import resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], check=True, stderr=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def peak_rss(variant: str, model_path: Path, data: Path, n: int, rev: str, batch: int) -> int:
    """ru_maxrss (kB) of a fresh process running ``variant`` on ``n`` samples.

    Started from a small wrapper process: Linux carries a forked parent's peak RSS into the child's
    ru_maxrss, so a child started from this (large) process would report at least our own peak.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--model", str(model_path)]
    cmd += ["--data", str(data), "--samples", str(n), "--before", rev, "--batch", str(batch)]
    out = subprocess.run(
        [sys.executable, "-c", WRAPPER, *cmd],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet224")
    parser.add_argument("--data", type=Path, help="preprocessed samples (.npy) for a .tflite --model")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--before", default=BEFORE, help="git revision of the old converter/calibration/stats.py")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--memory", action="store_true", help="also peak RSS of fresh processes, 50 vs N samples")
    parser.add_argument("--out", type=Path, default=None, help="JSON file [WORK/stats_<model>.json]")
    parser.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=("baseline", "floor", "before", "after"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.model), args.data, args.samples, args.before, args.batch)
        return

    model_path, data = prepare(args.model, args.work.resolve(), args.data)
    model = model_path.read_bytes()
    x = take(np.load(data), args.samples)
    old = before_module(args.before)

    ref = old.collect(model, x, threads=args.threads)  # also warms up both code paths
    new = after.collect(model, x, threads=args.threads)
    new_builtin = after.collect(model, x, threads=args.threads, delegate="none")
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.repeats):
        total, loop = floor(model, x, new.batch, args.threads)
        times["floor"].append(total)
        times["floor_loop"].append(loop)
        for label, run in (
            ("before", lambda: old.collect(model, x, threads=args.threads)),
            ("after", lambda: after.collect(model, x, threads=args.threads)),
        ):
            start = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - start)
    timings = {k: summary(v) for k, v in times.items()}
    result: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "model": args.model,
        "float_tflite": str(model_path),
        "samples": len(x),
        "threads": args.threads,
        "batch": {"before": ref.batch, "after": new.batch},
        "delegate_after": after.DELEGATE,
        "repeats": args.repeats,
        "timings_s": timings,
        "profile": {"before": profile_before(old, model, x), "after": profile_after(model, x)},
        "statistics": {
            "after_vs_before": compare(ref, new),
            "after_builtin_kernels_vs_before": compare(ref, new_builtin),
        },
    }
    result["ratio_to_floor"] = {
        f"{label}/{base}": {
            "min": timings[label]["min"] / timings[base]["min"],
            "median": timings[label]["median"] / timings[base]["median"],
        }
        for label in ("before", "after")
        for base in ("floor", "floor_loop")
    }
    if args.memory:
        sizes = sorted({min(50, args.samples), args.samples})
        result["peak_rss_kb"] = {
            variant: {str(n): peak_rss(variant, model_path, data, n, args.before, new.batch) for n in sizes}
            for variant in ("baseline", "floor", "before", "after")
        }
    out = args.out or args.work / f"stats_{Path(args.model).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"{args.model}: {len(x)} samples, batch {new.batch}, {args.threads} threads -> {out}"]
    for label in ("floor_loop", "floor", "before", "after"):
        t = timings[label]
        lines.append(f"  {label:10} min {t['min']:7.3f} s  median {t['median']:7.3f} s")
    for key, r in result["ratio_to_floor"].items():
        lines.append(f"  {key:20} {r['min']:.2f}x (min)  {r['median']:.2f}x (median)")
    lines.append(f"  statistics identical to before: {result['statistics']['after_vs_before']['identical']}")
    if args.memory:
        lines.append(f"  peak RSS kB: {result['peak_rss_kb']}")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
