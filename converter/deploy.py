"""Run the runtime bundle on a device over SSH, with the system OpenSSH client.

Using ``ssh``/``scp`` themselves means ``~/.ssh/config``, agents, jump hosts and known
hosts work as they do for the user. Host keys are verified: ``BatchMode=yes`` turns an
unknown or changed key into an error instead of a prompt, and ``StrictHostKeyChecking=yes`` is
passed explicitly, so a user config with ``accept-new`` or ``no`` cannot weaken it. Every
remote argument is shell-quoted (ssh hands the remote side one command line). A step that
loses its connection (ssh exit 255) is retried once; the remote working folder is removed at
the end unless ``keep``.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import DeployError, UserInputError
from .ssh_names import parse_destination
from .ssh_options import ssh_option_problem

log = logging.getLogger(__name__)

SSH_CONNECTION_ERROR = 255


@dataclass(frozen=True)
class SSHTarget:
    """How to reach a device: ``user@host`` plus optional port, key and known-hosts file."""

    destination: str
    port: int | None = None
    identity: Path | None = None
    known_hosts: Path | None = None
    options: tuple[str, ...] = ()  # extra "-o Key=Value" settings, e.g. ProxyJump=gw
    connect_timeout: int = 10
    command_timeout: float = 600.0
    python: str = "python3"

    def __post_init__(self) -> None:
        # A malformed destination must not reach ssh: it would read "-o..." as an option.
        try:
            parse_destination(self.destination)
        except ValueError as e:
            raise UserInputError(f"SSH host {e}") from e
        # The last line of defence for options: recipes and the CLI check them earlier with a better "where".
        for option in self.options:
            problem = ssh_option_problem(option)
            if problem:
                raise UserInputError(f"ssh option {option!r}: {problem}")

    def _common(self, port_flag: str) -> list[str]:
        # Options on the command line beat ~/.ssh/config: an unknown or changed host key is always an error.
        args = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
        args += ["-o", f"ConnectTimeout={self.connect_timeout}"]
        if self.port:
            args += [port_flag, str(self.port)]
        if self.identity:
            args += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
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


@dataclass
class RemoteSession:
    """A working folder on the device; every call names its step in errors."""

    target: SSHTarget
    workdir: str = ""
    log_lines: list[str] = field(default_factory=list)

    def call(self, step: str, argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv``; retry once when ssh itself lost the connection; raise ``DeployError``."""
        for attempt in (1, 2):
            start = time.perf_counter()
            try:
                result = subprocess.run(
                    argv, capture_output=True, text=True, timeout=timeout or self.target.command_timeout, check=False
                )
            except subprocess.TimeoutExpired as e:
                raise DeployError(step, f"{self.target.destination}: no answer within {e.timeout:.0f}s") from e
            except FileNotFoundError as e:
                raise DeployError(step, f"'{argv[0]}' is not installed here (the OpenSSH client is needed)") from e
            self.log_lines.append(f"{step}: exit {result.returncode} in {time.perf_counter() - start:.1f}s")
            if result.returncode != SSH_CONNECTION_ERROR or attempt == 2 or _hint(result.stderr):
                return result
            log.warning("%s: connection to %s lost; retrying once", step, self.target.destination)
        raise AssertionError("unreachable")  # pragma: no cover

    def check(self, step: str, result: subprocess.CompletedProcess[str]) -> str:
        if result.returncode != 0:
            stderr = result.stderr.strip().splitlines()
            last = stderr[-1] if stderr else f"exit code {result.returncode}"
            raise DeployError(step, f"{self.target.destination}: {last}{_hint(result.stderr)}")
        return result.stdout

    def run(self, step: str, *remote: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        return self.call(step, self.target.ssh(*remote), timeout)

    def copy(self, files: Sequence[Path]) -> None:
        self.check("copy", self.call("copy", self.target.scp(files, self.workdir)))


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
        raise DeployError("connect", f"{target.destination}: unexpected answer to mktemp: {out!r}")
    try:
        yield session
    finally:
        if keep:
            log.info("kept %s:%s", target.destination, session.workdir)
        else:
            result = session.run("cleanup", "rm", "-rf", "--", session.workdir, timeout=target.connect_timeout + 20)
            if result.returncode != 0:
                log.warning(
                    "cleanup: could not remove %s on %s: %s", session.workdir, target.destination, result.stderr.strip()
                )
