"""A real OpenSSH server on 127.0.0.1 for deployment tests, with generated keys and known_hosts."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
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


@contextmanager
def loopback_sshd(folder: Path) -> Iterator[LoopbackSSH]:
    """Start sshd on a free loopback port; key-only login for the current user."""
    folder.mkdir(parents=True, exist_ok=True)
    host_key, client_key = folder / "host_ed25519", folder / "client_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    (folder / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
    port = _free_port()
    remote_tmp = folder / "remote-tmp"
    remote_tmp.mkdir()
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
        yield LoopbackSSH(getpass.getuser(), port, client_key, known_hosts, folder, remote_tmp)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
