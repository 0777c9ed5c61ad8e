"""Gates evaluated into the report, and the files CI systems read (report.md, junit.xml, report.html)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from converter.reports.gates import deltas, evaluate
from converter.reports.html_report import html
from converter.reports.render import junit, markdown

MD_NAME, JUNIT_NAME, HTML_NAME = "report.md", "junit.xml", "report.html"


def finalize(
    report: dict[str, Any],
    images: dict[str, bytes] | None = None,
    baseline: dict[str, Any] | None = None,
    baseline_path: str | None = None,
) -> dict[str, bytes]:
    """Evaluate the gates into ``report`` (in place) and render the CI files."""
    gates = evaluate(report, baseline)
    report["gates"] = [g.to_json() for g in gates]
    report["passed"] = not any(g.status == "failed" for g in gates)
    changes = deltas(report, baseline) if baseline else None
    report["baseline"] = {"path": baseline_path, "deltas": changes} if baseline else None
    return {
        MD_NAME: markdown(report, changes).encode(),
        JUNIT_NAME: junit(report).encode(),
        HTML_NAME: html(report, images).encode(),
    }


def images_in(folder: Path, report: dict[str, Any]) -> dict[str, bytes]:
    """The pictures a report refers to, read from its folder."""
    name = (report.get("calibration") or {}).get("histograms")
    return {name: (folder / name).read_bytes()} if name and (folder / name).is_file() else {}
