"""The GitHub Action (action.yml): it and the example workflows that use it pass GitHub's schemas (check-jsonschema's
built-in copies, offline), no expression is pasted into a shell script, its convert command uses only options
``edgeconv convert`` has, and its convert script, run by bash against a stand-in edgeconv, passes every input as
one argument and reports what the run wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
ACTION = ROOT / "action.yml"
EXAMPLES = ROOT / "examples" / "ci"
USES_ACTION = re.compile(r"^[\w.-]+/edgeconv@[\w.-]+$")  # how the examples name this action
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}", re.DOTALL)


def _action() -> dict[str, Any]:
    return dict(yaml.safe_load(ACTION.read_text()))


def _steps() -> list[dict[str, Any]]:
    return list(_action()["runs"]["steps"])


def _convert_script() -> str:
    return str(next(s for s in _steps() if s.get("id") == "convert")["run"])


def _workflow_steps(name: str) -> list[dict[str, Any]]:
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    return [step for job in doc["jobs"].values() for step in job.get("steps") or []]


def _validate(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


# --- the schemas, offline ------------------------------------------------------------------------------------


def test_action_passes_the_actions_schema(tmp_path: Path) -> None:
    result = _validate("vendor.github-actions", ACTION)
    assert (result.returncode, result.stdout.strip()) == (0, "ok -- validation done"), result.stdout + result.stderr
    # the validator does validate: a composite run step without its shell fails it
    doc = _action()
    doc["runs"]["steps"][1].pop("shell")
    broken = tmp_path / "action.yml"
    broken.write_text(yaml.safe_dump(doc))
    assert _validate("vendor.github-actions", broken).returncode == 1


@pytest.mark.parametrize("name", ["github-actions.yml", "github-matrix.yml"])
def test_example_workflows_pass_the_workflow_schema(name: str) -> None:
    result = _validate("vendor.github-workflows", EXAMPLES / name)
    assert (result.returncode, result.stdout.strip()) == (0, "ok -- validation done"), result.stdout + result.stderr


@pytest.mark.parametrize("name", ["github-actions.yml", "github-matrix.yml"])
def test_examples_use_the_action_with_its_inputs(name: str) -> None:
    inputs = _action()["inputs"]
    uses = [s for s in _workflow_steps(name) if USES_ACTION.match(str(s.get("uses", "")))]
    assert uses, f"{name} does not use the action"
    for step in uses:
        given = set(step.get("with") or {})
        assert given <= set(inputs), f"{name}: not inputs of action.yml: {sorted(given - set(inputs))}"
        required = {k for k, v in inputs.items() if v.get("required")}
        assert required <= given, f"{name}: required inputs missing: {sorted(required - given)}"


# --- no script injection -------------------------------------------------------------------------------------


def test_no_expression_inside_a_run_script() -> None:
    """Inputs (and every other expression) reach the scripts through env:, never through the script text."""
    scripts = [("action.yml", s["run"]) for s in _steps() if "run" in s]
    for name in ("github-actions.yml", "github-matrix.yml"):
        scripts += [(name, s["run"]) for s in _workflow_steps(name) if "run" in s]
    assert len(scripts) >= 3
    for where, script in scripts:
        assert "${{ inputs." not in script, f"{where}: an input pasted into a script:\n{script}"
        assert not EXPRESSION.search(script), f"{where}: an expression pasted into a script:\n{script}"
    for step in _steps():
        if "run" in step:
            assert step.get("shell") == "bash", step.get("name")


def test_every_expression_names_a_declared_input_or_step() -> None:
    action = _action()
    ids = {s["id"] for s in action["runs"]["steps"] if "id" in s}
    text = ACTION.read_text()
    expressions = EXPRESSION.findall(text)
    assert expressions
    for expression in expressions:
        for name in re.findall(r"\binputs\.([\w-]+)", expression):
            assert name in action["inputs"], expression
        for step in re.findall(r"\bsteps\.([\w-]+)\.", expression):
            assert step in ids, expression
    # every input is used, and only in with:, env: and if: (the injection test covers run:)
    for name in action["inputs"]:
        assert f"inputs.{name} " in text or f"inputs.{name}\n" in text, f"input {name} is never used"


# --- the convert command line --------------------------------------------------------------------------------


def _convert_help() -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "converter", "convert", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_convert_uses_only_options_convert_has() -> None:
    script = _convert_script()
    assert re.search(r"\bedgeconv convert\b", script)
    used = set(OPTION.findall(script))
    known = set(OPTION.findall(_convert_help()))
    assert {"--recipe", "--out", "--set", "--baseline"} <= used
    assert used <= known, f"options convert --help does not list: {sorted(used - known)}"


# --- the convert script against a stand-in edgeconv ----------------------------------------------------------

FAKE = """\
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"argv": args, "summary": os.environ.get("GITHUB_STEP_SUMMARY")}) + "\\n")
opts, recipes, i = {}, [], 1
while i < len(args):
    if args[i].startswith("--"):
        opts.setdefault(args[i], []).append(args[i + 1])
        i += 2
    else:
        recipes.append(args[i])
        i += 1
single = "--recipe" in opts
for recipe in opts.get("--recipe", recipes):
    stem = Path(recipe).stem.replace(" ", "_").lstrip("-")
    out = Path(opts["--out"][0]) if single and "--out" in opts else Path(opts.get("--out", ["build"])[0]) / stem
    if os.environ.get("FAKE_WRITE", "1") == "1" and Path(recipe).is_file():
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text("{}")
        (out / "report.md").write_text("# " + stem)
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""

INPUTS = {"RECIPE": "", "OUT": "", "SET": "", "BASELINE": "", "GATE": "true", "SUMMARY": "true", "ARTIFACT_NAME": ""}


def _outputs(text: str) -> dict[str, str]:
    found, lines = {}, text.split("\n")
    i = 0
    while i < len(lines) and lines[i]:
        name, end = lines[i].split("<<", 1)
        j = lines.index(end, i + 1)
        found[name] = "\n".join(lines[i + 1 : j])
        i = j + 1
    return found


class Run:
    """What one run of the convert script did: its exit code, stdout, outputs and the calls of edgeconv."""

    def __init__(self, result: subprocess.CompletedProcess[str], outputs: dict[str, str], calls: list[Any]) -> None:
        self.code, self.stdout, self.outputs, self.calls = result.returncode, result.stdout, outputs, calls

    @property
    def argv(self) -> list[str]:
        assert len(self.calls) == 1, self.calls
        return list(self.calls[0]["argv"])


class ConvertStep:
    """The action's convert script, run by bash in ``work`` with a stand-in edgeconv first on PATH."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp, self.work = tmp_path, tmp_path / "work"
        self.bin, self.temp = tmp_path / "bin", tmp_path / "runner-temp"
        for folder in (self.bin, self.work / "recipes", self.temp):
            folder.mkdir(parents=True)
        fake = self.bin / "edgeconv"
        fake.write_text(f"#!{sys.executable}\n{FAKE}")
        fake.chmod(0o755)
        (self.bin / "python").symlink_to(sys.executable)
        self.script = tmp_path / "convert.sh"
        self.script.write_text(_convert_script())

    def __call__(self, fake_exit: int = 0, write: bool = True, **inputs: str) -> Run:
        output, log = self.tmp / "github-output", self.tmp / "calls.jsonl"
        for f in (output, log):
            f.write_text("")
        env = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(self.tmp),
            "GITHUB_OUTPUT": str(output),
            "GITHUB_STEP_SUMMARY": str(self.tmp / "summary.md"),
            "RUNNER_TEMP": str(self.temp),
            "FAKE_LOG": str(log),
            "FAKE_EXIT": str(fake_exit),
            "FAKE_WRITE": "1" if write else "0",
            **INPUTS,
            **inputs,
        }
        result = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(self.script)],  # as GitHub runs shell: bash
            cwd=self.work,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        return Run(result, _outputs(output.read_text()), calls)


@pytest.fixture
def run_convert(tmp_path: Path) -> ConvertStep:
    if not shutil.which("bash"):
        pytest.skip("no bash here: the action's scripts are bash")
    return ConvertStep(tmp_path)


def test_one_recipe_with_edgeconvs_default_folder(run_convert: ConvertStep) -> None:
    (run_convert.work / "recipes" / "mobilenet.yaml").write_text("")
    done = run_convert(RECIPE="recipes/mobilenet.yaml\n")
    assert done.code == 0, done.stdout
    assert done.argv == ["convert", "--recipe", "recipes/mobilenet.yaml"]
    assert done.calls[0]["summary"]  # edgeconv appends report.md to the job summary itself
    assert done.outputs == {
        "exit-code": "0",
        "out": "build/mobilenet",
        "report": "build/mobilenet/report.md",
        "reports": '["build/mobilenet/report.json"]',
        "artifact-name": "edgeconv-mobilenet",
    }


def test_options_and_overrides_are_one_argument_each(run_convert: ConvertStep) -> None:
    (run_convert.work / "recipes" / "tiny.yaml").write_text("")
    done = run_convert(
        RECIPE="recipes/tiny.yaml",
        OUT="build/tiny-tflm",
        SET='targets=[{"device":"stm32h7","budgets":{"arena_bytes":1000}}]\n  calibration.samples=50  \n\n',
        BASELINE="main report/report.json",
        ARTIFACT_NAME="tiny-tflm",
    )
    assert done.code == 0, done.stdout
    assert done.argv == [
        "convert",
        "--out",
        "build/tiny-tflm",
        "--set",
        'targets=[{"device":"stm32h7","budgets":{"arena_bytes":1000}}]',
        "--set",
        "calibration.samples=50",
        "--baseline",
        "main report/report.json",
        "--recipe",
        "recipes/tiny.yaml",
    ]
    assert done.outputs["out"] == "build/tiny-tflm"
    assert done.outputs["report"] == "build/tiny-tflm/report.md"
    assert done.outputs["artifact-name"] == "tiny-tflm"


def test_a_glob_of_recipes_expands_without_word_splitting_or_injection(run_convert: ConvertStep) -> None:
    recipes = run_convert.work / "recipes"
    for name in ("a.yaml", "b c.yaml", "$(touch pwned).yaml", "-x.yaml"):
        (recipes / name).write_text("")
    done = run_convert(RECIPE="recipes/*.yaml\nrecipes/none-*.yaml")
    assert done.code == 0, done.stdout
    assert done.argv == [
        "convert",
        "recipes/$(touch pwned).yaml",
        "recipes/-x.yaml",
        "recipes/a.yaml",
        "recipes/b c.yaml",
        "recipes/none-*.yaml",  # matches nothing: edgeconv says it is not found
    ]
    assert not list(run_convert.work.rglob("pwned"))
    assert done.outputs["out"] == "build"
    assert done.outputs["report"] == ""  # several recipes: see reports
    assert len(json.loads(done.outputs["reports"])) == 4
    assert done.outputs["artifact-name"] == "edgeconv"


@pytest.mark.parametrize("value", ['x"; touch pwned; echo "', "$(touch pwned)", "`touch pwned`", "-h"])
def test_hostile_values_reach_edgeconv_as_written(run_convert: ConvertStep, value: str) -> None:
    done = run_convert(RECIPE=value, OUT=value, SET=value, BASELINE=value, write=False, fake_exit=2)
    assert done.code == 2
    recipe = "./" + value if value.startswith("-") else value
    assert done.argv == ["convert", "--out", value, "--set", value, "--baseline", value, "--recipe", recipe]
    assert not list(run_convert.work.rglob("pwned"))
    assert done.outputs["exit-code"] == "2"


@pytest.mark.parametrize(
    ("gate", "edgeconv_exit", "step_exit"),
    [("true", 0, 0), ("true", 1, 1), ("false", 1, 0), ("false", 2, 2), ("false", 3, 3), ("true", 3, 3)],
)
def test_gate_decides_whether_a_failed_budget_fails_the_step(
    run_convert: ConvertStep, gate: str, edgeconv_exit: int, step_exit: int
) -> None:
    (run_convert.work / "recipes" / "tiny.yaml").write_text("")
    done = run_convert(RECIPE="recipes/tiny.yaml", GATE=gate, fake_exit=edgeconv_exit)
    assert done.code == step_exit, done.stdout
    assert done.outputs["exit-code"] == str(edgeconv_exit)
    assert ("::warning" in done.stdout) == (gate == "false" and edgeconv_exit == 1)


def test_bad_switches_and_no_recipe_are_refused_before_converting(run_convert: ConvertStep) -> None:
    inputs: list[dict[str, str]] = [{"RECIPE": "r.yaml", "GATE": "yes"}, {"RECIPE": "r.yaml", "SUMMARY": "1"}]
    inputs.append({"RECIPE": " \n "})
    for given in inputs:
        done = run_convert(fake_exit=0, write=True, **given)
        assert done.code == 2
        assert done.calls == []
        assert done.outputs == {"exit-code": "2"}
        assert done.stdout.startswith("::error title=edgeconv::")


def test_summary_false_keeps_edgeconv_off_the_job_summary(run_convert: ConvertStep) -> None:
    (run_convert.work / "recipes" / "tiny.yaml").write_text("")
    done = run_convert(RECIPE="recipes/tiny.yaml", SUMMARY="false")
    assert done.code == 0
    assert done.calls[0]["summary"] is None


def test_nothing_written_means_nothing_to_upload(run_convert: ConvertStep) -> None:
    (run_convert.work / "recipes" / "tiny.yaml").write_text("")
    done = run_convert(RECIPE="recipes/tiny.yaml", write=False, fake_exit=3)
    assert done.code == 3
    assert done.outputs == {"exit-code": "3", "out": "", "report": "", "reports": "[]", "artifact-name": "edgeconv"}
    # an older run's report is not this run's
    old = run_convert.work / "build" / "tiny"
    old.mkdir(parents=True)
    (old / "report.json").write_text("{}")
    done = run_convert(RECIPE="recipes/tiny.yaml", write=False, fake_exit=3)
    assert (done.outputs["out"], done.outputs["reports"]) == ("", "[]")
