"""SSH destinations: nothing ssh could read as an option or paste into a shell gets through."""

from __future__ import annotations

from pathlib import Path

import pytest

from converter.boards.deploy import SSHTarget
from converter.boards.ssh_names import destination_problem, parse_destination
from converter.errors import UserInputError


@pytest.mark.parametrize(
    "host",
    ["fe80::1%;id", "pi@[fe80::1%a b]", "pi@fe80::1%`id`", "pi@[fe80::1%$(id)]", "x@[fe80::1%]"],
)
def test_an_ipv6_zone_with_shell_characters_is_refused(host: str) -> None:
    # ipaddress accepts anything after '%'; ssh < 9.6 pasted the host into a config's ProxyCommand (CVE-2023-51385).
    problem = destination_problem(host)
    assert problem is not None and "zone after '%' that is not a plain interface name" in problem
    with pytest.raises(UserInputError, match="not a plain interface name"):
        SSHTarget(host)


@pytest.mark.parametrize(
    ("host", "ssh", "scp"),
    [
        ("pi@[fe80::1%eth0]", "pi@fe80::1%eth0", "pi@[fe80::1%eth0]"),
        ("fe80::1%wlan0.5", "fe80::1%wlan0.5", "[fe80::1%wlan0.5]"),
        ("pi@192.168.1.20", "pi@192.168.1.20", "pi@192.168.1.20"),
    ],
)
def test_plain_destinations_pass(host: str, ssh: str, scp: str) -> None:
    dest = parse_destination(host)
    assert (dest.for_ssh(), dest.for_scp()) == (ssh, scp)


def test_host_keys_are_checked_whatever_the_user_config_says(tmp_path: Path) -> None:
    # Command-line options beat ~/.ssh/config, so a config with StrictHostKeyChecking=no cannot weaken it.
    argv = SSHTarget("pi@device", port=2222, known_hosts=tmp_path / "kh").ssh("true")
    pairs = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "-o"]
    assert "StrictHostKeyChecking=yes" in pairs and "BatchMode=yes" in pairs
    assert argv[-3:] == ["--", "pi@device", "true"]
