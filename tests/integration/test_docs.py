"""The documentation is checked like code: the site builds with ``mkdocs build --strict``, the README's links
resolve, the README stays a front door (at most 300 lines), and the commands the docs show in ``console``
blocks run.

A ``console`` block is a fenced block whose info string is ``console``: each line starting with ``$ `` is a
command, run from the repository root (``edgeconv`` as ``python -m converter``, the same CLI); every other
non-empty line is output that must appear in what the command before it printed. Only quick commands belong in
such blocks (``--help``, ``validate``, ``schema``); ``sh`` blocks are shown, never run.

mkdocs and its theme are the ``docs`` extra. Without them the build test skips with the install command,
unless ``EDGECONV_REQUIRE_DOCS=1`` (CI), where a missing extra is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 300
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(?P<text>.+?)\s*#*\s*$")


@dataclass(frozen=True)
class Command:
    """One ``$ `` line of a ``console`` block and the output lines shown under it."""

    path: Path
    line: int
    text: str
    output: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """Fenced blocks as (info string, line number of the first line inside, lines)."""
    blocks: list[tuple[str, int, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if opened is None:
            i += 1
            continue
        fence, info, first = opened["fence"], opened["info"], i + 2
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        blocks.append((info, first, body))
        i += 1
    return blocks


def _prose(text: str) -> str:
    """The text with fenced blocks blanked (line numbers kept) and inline code removed: what renders as prose."""
    lines = text.splitlines()
    inside: str | None = None
    for n, line in enumerate(lines):
        opened = FENCE.match(line)
        if inside is None and opened is not None:
            inside = opened["fence"]
            lines[n] = ""
        elif inside is not None:
            if line.strip().startswith(inside):
                inside = None
            lines[n] = ""
    return re.sub(r"`[^`\n]*`", "", "\n".join(lines))


def _commands() -> list[Command]:
    found: list[Command] = []
    for path in _pages():
        for info, first, body in _blocks(path.read_text(encoding="utf-8")):
            if info != "console":
                continue
            for offset, line in enumerate(body):
                if line.startswith("$ "):
                    found.append(Command(path, first + offset, line[2:].strip(), ()))
                elif line.strip() and found and found[-1].path == path:
                    last = found[-1]
                    found[-1] = Command(last.path, last.line, last.text, (*last.output, line.strip()))
    return found


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension (mkdocs) gives a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    prose = _prose(page.read_text(encoding="utf-8")) if page.suffix == ".md" else ""
    return {_slug(m["text"]) for line in prose.splitlines() if (m := HEADING.match(line))}


def _argv(command: Command) -> list[str]:
    words = shlex.split(command.text)
    if words[0] == "edgeconv":
        return [sys.executable, "-m", "converter", *words[1:]]
    if words[0] in ("python", "python3"):
        return [sys.executable, *words[1:]]
    raise AssertionError(f"{command.where}: only edgeconv and python commands run from console blocks: {command.text}")


COMMANDS = _commands()


def test_the_site_builds_strict(tmp_path: Path) -> None:
    """mkdocs.yml turns every link, anchor and nav warning into an error; the build must give none."""
    missing = [name for name in ("mkdocs", "material") if importlib.util.find_spec(name) is None]
    if missing:
        reason = f"{' and '.join(missing)} not installed: pip install -e '.[docs]'"
        if os.environ.get("EDGECONV_REQUIRE_DOCS") == "1":
            pytest.fail(f"EDGECONV_REQUIRE_DOCS=1 but {reason}")
        pytest.skip(reason)
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
        + ["--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    assert (site / "index.html").is_file()
    assert (site / "coverage" / "index.html").is_file()


def test_readme_links_point_to_existing_files() -> None:
    prose = _prose(README.read_text(encoding="utf-8"))
    links = [(n, m["target"]) for n, line in enumerate(prose.splitlines(), 1) for m in LINK.finditer(line)]
    assert len(links) >= 10, "the README links into the docs site; did the link syntax change?"
    broken: list[str] = []
    for n, target in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:: not checked offline
        path, _, anchor = target.partition("#")
        file = README if not path else (ROOT / path).resolve()
        if not file.exists():
            broken.append(f"README.md:{n}: {target}: no such file")
        elif anchor and file.is_file() and anchor not in _anchors(file):
            broken.append(f"README.md:{n}: {target}: {file.relative_to(ROOT)} has no heading #{anchor}")
    assert not broken, "\n".join(broken)


def test_readme_is_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines; keep it at most {MAX_README_LINES} and move the detail to docs/"
    )


def test_the_coverage_page_holds_the_generated_table() -> None:
    """tools/coverage.py rewrites the block between the markers of its default page; the page must have them."""
    from tools import coverage

    page = coverage.PAGE.read_text(encoding="utf-8")
    assert page.count(coverage.START) == 1, coverage.PAGE
    assert page.count(coverage.END) == 1, coverage.PAGE
    assert page.index(coverage.START) < page.index(coverage.END)


def test_console_blocks_are_found() -> None:
    """The commands below come from the docs; a renamed fence must not silently leave nothing to run."""
    texts = {c.text for c in COMMANDS}
    assert {"python -m converter --help", "edgeconv convert --help"} <= texts, sorted(texts)
    assert len(COMMANDS) >= 8, [c.where for c in COMMANDS]


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.where} {c.text}" for c in COMMANDS])
def test_console_command_runs(command: Command) -> None:
    result = subprocess.run(
        _argv(command), cwd=ROOT, capture_output=True, text=True, timeout=300, check=False, stdin=subprocess.DEVNULL
    )
    printed = result.stdout + result.stderr
    assert result.returncode == 0, f"{command.where}: `{command.text}` exited {result.returncode}\n{printed}"
    for expected in command.output:
        assert expected in printed, f"{command.where}: `{command.text}` did not print {expected!r}\n{printed}"
