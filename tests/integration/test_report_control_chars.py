"""A report.json whose strings hold control characters, NUL, U+FFFE/U+FFFF or lone surrogates (JSON allows them
all as escapes) still gives ``check`` and ``report merge`` well-formed junit.xml, Markdown and HTML.

From a hostile-input audit: ``report merge`` over such a report was exit 3 (``ParseError`` re-reading the
junit.xml ``render.junit`` wrote), ``check`` wrote a junit.xml no XML parser accepts, and a lone surrogate
made ``check`` exit 2 ("cannot render it (UnicodeEncodeError ...)"). Each such character is now written as
a visible escape (``\\x00``, ``\\ud800``). Reports are made from the golden one; nothing imports TensorFlow.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from converter.cli.main import main
from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "data" / "golden" / "report_fixed.json"
# Every kind of character XML 1.0 forbids, one NUL and one ESC sequence among them, then what must stay as it is.
HOSTILE = "A\x00\x01\x08\x0b\x0c\x0e\x1b[31m\x1f\x7f\ufffe\uffff\ud800-\udfffZ"  # two lone surrogates
KEPT = "|<&>\"' é😀"
# XML 1.0 section 2.2: Char ::= #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]
NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _hostile_report(folder: Path) -> Path:
    """The golden report, checked once (so it holds a verdict, as a job's does), with hostile strings in it."""
    folder.mkdir(parents=True)
    shutil.copy(GOLDEN, folder / "report.json")
    assert _run("check", "--report", str(folder / "report.json")).exit_code == 1  # its budgets fail
    doc: dict[str, Any] = json.loads((folder / "report.json").read_text())
    doc["recipe"]["name"] += HOSTILE + KEPT
    doc["tool"]["version"] += HOSTILE
    for gate in doc["gates"]:
        gate["budget"] += HOSTILE
        if gate.get("reason"):
            gate["reason"] += HOSTILE + KEPT
    # json.dumps writes each character as an escape (\u0000, \ud800): the file itself is plain ASCII.
    (folder / "report.json").write_text(json.dumps(doc))
    for name in ("junit.xml", "report.md", "report.html"):
        (folder / name).unlink()
    return folder / "report.json"


def _well_formed_xml(path: Path) -> ET.Element:
    """Strict: UTF-8 without errors, no character outside XML 1.0's Char, parsed by expat; also xmllint if present."""
    text = path.read_bytes().decode("utf-8")  # strict: a lone surrogate cannot even be encoded
    bad = NOT_XML_CHAR.findall(text)
    assert not bad, f"{path.name} holds characters XML 1.0 forbids: {bad!r}"
    root = ET.parse(path).getroot()
    xmllint = shutil.which("xmllint")
    if xmllint:
        done = subprocess.run([xmllint, "--noout", str(path)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    return root


def _clean_text(path: Path) -> str:
    text = path.read_bytes().decode("utf-8")
    assert not NOT_XML_CHAR.findall(text), path.name
    assert "\x1b" not in text and "\x7f" not in text
    return text


def test_check_writes_a_junit_xml_every_parser_reads(tmp_path: Path) -> None:
    """Before: exit 2, "cannot render it (UnicodeEncodeError: ... surrogates not allowed)"; without the surrogate,
    exit 1 and a junit.xml that ElementTree rejects ("not well-formed (invalid token)")."""
    report = _hostile_report(tmp_path / "job")
    result = _run("check", "--report", str(report))
    assert result.exit_code == 1, result.output  # the golden report's verdict
    assert "Traceback" not in result.output
    assert "\x1b" not in result.stdout and "\x00" not in result.stdout  # the console table is escaped too
    root = _well_formed_xml(report.parent / "junit.xml")
    suite = root.find("testsuite")
    assert suite is not None
    name = suite.get("name") or ""
    assert name.startswith("edgeconv gates: golden")
    assert "A\\x00\\x01\\x08\\x0b\\x0c\\x0e\\x1b[31m\\x1f\\x7f\\ufffe\\uffff\\ud800-\\udfffZ" in name, name
    assert name.endswith(KEPT), name  # markup characters and real Unicode are kept (escaped by XML as usual)
    for other in ("report.md", "report.html"):
        assert "\\x00" in _clean_text(report.parent / other)
    assert json.loads(report.read_text())["recipe"]["name"].endswith(HOSTILE + KEPT)  # the data is kept as it was


def test_report_merge_over_a_hostile_report_writes_well_formed_files(tmp_path: Path) -> None:
    """Before: exit 3, "unexpected failure (ParseError: not well-formed (invalid token): line 3, column 40)".

    The job folder's name and the path of a job without a report (from --matrix) carry control characters too:
    they reach the merged junit.xml through ElementTree, which writes attribute values as it gets them.
    """
    report = _hostile_report(tmp_path / "build" / "job\x01\x1b")
    missing = tmp_path / "build" / "gone\x02"
    matrix = tmp_path / "matrix.json"
    matrix.write_text(json.dumps({"include": [{"out": str(report.parent)}, {"out": str(missing)}]}))
    out = tmp_path / "merged"
    result = _run("report", "merge", "--matrix", str(matrix), "--out", str(out))
    assert result.exit_code == 2, result.output  # a job of the matrix wrote no report: exit 2 after writing
    assert f"1 job(s) wrote no report: {missing / 'report.json'}" in result.stderr
    assert "Traceback" not in result.output and "unexpected failure" not in result.output
    root = _well_formed_xml(out / "junit.xml")
    names = [s.get("name") or "" for s in root.iter("testsuite")]
    assert any("goldenA\\x00\\x01" in n and "(job\\x01\\x1b)" in n for n in names), names
    errors = [e.get("message") or "" for e in root.iter("error")]
    assert errors == [f"{tmp_path}/build/gone\\x02/report.json: not found (the job failed before writing it)"]
    summary = _clean_text(out / "summary.md")
    assert "goldenA\\x00\\x01" in summary
    assert "\\|&lt;&amp;&gt;" in summary  # the table's own escaping still applies
    page = _clean_text(out / "index.html")
    assert "goldenA\\x00\\x01" in page and "job%01%1B/report.json" in page


@pytest.mark.parametrize(
    ("char", "shown"),
    [("\x00", "\\x00"), ("\x0b", "\\x0b"), ("\ufffe", "\\ufffe"), ("\ud800", "\\ud800")],
    ids=["NUL", "VT", "U+FFFE", "surrogate"],
)
def test_report_merge_with_one_bad_character_in_a_gate_reason(tmp_path: Path, char: str, shown: str) -> None:
    """Before: exit 3 for each ("ParseError: not well-formed"; for the surrogate, "UnicodeEncodeError")."""
    folder = tmp_path / "build" / "job"
    folder.mkdir(parents=True)
    shutil.copy(GOLDEN, folder / "report.json")
    assert _run("check", "--report", str(folder / "report.json")).exit_code == 1
    doc = json.loads((folder / "report.json").read_text())
    for gate in doc["gates"]:
        if gate.get("reason"):
            gate["reason"] = f"over{char}budget"
    (folder / "report.json").write_text(json.dumps(doc))
    result = _run("report", "merge", str(folder / "report.json"), "--out", str(tmp_path / "merged"))
    assert result.exit_code == 1, result.output  # the gates' verdict
    root = _well_formed_xml(tmp_path / "merged" / "junit.xml")
    skipped = [s.get("message") or "" for s in root.iter("skipped")]
    assert f"over{shown}budget" in skipped, skipped
