"""The CI matrix: ``edgeconv matrix`` plans one job per recipe x target group, each job's command converts,
``edgeconv report merge`` turns the jobs' reports into one summary, and the example workflows pass the
real GitHub and GitLab schemas (check-jsonschema's built-in copies, offline).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from converter.reports.render import ms_text
from tests.conftest import ROOT, tiny_recipe

CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
KEY = re.compile(r"^edgeconv-(?P<name>[a-z]+)-(?P<group>[a-z-]+)-[0-9a-f]{32}$")


def _edgeconv(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}  # only where a test sets it
    full.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-m", "converter", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )


def _zoo(folder: Path, model_dir: Path) -> Path:
    """recipes/ with two recipes: tiny (host, and stm32h7 with an arena budget it misses) and small (host)."""
    recipes = folder / "recipes"
    recipes.mkdir()
    shutil.copy(model_dir / "tiny.keras", recipes / "tiny.keras")
    tiny = tiny_recipe(
        model_dir, targets=["host", {"device": "stm32h7", "budgets": {"arena_bytes": 1000}}], analysis={"samples": 0}
    )
    tiny["model"] = "tiny.keras"  # relative to the recipe: its bytes are the copy's
    (recipes / "tiny.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    small = tiny_recipe(model_dir, name="small", analysis={"samples": 0})
    small["data"]["calibration"]["samples"] = 50
    (recipes / "small.yaml").write_text(yaml.safe_dump(small, sort_keys=False))
    return recipes


def _plan(cwd: Path, *args: str) -> list[dict[str, Any]]:
    result = _edgeconv(["matrix", "recipes/", *args], cwd)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1  # one line: what $GITHUB_OUTPUT takes
    doc = json.loads(result.stdout)
    assert list(doc) == ["include"]
    return list(doc["include"])


@pytest.fixture(scope="module")
def zoo(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("repo")
    _zoo(cwd, tiny_model_dir)
    return cwd


def test_matrix_lists_one_job_per_recipe_and_target_group(zoo: Path) -> None:
    jobs = _plan(zoo)
    keys = [j.pop("cache_key") for j in jobs]
    assert jobs == [
        {
            "job": "small-litert",
            "name": "small",
            "recipe": "recipes/small.yaml",
            "group": "litert",
            "targets": "host",
            "set": 'targets=["host"]',
            "out": "build/small-litert",
            "cache_restore": "edgeconv-small-litert-",
            "extras": "convert",
            "setup": "",
            "ssh": False,
            "command": "edgeconv convert --recipe recipes/small.yaml --out build/small-litert --set "
            "'targets=[\"host\"]'",
        },
        {
            "job": "tiny-litert",
            "name": "tiny",
            "recipe": "recipes/tiny.yaml",
            "group": "litert",
            "targets": "host",
            "set": 'targets=["host"]',
            "out": "build/tiny-litert",
            "cache_restore": "edgeconv-tiny-litert-",
            "extras": "convert",
            "setup": "",
            "ssh": False,
            "command": "edgeconv convert --recipe recipes/tiny.yaml --out build/tiny-litert --set 'targets=[\"host\"]'",
        },
        {
            "job": "tiny-tflm",
            "name": "tiny",
            "recipe": "recipes/tiny.yaml",
            "group": "tflm",
            "targets": "stm32h7",
            "set": 'targets=[{"device":"stm32h7","budgets":{"arena_bytes":1000}}]',
            "out": "build/tiny-tflm",
            "cache_restore": "edgeconv-tiny-tflm-",
            "extras": "convert",
            "setup": "",
            "ssh": False,
            "command": "edgeconv convert --recipe recipes/tiny.yaml --out build/tiny-tflm --set "
            '\'targets=[{"device":"stm32h7","budgets":{"arena_bytes":1000}}]\'',
        },
    ]
    for job, key in zip(jobs, keys, strict=True):
        match = KEY.match(key)
        assert match and (match["name"], match["group"]) == (job["name"], job["group"]), key
    assert len(set(keys)) == 3
    # --targets narrows, by device or by runtime; an SSH board is a group of its own
    assert [j["job"] for j in _plan(zoo, "--targets", "tflm")] == ["tiny-tflm"]
    assert [j["job"] for j in _plan(zoo, "--targets", "host")] == ["small-litert", "tiny-litert"]


def test_cache_key_is_stable_and_follows_the_model_bytes(zoo: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    before = {j["job"]: j["cache_key"] for j in _plan(zoo)}
    assert {j["job"]: j["cache_key"] for j in _plan(zoo)} == before  # a second run: the same keys
    recipes = _zoo(tmp_path, tiny_model_dir)
    assert {j["job"]: j["cache_key"] for j in _plan(tmp_path)} == before  # same content elsewhere: same keys
    tiny = recipes / "tiny.yaml"
    tiny.write_text("# a comment changes no conversion\n" + tiny.read_text())
    assert {j["job"]: j["cache_key"] for j in _plan(tmp_path)} == before
    with (recipes / "tiny.keras").open("ab") as f:
        f.write(b"\0")  # other model bytes
    after = {j["job"]: j["cache_key"] for j in _plan(tmp_path)}
    assert after["small-litert"] == before["small-litert"]  # its model is another file
    for job in ("tiny-litert", "tiny-tflm"):
        assert after[job] != before[job]
        assert after[job].startswith(f"edgeconv-{job}-")  # the restore prefix still finds the old entry


def test_matrix_bad_input_is_exit_2_with_the_reason(zoo: Path, tmp_path: Path) -> None:
    result = _edgeconv(["matrix"], zoo)
    assert (result.returncode, result.stderr) == (
        2,
        "error: no recipes given: name recipe files or folders, e.g. edgeconv matrix recipes/\n",
    )
    result = _edgeconv(["matrix", "recipes/", "--targets", "host,stm32h8"], zoo)
    assert result.returncode == 2
    assert result.stderr.startswith(
        "error: --targets stm32h8: unknown target (did you mean 'stm32h7'?); give device profiles from "
    ), result.stderr
    result = _edgeconv(["matrix", "recipes/", "--targets", "esp32-s3"], zoo)
    assert (result.returncode, result.stderr) == (
        2,
        "error: no job: none of the recipes lists any of --targets esp32-s3; name targets the recipes list, "
        "or leave --targets out for all of them\n",
    )
    (tmp_path / "empty").mkdir()
    result = _edgeconv(["matrix", str(tmp_path / "empty")], zoo)
    assert result.returncode == 2
    assert "a folder with no recipe (*.yaml, *.yml) in it" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text((zoo / "recipes" / "small.yaml").read_text().replace("calibration:", "calibrashun:", 1))
    result = _edgeconv(["matrix", str(bad)], zoo)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {bad}: "), result.stderr
    assert "calibrashun" in result.stderr
    assert result.stdout == ""


def test_matrix_does_not_import_tensorflow(zoo: Path) -> None:
    code = (
        "import sys\nfrom converter.cli.main import main\n"
        "try:\n    main(['matrix', 'recipes/'])\nexcept SystemExit as e:\n    code = e.code\n"
        "print(code, 'tensorflow' in sys.modules, 'keras' in sys.modules, file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=zoo, env=env, capture_output=True, text=True, check=False, timeout=300
    )
    assert result.stderr.strip().splitlines()[-1] == "0 False False", result.stderr


# --- each entry converts, and the reports merge ---------------------------------------------------------


@pytest.fixture(scope="module")
def built(zoo: Path) -> Path:
    """Every matrix entry's own command run as printed; then tiny-litert checked against small-litert."""
    codes = {}
    for job in _plan(zoo):
        argv = shlex.split(job["command"])
        assert argv[0] == "edgeconv"
        codes[job["job"]] = _edgeconv(argv[1:], zoo).returncode
    assert codes == {"small-litert": 0, "tiny-litert": 0, "tiny-tflm": 1}  # stm32h7's arena budget fails
    check = _edgeconv(
        ["check", "--report", "build/tiny-litert/report.json", "--baseline", "build/small-litert/report.json"], zoo
    )
    assert check.returncode == 0, check.stderr
    return zoo / "build"


def _report(build: Path, job: str) -> dict[str, Any]:
    return dict(json.loads((build / job / "report.json").read_text()))


def test_each_entry_converts_only_its_group(built: Path) -> None:
    assert list(_report(built, "tiny-litert")["targets"]) == ["host"]
    assert list(_report(built, "tiny-tflm")["targets"]) == ["stm32h7"]
    failed = [(g["name"], g["target"]) for g in _report(built, "tiny-tflm")["gates"] if g["status"] == "failed"]
    assert failed == [("arena_bytes", "stm32h7")]


def _row(report: dict[str, Any], job: str, target: str, latency: str, gates: str, baseline: str) -> str:
    acc = report["accuracy"]
    accuracy = f"top-1 {100 * acc['int8']:.2f}%, drop {100 * acc['drop']:.2f} points"
    if not (report["targets"][target].get("accuracy")):
        accuracy += " (host)"
    size = f"{report['artifacts']['int8']['bytes']:,}"
    name = report["recipe"]["name"]
    return f"| {name} | {job} | {target} | {size} | {accuracy} | {latency} | {gates} | {baseline} |"


def test_report_merge_summary_junit_index_and_step_summary(built: Path) -> None:
    summary_file = built.parent / "step-summary.md"
    summary_file.write_text("previous step\n")
    reports = sorted(str(p.relative_to(built.parent)) for p in built.glob("*/report.json"))
    assert reports == ["build/small-litert/report.json", "build/tiny-litert/report.json", "build/tiny-tflm/report.json"]
    result = _edgeconv(
        ["report", "merge", *reports, "--out", "build"], built.parent, GITHUB_STEP_SUMMARY=str(summary_file)
    )
    assert result.returncode == 1, result.stderr  # tiny-tflm's gate failed
    md = (built / "summary.md").read_text()
    assert result.stdout == md + "\n"
    assert summary_file.read_text() == "previous step\n" + md + "\n"

    small, tiny, tflm = (_report(built, j) for j in ("small-litert", "tiny-litert", "tiny-tflm"))
    arena = next(g for g in tflm["gates"] if g["name"] == "arena_bytes")
    deltas = {d["figure"]: d for d in tiny["baseline"]["deltas"]}
    size = deltas["int8 model bytes"]
    change = f"bytes {size['delta']:+,.0f} ({size['delta_pct']:+.2f}%)"
    if deltas["int8 top-1"]["delta"] is not None:
        change += f"; top-1 {100 * deltas['int8 top-1']['delta']:+.2f} points"
    change += f"; p50 {deltas['host int8 p50 ms']['delta_pct']:+.1f}%"
    estimate = tflm["targets"]["stm32h7"]["cost"]["latency_estimate"]["latency_ms"]
    assert md.splitlines() == [
        "## edgeconv: 3 reports, 3 targets — **failed** (1 gate failed)",
        "",
        "| recipe | job | target | int8 bytes | accuracy | latency p50 | gates | vs baseline |",
        "|---|---|---|---|---|---|---|---|",
        _row(
            small,
            "small-litert",
            "host",
            ms_text(small["latency"]["host"]["int8"]["p50_ms"]),
            "✅ 1 passed, 0 skipped",
            "—",
        ),  # fmt: skip
        _row(
            tiny,
            "tiny-litert",
            "host",
            ms_text(tiny["latency"]["host"]["int8"]["p50_ms"]),
            "✅ 1 passed, 0 skipped",
            change,
        ),  # fmt: skip
        _row(
            tflm,
            "tiny-tflm",
            "stm32h7",
            f"{ms_text(estimate)} (estimate)",
            "❌ 1 failed (arena_bytes), 1 passed, 0 skipped",
            "—",
        ),  # fmt: skip
        "",
        "### Failed gates",
        "",
        f"- tiny-tflm: arena_bytes [stm32h7]: failed: {arena['value']:,.0f} B exceeds 1,000 B "
        "(budget 1,000 bytes, recipe target)",
    ]

    root = ET.parse(built / "junit.xml").getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("skipped"), root.get("errors")) == ("4", "1", "0", "0")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == [
        "edgeconv gates: small (small-litert)",
        "edgeconv gates: tiny (tiny-litert)",
        "edgeconv gates: tiny (tiny-tflm)",
    ]
    failures = [c.get("name") for c in root.iter("testcase") if c.find("failure") is not None]
    assert failures == ["arena_bytes [stm32h7]"]

    page = (built / "index.html").read_text()
    links = re.findall(r'<a href="([^"]+)">([^<]+)</a>', page)
    assert links == [
        ("small-litert/report.html", "small-litert"),
        ("tiny-litert/report.html", "tiny-litert"),
        ("tiny-tflm/report.html", "tiny-tflm"),
    ]
    assert all((built / href).is_file() for href, _ in links)
    assert page.count('<tr class="failed">') == 1


def test_report_merge_with_the_matrix_lists_a_job_without_report(built: Path, tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    for job in ("small-litert", "tiny-tflm"):  # tiny-litert "failed before writing"
        shutil.copytree(built / job, tmp_path / "build" / job)
    matrix = _edgeconv(["matrix", "recipes/"], built.parent).stdout
    (tmp_path / "matrix.json").write_text(matrix)
    result = _edgeconv(["report", "merge", "--matrix", "matrix.json"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "error: --matrix matrix.json: 1 job(s) wrote no report: build/tiny-litert/report.json; their jobs failed "
        "before converting (see their logs); the summary lists them"
    )
    md = (tmp_path / "build" / "summary.md").read_text()
    assert md.splitlines()[0] == (
        "## edgeconv: 2 reports, 2 targets — **incomplete** (1 job wrote no report), 1 gate failed"
    )
    assert "- build/tiny-litert/report.json: not found (the job failed before writing it; see its log)" in md
    root = ET.parse(tmp_path / "build" / "junit.xml").getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "1")  # 1 + 2 gates, 1 missing


def test_report_merge_bad_reports_are_exit_2_naming_file_and_key(built: Path, tmp_path: Path) -> None:
    result = _edgeconv(["report", "merge", "build/nothing/report.json"], built.parent)
    assert (result.returncode, result.stderr.splitlines()[-1]) == (
        2,
        "error: build/nothing/report.json: no such report; give the report.json files the jobs wrote, "
        "e.g. build/*/report.json",
    )
    doc = _report(built, "small-litert")
    del doc["gates"]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "report.json").write_text(json.dumps(doc))
    result = _edgeconv(["report", "merge", "a/report.json", "--out", "merged"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: a/report.json: gates: missing; this is not a report.json"), result.stderr
    doc = _report(built, "tiny-tflm")
    doc["passed"] = True
    (tmp_path / "a" / "report.json").write_text(json.dumps(doc))
    result = _edgeconv(["report", "merge", "a/report.json", "--out", "merged"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(
        "error: a/report.json: passed: is True but its gates say False (was the file edited?)"
    ), result.stderr
    assert not (tmp_path / "merged").exists()  # nothing written for bad input


def test_report_merge_escapes_what_reports_carry(built: Path, tmp_path: Path) -> None:
    doc = _report(built, "tiny-tflm")
    gate = next(g for g in doc["gates"] if g["name"] == "compatible")
    gate.update(status="failed", passed=False, reason="a|b <script>alert(1)</script>")
    job = tmp_path / "build" / "x<y"
    job.mkdir(parents=True)
    (job / "report.json").write_text(json.dumps(doc))
    result = _edgeconv(["report", "merge", "build/x<y/report.json"], tmp_path)
    assert result.returncode == 1, result.stderr
    md = (tmp_path / "build" / "summary.md").read_text()
    assert "compatible [stm32h7]: failed (a\\|b &lt;script&gt;alert(1)&lt;/script&gt;)" in md
    assert "<script>" not in md
    page = (tmp_path / "build" / "index.html").read_text()
    assert "<script>" not in page
    assert '<a href="x%3Cy/report.json">x&lt;y</a>' in page  # no report.html beside it: the JSON


# --- the workflows, against the real schemas, offline -------------------------------------------------------


def _validate(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("schema", "name"),
    [
        ("vendor.github-workflows", "github-matrix.yml"),
        ("vendor.github-workflows", "github-actions.yml"),
        ("vendor.gitlab-ci", "gitlab-ci.yml"),
    ],
)
def test_example_workflows_pass_their_schemas(schema: str, name: str, tmp_path: Path) -> None:
    path = ROOT / "examples" / "ci" / name
    result = _validate(schema, path)
    assert (result.returncode, result.stdout.strip()) == (0, "ok -- validation done"), result.stdout + result.stderr
    # the validator does validate: the same file with a job that has no steps/script fails it
    doc = yaml.safe_load(path.read_text())
    first = next(k for k in (doc.get("jobs") or doc) if not str(k).startswith(".") and k != "stages")
    jobs = doc.get("jobs") or doc
    jobs[first] = {"stage": 3} if schema == "vendor.gitlab-ci" else {"runs-on": "ubuntu-latest", "steps": 3}
    broken = tmp_path / name
    broken.write_text(yaml.safe_dump(doc))
    assert _validate(schema, broken).returncode == 1


def test_generated_gitlab_child_pipeline_passes_the_schema(zoo: Path, tmp_path: Path) -> None:
    result = _edgeconv(["matrix", "recipes/", "--format", "gitlab"], zoo)
    assert result.returncode == 0, result.stderr
    child = tmp_path / "edgeconv-jobs.yml"
    child.write_text(result.stdout)
    checked = _validate("vendor.gitlab-ci", child)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    doc = yaml.safe_load(result.stdout)
    assert [k for k in doc if not k.startswith(".")] == [
        "stages",
        "default",
        "variables",
        "small-litert",
        "tiny-litert",
        "tiny-tflm",
        "edgeconv-report",
    ]
    github = {j["job"]: j for j in _plan(zoo)}
    tflm = doc["tiny-tflm"]
    assert tflm["cache"]["key"] == github["tiny-tflm"]["cache_key"]
    assert tflm["variables"]["EDGECONV_TARGETS"] == github["tiny-tflm"]["set"]
    assert tflm["artifacts"]["reports"]["junit"] == "build/tiny-tflm/junit.xml"
    assert doc["edgeconv-report"]["script"][1:] == [
        "mkdir -p build",
        "edgeconv matrix recipes --out build > build/matrix.json",
        "edgeconv report merge --matrix build/matrix.json --out build",
    ]
