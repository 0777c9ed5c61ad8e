"""The float and int8 models run side by side: both results come back in order, and an error waits for the other."""

from __future__ import annotations

import threading
import time

import pytest

from converter.analysis.side_by_side import Pair, side_by_side


def test_both_run_at_once_and_come_back_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    both = threading.Barrier(2, timeout=10)  # each waits for the other: passes only if they overlap

    def first() -> str:
        both.wait()
        return "float"

    def second() -> str:
        both.wait()
        return "int8"

    with side_by_side() as pair:
        assert pair.run(first, second) == ("float", "int8")


def test_an_error_in_the_first_waits_for_the_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    finished: list[str] = []

    def second() -> None:
        time.sleep(0.2)
        finished.append("int8")

    def first() -> None:
        raise ValueError("refused")

    with side_by_side() as pair, pytest.raises(ValueError, match="refused"):
        pair.run(first, second)
    assert finished == ["int8"]


def test_one_core_runs_them_one_after_the_other(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    order: list[str] = []
    with side_by_side() as pair:
        assert isinstance(pair, Pair)
        pair.run(lambda: order.append("float"), lambda: order.append("int8"))
    assert order == ["float", "int8"]
