"""ssh's command line: keep-alives and timeouts by default, the user's values winning, host-key opt-in."""

from __future__ import annotations

from pathlib import Path

import pytest

from converter.boards.deploy import SSHTarget
from converter.boards.ssh_options import disables_host_key_checking, ssh_option_problem
from converter.errors import UserInputError
from converter.recipe import load_recipe


def _pairs(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "-o"]


def test_keep_alives_and_timeouts_are_on_by_default() -> None:
    target = SSHTarget("pi@device")
    pairs = _pairs(target.ssh("true"))
    assert pairs == [
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        "ConnectTimeout=10",
        "ServerAliveInterval=15",
        "ServerAliveCountMax=3",
    ]
    assert target.timeout_s == 600.0
    assert _pairs(target.scp([Path("a")], "/tmp/x")) == pairs


def test_the_users_values_win_over_the_defaults() -> None:
    # ssh keeps the first value it reads for an option: ours must not come before the user's.
    options = ("ServerAliveInterval=2", "ConnectTimeout 3", "serveralivecountmax=1")
    pairs = _pairs(SSHTarget("pi@device", options=options).ssh("true"))
    assert pairs == ["BatchMode=yes", "StrictHostKeyChecking=yes", *options]


@pytest.mark.parametrize(
    "option",
    [
        "StrictHostKeyChecking=no",
        "StrictHostKeyChecking=accept-new",
        "stricthostkeychecking off",
        "UserKnownHostsFile=/dev/null",
        "GlobalKnownHostsFile=/dev/null",
        "CheckHostIP=no",
    ],
)
def test_options_that_turn_host_key_checking_off_need_the_flag(option: str) -> None:
    assert disables_host_key_checking(option)
    problem = ssh_option_problem(option, flag="--insecure-host-key")
    assert problem is not None and problem.startswith("not allowed: ")
    assert problem.endswith("pass --insecure-host-key as well, for this run only")
    assert "may never turn host-key checking off" in str(ssh_option_problem(option))  # a recipe: no way round
    with pytest.raises(UserInputError, match="ssh option"):
        SSHTarget("pi@device", options=(option,))
    assert ssh_option_problem(option, insecure_ok=True) is None
    argv = SSHTarget("pi@device", options=(option,), insecure_host_key=True, known_hosts=Path("kh")).ssh("true")
    assert argv[-5:] == ["-o", option, "--", "pi@device", "true"]
    key = option.replace(" ", "=").split("=")[0].lower()
    same = [p for p in _pairs(argv) if p.replace(" ", "=").split("=")[0].lower() == key]
    assert same == [option], argv  # none of ours: ssh takes the first value, ours would win over the user's


def test_safe_values_of_those_options_stay_allowed() -> None:
    for option in ("CheckHostIP=yes", "StrictHostKeyChecking=yes"):
        assert not disables_host_key_checking(option)
    assert ssh_option_problem("CheckHostIP=yes") is None


def test_recipe_target_timeout(tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes((Path(__file__).resolve().parents[1] / "data" / "add_one_float.tflite").read_bytes())
    (tmp_path / "x.npy").write_bytes(b"")
    text = (
        "version: 1\nname: t\nmodel: m.tflite\ndata: {calibration: {path: x.npy}}\n"
        "targets: [host, {device: raspberry-pi-4, host: pi@b, timeout_s: TIMEOUT}]\n"
    )
    path = tmp_path / "r.yaml"
    path.write_text(text.replace("TIMEOUT", "120"))
    assert load_recipe(path, check_files=False).target_specs()[1].timeout_s == 120.0
    path.write_text(text.replace("TIMEOUT", "0"))
    with pytest.raises(UserInputError, match=r"r\.yaml: targets\[1\]\.timeout_s: must be at least 1, got 0"):
        load_recipe(path, check_files=False)
