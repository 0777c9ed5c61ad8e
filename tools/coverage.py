"""Run the conformance zoo × every source, write docs/coverage.json and the coverage table of docs/coverage.md.

    python -m tools.coverage [--arch NAME ...] [--json docs/coverage.json] [--page docs/coverage.md] [--render]

Every architecture of ``tools.zoo`` is built (seeded random weights, nothing downloaded), written in each
source format and converted by edgeconv and by the stock converter (``tools.conformance``). The JSON holds
the verdicts and figures, no timings (they go to stderr), so the same code on the same machine writes the
same file. The Markdown table replaces the block between ``<!-- coverage:start -->`` and
``<!-- coverage:end -->`` in the documentation site's coverage page (``--page``; ``--readme`` is the same
option). ``--render`` rewrites the table from the JSON without running anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- coverage:start -->", "<!-- coverage:end -->"
PAGE = ROOT / "docs" / "coverage.md"  # the documentation site's coverage page (mkdocs.yml)


def _no_seconds(node: Any) -> Any:
    """The JSON without timings, so a rerun writes the same bytes."""
    if isinstance(node, dict):
        return {k: _no_seconds(v) for k, v in node.items() if k != "seconds"}
    if isinstance(node, list):
        return [_no_seconds(v) for v in node]
    return node


def run(names: list[str], work: Path) -> Iterator[list[dict[str, Any]]]:
    """Each architecture's (architecture, source) cases as JSON rows; an expected failure gets its reason."""
    from tools import conformance, zoo

    for name in names:
        rows: list[dict[str, Any]] = []
        arch = zoo.BY_NAME[name]
        if arch.skip:
            yield [{"arch": name, "note": arch.note, "skipped": arch.skip}]
            continue
        start = time.perf_counter()
        built = zoo.build(arch, work / name)
        stock = conformance.run_stock(built)
        log(f"{name}: built in {time.perf_counter() - start:.1f}s, stock {stock.seconds:.1f}s")
        for source in zoo.SOURCES:
            case = conformance.run_case(built, source, work / name / "out" / source, stock)
            log(f"{name} {source}: exit {case.exit_code}, {case.ours.seconds:.1f}s")
            rows.append({**case.to_json(), "note": arch.note})
        yield _no_seconds(rows)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # noqa: T201 - a tool's progress


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _full_integer(measured: dict[str, Any] | None) -> str:
    if measured is None:
        return "–"
    if not measured["converted"]:
        return f"failed: {measured['error']}"
    if measured["full_integer"]:
        return "yes"
    names = sorted({op.split(" (")[0] for op in measured["float_ops"]} - {"QUANTIZE", "DEQUANTIZE"})
    return f"no (float {', '.join(names)})"


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown coverage table: one line per (architecture, source), the stock converter's figures beside."""
    lines = [
        "| architecture | source | exit | full-integer (ours) | stock full-integer | cosine ours / stock "
        "| SQNR dB ours / stock | TFLM (ours) | ops ours / stock |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        label = f"{row['arch']} ({row['note']})" if row.get("note") else row["arch"]
        if "skipped" in row:
            lines.append(f"| {label} | all | – | not run: {row['skipped']} | – | – | – | – | – |")
            continue
        ours, stock, tflm = row["ours"], row["stock"], row["tflm"]
        if tflm is None:
            micro = "–"
        elif tflm["runs"]:
            micro = f"yes (≤{tflm['max_diff_steps']} steps from LiteRT)"
        else:
            micro = f"no: {', '.join(tflm['missing_ops']) or tflm['error']}"
        lines.append(
            "| "
            + " | ".join(
                [
                    label,
                    f"`{row['source']}`",
                    str(row["exit_code"]),
                    _full_integer(ours) if row["exit_code"] == 0 else f"exit {row['exit_code']}: {ours['error']}",
                    _full_integer(stock),
                    f"{_fmt(ours['cosine'], 4)} / {_fmt(stock['cosine'] if stock else None, 4)}",
                    f"{_fmt(ours['sqnr_db'], 1)} / {_fmt(stock['sqnr_db'] if stock else None, 1)}",
                    micro,
                    f"{ours['ops'] if ours['ops'] is not None else '–'} / "
                    f"{stock['ops'] if stock and stock['ops'] is not None else '–'}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def replace_block(page: str, block: str, name: str = "the page") -> str:
    """``page`` (Markdown) with the text between the coverage markers replaced by ``block``."""
    if START not in page or END not in page:
        raise SystemExit(f"{name} has no {START} ... {END} block to replace")
    head, rest = page.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}\n{END}{tail}"


def _write_table(page: Path, block: str) -> None:
    """Replace the coverage block of ``page``; a page without the markers is an error, never overwritten."""
    page.write_text(replace_block(page.read_text(), block, str(page)))


def main(argv: list[str] | None = None) -> None:
    from tools import zoo

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--arch", action="append", choices=sorted(zoo.BY_NAME), help="only these (repeatable)")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "coverage.json")
    parser.add_argument(
        "--page",
        "--readme",
        dest="page",
        type=Path,
        default=PAGE,
        help=f"the Markdown page holding the table [{PAGE.relative_to(ROOT)}]",
    )
    parser.add_argument("--work", type=Path, help="keep the built models here (default: a temporary folder)")
    parser.add_argument("--render", action="store_true", help="only rewrite the page's table from the JSON")
    args = parser.parse_args(argv)
    if args.render:
        cases = json.loads(args.json.read_text())["cases"]
        _write_table(args.page, table(cases))
        return
    logging.disable(logging.WARNING)
    names = args.arch or [a.name for a in zoo.ARCHITECTURES]
    with tempfile.TemporaryDirectory(prefix="edgeconv-zoo-") as tmp:
        os.environ["EDGECONV_CACHE_DIR"] = str(Path(tmp) / "cache")
        rows: list[dict[str, Any]] = []
        for done in run(names, args.work or Path(tmp)):  # written after each architecture: a long run keeps its part
            rows.extend(done)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"seed": zoo.SEED, "cases": rows}, indent=1, sort_keys=True) + "\n")
            _write_table(args.page, table(rows))
    log(f"wrote {args.json} and the table in {args.page}")


if __name__ == "__main__":
    main()
