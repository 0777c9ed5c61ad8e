"""report.html shows what report.json holds: estimates labelled, TFLM vs LiteRT, Vela's and the Edge TPU's
per-layer views, MACs per op, "N of M shown" under every cut table, readable PyTorch names, negative dB lost.

The figures asserted are read from the same conversion's report.json and formatted as the page formats them:
the page never holds a figure the report does not. The committed demo (MobileNetV2, 68 analysed tensors, 129
Vela layers) is long enough for every cut; the PyTorch demo has ``ChannelLastIOWrapper`` names and layers that
lose a negative number of dB.
"""

from __future__ import annotations

import html
import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from converter.cli.main import main
from converter.reports.html_report import SHOWN, short_name
from converter.reports.html_report import html as render
from converter.reports.render import fmt, ms_text
from converter.targets.edgetpu import NOT_INSTALLED
from tests.conftest import ROOT, tiny_recipe

MCU, VELA, CORAL = "arduino-nano-33-ble-sense", "ethos-u55-128", "coral-usb-accelerator"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
NO_VELA = importlib.util.find_spec("ethosu") is None
NO_TORCH = [m for m in ("torch", "litert_torch") if importlib.util.find_spec(m) is None]

Run = tuple[dict[str, Any], str]


def _convert(recipe: dict[str, Any], folder: Path) -> Run:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = CliRunner().invoke(main, ["convert", "--recipe", str(path), "--out", str(folder / "out")])
    assert result.exit_code == 0, result.output
    return json.loads((folder / "out" / "report.json").read_text()), (folder / "out" / "report.html").read_text()


def _committed(name: str, **changes: Any) -> dict[str, Any]:
    """A recipe of recipes/ with its paths made absolute (so it can be written anywhere) and ``changes``."""
    recipe: dict[str, Any] = yaml.safe_load((ROOT / "recipes" / name).read_text())
    recipe["model"] = str(ROOT / "recipes" / recipe["model"])
    for part in recipe["data"].values():
        part["path"] = str(ROOT / "recipes" / part["path"])
    return {**recipe, "benchmark": {"warmup": 1, "runs": 5, "min_seconds": 0.0}, **changes}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The demo converted for the host, an MCU (TFLite Micro), an Ethos-U NPU (Vela) and a Coral."""
    if NO_VELA:
        pytest.skip("the npu extra (ethos-u-vela) is not installed")
    targets = ["host", MCU, VELA, CORAL]
    return _convert(_committed("mobilenet.yaml", targets=targets), tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def torch_demo(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The PyTorch demo (.pt2, host and an MCU), as the README converts it."""
    if NO_TORCH:
        pytest.skip(f"{', '.join(NO_TORCH)} not installed: pip install -e '.[torch]'")
    return _convert(_committed("digits_cnn_pt2.yaml"), tmp_path_factory.mktemp("pt2"))


def _section(page: str, heading: str) -> str:
    """The page from ``<h2>heading</h2>`` to the next heading."""
    start = page.index(f"<h2>{html.escape(heading, quote=False)}</h2>")
    end = page.find("<h2>", start + 4)
    return page[start : end if end >= 0 else len(page)]


def _rows(section: str) -> list[str]:
    return re.findall(r"<tr><td.*?</tr>", section)


def test_mcu_and_vela_latency_are_estimates_labelled_so(demo: Run) -> None:
    report, page = demo
    part = _section(page, "Latency: estimated or not measured")
    for name, est in (
        (MCU, report["targets"][MCU]["cost"]["latency_estimate"]),
        (VELA, report["targets"][VELA]["latency_estimate"]),
    ):
        assert report["latency"][name] is None and est["kind"] == "estimate"
        (row,) = [r for r in _rows(part) if f"<td>{name}</td>" in r]
        assert f'{ms_text(est["latency_ms"])} <span class="kind">estimate</span>' in row
        assert html.escape(est["basis"]) in row and html.escape(report["targets"][name]["reason"]) in row
    # No estimate in the report: "not measured", with the report's reason, and no figure.
    (coral,) = [r for r in _rows(part) if f"<td>{CORAL}</td>" in r]
    assert "not measured" in coral and html.escape(report["targets"][CORAL]["reason"]) in coral
    assert " ms" not in coral.replace(html.escape(report["targets"][CORAL]["reason"]), "")


def test_tflm_agreement_with_litert(demo: Run) -> None:
    report, page = demo
    tflm = report["targets"][MCU]["tflm"]
    (row,) = _rows(_section(page, "TFLite Micro vs LiteRT"))
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells == [
        MCU,
        str(tflm["samples"]),
        fmt(tflm["top1_agreement"], "fraction"),  # e.g. 100.00%
        fmt(tflm["exact_match"], "fraction"),
        f"{tflm['max_abs_diff_steps']} steps",
        fmt(tflm["arena_bytes"], "bytes"),
        fmt(tflm["recorded_arena_bytes"], "bytes"),
    ]


def test_vela_per_layer_table_is_cut_and_says_so(demo: Run) -> None:
    report, page = demo
    layers = report["targets"][VELA]["layers"]
    assert len(layers) > SHOWN
    part = _section(page, f"Vela per layer: {VELA}")
    rows = _rows(part)
    assert len(rows) == SHOWN and f"{SHOWN} of {len(layers)} shown" in part
    cycles = [int(re.findall(r"<td class=num>([\d,]+)</td>", r)[0].replace(",", "")) for r in rows]
    assert all(e["runs_on"] == "NPU" for e in layers)  # the demo runs wholly on the NPU: ordered by cycles
    assert cycles == sorted((e["cycles"] for e in layers), reverse=True)[:SHOWN]
    assert f"{report['targets'][VELA]['cycles']:,} cycles in all" in part and ">estimate<" in part
    top = max(layers, key=lambda e: e["cycles"])
    assert f'<span title="{html.escape(top["name"])}">' in rows[0]  # the full name on hover


def test_edgetpu_mapping_is_a_labelled_prediction(demo: Run) -> None:
    report, page = demo
    tpu = report["targets"][CORAL]["edgetpu"]
    part = _section(page, f"Edge TPU op mapping: {CORAL}")
    pred = tpu["prediction"]
    assert f'<span class="kind">prediction</span> {pred["mapped_ops"]} of {pred["total_ops"]} ops' in part
    if tpu["compiler"].get("log") is None:
        assert shutil.which("edgetpu_compiler") is None and tpu["compiler"]["reason"] == NOT_INSTALLED
        assert f"not measured ({html.escape(NOT_INSTALLED)})" in part
    else:
        assert f"{tpu['compiler']['log']['mapped_ops']} ops on the Edge TPU" in part


def test_macs_per_op(demo: Run) -> None:
    report, page = demo
    cost = report["targets"][MCU]["cost"]
    part = _section(page, "Compute per op (MACs)")  # one table: every target has the same ops
    assert page.count("<h2>Compute per op (MACs)") == 1
    rows = _rows(part)
    assert len(rows) == len(cost["layers"]) and f"{len(cost['layers'])} shown" in part
    for row, layer in zip(rows, cost["layers"], strict=True):
        assert f"<td class=num>{layer['macs']:,}</td>" in row and f"<td>{layer['op']}</td>" in row
    assert f"{cost['macs']:,} MACs in all" in part


def test_cut_tables_say_how_many_rows_are_shown(demo: Run) -> None:
    report, page = demo
    with_figure = [e for e in report["analysis"]["layers"] if e["sqnr_drop_db"] is not None]
    tensors = report["calibration"]["tensors"]
    assert len(with_figure) > SHOWN and len(tensors) > SHOWN
    errors = _section(page, "Per-layer error (worst first)")
    assert errors.count("<rect ") == SHOWN and f"{SHOWN} of {len(with_figure)} shown" in errors
    calibration = _section(page, "Calibration: tensors")
    assert len(_rows(calibration)) == SHOWN and f"{SHOWN} of {len(tensors)} shown" in calibration


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium; .ci/run does)")
def test_new_sections_render_in_a_real_browser(demo: Run, tmp_path: Path) -> None:
    assert CHROMIUM is not None  # the skipif above
    report, page = demo
    (tmp_path / "report.html").write_text(page)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", f"--user-data-dir={tmp_path / 'p'}"]
    dom = subprocess.run(
        [*flags, "--dump-dom", (tmp_path / "report.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for heading in (
        "Latency: estimated or not measured",
        "TFLite Micro vs LiteRT",
        f"Vela per layer: {VELA}",
        f"Edge TPU op mapping: {CORAL}",
        "Compute per op (MACs)",
    ):
        assert f"<h2>{heading}</h2>" in dom
    assert f"{SHOWN} of {len(report['targets'][VELA]['layers'])} shown" in dom
    assert fmt(report["targets"][MCU]["tflm"]["top1_agreement"], "fraction") in dom


def test_pytorch_names_are_readable_and_negative_db_is_drawn(torch_demo: Run) -> None:
    report, page = torch_demo
    part = _section(page, "Per-layer error (worst first)")
    wrapped = [e for e in report["analysis"]["layers"] if "ChannelLastIOWrapper" in e["name"]]
    assert wrapped  # litert-torch names every tensor after its wrapper module
    for e in wrapped:
        label = short_name(e["name"], e["op"])
        assert "ChannelLastIOWrapper" not in label and label.startswith(e["op"])
        assert f"<title>{html.escape(e['name'])}</title>{html.escape(label)}<" in part
    assert ">ChannelLastIOWrapper<" not in page  # nowhere a bare wrapper name
    negative = [e for e in report["analysis"]["layers"][:SHOWN] if (e["sqnr_drop_db"] or 0) < 0]
    assert negative, "the PyTorch demo has layers that lose a negative number of dB (PAD, MEAN)"
    bars = re.findall(r'<rect x="[\d.]+" y="\d+" width="([\d.]+)" height="14" fill="(#[0-9a-f]+)">', part)
    drawn = {round(float(w), 1) for w, fill in bars if fill == "#2e7d32"}
    assert len(drawn) >= 1 and all(w > 1 for w in drawn)
    for e in negative:
        assert f"{e['sqnr_drop_db']:.1f} dB lost" in part
    assert "A negative figure" in part
    tensors = _section(page, "Calibration: tensors")
    assert ">ChannelLastIOWrapper<" not in tensors and f"all {len(report['calibration']['tensors'])} shown" in tensors


def test_a_short_table_says_all_rows_are_shown(tiny_model_dir: Path, write_recipe: Callable[..., Path]) -> None:
    path = write_recipe(tiny_recipe(tiny_model_dir, targets=["host", MCU]))
    out = path.parent / "out"
    result = CliRunner().invoke(main, ["convert", "--recipe", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    page = (out / "report.html").read_text()
    tensors = report["calibration"]["tensors"]
    assert len(tensors) <= SHOWN
    calibration = _section(page, "Calibration: tensors")
    assert f"all {len(tensors)} shown" in calibration and not re.search(r"\d+ of \d+ shown", calibration)
    tflm = report["targets"][MCU]["tflm"]
    assert fmt(tflm["top1_agreement"], "fraction") in _section(page, "TFLite Micro vs LiteRT")


# Rendering from hand-made reports: the edge cases a conversion here does not reach.


def _report(**extra: Any) -> dict[str, Any]:
    return {
        "recipe": {"name": "hand", "sha256": "0" * 64},
        "tool": {"version": "0", "interpreter": "x"},
        "artifacts": {"int8": {"bytes": 1000, "sha256": "b" * 64}},
        "calibration": {"method": "minmax", "samples": 10},
        "gates": [],
        **extra,
    }


def test_short_names() -> None:
    assert short_name("ChannelLastIOWrapper;1#4", "CONV_2D") == "CONV_2D [1#4]"
    assert short_name("ChannelLastIOWrapper") == "tensor"
    full = "litert_torch._convert.to_channel_last_io.ChannelLastIOWrapper/torch.nn.modules.conv.Conv2d_conv;2"
    assert short_name(full, "CONV_2D") == "Conv2d_conv [2]"
    assert short_name("model/block_3_expand/Relu6;model/block_3_expand_BN/add") == "block_3_expand"
    assert short_name("serving_default_input") == "serving_default_input"
    long = short_name("model/" + "a" * 40 + "_tail_of_the_layer/Relu")
    assert long.startswith("…") and long.endswith("_tail_of_the_layer") and len(long) == 48


def test_negative_db_lost_only_is_still_drawn() -> None:
    layers = [
        {"name": "m/pad/Pad", "op": "PAD", "sqnr_db": 40.0, "sqnr_drop_db": -1.5},
        {"name": "m/mean/Mean", "op": "MEAN", "sqnr_db": 38.0, "sqnr_drop_db": -3.0},
    ]
    page = render(_report(analysis={"layers": layers, "alone": {"run": False, "reason": "r"}}))
    bars = re.findall(r'<rect x="([\d.]+)" y="\d+" width="([\d.]+)" height="14" fill="#2e7d32">', page)
    assert len(bars) == 2 and float(bars[1][1]) == pytest.approx(2 * float(bars[0][1]))
    assert "-1.5 dB lost" in page and "-3.0 dB lost" in page and "all 2 shown" in page
    assert "<line " in page  # the zero line


def test_missing_figures_are_not_measured_with_the_reason() -> None:
    tflm_failed = {"loaded": False, "error": "TFLM cannot load the model: Node GATHER failed to prepare"}
    tflm_no_top1 = {
        "loaded": True,
        "samples": 5,
        "exact_match": 1.0,
        "max_abs_diff_steps": 0,
        "top1_agreement": None,  # an output that is not a class vector
        "arena_bytes": 4096,
        "recorded_arena_bytes": None,
    }
    targets = {
        "mcu-a": {"tflm": tflm_failed, "reason": "a microcontroller is not measured from here", "cost": {}},
        "mcu-b": {"tflm": tflm_no_top1, "reason": None},
        "tpu": {
            "reason": "needs the compiled model",
            "edgetpu": {
                "prediction": {"mapped_ops": 3, "total_ops": 5, "kind": "prediction", "first_cpu_op": None},
                "compiler": {
                    "available": True,
                    "log": {
                        "mapped_ops": 4,
                        "cpu_ops": 1,
                        "on_chip_bytes": 2048,
                        "off_chip_bytes": None,
                        "operations": [{"op": "CONV_2D", "count": 4, "status": "Mapped to Edge TPU"}],
                    },
                },
            },
        },
    }
    page = render(_report(latency={"mcu-a": None, "mcu-b": None, "tpu": None}, targets=targets))
    tflm = _section(page, "TFLite Micro vs LiteRT")
    assert "not measured (TFLM cannot load the model: Node GATHER failed to prepare)" in tflm
    (row_b,) = [r for r in _rows(tflm) if "<td>mcu-b</td>" in r]
    assert "not measured" in row_b and "100.00%" in row_b and "4,096 B" in row_b
    latency = _section(page, "Latency: estimated or not measured")
    (row_a,) = [r for r in _rows(latency) if "<td>mcu-a</td>" in r]
    assert "not measured" in row_a and "a microcontroller is not measured from here" in row_a and " ms" not in row_a
    (row_b,) = [r for r in _rows(latency) if "<td>mcu-b</td>" in r]
    assert "no reason recorded" in row_b
    tpu = _section(page, "Edge TPU op mapping: tpu")
    assert '<span class="kind">prediction</span> 3 of 5 ops on the Edge TPU; no op ends' in tpu
    assert "4 ops on the Edge TPU, 1 on the CPU; on-chip memory 2,048 B, off-chip n/a" in tpu
    assert "<td>Mapped to Edge TPU</td>" in tpu
    assert "Compute per op" not in page and "Vela per layer" not in page  # nothing in the report: no section


def test_reports_without_the_new_keys_render_as_before() -> None:
    golden = json.loads((ROOT / "tests" / "data" / "golden" / "report_fixed.json").read_text())
    page = render(golden)
    assert "TFLite Micro vs LiteRT" not in page and "Edge TPU op mapping" not in page
    assert "Latency: estimated or not measured" in page  # its MCU target has latency null and a reason
