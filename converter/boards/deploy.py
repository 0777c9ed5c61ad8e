"""Run the runtime bundle on a device over SSH, with the system OpenSSH client.

Using ``ssh``/``scp`` themselves means ``~/.ssh/config``, agents, jump hosts and known
hosts work as they do for the user. Host keys are verified: ``BatchMode=yes`` turns an
unknown or changed key into an error instead of a prompt, and ``StrictHostKeyChecking=yes`` is
passed explicitly, so a user config with ``accept-new`` or ``no`` cannot weaken it (only
``--insecure-host-key`` with an explicit ``--ssh-option`` can; ssh's warnings are then shown).
Every remote argument is shell-quoted (ssh hands the remote side one command line).

A frozen board must not hang the run: ssh sends keep-alives (``ServerAliveInterval`` 15 s,
``ServerAliveCountMax`` 3: a silent peer is dropped after about 45 s) and every board has a
deadline (``timeout_s``, 600 s unless the recipe target, fleet file or ``--timeout`` says
otherwise) that covers connect, copy and run; the error names the step that stalled and the board.

A step that loses its connection (ssh exit 255) is retried once. The measurement is not retried
blindly: the runtime writes nothing until it ends, so after a lost connection it may still be
running on the board. Its PID is in the working folder (``run.pid``), and before the second run
that process is killed; a retry is recorded (``RemoteSession.retries``) and said. The working
folder is removed at the end unless ``keep``, after ending anything still running in it.
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from converter.boards.ssh_names import parse_destination
from converter.boards.ssh_options import INSECURE_FLAG, option_key, ssh_option_problem
from converter.errors import DeployError, UserInputError

log = logging.getLogger(__name__)

SSH_CONNECTION_ERROR = 255
DEFAULT_TIMEOUT_S = 600.0
KEEPALIVE_INTERVAL_S = 15
KEEPALIVE_COUNT = 3
CLEANUP_ALLOWANCE_S = 20.0  # beyond connect_timeout: removing the folder after the deadline ran out
PID_FILE = "run.pid"

# Remote snippets, run as ``sh -c SCRIPT sh WORKDIR ...``: the folder is $1, never pasted into the script.
# The run writes its PID and process group (sshd starts each session in a group of its own, so a
# wrapper script standing in for python, or a child the runtime starts, goes too), then execs the runtime.
_RUN = (
    "d=$1; shift; g=; [ -r /proc/$$/stat ] && read -r _ _ _ _ g _ < /proc/$$/stat; "
    'echo "$$ $g" > "$d/run.pid" && exec "$@"'
)
# Ends a runtime still running from an earlier attempt (SIGKILL to its group, then waits up to 5 s);
# prints what it found: none (never started), ended (finished by itself), killed, or alive (could not).
# ``kill -0 -G`` rather than ``kill -0 -- -G``: dash's kill takes no "--".
_END = (
    'f=$1/run.pid; [ -f "$f" ] || { echo none; exit 0; }; read -r p g < "$f"; rm -f "$f"; '
    'case "$p" in ""|*[!0-9]*) echo none; exit 0;; esac; '
    'case "$g" in ""|0|1|*[!0-9]*) g=;; esac; '
    'alive() { kill -0 "$p" 2>/dev/null || { [ -n "$g" ] && kill -0 -"$g" 2>/dev/null; }; }; '
    'alive || { echo ended "$p"; exit 0; }; '
    '[ -n "$g" ] && kill -KILL -"$g" 2>/dev/null; kill -KILL "$p" 2>/dev/null; i=0; '
    "while alive && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; "
    'if alive; then echo alive "$p"; else echo killed "$p"; fi'
)
_CLEANUP = "(" + _END + '); rm -rf -- "$1"'  # the subshell: an "exit" in _END must not skip the removal

# What ssh itself says when host-key checking let something through (its own lines on stderr).
_SSH_WARNING = re.compile(
    r"^(@+\s*)?WARNING\b|^Warning:|SOMEONE IS DOING SOMETHING NASTY|eavesdropping on you|"
    r"host key for .* has changed|Offending .* key in|Add correct host key|to avoid man-in-the-middle",
)


class Unreachable(DeployError):
    """The device could not be reached, or stopped answering: connect failed, a step stalled, the link was lost.

    A fleet marks such a board unreachable instead of failing the run (``fleet.run_fleet``).
    """


@dataclass(frozen=True)
class SSHTarget:
    """How to reach a device: ``user@host`` plus optional port, key and known-hosts file."""

    destination: str
    port: int | None = None
    identity: Path | None = None
    known_hosts: Path | None = None
    options: tuple[str, ...] = ()  # extra "-o Key=Value" settings, e.g. ProxyJump=gw
    connect_timeout: int = 10
    timeout_s: float = DEFAULT_TIMEOUT_S  # the whole board: connect, copy and run (cleanup gets a little more)
    python: str = "python3"
    name: str | None = None  # the board's name in messages (a fleet's board, or the device profile)
    insecure_host_key: bool = False  # --insecure-host-key: options that turn host-key checking off are allowed

    def __post_init__(self) -> None:
        # A malformed destination must not reach ssh: it would read "-o..." as an option.
        try:
            parse_destination(self.destination)
        except ValueError as e:
            raise UserInputError(f"SSH host {e}") from e
        if not self.timeout_s > 0:
            raise UserInputError(f"SSH timeout for {self.destination}: expected seconds above 0, got {self.timeout_s}")
        # The last line of defence for options: recipes and the CLI check them earlier with a better "where".
        for option in self.options:
            problem = ssh_option_problem(option, self.insecure_host_key, INSECURE_FLAG)
            if problem:
                raise UserInputError(f"ssh option {option!r}: {problem}")

    @property
    def label(self) -> str:
        """The board as messages name it: ``pi-a (pi@10.0.0.7)``, or the destination alone."""
        return f"{self.name} ({self.destination})" if self.name else self.destination

    def _common(self, port_flag: str) -> list[str]:
        # ssh takes the first value it sees for an option, so ours are left out where the user gave one
        # (ConnectTimeout, keep-alives; StrictHostKeyChecking only with --insecure-host-key).
        own = {option_key(o) for o in self.options}
        defaults = [
            ("batchmode", "BatchMode=yes"),
            ("stricthostkeychecking", "StrictHostKeyChecking=yes"),
            ("connecttimeout", f"ConnectTimeout={self.connect_timeout}"),
            ("serveraliveinterval", f"ServerAliveInterval={KEEPALIVE_INTERVAL_S}"),
            ("serveralivecountmax", f"ServerAliveCountMax={KEEPALIVE_COUNT}"),
        ]
        args: list[str] = []
        for key, option in defaults:
            if key not in own:
                args += ["-o", option]
        if self.port:
            args += [port_flag, str(self.port)]
        if self.identity:
            args += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts and "userknownhostsfile" not in own:
            args += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        for option in self.options:
            args += ["-o", option]
        return args

    def ssh(self, *remote: str) -> list[str]:
        """argv running ``remote`` (quoted word by word) on the device."""
        return ["ssh", *self._common("-p"), "--", parse_destination(self.destination).for_ssh(), shlex.join(remote)]

    def scp(self, sources: Sequence[Path], remote_dir: str) -> list[str]:
        """argv copying local files into a remote folder."""
        remote = f"{parse_destination(self.destination).for_scp()}:{remote_dir}/"
        return ["scp", "-q", *self._common("-P"), "--", *map(str, sources), remote]


def _hint(stderr: str) -> str:
    text = stderr.lower()
    if "host key verification failed" in text or "no matching host key" in text:
        return (
            " -- the device's host key is not in your known_hosts (or changed); check its fingerprint, "
            "then add it, e.g. ssh-keyscan -p PORT HOST >> ~/.ssh/known_hosts"
        )
    if "permission denied" in text:
        return " -- authentication failed; check the user name and that your key is in the device's authorized_keys"
    if "connection refused" in text or "timed out" in text or "no route" in text or "could not resolve" in text:
        return " -- the device is not reachable on that address and port"
    return ""


def _last_line(stderr: str, code: int) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {code}"


@dataclass
class RemoteSession:
    """A working folder on the device; every call names its step in errors and keeps to the board's deadline."""

    target: SSHTarget
    workdir: str = ""
    log_lines: list[str] = field(default_factory=list)
    retries: list[dict[str, Any]] = field(default_factory=list)  # recorded in the result: latency.<target>.retries
    warnings: list[str] = field(default_factory=list)  # ssh's own warnings, shown and recorded
    started: float = field(default_factory=time.monotonic)

    @property
    def deadline(self) -> float:
        return self.started + self.target.timeout_s

    def _stalled(self, step: str, waited: float, board_limit: bool) -> Unreachable:
        done = ", ".join(self.log_lines) or "none"
        why = (
            f"the board's timeout of {self.target.timeout_s:g} s ran out (timeout_s in the recipe target or fleet "
            "file, or --timeout; keep-alives had not dropped the connection, so the device answered but the step "
            "did not finish)"
            if board_limit
            else "the step's own limit (ConnectTimeout + 20 s) ran out"
        )
        return Unreachable(
            step,
            f"{self.target.label}: the {step} step stalled: no answer within {waited:.0f} s; {why}. "
            f"Steps before it: {done}",
        )

    def _warn(self, stderr: str) -> None:
        for raw in stderr.splitlines():
            line = raw.strip().strip("@").strip()  # ssh frames its loudest warning in '@' signs
            if line and _SSH_WARNING.search(line) and line not in self.warnings:
                self.warnings.append(line)
                log.warning("warning: %s: ssh: %s", self.target.label, line)

    def _once(self, step: str, argv: list[str], cap: float | None) -> subprocess.CompletedProcess[str]:
        remaining = self.deadline - time.monotonic()
        if step == "cleanup":  # after a stall the folder is still removed, within a short allowance
            remaining = max(remaining, 0.0) + self.target.connect_timeout + CLEANUP_ALLOWANCE_S
        if remaining <= 0:
            raise self._stalled(step, 0, board_limit=True)
        limit = min(cap, remaining) if cap is not None else remaining
        start = time.perf_counter()
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False)
        except subprocess.TimeoutExpired as e:
            self._warn(e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or ""))
            raise self._stalled(step, limit, board_limit=cap is None or remaining <= cap) from e
        except FileNotFoundError as e:
            raise DeployError(step, f"'{argv[0]}' is not installed here (the OpenSSH client is needed)") from e
        self.log_lines.append(f"{step} {time.perf_counter() - start:.1f} s (exit {result.returncode})")
        self._warn(result.stderr)
        return result

    def call(self, step: str, argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv``; retry once when ssh itself lost the connection; raise ``DeployError``.

        Only for steps that can run twice (connect, copy, cleanup); the measurement goes through ``run_runtime``.
        """
        result = self._once(step, argv, timeout)
        if result.returncode != SSH_CONNECTION_ERROR or _hint(result.stderr):
            return result
        reason = f"ssh lost the connection (exit 255: {_last_line(result.stderr, result.returncode)})"
        log.warning("warning: %s: %s: %s; retrying once", self.target.label, step, reason)
        self.retries.append({"step": step, "reason": reason})
        return self._once(step, argv, timeout)

    def check(self, step: str, result: subprocess.CompletedProcess[str]) -> str:
        if result.returncode != 0:
            last = _last_line(result.stderr, result.returncode)
            lost = step == "connect" or result.returncode == SSH_CONNECTION_ERROR
            raise (Unreachable if lost else DeployError)(step, f"{self.target.label}: {last}{_hint(result.stderr)}")
        return result.stdout

    def run(self, step: str, *remote: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        return self.call(step, self.target.ssh(*remote), timeout)

    def copy(self, files: Sequence[Path]) -> None:
        self.check("copy", self.call("copy", self.target.scp(files, self.workdir)))

    def end_run(self, step: str) -> str:
        """Kill the runtime an earlier attempt started, if it still runs; says what happened ("killed 123", ...)."""
        result = self._once(step, self.target.ssh("sh", "-c", _END, "sh", self.workdir), self._short())
        answer = result.stdout.strip().splitlines()[-1] if result.returncode == 0 and result.stdout.strip() else ""
        if not answer or answer.startswith("alive"):
            raise DeployError(
                "run",
                f"{self.target.label}: the connection was lost during the measurement and the first run could not "
                f"be ended on the device ({answer or _last_line(result.stderr, result.returncode)}); it was not "
                "started again, so two runs cannot overlap and skew each other's timing -- check the device, "
                "then run again",
            )
        return answer

    def _short(self) -> float:
        return self.target.connect_timeout + CLEANUP_ALLOWANCE_S

    def run_runtime(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run the measurement (``command`` on the device) with its PID in the working folder.

        After a lost connection the first run may still be measuring on the device: it is killed
        (and waited for) before the one retry, so two runtimes never overlap; the retry is recorded.
        """
        argv = self.target.ssh("sh", "-c", _RUN, "sh", self.workdir, *command)
        result = self._once("run", argv, None)
        if result.returncode != SSH_CONNECTION_ERROR or _hint(result.stderr):
            return result
        reason = f"ssh lost the connection (exit 255: {_last_line(result.stderr, result.returncode)})"
        ended = self.end_run("run")
        what = {
            "killed": "the first run was still measuring on the device and was killed",
            "ended": "the first run had already ended on the device",
            "none": "the first run had not started on the device",
        }[ended.split()[0]]
        self.retries.append({"step": "run", "reason": reason, "first_run": ended})
        log.warning(
            "warning: %s: run: %s; %s (%s) before measuring again: the figures come from the second run only",
            self.target.label,
            reason,
            what,
            ended,
        )
        return self._once("run", argv, None)


@contextmanager
def remote_session(target: SSHTarget, keep: bool = False) -> Iterator[RemoteSession]:
    """Connect, make a private working folder, yield, and remove it again (unless ``keep``)."""
    session = RemoteSession(target)
    # -t: under the device's $TMPDIR when set, else /tmp (GNU coreutils and BusyBox alike).
    out = session.check(
        "connect",
        session.run("connect", "mktemp", "-d", "-t", "edgeconv.XXXXXXXX", timeout=target.connect_timeout + 20),
    )
    session.workdir = out.strip().splitlines()[-1] if out.strip() else ""
    if not (session.workdir.startswith("/") and PurePosixPath(session.workdir).name.startswith("edgeconv.")):
        raise DeployError("connect", f"{target.label}: unexpected answer to mktemp: {out!r}")
    try:
        yield session
    finally:
        if keep:
            log.info("kept %s:%s", target.destination, session.workdir)
        else:
            _cleanup(session)


def _cleanup(session: RemoteSession) -> None:
    """End a runtime still running (after a stall), then remove the folder; a failure here is only a warning."""
    target = session.target
    try:
        result = session.run("cleanup", "sh", "-c", _CLEANUP, "sh", session.workdir, timeout=session._short())
    except DeployError as e:
        log.warning("warning: cleanup: could not remove %s on %s: %s", session.workdir, target.label, e)
        return
    if result.returncode != 0:
        log.warning(
            "warning: cleanup: could not remove %s on %s: %s", session.workdir, target.label, result.stderr.strip()
        )
    elif result.stdout.strip().startswith("killed"):
        log.warning("warning: cleanup: %s: ended the runtime still running there (%s)", target.label, result.stdout)
