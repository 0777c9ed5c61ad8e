"""report.html: one self-contained page (inline CSS, images as data URIs, no network at view time)."""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from converter.reports.render import (
    DEVICE_HEAD,
    IO_HEAD,
    TUNING_HEAD,
    accuracy_figure,
    device_rows,
    drop_text,
    fmt,
    gate_figure,
    io_rows,
    layer_label,
    npu_line,
    output_figures,
    safe_text,
    tuning_rows,
)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1060px;
color:#1d232b}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde2e8;padding-bottom:4px}
.muted{color:#5d6b7a}.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;color:#fff}
.passed{background:#2e7d32}.failed{background:#c62828}.skipped{background:#8a939c}.none{background:#5d6b7a}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eef1f4}
th{background:#f5f7f9;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.bar{background:#eef1f4;border-radius:4px;height:14px;width:260px;position:relative;display:inline-block;
vertical-align:middle}
.bar>span{position:absolute;left:0;top:0;bottom:0;border-radius:4px;background:#42a5f5}.bar>span.over{background:#e53935}
img{max-width:100%;border:1px solid #eef1f4}
"""


def _badge(status: str | None) -> str:
    label = status or "no budgets"
    return f'<span class="badge {escape(status or "none")}">{escape(label)}</span>'


def _table(head: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    h = "".join(f"<th>{escape(c)}</th>" for c in head)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _bar(used: float | None, limit: float | None) -> str:
    if used is None:
        return '<span class="muted">not measured</span>'
    if not limit:
        return f"{fmt(used, 'bytes')} <span class=muted>(no limit)</span>"
    share = used / limit
    over = " over" if share > 1 else ""
    width = min(share, 1) * 100
    return (
        f'<span class="bar"><span class="{over.strip()}" style="width:{width:.1f}%"></span></span> '
        f"{fmt(used, 'bytes')} of {fmt(limit, 'bytes')} ({100 * share:.1f}%)"
    )


def _image(images: dict[str, bytes], name: str | None) -> str:
    if not name or name not in images:
        return ""
    data = base64.b64encode(images[name]).decode()
    return f'<img alt="{escape(name)}" src="data:image/png;base64,{data}">'


def _layer_chart(layers: list[dict[str, Any]]) -> str:
    """A horizontal bar chart (inline SVG) of SQNR lost per layer."""
    width, row, label_w = 1100, 22, 430
    top = max(max(e["sqnr_drop_db"] for e in layers), 1e-9)
    bars = []
    for i, e in enumerate(layers):
        y = i * row
        w = max(0.0, e["sqnr_drop_db"]) / top * (width - label_w - 380)
        name = f"<title>{escape(e['name'])}</title>{escape(layer_label(e['name']))}"
        alone = e.get("alone_sqnr_db")
        alone_text = f" · alone {alone:.1f} dB" if alone is not None else ""
        bars.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="11">{name}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="14" fill="#ef6c00"></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 15}" font-size="11">{e["sqnr_drop_db"]:.1f} dB lost · '
            f"{e['sqnr_db']:.1f} dB SQNR{alone_text} · {escape(e['op'])}</text>"
        )
    height = row * len(layers) + 6
    return (
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="per-layer SQNR lost">'
        f"{''.join(bars)}</svg>"
    )


def html(report: dict[str, Any], images: dict[str, bytes] | None = None) -> str:
    """The whole page; ``images`` (file name -> PNG bytes) are embedded as data URIs."""
    images = images or {}
    gates = report.get("gates") or []
    status = None if not gates else ("failed" if any(g["status"] == "failed" for g in gates) else "passed")
    art = report["artifacts"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>edgeconv: {escape(report['recipe']['name'])}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(report['recipe']['name'])} {_badge(status)}</h1>",
        f"<div class=muted>edgeconv {escape(report['tool']['version'])} · TensorFlow "
        f"{escape(str(report['tool'].get('tensorflow')))} · {escape(report['tool']['interpreter'])} · recipe sha256 "
        f"{escape(report['recipe']['sha256'][:12])}</div>",
        "<h2>Summary</h2>",
        _table(
            ["model", "bytes", "sha256"],
            [[k, fmt(v["bytes"], "bytes"), f"<code>{escape(v['sha256'][:16])}</code>"] for k, v in art.items()],
            {1},
        ),
    ]
    io = io_rows(report)
    if io:
        parts += ["<h2>Model I/O</h2>", _table(IO_HEAD, [[escape(c) for c in r] for r in io], {4, 5})]
    if gates:
        rows = []
        for g in gates:
            limit = gate_figure(g, g["limit"]) if g["limit"] is not None else escape(g["budget"])
            rows.append(
                [
                    escape(g["name"]),
                    escape(g["target"]),
                    gate_figure(g, g["value"]),
                    limit,
                    _badge(g["status"])
                    + (f" <span class=muted>{escape(g['reason'])}</span>" if g.get("reason") else ""),
                ]
            )
        parts += ["<h2>Gates</h2>", _table(["gate", "target", "value", "limit", "status"], rows, {2, 3})]
    acc = report.get("accuracy") or {}
    if acc.get("metric") == "top1":
        parts += [
            "<h2>Accuracy</h2>",
            _table(
                ["where", "samples", "float", "int8", "drop", "agreement"],
                [
                    [
                        escape(acc["where"]),
                        str(acc["samples"]),
                        fmt(acc["float"], "fraction"),
                        fmt(acc["int8"], "fraction"),
                        drop_text(acc["drop"], acc.get("unit")),
                        fmt(acc["agreement"], "fraction"),
                    ]
                ],
                {1, 2, 3, 4, 5},
            ),
        ]
        if len(acc.get("outputs") or []) > 1:
            parts.append(
                f"<p>top-1 on output {escape(str(acc.get('output')))}; int8 vs float: "
                f"{escape(output_figures(acc['outputs']))}.</p>"
            )
    elif acc.get("metric"):
        parts += [
            f"<h2>Accuracy ({escape(acc['metric'])})</h2>",
            f"<p class=muted>{escape(acc.get('definition') or '')}</p>",
            f"<p>{escape(acc['where'])}, {acc['samples']} samples: {escape(accuracy_figure(acc))}.</p>",
            f"<p>int8 vs float: {escape(output_figures(acc.get('outputs') or []))}.</p>",
        ]
    tuning_cells = tuning_rows(report)
    if tuning_cells:
        t = report["tuning"]
        parts += [
            "<h2>Accuracy tuning</h2>",
            f"<p class=muted>Budget: drop ≤ {escape(drop_text(t['budget'], acc.get('unit')))}. "
            f"{escape(t['outcome'])}.</p>",
            _table(TUNING_HEAD, [[escape(c) for c in r] for r in tuning_cells], {2, 3, 4, 5, 6}),
        ]
    latency = {k: v for k, v in (report.get("latency") or {}).items() if v}
    if latency:
        rows = [
            [
                escape(k),
                escape(v["where"]),
                fmt(v["int8"]["p50_ms"], "ms"),
                fmt(v["int8"]["p90_ms"], "ms"),
                fmt(v["float"]["p50_ms"], "ms") if v.get("float") else "n/a",
                str(v["int8"]["threads"]),
                escape(str(v["machine"].get("cpu"))),
            ]
            for k, v in latency.items()
        ]
        parts += [
            "<h2>Latency</h2>",
            _table(["target", "where", "int8 p50", "int8 p90", "float p50", "threads", "cpu"], rows, {2, 3, 4}),
        ]
    devices = device_rows(report)
    if devices:
        parts += ["<h2>On devices</h2>", _table(DEVICE_HEAD, [[escape(c) for c in r] for r in devices], {2, 4, 5})]
    targets = report.get("targets") or {}
    if targets:
        rows = []
        for name, t in targets.items():
            limits = t.get("limits") or {}
            ok = {True: "compatible", False: "incompatible", None: "n/a"}[t.get("compatible")]
            problems = "<br>".join(escape(p) for p in t.get("problems") or [])
            rows.append(
                [
                    escape(name),
                    escape(ok),
                    _bar(t.get("flash_bytes"), limits.get("flash_bytes")),
                    _bar(t.get("ram_bytes"), limits.get("ram_bytes")),
                    problems or "—",
                ]
            )
        parts += ["<h2>Targets: fit</h2>", _table(["target", "verdict", "flash", "RAM", "problems"], rows)]
        npu = [npu_line(name, t) for name, t in targets.items()]
        if any(npu):
            head = "NPU compilers (Vela latency is its own estimate; RKNN accuracy is its simulator's)"
            parts += [f"<h2>{head}</h2>", "<ul>"]
            parts += [f"<li>{escape(line)}</li>" for line in npu if line]
            parts += ["</ul>"]
    analysis = report.get("analysis") or {}
    layers = [e for e in (analysis.get("layers") or []) if e.get("sqnr_drop_db") is not None]
    if layers:
        alone = analysis.get("alone") or {}
        # A report from before analysis.alone existed measured them whenever it could.
        measured = alone.get("run", any(e.get("alone_sqnr_db") is not None for e in layers))
        parts += [
            "<h2>Per-layer error (worst first)</h2>",
            "<p class=muted>SQNR each op loses on its own (its worst input's SQNR minus its output's), "
            "the output's SQNR against the float model, and (alone) the model output's SQNR with only that op "
            "quantized, for the worst few.</p>"
            if measured
            else "<p class=muted>SQNR each op loses on its own (its worst input's SQNR minus its output's) and the "
            "output's SQNR against the float model. Not measured quantized alone: "
            f"{escape(str(alone.get('reason') or 'not recorded'))}.</p>",
            _layer_chart(layers[:15]),
        ]
    cal = report.get("calibration") or {}
    picture = _image(images, cal.get("histograms"))
    if picture:
        parts += [
            "<h2>Calibration: most clipped tensors</h2>",
            f"<p class=muted>Method {escape(cal['method'])}; red lines: the chosen range (threshold T).</p>",
            picture,
        ]
    tensors = cal.get("tensors") or []
    if tensors:
        worst = sorted(tensors, key=lambda t: -t["clipped_fraction"])[:15]
        rows = [
            [
                f'<span title="{escape(t["name"])}">{escape(layer_label(t["name"]))}</span>',
                escape(t["method"]),
                f"{t['range'][0]:.4g} … {t['range'][1]:.4g}",
                f"{100 * t['clipped_fraction']:.3f}%",
                str(t["levels_used"]),
            ]
            for t in worst
        ]
        parts += [
            "<h2>Calibration: tensors</h2>",
            _table(["tensor", "method", "range", "clipped", "int8 levels used"], rows, {3, 4}),
        ]
    parts.append("</body></html>\n")
    return safe_text("".join(parts))
