"""report.html: one self-contained page (inline CSS, images as data URIs, no network at view time)."""

from __future__ import annotations

import base64
import json
import re
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
    latency_where,
    layer_label,
    npu_line,
    output_figures,
    safe_text,
    tuning_goal,
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
.kind{display:inline-block;padding:0 6px;border-radius:8px;background:#fff3e0;color:#8a4b00;font-size:12px}
"""

SHOWN = 15  # rows of a long table (per-layer error, calibration tensors, Vela's layers)
LABEL_CHARS = 48  # longer layer labels keep their tail: "…" + the last characters
WRAPPER = "ChannelLastIOWrapper"  # litert-torch's outer module around a PyTorch model (channel-last I/O)
_UNIQUE = re.compile(r"^[0-9#]+$")  # the converter's suffix for repeated tensor names: ";1#4"


def _badge(status: str | None) -> str:
    label = status or "no budgets"
    return f'<span class="badge {escape(status or "none")}">{escape(label)}</span>'


def _kind(text: str) -> str:
    """A label on a figure that is not a measurement ("estimate", "prediction")."""
    return f'<span class="kind">{escape(text)}</span>'


def _not_measured(reason: Any = None) -> str:
    why = f" ({escape(str(reason))})" if reason else ""
    return f'<span class="muted">not measured{why}</span>'


def _shown(shown: int, total: int, order: str) -> str:
    """The line under a table that may be cut: "15 of 68 shown", or "all 7 shown"."""
    head = f"all {total} shown" if shown >= total else f"{shown} of {total} shown"
    return f"<p class=muted>{head}; {escape(order)}.</p>"


def short_name(name: str, op: str | None = None) -> str:
    """A readable label for a TFLite tensor name; the full name goes into a title.

    Keras and ONNX names give the layer a user wrote (``layer_label``). Names from a PyTorch model
    (litert-torch) start with its wrapper module, ``ChannelLastIOWrapper``, followed by the module path when
    the export kept it (``…ChannelLastIOWrapper/torch.nn.modules.conv.Conv2d_conv``) and by the converter's
    suffix for repeated names (``;1#4``): the label is the innermost module (``Conv2d_conv``), else the op, with
    that suffix, which is what tells the rows apart. Long labels keep their tail.
    """
    first, _, rest = name.partition(";")
    segments = [s for s in first.split("/") if s]
    wrapped = [i for i, s in enumerate(segments) if s.rsplit(".", 1)[-1] == WRAPPER]
    if wrapped:
        inner = segments[wrapped[-1] + 1 :]
        label = inner[-1].rsplit(".", 1)[-1] if inner else (op or "tensor")
        if _UNIQUE.match(rest):
            label += f" [{rest}]"
    else:
        label = layer_label(name)
    return label if len(label) <= LABEL_CHARS else "…" + label[-(LABEL_CHARS - 1) :]


def _name(name: str, op: str | None = None) -> str:
    """A layer's label with its full name on hover."""
    return f'<span title="{escape(name)}">{escape(short_name(name, op))}</span>'


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
    """A horizontal bar chart (inline SVG) of SQNR lost per layer; a negative figure is a bar left of zero."""
    width, row, label_w = 1100, 22, 430
    area = width - label_w - 380  # the bars' width; the rest is the figures' text
    drops = [float(e["sqnr_drop_db"]) for e in layers]
    high, low = max([*drops, 0.0]), min([*drops, 0.0])
    scale = area / ((high - low) or 1e-9)
    zero = label_w + (-low) * scale
    bars = []
    for i, (e, drop) in enumerate(zip(layers, drops, strict=True)):
        y = i * row
        w = abs(drop) * scale
        x, colour = (zero, "#ef6c00") if drop >= 0 else (zero - w, "#2e7d32")
        name = f"<title>{escape(e['name'])}</title>{escape(short_name(e['name'], e.get('op')))}"
        alone = e.get("alone_sqnr_db")
        alone_text = f" · alone {alone:.1f} dB" if alone is not None else ""
        bars.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="11">{name}</text>'
            f'<rect x="{x:.1f}" y="{y + 4}" width="{max(w, 1.0):.1f}" height="14" fill="{colour}"></rect>'
            f'<text x="{zero + max(drop, 0.0) * scale + 6:.1f}" y="{y + 15}" font-size="11">{drop:.1f} dB lost · '
            f"{e['sqnr_db']:.1f} dB SQNR{alone_text} · {escape(e['op'])}</text>"
        )
    height = row * len(layers) + 6
    axis = f'<line x1="{zero:.1f}" y1="0" x2="{zero:.1f}" y2="{height}" stroke="#5d6b7a"></line>' if low < 0 else ""
    return (
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="per-layer SQNR lost">'
        f"{''.join(bars)}{axis}</svg>"
    )


def _ops_by_name(report: dict[str, Any]) -> dict[str, str]:
    """Tensor name -> the op that writes it, from the per-layer analysis (labels PyTorch tensors by their op)."""
    return {e["name"]: e["op"] for e in (report.get("analysis") or {}).get("layers") or [] if e.get("op")}


def _estimate_cell(est: dict[str, Any]) -> str:
    return f"{fmt(est.get('latency_ms'), 'ms')} {_kind(est.get('kind') or 'estimate')}"


def _unmeasured_latency(report: dict[str, Any]) -> list[str]:
    """Targets without a measured latency: the estimate report.json has (labelled so), else the reason."""
    targets = report.get("targets") or {}
    rows = []
    for name, lat in (report.get("latency") or {}).items():
        if lat:
            continue
        t = targets.get(name) or {}
        est = t.get("latency_estimate") or (t.get("cost") or {}).get("latency_estimate")
        reason = escape(str(t.get("reason") or "no reason recorded"))
        if est:
            rows.append([escape(name), _estimate_cell(est), escape(str(est.get("basis") or "")), reason])
        else:
            rows.append([escape(name), _not_measured(), "—", reason])
    if not rows:
        return []
    return [
        "<h2>Latency: estimated or not measured</h2>",
        "<p class=muted>Not measured on the device. An estimate is computed from the model (a profile's cycles per "
        "MAC, or Vela's performance model), never a measurement.</p>",
        _table(["target", "latency", "basis of the estimate", "why not measured"], rows, {1}),
    ]


def _tflm(targets: dict[str, Any]) -> list[str]:
    """TFLite Micro against LiteRT on the same int8 model and samples (one row per distinct result)."""
    groups: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for name, t in targets.items():
        if isinstance(t.get("tflm"), dict):
            key = json.dumps(t["tflm"], sort_keys=True)
            groups.setdefault(key, ([], t["tflm"]))[0].append(name)
    if not groups:
        return []
    rows = []
    for names, r in groups.values():
        who = escape(", ".join(names))
        if not r.get("loaded"):
            rows.append([who, _not_measured(r.get("error") or "TFLite Micro did not load the model"), *["—"] * 5])
            continue
        agree = r.get("top1_agreement")
        rows.append(
            [
                who,
                str(r.get("samples", "n/a")),
                fmt(agree, "fraction") if agree is not None else _not_measured(),
                fmt(r.get("exact_match"), "fraction") if r.get("exact_match") is not None else _not_measured(),
                f"{r['max_abs_diff_steps']} steps" if r.get("max_abs_diff_steps") is not None else _not_measured(),
                fmt(r.get("arena_bytes"), "bytes") if r.get("arena_bytes") is not None else _not_measured(),
                fmt(r.get("recorded_arena_bytes"), "bytes")
                if r.get("recorded_arena_bytes") is not None
                else _not_measured(),
            ]
        )
    head = ["targets", "samples", "top-1 agreement", "int8 outputs equal", "largest difference", "arena", "recorded"]
    return [
        "<h2>TFLite Micro vs LiteRT</h2>",
        "<p class=muted>The int8 model run here by the TFLite Micro interpreter and by LiteRT on the same samples: "
        "how often their top-1 classes agree, the share of int8 output values that are equal, the largest "
        "difference in quantization steps, and the smallest arena in which TFLite Micro ran it (recorded: its "
        "recording allocator's total).</p>",
        _table(head, rows, {1, 2, 3, 4, 5, 6}),
    ]


def _cost(targets: dict[str, Any]) -> list[str]:
    """MACs of the heaviest ops, as report.json lists them (once when every target has the same)."""
    groups: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for name, t in targets.items():
        cost = t.get("cost") or {}
        if cost.get("layers"):
            key = json.dumps({"macs": cost.get("macs"), "layers": cost["layers"]}, sort_keys=True)
            groups.setdefault(key, ([], cost))[0].append(name)
    parts: list[str] = []
    for names, cost in groups.values():
        layers, total = cost["layers"], cost.get("macs")
        rows = [
            [
                str(e.get("index", "")),
                escape(str(e.get("op", ""))),
                f"{e['macs']:,}",
                fmt(e["macs"] / total, "fraction") if total else "n/a",
            ]
            for e in layers
        ]
        listed = sum(e["macs"] for e in layers)
        share = f"; these {len(layers)} hold {fmt(listed / total, 'fraction')} of them" if total else ""
        in_all = f"{total:,}" if isinstance(total, int) else "n/a"
        for_whom = "" if len(groups) == 1 else f": {', '.join(names)}"
        parts += [
            f"<h2>Compute per op (MACs){escape(for_whom)}</h2>",
            f"<p class=muted>{len(layers)} shown: the ops with the most multiply-accumulates, as report.json lists "
            f"them (it keeps no more). The model has {in_all} MACs in all{share}. Memory per op is not in the "
            "report.</p>",
            _table(["op index", "op", "MACs", "share of the model's MACs"], rows, {0, 2, 3}),
        ]
    return parts


def _vela_layers(name: str, t: dict[str, Any]) -> list[str]:
    """Vela's per-layer table for an Ethos-U target: CPU layers first, then the most NPU cycles."""
    layers = t.get("layers") or []
    if (t.get("compiler") or {}).get("name") != "vela" or not layers:
        return []
    order = sorted(layers, key=lambda e: (e.get("runs_on") != "CPU", -(e.get("cycles") or 0)))[:SHOWN]
    reasons = t.get("cpu_op_reasons") or {}
    rows = [
        [
            _name(str(e.get("name", "")), e.get("op")),
            escape(str(e.get("op", ""))),
            escape(str(e.get("npu_op", ""))),
            escape(str(e.get("runs_on", "")))
            + (f" <span class=muted>{escape(reasons[e['op']])}</span>" if e.get("op") in reasons else ""),
            f"{e['cycles']:,}" if e.get("cycles") is not None else "n/a",
            f"{e['macs']:,}" if e.get("macs") is not None else "n/a",
        ]
        for e in order
    ]
    total = t.get("cycles")
    return [
        f"<h2>Vela per layer: {escape(name)}</h2>",
        f"<p class=muted>Cycles are Vela's performance model {_kind('estimate')}"
        + (f"; {total:,} cycles in all" if isinstance(total, int) else "")
        + ".</p>",
        _table(["layer", "TFLite op", "NPU op", "runs on", "cycles", "MACs"], rows, {4, 5}),
        _shown(len(order), len(layers), "layers left to the CPU first, then the most cycles"),
    ]


def _edgetpu(name: str, t: dict[str, Any]) -> list[str]:
    """The Edge TPU mapping: the static prediction (labelled so) and edgetpu_compiler's own, when it ran."""
    tpu = t.get("edgetpu")
    if not isinstance(tpu, dict):
        return []
    parts = [f"<h2>Edge TPU op mapping: {escape(name)}</h2>"]
    pred = tpu.get("prediction") or {}
    if pred:
        first = pred.get("first_cpu_op")
        split = (
            f"op {first.get('index')} ({escape(str(first.get('op')))}) is the first to run on the CPU: "
            f"{escape(str(first.get('reason')))}; it and every op after it run on the CPU"
            if first
            else "no op ends the Edge TPU's part of the graph"
        )
        parts.append(
            f"<p>{_kind(pred.get('kind') or 'prediction')} {pred.get('mapped_ops')} of {pred.get('total_ops')} ops "
            f"on the Edge TPU; {split}. From the documented op list and constraints, not from the compiler.</p>"
        )
        if pred.get("problems"):
            parts += ["<ul>", *(f"<li>{escape(str(p))}</li>" for p in pred["problems"]), "</ul>"]
    compiler = tpu.get("compiler") or {}
    log = compiler.get("log")
    if isinstance(log, dict):
        on_chip, off_chip = log.get("on_chip_bytes"), log.get("off_chip_bytes")
        parts.append(
            f"<p>edgetpu_compiler (found on PATH and run on the int8 model; its model is "
            f"<code>model_int8_edgetpu.tflite</code>): {log.get('mapped_ops', 'n/a')} ops on the Edge TPU, "
            f"{log.get('cpu_ops', 'n/a')} on the CPU; on-chip memory {fmt(on_chip, 'bytes')}, off-chip "
            f"{fmt(off_chip, 'bytes')}.</p>"
        )
        ops = log.get("operations") or []
        if ops:
            rows = [[escape(str(o.get("op"))), str(o.get("count")), escape(str(o.get("status")))] for o in ops]
            parts.append(_table(["op", "count", "status"], rows, {1}))
    else:
        parts.append(f"<p>edgetpu_compiler's mapping: {_not_measured(compiler.get('reason'))}.</p>")
    return parts


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
    elif acc.get("data") and acc.get("outputs"):  # no evaluation data: fidelity on held-out calibration samples
        parts += [
            "<h2>Fidelity: int8 against float</h2>",
            f"<p class=muted>No evaluation data, so no accuracy: int8 is compared with float on calibration "
            f"samples kept out of calibration, {escape(acc['data'])}.</p>",
            f"<p>int8 vs float: {escape(output_figures(acc['outputs']))}.</p>",
        ]
    warnings = report.get("warnings") or []
    if warnings:
        parts += ["<h2>Warnings</h2>", "<ul>", *(f"<li class=warn>{escape(w)}</li>" for w in warnings), "</ul>"]
    tuning_cells = tuning_rows(report)
    if tuning_cells:
        t = report["tuning"]
        parts += [
            "<h2>Accuracy tuning</h2>",
            f"<p class=muted>Aim: {escape(tuning_goal(t, acc.get('unit')))}. {escape(t['outcome'])}.</p>",
            _table(TUNING_HEAD, [[escape(c) for c in r] for r in tuning_cells], {2, 3, 4, 5, 6, 7}),
        ]
    latency = {k: v for k, v in (report.get("latency") or {}).items() if v}
    if latency:
        rows = [
            [
                escape(k),
                escape(latency_where(v)),
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
    parts += _unmeasured_latency(report)
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
        parts += _tflm(targets)
        for name, t in targets.items():
            parts += _vela_layers(name, t) + _edgetpu(name, t)
        parts += _cost(targets)
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
            _layer_chart(layers[:SHOWN]),
            _shown(min(SHOWN, len(layers)), len(layers), "the most dB lost first")
            + (
                "<p class=muted>A negative figure (a green bar left of the line): the op's output is closer to the "
                "float model than its worst input, e.g. an op that clips or averages error away.</p>"
                if any(e["sqnr_drop_db"] < 0 for e in layers[:SHOWN])
                else ""
            ),
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
        worst = sorted(tensors, key=lambda t: -t["clipped_fraction"])[:SHOWN]
        ops = _ops_by_name(report)
        rows = [
            [
                _name(t["name"], ops.get(t["name"])),
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
            _shown(len(worst), len(tensors), "the most clipped first"),
        ]
    parts.append("</body></html>\n")
    return safe_text("".join(parts))
