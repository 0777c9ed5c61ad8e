"""Reports people read: Markdown for pull requests, JUnit XML for CI systems."""

from __future__ import annotations

import re
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from converter.reports.gates import LOWER_BOUNDS

# Characters no XML 1.0 parser accepts (C0 controls but tab, line feed and carriage return; U+FFFE and U+FFFF;
# surrogates, which in a Python string are always lone ones and cannot even be encoded as UTF-8), plus DEL and
# the C1 controls, which XML discourages and terminals obey (ESC and CSI sequences repaint or retitle them).
_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: str) -> str:
    """``text`` with each character above written as a visible escape (``\\x00``, ``\\ud800``).

    Everything a report.json holds ends up in junit.xml, Markdown, HTML and on the console, and a report
    is input (``check`` and ``report merge`` read files from other jobs): one NUL or lone surrogate in a
    name would make the junit.xml unreadable to every CI system, or the file impossible to write as UTF-8.
    Escaping rather than dropping keeps what was there visible. Applied to whole rendered texts: the markup
    itself never holds such characters.
    """
    return _UNSAFE.sub(_escaped, text)


def fmt(value: float | None, unit: str = "") -> str:
    """A figure as people read it: bytes with separators, fractions as percent, ms with 3 decimals."""
    if value is None:
        return "n/a"
    if unit == "bytes":
        return f"{value:,.0f} B"
    if unit == "fraction":
        return f"{100 * value:.2f}%"
    if unit == "ms":
        return ms_text(value)
    if unit == "dB":
        return f"{value:.2f} dB"
    if unit == "relative MSE":
        return f"{value:.4g} relative MSE"
    return f"{value:g}"


def _shown(ms: float) -> tuple[float, str]:
    """A time rounded as it is printed (in ms) and its text: µs below 1 ms, ms, s above 10 s."""
    if ms < 1.0:
        us = round(ms * 1000, 1)
        return us / 1000, f"{us:.1f} µs"
    if ms < 10_000:
        text = f"{ms:#.3g}" if ms < 100 else f"{ms:.0f}"
        return float(text), f"{text} ms"
    sec = round(ms / 1000, 1)
    return sec * 1000, f"{sec:.1f} s"


def ms_text(ms: float) -> str:
    """A time as people read it: 0.046 ms is 46.0 µs."""
    return _shown(ms)[1]


TAIL_WARNING = 5.0  # p99 above this many times p50: the timing is dominated by outliers


def latency_where(lat: dict[str, Any]) -> str:
    """Where a latency ran, and when it is the figure this machine gave before (the latency cache), when."""
    cached = f", from the latency cache, measured {lat['measured_at']}" if lat.get("from_cache") else ""
    return f"{lat['where']}{cached}"


def latency_text(lat: dict[str, Any]) -> str:
    """p50/p90/p99 of one run and the float ratio computed from the printed values."""
    q = lat["int8"]
    text = f"int8 p50 {ms_text(q['p50_ms'])}, p90 {ms_text(q['p90_ms'])}, p99 {ms_text(q['p99_ms'])}"
    if lat.get("float"):
        f50 = lat["float"]["p50_ms"]
        int8_shown, float_shown = _shown(q["p50_ms"])[0], _shown(f50)[0]
        ratio = float_shown / int8_shown if int8_shown else float("nan")  # what a reader gets from the two figures
        text += f"; float p50 {ms_text(f50)} ({ratio:.2f}x)"
    return text


def runs_on(q: dict[str, Any]) -> str:
    """How one latency figure ran: "4 threads, xnnpack", or the NPU runtime's name (no thread count)."""
    return q["delegate"] if q.get("threads") is None else f"{q['threads']} threads, {q['delegate']}"


def tail_warning(lat: dict[str, Any]) -> str | None:
    """Said when p99 is far above p50: the tail is other load or a cold start, not the model."""
    q = lat["int8"]
    if q["p50_ms"] > 0 and q["p99_ms"] > TAIL_WARNING * q["p50_ms"]:
        return (
            f"warning: p99 is {q['p99_ms'] / q['p50_ms']:.0f}x p50 (other load on the machine?): "
            "compare p50s, rerun for the tail"
        )
    return None


def layer_label(tensor_name: str) -> str:
    """The layer a user wrote, from a TFLite tensor name: 'model/block_3_expand/Relu6;model/…' is 'block_3_expand'.

    Fused names join several ops' names with ';' and every name starts with the model's: the first name's
    second path component is the Keras layer. Names without a path (a model input) are kept whole.
    """
    parts = [p for p in tensor_name.split(";")[0].split("/") if p]
    if len(parts) >= 2:
        return parts[1]
    return parts[0] if parts else tensor_name


def drop_text(drop: float | None, unit: str | None) -> str:
    """An accuracy drop in its metric's unit: top-1 points, dB lost, or relative MSE."""
    if drop is None:
        return "n/a"
    return f"{100 * drop:.2f} points" if unit in (None, "fraction") else fmt(drop, unit)


def accuracy_figure(acc: dict[str, Any]) -> str:
    """float, int8 and drop of the report's accuracy in its metric (see ``runtime.accuracy``)."""
    metric, unit = acc["metric"], acc.get("unit")
    if metric == "sqnr":
        return (
            f"reconstruction SNR float {fmt(acc['float'], 'dB')}, int8 {fmt(acc['int8'], 'dB')}, "
            f"drop {drop_text(acc['drop'], unit)}"
        )
    if metric == "mse":
        return f"int8 vs float output: {drop_text(acc['drop'], unit)}"
    return (
        f"float {fmt(acc['float'], 'fraction')}, int8 {fmt(acc['int8'], 'fraction')}, "
        f"drop {drop_text(acc['drop'], unit)}"
    )


def output_figures(outputs: list[dict[str, Any]]) -> str:
    """SQNR, cosine and MSE of each output against the float model."""
    parts = []
    for o in outputs:
        cos = "n/a" if o.get("cosine") is None else f"{o['cosine']:.5f}"
        name = f"{o['name']}: " if len(outputs) > 1 else ""
        agree = f", top-1 agreement {fmt(o['agreement'], 'fraction')}" if len(outputs) > 1 and "agreement" in o else ""
        parts.append(f"{name}SQNR {o['sqnr_db']:.2f} dB, cosine {cos}, MSE {o['mse']:.4g}{agree}")
    return "; ".join(parts)


def held_out_lines(acc: dict[str, Any]) -> list[str]:
    """report.md's section for int8 against float on calibration samples held out (no evaluation data); else empty.

    Such figures have no labels behind them (``metric`` null): fidelity to the float model, not accuracy.
    """
    if acc.get("metric") or not acc.get("data") or not acc.get("outputs"):
        return []
    worst = acc.get("worst_output") or {}
    agree = (
        f" Top-1 agreement of '{worst['name']}': {fmt(worst['agreement'], 'fraction')}."
        if worst.get("agreement") is not None and len(acc["outputs"]) == 1
        else ""
    )
    return [
        f"### Fidelity: int8 against float, {acc['data']}",
        "",
        "No evaluation data, so no accuracy: int8 is compared with float on calibration samples kept out of "
        f"calibration. int8 vs float: {output_figures(acc['outputs'])}.{agree}",
        "",
    ]


def warning_lines(report: dict[str, Any]) -> list[str]:
    """report.md's warnings (``report.warnings``), one item each; empty without."""
    warnings = report.get("warnings") or []
    if not warnings:
        return []
    return ["### Warnings", "", *(f"- ⚠️ warning: {w}" for w in warnings), ""]


IO_HEAD = ["", "name", "dtype", "shape", "scale", "zero point"]


def io_rows(report: dict[str, Any]) -> list[list[str]]:
    """The int8 model's inputs and outputs as table cells; empty for one input and one output (said in a line)."""
    q = report.get("quantization") or {}
    inputs, outputs = q.get("inputs") or [], q.get("outputs") or []
    if len(inputs) <= 1 and len(outputs) <= 1:
        return []
    return [
        [
            kind,
            t["name"],
            t["dtype"],
            str(t["shape"]),
            "n/a" if t["scale"] is None else f"{t['scale']:.6g}",
            "n/a" if t["zero_point"] is None else str(t["zero_point"]),
        ]
        for kind, tensors in (("input", inputs), ("output", outputs))
        for t in tensors
    ]


def gate_figure(g: dict[str, Any], value: float | None) -> str:
    """A gate's value or limit: a drop in its metric's unit (top-1 in points, as everywhere), others by unit."""
    return drop_text(value, g["unit"]) if g["name"] == "accuracy_drop" else fmt(value, g["unit"])


def gate_line(g: dict[str, Any]) -> str:
    if g["status"] == "skipped":
        return f"{g['name']} [{g['target']}]: skipped ({g['reason']})"
    if g["unit"] == "check":
        return f"{g['name']} [{g['target']}]: {g['status']}" + (f" ({g['reason']})" if g.get("reason") else "")
    lower = g["name"] in LOWER_BOUNDS
    op = (">=" if lower else "<=") if g["status"] == "passed" else ("is below" if lower else "exceeds")
    # A drop is in its metric's unit, top-1 in points, as everywhere else; other fractions in percent.
    return (
        f"{g['name']} [{g['target']}]: {g['status']}: {gate_figure(g, g['value'])} {op} "
        f"{gate_figure(g, g['limit'])} (budget {g['budget']}, {g['source']})"
    )


TUNING_HEAD = ["step", "what", "int8", "drop", "agreement", "worst SQNR", "bytes", "host p50", "chosen"]
DEVICE_HEAD = ["target", "status", "int8 p50", "accuracy on the device", "samples", "agreement", "retries"]


def on_device(report: dict[str, Any], name: str) -> bool:
    """True for a target measured on a device over SSH (``edgeconv deploy``, an SSH target with a host)."""
    lat = (report.get("latency") or {}).get(name) or {}
    return str(lat.get("where", "")).startswith("device")


def device_accuracy_lines(report: dict[str, Any], name: str) -> list[str]:
    """The summary's line for the accuracy measured on a device (empty for the host and unmeasured targets)."""
    acc = ((report.get("targets") or {}).get(name) or {}).get("accuracy") or {}
    if not on_device(report, name) or not acc.get("metric"):
        return []
    agreement = f", agreement {fmt(acc['agreement'], 'fraction')}" if acc.get("agreement") is not None else ""
    return [f"    accuracy on {name} ({acc['samples']} samples): {accuracy_figure(acc)}{agreement}"]


def device_rows(report: dict[str, Any]) -> list[list[str]]:
    """Targets measured on a device, and boards of a fleet that were not: status, latency, accuracy there, retries.

    Empty when nothing ran on a device, so reports of host-only runs keep their shape.
    """
    rows = []
    for name, t in (report.get("targets") or {}).items():
        if not (on_device(report, name) or "unreachable" in t):
            continue
        lat = (report.get("latency") or {}).get(name) or {}
        acc = t.get("accuracy") or {}
        retries = lat.get("retries") or []
        status = "measured" if t.get("measured") else str(t.get("reason") or "not measured")
        if lat.get("ssh_warnings"):
            status += f" (ssh warned: {'; '.join(lat['ssh_warnings'])})"
        rows.append(
            [
                name,
                status,
                fmt(lat["int8"]["p50_ms"], "ms") if lat.get("int8") else "n/a",
                accuracy_figure(acc) if acc.get("metric") else "n/a",
                str(acc.get("samples", "n/a")) if acc.get("metric") else "n/a",
                fmt(acc.get("agreement"), "fraction") if acc.get("metric") else "n/a",
                f"{len(retries)} ({', '.join(r['step'] for r in retries)})" if retries else "0",
            ]
        )
    return rows


def npu_line(name: str, t: dict[str, Any]) -> str | None:
    """One line for an NPU target compiled by its vendor's compiler (Vela, RKNN); None for other targets."""
    compiler = t.get("compiler") or {}
    if compiler.get("name") == "rknn-toolkit2":
        return _rknn_line(name, t, compiler)
    if compiler.get("name") != "vela":
        return None
    if compiler.get("error"):
        return f"{name}: Vela {compiler.get('version')} failed: {compiler['error']}"
    cpu = f": {', '.join(t['cpu_ops'])}" if t.get("cpu_ops") else ""
    return (
        f"{name}: Vela {compiler.get('version')}, {fmt(t.get('npu_ops_fraction'), 'fraction')} of ops on the NPU "
        f"({t.get('npu_ops')} NPU, {t.get('cpu_op_count')} CPU{cpu}), SRAM {fmt(t.get('sram_bytes'), 'bytes')}, "
        f"model {fmt((t.get('compiled_model') or {}).get('bytes'), 'bytes')}, "
        f"{fmt(t.get('latency_estimate_ms'), 'ms')} estimated by Vela"
    )


def _rknn_line(name: str, t: dict[str, Any], compiler: dict[str, Any]) -> str:
    if compiler.get("error"):
        return f"{name}: rknn-toolkit2 failed: {compiler['error']}"
    acc = t.get("simulator_accuracy") or t.get("accuracy") or {}  # measured on the board: the simulator's moved
    size = fmt((t.get("artifact") or {}).get("bytes"), "bytes")
    head = f"{name}: rknn-toolkit2 {compiler.get('version')}, model.rknn {size}"
    board = (t.get("npu_runtime") or {}).get("vs_tflite_int8")
    if t.get("simulator_accuracy") and board:
        device = t.get("accuracy") or {}
        head += (
            f", on the board's NPU {device.get('metric')} {fmt(device.get('int8'), device.get('unit') or 'fraction')} "
            f"(agreement with our TFLite int8 {fmt(board.get('agreement'), 'fraction')})"
        )
    if acc.get("metric") == "top1":
        return (
            f"{head}, simulator top-1 {fmt(acc['int8'], 'fraction')} vs our TFLite int8 "
            f"{fmt(acc['tflite_int8'], 'fraction')} (agreement {fmt(acc['agreement'], 'fraction')}, "
            f"{acc['samples']} samples)"
        )
    if acc.get("metric") == "agreement":
        return f"{head}, simulator agrees with our TFLite int8 on {fmt(acc['agreement'], 'fraction')} of top-1"
    if acc.get("metric") == "sqnr":
        return f"{head}, simulator output SQNR {fmt(acc['sqnr_db_vs_tflite_int8'], 'dB')} against our TFLite int8"
    return f"{head}, simulator not run ({acc.get('reason') or 'no samples'})"


def tuning_goal(tuning: dict[str, Any], unit: str | None) -> str:
    """What the accuracy loop aimed for: the accuracy_drop budget, or (without one) the worst output's SQNR."""
    if tuning.get("budget") is None and tuning.get("min_sqnr_db") is not None:
        return f"worst output SQNR ≥ {tuning['min_sqnr_db']:g} dB (no accuracy_drop budget; {tuning['trigger']})"
    return f"drop ≤ {drop_text(tuning.get('budget'), unit)}"


def tuning_rows(report: dict[str, Any]) -> list[list[str]]:
    """The accuracy loop's attempts as table cells (empty when the loop did not run)."""
    tuning = report.get("tuning") or {}
    if not (tuning.get("ran") or tuning.get("worst_layers")):
        return []
    unit = (report.get("accuracy") or {}).get("unit")
    return [
        [
            a["step"],
            a["detail"],
            fmt(a["int8"], unit or "fraction"),
            drop_text(a["drop"], unit),
            fmt(a["agreement"], "fraction"),
            fmt(a.get("worst_sqnr_db"), "dB"),
            fmt(a["bytes"], "bytes"),
            fmt(a["latency_p50_ms"], "ms"),
            "✔" if a["chosen"] else "",
        ]
        for a in tuning["attempts"]
    ]


def markdown(report: dict[str, Any], deltas: list[dict[str, Any]] | None = None) -> str:
    """report.md: verdict, gates, accuracy, latency, targets, and the baseline deltas when given."""
    gates = report.get("gates") or []
    failed = [g for g in gates if g["status"] == "failed"]
    verdict = "no budgets set" if not gates else ("**failed**" if failed else "passed")
    art = report["artifacts"]
    lines = [
        f"## edgeconv: {report['recipe']['name']} — {verdict}",
        "",
        f"int8 model {art['int8']['bytes']:,} bytes ({100 * art['int8']['bytes'] / art['float']['bytes']:.1f}% of "
        f"float), calibration {report['calibration']['method']} on {report['calibration']['samples']} samples, "
        f"edgeconv {report['tool']['version']}.",
        "",
        *warning_lines(report),
    ]
    io = io_rows(report)
    if io:
        lines += ["### Model I/O", "", "| " + " | ".join(IO_HEAD) + " |", "|" + "---|" * len(IO_HEAD)]
        lines += ["| " + " | ".join(r) + " |" for r in io] + [""]
    if gates:
        lines += ["### Gates", "", "| gate | target | value | limit | status |", "|---|---|---|---|---|"]
        for g in gates:
            mark = {"passed": "✅ passed", "failed": "❌ failed", "skipped": "⏭ skipped"}[g["status"]]
            limit = gate_figure(g, g["limit"]) if g["limit"] is not None else g["budget"]
            note = f" ({g['reason']})" if g.get("reason") else ""
            if g["unit"] == "check":
                lines.append(f"| {g['name']} | {g['target']} | — | {limit} | {mark}{note} |")
                continue
            lines.append(f"| {g['name']} | {g['target']} | {gate_figure(g, g['value'])} | {limit} | {mark}{note} |")
        lines.append("")
    acc = report.get("accuracy") or {}
    if acc.get("metric") == "top1":
        lines += [
            "### Accuracy",
            "",
            "| where | samples | float | int8 | drop | agreement |",
            "|---|---|---|---|---|---|",
            f"| {acc['where']} | {acc['samples']} | {fmt(acc['float'], 'fraction')} | {fmt(acc['int8'], 'fraction')} "
            f"| {drop_text(acc['drop'], acc.get('unit'))} | {fmt(acc['agreement'], 'fraction')} |",
            "",
        ]
        if len(acc.get("outputs") or []) > 1:
            lines += [f"top-1 on output {acc.get('output')}; int8 vs float: {output_figures(acc['outputs'])}.", ""]
    elif acc.get("metric"):
        lines += [
            f"### Accuracy ({acc['metric']}: {acc.get('definition') or acc['metric']})",
            "",
            f"{acc['where']}, {acc['samples']} samples: {accuracy_figure(acc)}.",
            "",
            f"int8 vs float: {output_figures(acc.get('outputs') or [])}.",
            "",
        ]
    lines += held_out_lines(acc)
    rows = tuning_rows(report)
    if rows:
        t = report["tuning"]
        lines += [
            f"### Accuracy tuning ({tuning_goal(t, acc.get('unit'))}) — {t['outcome']}",
            "",
            "| " + " | ".join(TUNING_HEAD) + " |",
            "|" + "---|" * len(TUNING_HEAD),
            *("| " + " | ".join(r) + " |" for r in rows),
            "",
        ]
    latency = {k: v for k, v in (report.get("latency") or {}).items() if v}
    if latency:
        lines += [
            "### Latency",
            "",
            "| target | where | int8 p50 | int8 p90 | float p50 | threads |",
            "|---|---|---|---|---|---|",
        ]
        for name, lat in latency.items():
            flt = fmt(lat["float"]["p50_ms"], "ms") if lat.get("float") else "n/a"
            lines.append(
                f"| {name} | {latency_where(lat)} | {fmt(lat['int8']['p50_ms'], 'ms')} | "
                f"{fmt(lat['int8']['p90_ms'], 'ms')} | {flt} | {lat['int8']['threads'] or lat['int8']['delegate']} |"
            )
        lines.append("")
    devices = device_rows(report)
    if devices:
        lines += ["### On devices", "", "| " + " | ".join(DEVICE_HEAD) + " |", "|" + "---|" * len(DEVICE_HEAD)]
        lines += ["| " + " | ".join(r) + " |" for r in devices] + [""]
    targets = report.get("targets") or {}
    if targets:
        lines += [
            "### Targets",
            "",
            "| target | compatible | flash | RAM | arena | problems |",
            "|---|---|---|---|---|---|",
        ]
        for name, t in targets.items():
            ok = {True: "yes", False: "**no**", None: "n/a"}[t.get("compatible")]
            problems = "; ".join(t.get("problems") or []) or "—"
            lines.append(
                f"| {name} | {ok} | {fmt(t.get('flash_bytes'), 'bytes')} | {fmt(t.get('ram_bytes'), 'bytes')} "
                f"| {fmt(t.get('arena_bytes'), 'bytes')} | {problems} |"
            )
        lines.append("")
    npu = [(name, t) for name, t in targets.items() if (t.get("compiler") or {}).get("name") == "vela"]
    if npu:
        lines += [
            "### NPU (compiled by Vela)",
            "",
            "| target | accelerator | NPU ops | CPU ops | SRAM | model | cycles | latency (estimate) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, t in npu:
            if (t.get("compiler") or {}).get("error"):
                lines.append(f"| {name} | — | — | — | — | — | — | Vela failed: {t['compiler']['error']} |")
                continue
            cpu = ", ".join(t.get("cpu_ops") or []) or "—"
            lines.append(
                f"| {name} | {t['npu']['accelerator']} at {t['npu']['clock_mhz']:g} MHz | {t['npu_ops']} | {cpu} "
                f"| {fmt(t.get('sram_bytes'), 'bytes')} | {fmt(t['compiled_model']['bytes'], 'bytes')} "
                f"| {t['cycles']:,} | {fmt(t.get('latency_estimate_ms'), 'ms')} |"
            )
        lines.append("")
    rknn = [(name, t) for name, t in targets.items() if (t.get("compiler") or {}).get("name") == "rknn-toolkit2"]
    if rknn:
        lines += ["### RKNN (rknn-toolkit2 and its simulator)", ""]
        lines += [f"- {npu_line(name, t)}" for name, t in rknn]
        lines.append("")
    if deltas:
        lines += ["### Against the baseline", "", "| figure | baseline | current | change |", "|---|---|---|---|"]
        for d in deltas:
            change = "n/a" if d["delta"] is None else f"{d['delta']:+.6g}"
            if d["delta_pct"] is not None:
                change += f" ({d['delta_pct']:+.2f}%)"
            lines.append(f"| {d['figure']} | {_num(d['baseline'])} | {_num(d['current'])} | {change} |")
        lines.append("")
    return safe_text("\n".join(lines))


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def junit(report: dict[str, Any]) -> str:
    """junit.xml: one test case per gate; failures carry the limit and the value (``safe_text``: always well-formed)."""
    gates = report.get("gates") or []
    name = report["recipe"]["name"]
    failures = sum(g["status"] == "failed" for g in gates)
    skipped = sum(g["status"] == "skipped" for g in gates)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuites name="edgeconv" tests="{len(gates)}" failures="{failures}" skipped="{skipped}">',
        f'  <testsuite name={quoteattr(f"edgeconv gates: {name}")} tests="{len(gates)}" failures="{failures}" '
        f'skipped="{skipped}" errors="0">',
    ]
    for g in gates:
        label = f"{g['name']} [{g['target']}]"
        case = f"    <testcase classname={quoteattr('edgeconv.' + name)} name={quoteattr(label)}"
        if g["status"] == "passed":
            out.append(case + "/>")
            continue
        out.append(case + ">")
        if g["status"] == "failed":
            out.append(
                f'      <failure message={quoteattr(gate_line(g))} type="budget">{escape(gate_line(g))}</failure>'
            )
        else:
            out.append(f"      <skipped message={quoteattr(g['reason'] or '')}/>")
        out.append("    </testcase>")
    out += ["  </testsuite>", "</testsuites>", ""]
    return safe_text("\n".join(out))
