"""A fleet of boards: a YAML file naming each board, and measurements on all of them at once.

The fleet file is validated like a recipe (unknown keys are errors with "did you mean", every
error names the file and the key path, exit 2); it may not weaken host-key checking either,
since it lives in the repository beside the recipes. Boards are measured concurrently
(``--jobs`` at a time, in threads: the work is ssh/scp child processes), each within its own
deadline (``timeout_s``), and one board's failure never stops the others.

A board that cannot be reached (connect failed, a step stalled, the connection was lost twice)
is ``unreachable``: marked with the reason, and not a failure by itself. It fails the run only
when a budget the user set (the recipe's, or the recipe's target for that device) needs its
figure; a device profile's default budget is then skipped, with the reason (``unreachable_verdict``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from converter.boards.deploy import Unreachable
from converter.boards.ssh_names import EXAMPLES, destination_problem
from converter.boards.ssh_options import ssh_option_problem
from converter.devices import available_devices, devices_dir, load_device
from converter.errors import ConverterError, RecipeError
from converter.recipe import TargetSpec, TargetValueError
from converter.schema import Where, build, suggest
from converter.yamlio import load_yaml_file

log = logging.getLogger(__name__)

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
DEFAULT_JOBS = 8  # boards measured at once: each is an ssh process waiting on its device, not local CPU

MEASURED, UNREACHABLE, FAILED = "measured", "unreachable", "failed"
T = TypeVar("T")


@dataclass(frozen=True)
class Board:
    """One board of the fleet: its name in reports, its device profile, and how to reach it."""

    name: str = field(
        metadata={
            "doc": "The board's name: its key in report.json (latency.<name>, targets.<name>)",
            "pattern": NAME_PATTERN,
            "pattern_doc": "letters, digits, '.', '_' and '-', starting with a letter or digit",
        }
    )
    device: str = field(metadata={"doc": "Device profile name from devices/ (an ssh device)"})
    host: str = field(metadata={"doc": "user@host to reach the board over SSH"})
    port: int | None = field(default=None, metadata={"doc": "SSH port", "min": 1, "max": 65535})
    identity: Path | None = field(default=None, metadata={"doc": "SSH private key file"})
    known_hosts: Path | None = field(default=None, metadata={"doc": "known_hosts file that verifies the host key"})
    python: str | None = field(default=None, metadata={"doc": "Python on the board (default: the profile's)"})
    timeout_s: float | None = field(
        default=None,
        metadata={"doc": "Seconds this board may take (connect, copy, run); default 600", "min": 1, "max": 86400},
    )
    ssh_options: tuple[str, ...] = field(
        default=(), metadata={"doc": "Extra ssh -o options from the safe list (as a recipe target's)"}
    )

    def __post_init__(self) -> None:
        for i, option in enumerate(self.ssh_options):
            problem = ssh_option_problem(option)  # never insecure: the file arrives in pull requests
            if problem:
                raise TargetValueError(f"ssh_options[{i}]: {option!r}: {problem}")

    def spec(self, extra_options: tuple[str, ...] = (), timeout_s: float | None = None) -> TargetSpec:
        """The board as a recipe target: ``extra_options`` and ``timeout_s`` come from the command line."""
        return TargetSpec(
            self.device,
            self.host,
            self.port,
            self.identity,
            self.known_hosts,
            self.ssh_options + extra_options,
            self.python,
            timeout_s or self.timeout_s,
        )


@dataclass(frozen=True)
class FleetFile:
    """A fleet file: the boards to measure on, each by name."""

    boards: tuple[Board, ...] = field(metadata={"doc": "The boards, each with name, device and host"})


def load_fleet(path: Path) -> tuple[Board, ...]:
    """Read and check a fleet file; every problem is a ``RecipeError`` (exit 2) naming the file and key path."""
    raw = load_yaml_file(path, "fleet file")
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{path}: expected a mapping with a 'boards' list at the top level, got {type(raw).__name__}; "
            "e.g. boards: [{name: pi-a, device: raspberry-pi-4, host: pi@10.0.0.7}]"
        )
    where = Where(str(path), path.resolve().parent)
    fleet: FleetFile = build(FleetFile, raw, where)
    if not fleet.boards:
        raise where.key("boards").error("empty list; name at least one board (name, device, host)")
    known = available_devices()
    seen: dict[str, int] = {}
    for i, board in enumerate(fleet.boards):
        at = where.key("boards").key(i)
        if board.name in seen:
            raise at.key("name").error(f"'{board.name}' is used twice (also boards[{seen[board.name]}]); names differ")
        seen[board.name] = i
        if board.name in known and board.name != board.device:
            raise at.key("name").error(
                f"'{board.name}' is the name of another device profile: report.json keys targets by name, so the "
                f"board would overwrite that target's figures; name the board after itself, e.g. {board.device}-1"
            )
        if board.device not in known:
            raise at.key("device").error(
                f"unknown device '{board.device}'{suggest(board.device, known)}; profiles in {devices_dir()}: "
                f"{', '.join(known)}"
            )
        profile = load_device(board.device)
        if profile.kind != "ssh":
            raise at.key("device").error(
                f"'{board.device}' is a {profile.kind} device; a fleet holds boards reached over SSH"
            )
        problem = destination_problem(board.host)
        if problem:
            raise at.key("host").error(
                f"{board.host!r} is not an SSH destination: {problem}; write [user@]host, {EXAMPLES}"
            )
        for key in ("identity", "known_hosts"):
            file = getattr(board, key)
            if file is not None and not file.is_file():
                raise at.key(key).error(
                    f"not found: {file}; check the path (relative paths start at the fleet file's folder)"
                )
    return fleet.boards


@dataclass(frozen=True)
class BoardOutcome(Generic[T]):
    """What happened on one board: measured (``value``), unreachable or failed (``reason``, ``exit_code``)."""

    board: Board
    status: str
    value: T | None = None
    reason: str | None = None
    exit_code: int = 0
    seconds: float = 0.0


def run_fleet(boards: tuple[Board, ...], measure: Callable[[Board], T], jobs: int) -> list[BoardOutcome[T]]:
    """``measure`` every board, ``jobs`` at a time; in the fleet's order. A bug (not a ``ConverterError``) re-raises."""

    def one(board: Board) -> BoardOutcome[T]:
        start = time.monotonic()
        try:
            value = measure(board)
        except Unreachable as e:
            log.warning("%s: unreachable: %s", board.name, e)
            return BoardOutcome(board, UNREACHABLE, reason=str(e), seconds=time.monotonic() - start)
        except ConverterError as e:
            log.warning("%s: failed: %s", board.name, e)
            return BoardOutcome(board, FAILED, reason=str(e), exit_code=e.exit_code, seconds=time.monotonic() - start)
        return BoardOutcome(board, MEASURED, value=value, seconds=time.monotonic() - start)

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(boards))), thread_name_prefix="board") as pool:
        futures = [pool.submit(one, board) for board in boards]
        return [f.result() for f in futures]


def unreachable_verdict(report: dict[str, Any], board: str) -> tuple[bool, str]:
    """Whether an unmeasured board fails the run, and why: only a budget the user set that needs its figure does."""
    from converter.reports.gates import budget_rows

    rows = [(name, source) for name, target, _raw, source in budget_rows(report) if target == board]
    own = [f"{name} ({source})" for name, source in rows if source != "device profile"]
    profile = [name for name, source in rows if source == "device profile"]
    if own:
        return True, f"a failure: the recipe's {', '.join(own)} needs its figure"
    skipped = f" (the device profile's {', '.join(profile)} is skipped)" if profile else ""
    return False, f"not a failure: no budget of the recipe needs its figure{skipped}"
