"""The CI job matrix: one job per recipe x target group, for GitHub Actions and GitLab CI to fan out.

A *target group* is the set of a recipe's targets that share a device runtime (``devices/*.yaml``
``runtime``: litert, tflm, edgetpu, ethos-u, rknn, tensorrt), with targets reached over SSH (a ``host`` in the
recipe) in a group of their own (``litert-ssh``, ...). Why this cut:

- the runtime decides what a job has to install: tflite-micro for tflm, Arm Vela (the ``npu`` extra)
  for ethos-u, rknn-toolkit2's 2.6 GB virtualenv (``edgeconv setup rknn``) for rknn, onnx, onnxruntime and
  tf2onnx (the ``tensorrt`` extra) for tensorrt; a host-only job needs none of them, so most jobs stay cheap
  and only the jobs that need a toolchain pay for it;
- the runtime decides how the model may be quantized: the pipeline keeps ops float only where every
  target runs LiteRT on a CPU, so a LiteRT job never has to give that up for an MCU it does not test,
  and an integer-only job is the same conversion whichever board of its runtime it checks;
- an SSH target needs a runner that can reach the board (a self-hosted runner in the lab); keeping
  those in their own jobs lets the others run on hosted runners.

Each job is ``edgeconv convert --recipe R --out O --set targets=[...]`` (the group's target entries as
the recipe writes them, as JSON, which the ``--set`` YAML parser reads as a list), writes into
``<out>/<recipe name>-<group>`` and restores ``EDGECONV_CACHE_DIR`` under a content-addressed key:
a hash of the effective recipe (after the ``--set``), the bytes of the model and data files, the
group's device profiles and the edgeconv version, so an unchanged recipe hits its cache. The caches
inside are content-addressed and checked by digest as well, so restoring an older entry of the same
recipe and group (the restore prefix) is safe: what changed is a miss, never a wrong model.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from converter import __version__
from converter.devices import available_devices, devices_dir, load_device
from converter.errors import UserInputError
from converter.recipe import Recipe, load_recipe
from converter.schema import suggest
from converter.yamlio import load_yaml_file, not_regular

RUNTIMES = ("litert", "tflm", "edgetpu", "ethos-u", "rknn", "tensorrt")  # group order in the job list
EXTRAS = {
    "ethos-u": "convert,npu",
    "tensorrt": "convert,tensorrt",
}  # pip extras a group's job installs; the rest need "convert"
SETUP = {"rknn": "rknn"}  # the `edgeconv setup` a group's job runs first
GITHUB_MAX_JOBS = 256  # GitHub refuses a matrix with more jobs than this
KEY_FORMAT = 1  # bump when what goes into the cache key changes
RECIPE_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class MatrixJob:
    """One CI job: a recipe converted for one target group."""

    job: str
    name: str
    recipe: str
    group: str
    targets: str
    set: str
    out: str
    cache_key: str
    cache_restore: str
    extras: str
    setup: str
    ssh: bool
    command: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def find_recipes(paths: Sequence[Path]) -> list[Path]:
    """Recipe files from files and folders (a folder's *.yaml/*.yml, not recursive, sorted), as given."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix in RECIPE_SUFFIXES and p.is_file())
            if not inside:
                raise UserInputError(
                    f"{path}: a folder with no recipe (*.yaml, *.yml) in it; give the folder that holds the recipes"
                )
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            problem = not_regular(path)
            if problem is None or problem == "not found":
                raise UserInputError(f"{path}: no such recipe file or folder")
            raise UserInputError(f"{path}: {problem}; give recipe files (*.yaml) or folders that hold them")
    seen: dict[Path, Path] = {}
    for p in found:
        seen.setdefault(p.resolve(), p)
    return list(seen.values())


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies below it: CI checks out to other folders."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _digest_path(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and bytes, sorted)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() + b"\0" if f != path else b"\0")
        with f.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def input_files(recipe: Recipe) -> dict[str, Path]:
    """Every file the conversion reads, by the recipe key that names it."""
    files = {"model": recipe.model, "data.calibration": recipe.data.calibration.path}
    if recipe.data.evaluation is not None:
        files["data.evaluation"] = recipe.data.evaluation.path
    if recipe.tuning.qat is not None:
        files["tuning.qat.data"] = recipe.tuning.qat.data.path
    return files


def cache_key(recipe: Recipe, group: str) -> tuple[str, str]:
    """The job's cache key and its restore prefix (same recipe name and group, any content)."""
    content = {
        "format": KEY_FORMAT,
        "edgeconv": __version__,
        "recipe": recipe.sha256,  # the effective recipe, with the group's targets
        "files": {key: _digest_path(path) for key, path in input_files(recipe).items()},
        "devices": {t.device: _digest_path(devices_dir() / f"{t.device}.yaml") for t in recipe.target_specs()},
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:32]
    prefix = f"edgeconv-{recipe.name}-{group}-"
    return prefix + digest, prefix


def _device_of(entry: Any) -> str:
    return entry if isinstance(entry, str) else str(entry.get("device"))


def _group_of(entry: Any) -> str:
    runtime = load_device(_device_of(entry)).runtime
    return f"{runtime}-ssh" if isinstance(entry, dict) and entry.get("host") else runtime


def parse_targets(values: Sequence[str]) -> set[str]:
    """``--targets``: device profiles or runtimes (a whole group), comma-separated or repeated."""
    names = {n.strip() for v in values for n in v.split(",") if n.strip()}
    known = available_devices()
    for name in sorted(names):
        if name not in known and name not in RUNTIMES:
            raise UserInputError(
                f"--targets {name}: unknown target{suggest(name, [*known, *RUNTIMES])}; give device profiles "
                f"from {devices_dir()} ({', '.join(known)}) or runtimes ({', '.join(RUNTIMES)}), e.g. --targets host"
            )
    return names


def _wanted(entry: Any, only: set[str] | None) -> bool:
    return only is None or _device_of(entry) in only or load_device(_device_of(entry)).runtime in only


def plan(paths: Sequence[Path], targets: Sequence[str] = (), out: Path = Path("build")) -> list[MatrixJob]:
    """Every job for the recipes at ``paths``, optionally only for ``targets``; bad input is exit 2."""
    if not paths:
        raise UserInputError("no recipes given: name recipe files or folders, e.g. edgeconv matrix recipes/")
    only = parse_targets(targets) if targets else None
    jobs: list[MatrixJob] = []
    names: dict[str, Path] = {}
    for path in find_recipes(paths):
        recipe = load_recipe(path)  # validates the whole recipe first: a bad one fails here, not in a job
        if recipe.name in names:
            raise UserInputError(
                f"{path} and {names[recipe.name]} are both named '{recipe.name}' and would share output folders "
                "and cache keys; give one of them another name: (the recipe's name: key)"
            )
        names[recipe.name] = path
        raw = load_yaml_file(path, "recipe")
        entries = (raw.get("targets") if isinstance(raw, dict) else None) or ["host"]
        groups: dict[str, list[Any]] = {}
        for entry in entries:
            if _wanted(entry, only):
                groups.setdefault(_group_of(entry), []).append(entry)
        for group in sorted(groups, key=lambda g: (RUNTIMES.index(g.removesuffix("-ssh")), g)):
            jobs.append(_job(path, recipe.name, group, groups[group], out))
    if not jobs:
        raise UserInputError(
            f"no job: none of the recipes lists any of --targets {','.join(targets)}; "
            "name targets the recipes list, or leave --targets out for all of them"
        )
    return jobs


def _job(path: Path, name: str, group: str, entries: list[Any], out: Path) -> MatrixJob:
    setting = "targets=" + json.dumps(entries, separators=(",", ":"), sort_keys=False)
    recipe = load_recipe(path, [setting])  # the job's own recipe: its key is what that job converts
    key, restore = cache_key(recipe, group)
    job = f"{name}-{group}"
    folder = (out / job).as_posix()
    shown = _shown(path)
    runtime = group.removesuffix("-ssh")
    command = shlex.join(["edgeconv", "convert", "--recipe", shown, "--out", folder, "--set", setting])
    return MatrixJob(
        job=job,
        name=name,
        recipe=shown,
        group=group,
        targets=", ".join(_device_of(e) for e in entries),
        set=setting,
        out=folder,
        cache_key=key,
        cache_restore=restore,
        extras=EXTRAS.get(runtime, "convert"),
        setup=SETUP.get(runtime, ""),
        ssh=group.endswith("-ssh"),
        command=command,
    )


def github_matrix(jobs: Sequence[MatrixJob]) -> str:
    """``{"include": [...]}`` on one line, for ``$GITHUB_OUTPUT`` and ``fromJSON``."""
    if len(jobs) > GITHUB_MAX_JOBS:
        raise UserInputError(
            f"{len(jobs)} jobs: GitHub Actions runs at most {GITHUB_MAX_JOBS} jobs from one matrix; split the "
            "recipes over several matrix jobs (edgeconv matrix on part of them each) or narrow with --targets"
        )
    return json.dumps({"include": [j.to_json() for j in jobs]}, separators=(",", ":"))


def _gitlab_value(text: str) -> str:
    return text.replace("$", "$$")  # GitLab expands $VAR in variables: the recipe's text stays literal


def gitlab_pipeline(jobs: Sequence[MatrixJob], regenerate: list[str], image: str = "python:3.11") -> str:
    """A child pipeline: one convert job per entry, then a report job that merges what they wrote.

    ``regenerate`` is the ``edgeconv matrix`` command line that produced it: the report job runs it again
    (same commit, same jobs) to know which reports to expect, so a job that wrote none is reported.
    """
    cache = ".edgeconv-cache"
    doc: dict[str, Any] = {
        "stages": ["convert", "report"],
        "default": {"image": image},
        "variables": {"EDGECONV_CACHE_DIR": f"$CI_PROJECT_DIR/{cache}"},
        ".edgeconv-convert": {
            "stage": "convert",
            "script": [
                'pip install -e ".[$EDGECONV_EXTRAS]"',
                'if [ -n "$EDGECONV_SETUP" ]; then edgeconv setup "$EDGECONV_SETUP"; fi',
                'edgeconv convert --recipe "$EDGECONV_RECIPE" --out "$EDGECONV_OUT" --set "$EDGECONV_TARGETS"',
            ],
        },
    }
    for j in jobs:
        job: dict[str, Any] = {
            "extends": ".edgeconv-convert",
            "variables": {
                "EDGECONV_RECIPE": _gitlab_value(j.recipe),
                "EDGECONV_OUT": _gitlab_value(j.out),
                "EDGECONV_TARGETS": _gitlab_value(j.set),
                "EDGECONV_EXTRAS": j.extras,
                "EDGECONV_SETUP": j.setup,
            },
            "cache": {"key": j.cache_key, "paths": [f"{cache}/"]},
            "artifacts": {"when": "always", "paths": [f"{j.out}/"], "reports": {"junit": f"{j.out}/junit.xml"}},
        }
        if j.ssh:
            job["tags"] = ["edgeconv-ssh"]  # a runner that can reach the boards
        doc[j.job] = job
    out = Path(jobs[0].out).parent.as_posix() if jobs else "build"
    doc["edgeconv-report"] = {
        "stage": "report",
        "when": "always",
        "script": [
            "pip install -e .",
            f"mkdir -p {out}",
            f"{shlex.join(regenerate)} > {out}/matrix.json",
            f"edgeconv report merge --matrix {out}/matrix.json --out {out}",
        ],
        "artifacts": {
            "when": "always",
            "paths": [f"{out}/summary.md", f"{out}/index.html", f"{out}/junit.xml"],
            "expose_as": "edgeconv summary",
        },
    }
    plural = "s" * (len(jobs) != 1)
    head = (
        f"# Generated by edgeconv {__version__}: {len(jobs)} convert job{plural} and a report job. Do not edit; "
        "regenerate with edgeconv matrix --format gitlab.\n"
    )
    return head + yaml.safe_dump(doc, sort_keys=False, width=1000)
