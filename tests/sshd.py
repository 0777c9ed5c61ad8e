"""A real OpenSSH server on 127.0.0.1 for deployment tests, with generated keys and known_hosts.

``loopback_sshd(folder, user=...)`` logs in as another user (root can create one: ``board_user``),
so several servers on several ports make a small fleet of "boards", each with its own user and
its own Python (``board_python``: a venv with only numpy and ai-edge-litert, no TensorFlow).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass(frozen=True)
class LoopbackSSH:
    """How to reach the test server."""

    user: str
    port: int
    identity: Path
    known_hosts: Path
    folder: Path
    tmp: Path  # the sessions' $TMPDIR: the remote working folders land here, not in the machine's /tmp
    process: subprocess.Popen[bytes] | None = None  # the listening sshd: stop it to make the "board" unreachable

    def stop(self) -> None:
        """Stop the server (a board switched off): connections are refused from now on."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def sessions(self) -> list[int]:
        """PIDs of the per-connection sshd processes (the listener's descendants), to cut a connection.

        Logging in as another user, sshd keeps a privileged monitor and an unprivileged child per connection.
        """
        if self.process is None:
            return []
        table = subprocess.run(["ps", "-eo", "pid=,ppid=,comm="], capture_output=True, text=True, check=True).stdout
        children: dict[int, list[tuple[int, str]]] = {}
        for line in table.splitlines():
            pid, ppid, comm = line.split(None, 2)
            children.setdefault(int(ppid), []).append((int(pid), comm.strip()))
        found: list[int] = []
        todo = [self.process.pid]
        while todo:
            for child, name in children.get(todo.pop(), []):
                if name.startswith("sshd"):
                    found.append(child)
                    todo.append(child)
        return found

    @property
    def destination(self) -> str:
        return f"{self.user}@127.0.0.1"


def sshd_available() -> str | None:
    """None when a loopback sshd can run here, else the reason it cannot."""
    if not Path(SSHD).is_file():
        return f"{SSHD} not installed (apt-get install openssh-server; .ci/run does)"
    if not shutil.which("ssh") or not shutil.which("scp"):
        return "the OpenSSH client (ssh, scp) is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def can_add_users() -> str | None:
    """None when this process can create login users (root with useradd), else why not."""
    if os.geteuid() != 0:
        return "creating a user for each board needs root"
    if not shutil.which("useradd") or not shutil.which("userdel"):
        return "useradd/userdel are not installed"
    return None


@contextmanager
def board_user(name: str, home: Path) -> Iterator[str]:
    """A login user (key-only: password '*', so sshd does not treat it as locked) that is removed afterwards."""
    subprocess.run(["userdel", name], capture_output=True, check=False)  # a leftover of an interrupted run
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", "-p", "*", name], check=True)
    shutil.chown(home, name)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


def _world_usable(path: Path) -> bool:
    """Every folder on the way is searchable by others and the file executable by them (another user runs it)."""
    real = path.resolve()
    return all(p.stat().st_mode & 0o001 for p in [real, *real.parents]) and bool(real.stat().st_mode & 0o001)


def base_python() -> Path | None:
    """A Python of this one's version that other users can run (a venv's base may sit in root's home)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    places = (Path(sys.base_prefix) / "bin", Path("/usr/bin"), Path("/usr/local/bin"))
    for candidate in (folder / version for folder in places):
        if candidate.is_file() and _world_usable(candidate):
            return candidate
    return None


BOARD_PACKAGES = ("numpy", "ai_edge_litert")


def packages_usable_by_others(packages: tuple[str, ...] = BOARD_PACKAGES) -> str | None:
    """None when other users can read these packages where they are installed, else why not.

    A virtualenv in a private folder (``mktemp -d`` makes it 0700) cannot serve boards that log in as other users.
    """
    import importlib

    for name in packages:
        folder = Path(str(importlib.import_module(name).__file__)).parent.resolve()
        if not all(p.stat().st_mode & 0o005 == 0o005 for p in [folder, *folder.parents]):
            return f"{name} is installed under a folder other users cannot read ({folder})"
    return None


def board_python(folder: Path, base: Path, packages: tuple[str, ...] = BOARD_PACKAGES) -> Path:
    """A venv of ``base`` that sees only ``packages`` of this environment (links through a .pth file), no TensorFlow."""
    import importlib

    subprocess.run([str(base), "-m", "venv", "--without-pip", str(folder / "venv")], check=True)
    only = folder / "only"
    only.mkdir()
    for name in packages:
        module = importlib.import_module(name)
        (only / name).symlink_to(Path(str(module.__file__)).parent)
    site = next((folder / "venv" / "lib").glob("python*/site-packages"))
    (site / "only.pth").write_text(f"{only}\n")
    return folder / "venv" / "bin" / "python"


@contextmanager
def loopback_sshd(folder: Path, user: str | None = None) -> Iterator[LoopbackSSH]:
    """Start sshd on a free loopback port; key-only login for ``user`` (default: the current user)."""
    folder.mkdir(parents=True, exist_ok=True)
    host_key, client_key = folder / "host_ed25519", folder / "client_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    (folder / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
    port = _free_port()
    remote_tmp = folder / "remote-tmp"
    remote_tmp.mkdir()
    if user is not None:
        shutil.chown(remote_tmp, user)
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                f"PidFile {folder / 'sshd.pid'}",
                "Subsystem sftp internal-sftp",
                "LogLevel ERROR",
                f"SetEnv TMPDIR={remote_tmp}",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.with_suffix('.pub').read_text()}")
    log = (folder / "sshd.log").open("w")
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not start: {(folder / 'sshd.log').read_text()}") from None
                time.sleep(0.1)
        yield LoopbackSSH(user or getpass.getuser(), port, client_key, known_hosts, folder, remote_tmp, process)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
        log.close()
