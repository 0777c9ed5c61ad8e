"""Accuracy measured on a device, and boards that were not reached, in the reports people read."""

from __future__ import annotations

from typing import Any

from converter.reports.html_report import html
from converter.reports.render import device_accuracy_lines, device_rows, markdown

ACC = {"metric": "top1", "unit": "fraction", "float": 0.9, "int8": 0.875, "drop": 0.025, "agreement": 0.96}


def _report() -> dict[str, Any]:
    lat = {"p50_ms": 2.0, "p90_ms": 2.5, "p99_ms": 3.0, "threads": 4, "delegate": "xnnpack"}
    return {
        "recipe": {"name": "tiny", "sha256": "0" * 64},
        "tool": {"version": "0", "interpreter": "x"},
        "artifacts": {"float": {"bytes": 4000, "sha256": "a" * 64}, "int8": {"bytes": 1000, "sha256": "b" * 64}},
        "calibration": {"method": "minmax", "samples": 10},
        "accuracy": {**ACC, "where": "host", "samples": 100},
        "latency": {
            "host": {"where": "host", "machine": {}, "int8": lat},
            "pi-a": {
                "where": "device",
                "machine": {},
                "int8": lat,
                "retries": [{"step": "run", "reason": "ssh lost the connection (exit 255)", "first_run": "killed 7"}],
            },
            "pi-c": None,
        },
        "targets": {
            "host": {"measured": True, "accuracy": {**ACC, "where": "host", "samples": 100}},
            "pi-a": {"measured": True, "device": "raspberry-pi-4", "accuracy": {**ACC, "where": "pi-a", "samples": 50}},
            "pi-c": {
                "measured": False,
                "unreachable": True,
                "reason": "unreachable: connect: refused",
                "accuracy": None,
            },
        },
        "gates": [],
    }


def test_device_rows_list_devices_and_unreachable_boards_only() -> None:
    rows = device_rows(_report())
    assert rows == [
        ["pi-a", "measured", "2.00 ms", "float 90.00%, int8 87.50%, drop 2.50 points", "50", "96.00%", "1 (run)"],
        ["pi-c", "unreachable: connect: refused", "n/a", "n/a", "n/a", "n/a", "0"],
    ]
    md = markdown(_report())
    assert "| pi-a | measured | 2.00 ms | float 90.00%, int8 87.50%, drop 2.50 points | 50 | 96.00% | 1 (run) |" in md
    assert "<h2>On devices</h2>" in html(_report())


def test_summary_line_for_device_accuracy() -> None:
    assert device_accuracy_lines(_report(), "pi-a") == [
        "    accuracy on pi-a (50 samples): float 90.00%, int8 87.50%, drop 2.50 points, agreement 96.00%"
    ]
    assert device_accuracy_lines(_report(), "host") == []
    assert device_accuracy_lines(_report(), "pi-c") == []


def test_host_only_reports_have_no_device_section() -> None:
    report = _report()
    report["latency"] = {"host": report["latency"]["host"]}
    report["targets"] = {"host": report["targets"]["host"]}
    assert device_rows(report) == [] and "On devices" not in markdown(report)
