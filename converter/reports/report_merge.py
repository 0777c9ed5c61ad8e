"""One summary of many jobs' reports: Markdown, JUnit and an index.html linking each job's report.html.

``edgeconv report merge`` reads the report.json every matrix job wrote. The verdict is each report's
own gates as its job evaluated them (with its baseline, which the merge does not have), so the merged
exit code is what the jobs' ``convert`` or ``check`` said: 0 all passed, 1 a gate failed. A report
that is not one edgeconv writes is exit 2 naming the file and key; so is a job of the matrix that
wrote no report (after the summary, which lists it, is written).
"""

from __future__ import annotations

import html
import json
import os
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from converter.errors import UserInputError
from converter.reports.gates import read_report
from converter.reports.render import drop_text, fmt, gate_line, junit, ms_text, safe_text
from converter.reports.report import REPORT_NAME

SUMMARY_NAME, JUNIT_NAME, INDEX_NAME = "summary.md", "junit.xml", "index.html"
STATUSES = ("passed", "failed", "skipped")
HEAD = ["recipe", "job", "target", "int8 bytes", "accuracy", "latency p50", "gates", "vs baseline"]


@dataclass(frozen=True)
class JobReport:
    """One job's report.json, read and checked; ``job`` is its folder's name."""

    path: Path
    report: dict[str, Any]

    @property
    def job(self) -> str:
        return self.path.parent.name

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [g for g in self.report["gates"] if g["status"] == "failed"]


@dataclass(frozen=True)
class Merged:
    """The files to write, and the verdict."""

    files: dict[str, bytes]
    failed_gates: int
    missing: list[Path]


def _bad(where: str, key: str, problem: str) -> UserInputError:
    return UserInputError(
        f"{where}: {key}: {problem}; this is not a report.json as edgeconv writes it -- merge the report.json "
        "files of edgeconv convert runs (or run convert again to regenerate this one)"
    )


def _check_gates(report: dict[str, Any], where: str) -> None:
    """The stored gates and verdict, which the merge trusts, are shaped as ``gates.Gate.to_json`` writes them."""
    gates = report.get("gates")
    if not isinstance(gates, list):
        raise _bad(where, "gates", "missing" if gates is None else f"expected a list, got {type(gates).__name__}")
    for i, g in enumerate(gates):
        at = f"gates[{i}]"
        if not isinstance(g, dict):
            raise _bad(where, at, f"expected a mapping, got {type(g).__name__}")
        for key in ("name", "target", "unit", "budget", "source"):
            if not isinstance(g.get(key), str):
                raise _bad(where, f"{at}.{key}", "missing" if key not in g else "expected a string")
        if g.get("status") not in STATUSES:
            raise _bad(where, f"{at}.status", f"expected one of {', '.join(STATUSES)}, got {g.get('status')!r}")
        for key in ("limit", "value"):
            value = g.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise _bad(where, f"{at}.{key}", "expected a number or null")
        if g.get("reason") is not None and not isinstance(g["reason"], str):
            raise _bad(where, f"{at}.reason", "expected a string or null")
    verdict = not any(g["status"] == "failed" for g in gates)
    if report.get("passed") is not verdict:
        raise _bad(where, "passed", f"is {report.get('passed')!r} but its gates say {verdict} (was the file edited?)")


def read_job_report(path: Path) -> JobReport:
    """A report.json checked as ``check`` checks it, plus the gates the merge reads."""
    where = str(path)
    if path.is_dir():
        path = path / REPORT_NAME
        where = str(path)
    if not path.is_file():
        raise UserInputError(
            f"{where}: no such report; give the report.json files the jobs wrote, e.g. build/*/report.json"
        )
    report = read_report(path, where)
    _check_gates(report, where)
    return JobReport(path, report)


def expected_reports(matrix: Path) -> list[Path]:
    """The report.json of every job in a matrix printed by ``edgeconv matrix``."""
    where = f"--matrix {matrix}"
    try:
        doc = json.loads(matrix.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserInputError(f"{where}: cannot read the JSON of edgeconv matrix: {e}") from e
    include = doc.get("include") if isinstance(doc, dict) else None
    if not isinstance(include, list):
        raise UserInputError(f'{where}: include: missing; expected the {{"include": [...]}} edgeconv matrix prints')
    paths = []
    for i, entry in enumerate(include):
        out = entry.get("out") if isinstance(entry, dict) else None
        if not isinstance(out, str) or not out:
            raise UserInputError(f"{where}: include[{i}].out: expected the job's output folder as a string")
        paths.append(Path(out) / REPORT_NAME)
    return paths


def _cell(text: str) -> str:
    """Markdown table cell: HTML escaped (GitHub renders it), pipes and line breaks made harmless."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _accuracy(report: dict[str, Any], target: str) -> str:
    own = ((report.get("targets") or {}).get(target) or {}).get("accuracy")
    acc = own or report.get("accuracy") or {}
    if not acc.get("metric"):
        return "n/a"
    where = "" if own else " (host)"
    if acc["metric"] == "top1":
        return f"top-1 {fmt(acc.get('int8'), 'fraction')}, drop {drop_text(acc.get('drop'), acc.get('unit'))}{where}"
    return f"{acc['metric']} drop {drop_text(acc.get('drop'), acc.get('unit'))}{where}"


def _latency(report: dict[str, Any], target: str) -> str:
    lat = (report.get("latency") or {}).get(target)
    if lat:
        return ms_text(lat["int8"]["p50_ms"])
    t = (report.get("targets") or {}).get(target) or {}
    estimate = t.get("latency_estimate_ms")
    if estimate is None:
        estimate = ((t.get("cost") or {}).get("latency_estimate") or {}).get("latency_ms")
    return f"{ms_text(estimate)} (estimate)" if estimate is not None else "n/a"


def _gates(gates: list[dict[str, Any]]) -> str:
    if not gates:
        return "none"
    count = {s: sum(g["status"] == s for g in gates) for s in STATUSES}
    failed = [f"{g['name']}" for g in gates if g["status"] == "failed"]
    if failed:
        return (
            f"❌ {count['failed']} failed ({', '.join(failed)}), {count['passed']} passed, {count['skipped']} skipped"
        )
    return f"✅ {count['passed']} passed, {count['skipped']} skipped"


def _baseline(report: dict[str, Any], target: str) -> str:
    base = report.get("baseline")
    if not base:
        return "—"
    parts = []
    for d in base.get("deltas") or []:
        if d.get("delta") is None:
            continue
        if d["figure"] == "int8 model bytes":
            pct = f" ({d['delta_pct']:+.2f}%)" if d.get("delta_pct") is not None else ""
            parts.append(f"bytes {d['delta']:+,.0f}{pct}")
        elif d["figure"] == "int8 top-1":
            parts.append(f"top-1 {100 * d['delta']:+.2f} points")
        elif d["figure"] == f"{target} int8 p50 ms" and d.get("delta_pct") is not None:
            parts.append(f"p50 {d['delta_pct']:+.1f}%")
    return "; ".join(parts) or "no figure to compare"


def rows(job: JobReport) -> list[list[str]]:
    """One row per target of the job's report (model-level gates count on every row)."""
    r = job.report
    size = r["artifacts"]["int8"]["bytes"]
    targets = list(r.get("targets") or {}) or ["*"]
    out = []
    for target in targets:
        gates = [g for g in r["gates"] if g["target"] in (target, "*")]
        out.append(
            [
                r["recipe"]["name"],
                job.job,
                target,
                f"{size:,}",
                _accuracy(r, target),
                _latency(r, target),
                _gates(gates),
                _baseline(r, target),
            ]
        )
    return out


def markdown_summary(jobs: list[JobReport], missing: list[Path]) -> str:
    """The step summary: a verdict line, one table row per recipe x target, the failed gates."""
    failed = sum(len(j.failed) for j in jobs)
    all_rows = [row for j in jobs for row in rows(j)]
    verdict = f"**failed** ({failed} gate{'s' * (failed != 1)} failed)" if failed else "passed"
    if missing:
        verdict = f"**incomplete** ({len(missing)} job{'s' * (len(missing) != 1)} wrote no report)" + (
            f", {failed} gate{'s' * (failed != 1)} failed" if failed else ""
        )
    lines = [
        f"## edgeconv: {len(jobs)} report{'s' * (len(jobs) != 1)}, {len(all_rows)} targets — {verdict}",
        "",
        "| " + " | ".join(HEAD) + " |",
        "|" + "---|" * len(HEAD),
        *("| " + " | ".join(_cell(c) for c in row) + " |" for row in all_rows),
        "",
    ]
    if missing:
        lines += ["### Jobs without a report", ""]
        lines += [f"- {_cell(str(p))}: not found (the job failed before writing it; see its log)" for p in missing]
        lines.append("")
    if failed:
        lines += ["### Failed gates", ""]
        lines += [f"- {_cell(j.job)}: {_cell(gate_line(g))}" for j in jobs for g in j.failed]
        lines.append("")
    return safe_text("\n".join(lines))


def merged_junit(jobs: list[JobReport], missing: list[Path]) -> str:
    """Each report's junit.xml (``render.junit``) as one testsuite of one testsuites; a missing report is an error."""
    root = ET.Element("testsuites", name="edgeconv")
    for j in jobs:
        for suite in ET.fromstring(junit(j.report)).iter("testsuite"):
            suite.set("name", f"edgeconv gates: {j.report['recipe']['name']} ({j.job})")
            root.append(suite)
    for path in missing:
        suite = ET.SubElement(
            root, "testsuite", name=f"edgeconv job: {path.parent.name}", tests="1", failures="0", skipped="0"
        )
        suite.set("errors", "1")
        case = ET.SubElement(suite, "testcase", classname=f"edgeconv.{path.parent.name}", name="report.json")
        ET.SubElement(case, "error", message=f"{path}: not found (the job failed before writing it)")
    suites = root.findall("testsuite")
    for key in ("tests", "failures", "skipped", "errors"):
        root.set(key, str(sum(int(s.get(key) or 0) for s in suites)))
    ET.indent(root)
    # ElementTree writes attribute values as given: paths and folder names (any bytes on Linux) are made safe here.
    return safe_text('<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n")


def _link(target: Path, out: Path) -> str:
    # surrogateescape: a folder name that is not UTF-8 links to its own bytes, as the file system holds them
    return quote(Path(os.path.relpath(target.resolve(), out.resolve())).as_posix(), errors="surrogateescape")


def index_html(jobs: list[JobReport], missing: list[Path], out: Path) -> str:
    """A page linking every job's report.html by relative links, so the folder can move as a whole."""
    e = html.escape
    failed = sum(len(j.failed) for j in jobs)
    verdict = "failed" if failed else "passed"
    if missing:
        verdict = "incomplete"
    body = []
    for j in jobs:
        page = j.path.parent / "report.html"
        link = _link(page if page.is_file() else j.path, out)
        for row in rows(j):
            cells = [e(c) for c in row]
            cells[1] = f'<a href="{e(link)}">{e(row[1])}</a>'
            status = "failed" if row[6].startswith("❌") else "passed"
            body.append(f'<tr class="{status}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    for path in missing:
        body.append(
            f'<tr class="failed"><td colspan="{len(HEAD)}">{e(str(path))}: not found '
            "(the job failed before writing it)</td></tr>"
        )
    head = "".join(f"<th>{e(h)}</th>" for h in HEAD)
    text = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>edgeconv: {len(jobs)} reports, {e(verdict)}</title>",
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
            "tr.failed td{background:#fdd}</style>",
            "</head><body>",
            f"<h1>edgeconv: {len(jobs)} reports, {len(body)} rows — {e(verdict)}</h1>",
            f"<table><thead><tr>{head}</tr></thead><tbody>",
            *body,
            "</tbody></table>",
            "</body></html>",
            "",
        ]
    )
    return safe_text(text)


def merge(reports: list[Path], matrix: Path | None, out: Path) -> Merged:
    """Read every report (the given ones and the matrix's jobs') and render the three files."""
    paths = list(reports)
    missing: list[Path] = []
    if matrix is not None:
        for path in expected_reports(matrix):
            if path.is_file():
                paths.append(path)
            else:
                missing.append(path)
    if not paths and not missing:
        raise UserInputError(
            "no reports given: name the report.json files the jobs wrote (edgeconv report merge build/*/report.json) "
            "or the matrix they ran (--matrix matrix.json)"
        )
    seen: dict[Path, JobReport] = {}
    for path in paths:
        job = read_job_report(path)
        seen.setdefault(job.path.resolve(), job)
    jobs = list(seen.values())
    for j in jobs:
        if j.path.parent.resolve() == out.resolve():
            raise UserInputError(
                f"--out {out}: holds {j.path}, and the merged junit.xml would replace that job's own; "
                "write the summary to the folder above the jobs' folders, e.g. --out build"
            )
    for j in jobs:  # render each alone first, so a section the checks do not cover is named with its file
        try:
            rows(j), junit(j.report)
        except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
            raise UserInputError(
                f"{j.path}: cannot render it ({type(e).__name__}: {e}); a section is not shaped as edgeconv writes "
                "it. Run edgeconv convert again to regenerate it"
            ) from e
    files = {
        SUMMARY_NAME: markdown_summary(jobs, missing).encode(),
        JUNIT_NAME: merged_junit(jobs, missing).encode(),
        INDEX_NAME: index_html(jobs, missing, out).encode(),
    }
    return Merged(files, sum(len(j.failed) for j in jobs), missing)


def write(out: Path, files: dict[str, bytes]) -> None:
    """Each file written aside and renamed into place: a reader never sees half a summary."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            Path(tmp).chmod(0o644)  # mkstemp makes it private; these are for people and CI to read
            Path(tmp).replace(out / name)
    except OSError as e:
        raise UserInputError(
            f"--out {out}: cannot write the summary there ({e.strerror or e}); pick a writable folder"
        ) from e
