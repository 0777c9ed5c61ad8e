"""Recipes run no code, and every bad recipe is exit 2 before any work.

A recipe arrives in a pull request and CI runs it: ssh options that run local commands,
host names ssh reads as options, files that exhaust the parser, numbers that validate but
crash later, and paths that do not exist are all refused by ``validate`` and ``convert``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from converter.boards.deploy import SSHTarget
from converter.cli.main import main
from converter.errors import RecipeError, UserInputError
from converter.recipe import TargetSpec, load_recipe
from tests.conftest import ROOT

MODEL = ROOT / "tests" / "data" / "add_one_float.tflite"
UNREACHABLE = "pi@192.0.2.1"  # TEST-NET-1: never answers; ProxyCommand runs before any connection


def _recipe(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    import numpy as np

    np.savez(tmp_path / "cal.npz", x=np.zeros((4, 2), dtype=np.float32))
    recipe: dict[str, Any] = {
        "version": 1,
        "name": "safety",
        "model": str(MODEL),
        "data": {"calibration": {"path": str(tmp_path / "cal.npz")}},
    }
    recipe.update(extra)
    return recipe


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _user_error(result: Result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output and "unexpected failure" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    return result.stderr


# --- 1. ssh options and hosts ------------------------------------------------------------------


def _proxy_target(marker: Path) -> dict[str, Any]:
    return {
        "device": "raspberry-pi-4",
        "host": UNREACHABLE,
        "ssh_options": [f"ProxyCommand=sh -c 'touch {marker}; exit 1'"],
    }


@pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed")
def test_the_threat_is_real_ssh_runs_a_proxycommand_before_connecting(tmp_path: Path) -> None:
    """What today's code handed to ssh (our argv, the recipe's option) runs the command: this is what we refuse."""
    marker = tmp_path / "ran"
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=3", "-o", f"ProxyCommand=sh -c 'touch {marker}'"]
    subprocess.run([*argv, "--", UNREACHABLE, "true"], capture_output=True, timeout=30, check=False)
    assert marker.exists()


@pytest.mark.parametrize("command", ["validate", "convert"])
def test_proxycommand_recipe_is_refused_and_runs_nothing(
    command: str, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    recipe = write_recipe(_recipe(tmp_path, targets=["host", _proxy_target(marker)]))
    out = tmp_path / "out"
    args = ["--out", str(out)] if command == "convert" else []
    stderr = _user_error(_run(command, "--recipe", str(recipe), *args))
    assert (
        f"recipe.yaml: targets[1]: ssh_options[0]: \"ProxyCommand=sh -c 'touch {marker}; exit 1'\": not allowed: "
        "ProxyCommand runs a local command; recipes arrive in pull requests and CI runs them; put it in your own "
        "~/.ssh/config, which edgeconv leaves to you" in " ".join(stderr.split())
    )
    assert not marker.exists()
    assert not out.exists()


def test_bench_ssh_option_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = _run("bench", "--model", str(MODEL), "--host", UNREACHABLE, "--ssh-option", f"ProxyCommand=touch {marker}")
    assert result.exit_code == 2, result.output
    assert "Invalid value for --ssh-option" in result.stderr and "ProxyCommand runs a local command" in result.stderr
    assert not marker.exists()


REFUSED = {
    "ProxyCommand=nc %h %p": "not allowed: ProxyCommand runs a local command",
    "proxycommand nc %h %p": "not allowed: ProxyCommand runs a local command",
    "LocalCommand=id": "not allowed: LocalCommand runs a local command",
    "PermitLocalCommand=yes": "not allowed: PermitLocalCommand enables LocalCommand",
    "KnownHostsCommand=/bin/id": "not allowed: KnownHostsCommand runs a local command",
    "Match exec id": "not allowed: Match can run a local command",
    "Include /tmp/evil.conf": "not allowed: Include reads another config file",
    "StrictHostKeyChecking=no": "not allowed: edgeconv always verifies host keys",
    "UserKnownHostsFile=/dev/null": "not allowed: name the file with the target's known_hosts key",
    "RemoteCommand=id": "not allowed: RemoteCommand replaces the command",
    "ControlPath=/tmp/sock": "not allowed: connection sharing leaves sockets",
    "SecurityKeyProvider=/tmp/evil.so": "not allowed: SecurityKeyProvider loads a local library",
    "PKCS11Provider=/tmp/evil.so": "not allowed: PKCS11Provider loads a local library",
    "SendEnv=*": "not allowed: SendEnv sends local environment variables",
    "ForwardAgent=yes": "not allowed: ForwardAgent hands the device your SSH agent",
    "IdentityFile=~/.ssh/other": "not allowed: name the key with the target's identity key",
    "Frobnicate=1": "'Frobnicate' is not an option edgeconv passes to ssh; allowed: ProxyJump, Port",
    "ProxyJump=-oProxyCommand=id": "ProxyJump: jump host '-oProxyCommand=id' is not [user@]host[:port]",
    "ProxyJump=gw;id": "ProxyJump: jump host 'gw;id' is not [user@]host[:port]",
    "ProxyJump=$(id)@gw": "ProxyJump: jump host '$(id)@gw' is not [user@]host[:port]",
    "ProxyJump=gw id": "ProxyJump: jump host 'gw id' is not [user@]host[:port]",
    "ConnectTimeout=5\nProxyCommand=id": "contains a control character",
    "ConnectTimeout=soon": "ConnectTimeout: expected a whole number from 0 to 86400, got 'soon'",
    "Port=0": "Port: expected a whole number from 1 to 65535, got '0'",
    "Compression=maybe": "Compression: expected yes or no, got 'maybe'",
    "Ciphers=aes128-ctr 'x'": "Ciphers: expected a comma-separated algorithm list",
    "ConnectTimeout": "expected Key=Value (or 'Key Value'), e.g. ConnectTimeout=5",
    "ConnectTimeout=": "ConnectTimeout needs a value",
}


@pytest.mark.parametrize("option", list(REFUSED))
def test_refused_ssh_options(option: str) -> None:
    from converter.boards.ssh_options import ssh_option_problem

    problem = ssh_option_problem(option)
    assert problem is not None and problem.startswith(REFUSED[option]), problem
    with pytest.raises(UserInputError, match="ssh option"):
        SSHTarget(UNREACHABLE, options=(option,))  # the last line, for code that builds targets directly
    with pytest.raises(UserInputError, match=r"ssh_options\[0\]"):  # a hand-built TargetSpec: exit 2, not a crash
        TargetSpec("raspberry-pi-4", UNREACHABLE, ssh_options=(option,))


@pytest.mark.parametrize(
    "option",
    [
        "ProxyJump=gw",
        "ProxyJump=me@gw.example.com:2222,pi@10.0.0.7",
        "ProxyJump=[fe80::1]:22",
        "proxyjump none",
        "ConnectTimeout 5",
        "ConnectTimeout = 5",
        "connectionattempts=3",
        "ServerAliveInterval=15",
        "ServerAliveCountMax=3",
        "Port=2222",
        "User=pi",
        "IdentitiesOnly=yes",
        "Compression=no",
        "AddressFamily=inet6",
        "LogLevel=ERROR",
        "Ciphers=aes128-ctr,aes256-gcm@openssh.com",
        "KexAlgorithms=+diffie-hellman-group14-sha256",
        "HostKeyAlgorithms=ssh-ed25519",
    ],
)
def test_allowed_ssh_options(option: str) -> None:
    from converter.boards.ssh_options import ssh_option_problem

    assert ssh_option_problem(option) is None
    assert SSHTarget(UNREACHABLE, options=(option,)).ssh("true")[-5:] == ["-o", option, "--", UNREACHABLE, "true"]


@pytest.mark.parametrize(
    "host", ["-oProxyCommand=touch x", "pi@host name", "pi@host\nx", "pi@$(id)", "pi@h;id", "pi@h%p"]
)
def test_hosts_ssh_or_a_shell_would_read_specially(
    host: str, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    """The destination rules live in ssh_names (trust-cli); a recipe and a hand-built target both meet them."""
    recipe = write_recipe(_recipe(tmp_path, targets=[{"device": "raspberry-pi-4", "host": host}]))
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    assert str(info.value).startswith(f"{recipe}: targets[0].host: {host!r} is not an SSH destination: ")
    with pytest.raises(UserInputError, match="SSH host"):
        SSHTarget(host)


# --- 2. size, nesting, keys, aliases -------------------------------------------------------------

_OK = "version: 1\nname: t\nmodel: m.tflite\ndata: {calibration: {path: c.npz}}\n"


def _yaml_error(tmp_path: Path, text: str) -> tuple[str, float]:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    return str(info.value).replace(str(path), "recipe.yaml"), time.perf_counter() - start


def test_recipe_over_1_mib_is_refused_before_parsing(tmp_path: Path) -> None:
    message, seconds = _yaml_error(tmp_path, _OK + "custom_objects: [" + ",".join(["'a:b'"] * 300_000) + "]\n")
    assert message == (
        "recipe.yaml: the recipe is larger than 1024 KiB; a recipe is a short file of settings "
        "(data and models go in files it names)"
    )
    assert seconds < 1.0  # 3.6 MB took 39 s and 480 MB before


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    message, _ = _yaml_error(tmp_path, _OK + "junk: " + "[" * 20_000 + "]" * 20_000 + "\n")
    assert (
        message
        == "recipe.yaml: line 5, column 70: malformed YAML: nested more than 64 levels deep; a recipe needs a handful"
    )


@pytest.mark.parametrize(
    ("text", "where", "kind"),
    [
        ("{[1]: 2}: 3\n", "line 5, column 1", "a mapping"),
        ("? {a: 1}\n: 3\n", "line 5, column 3", "a mapping"),
        ("calibration: {[1]: 2}\n", "line 5, column 15", "a list"),
    ],
)
def test_non_scalar_keys_name_the_line(tmp_path: Path, text: str, where: str, kind: str) -> None:
    message, _ = _yaml_error(tmp_path, _OK + text)
    assert message == f"recipe.yaml: {where}: malformed YAML: a key must be a plain name, got {kind}"


def test_billion_laughs_is_bounded(tmp_path: Path) -> None:
    laughs = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(8)
    )
    message, seconds = _yaml_error(tmp_path, laughs + _OK)
    assert (
        message
        == "recipe.yaml: line 1, column 1: malformed YAML: expands to more than 100,000 values (through aliases)"
    )
    assert seconds < 1.0
    message, _ = _yaml_error(tmp_path, _OK + "junk: &a [*a]\n")
    assert "expands to more than 100,000 values" in message


def test_unreadable_scalars_are_recipe_errors(tmp_path: Path) -> None:
    message, _ = _yaml_error(tmp_path, _OK + "seed: 1" + "0" * 5000 + "\n")
    assert message.startswith("recipe.yaml: malformed YAML: a value cannot be read: Exceeds the limit")
    message, _ = _yaml_error(tmp_path, _OK.replace("name: t", "name: 2001-13-45"))
    assert message == "recipe.yaml: malformed YAML: a value cannot be read: month must be in 1..12"


def test_non_scalar_key_in_set_value(tmp_path: Path, write_recipe: Callable[..., Path]) -> None:
    recipe = write_recipe(_recipe(tmp_path))
    stderr = _user_error(_run("validate", "--recipe", str(recipe), "--set", "name={[1]: 2}"))
    assert (
        stderr.strip()
        == "error: --set name={[1]: 2}: line 1, column 2: malformed YAML: a key must be a plain name, got a list"
    )


# --- 3. numbers that validated but crashed later -------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"data": {"calibration": {"path": "cal.npz", "seed": -1}}},
            "data.calibration.seed: must be at least 0, got -1",
        ),
        (
            {"data": {"calibration": {"path": "cal.npz", "seed": 2**32}}},
            "data.calibration.seed: must be at most 4294967295, got 4294967296",
        ),
        (
            {"input": {"resize": [100000, 100000]}},
            "input: resize: sizes must be at most 8192, got [100000, 100000] (one sample that large would not fit",
        ),
        ({"input": {"scale": 1e30}}, "input: scale: its size must be between 1e-09 and 1e+09, got 1e+30"),
        ({"input": {"offset": -1e12}}, "input.offset: must be at least -1000000000.0, got -1000000000000.0"),
        ({"input": {"scale": 10**400}}, "input.scale: expected a finite number, got an integer with 401 digits"),
        ({"benchmark": {"min_seconds": 1e300}}, "benchmark.min_seconds: must be at most 600, got 1e+300"),
        ({"benchmark": {"runs": 10**12}}, "benchmark.runs: must be at most 100000, got 1000000000000"),
        ({"benchmark": {"top_k": 10**20}}, "benchmark.top_k: must be at most 1000"),
        (
            {"calibration": {"input_range": [-1e308, 1e308]}},
            "calibration: input_range: must lie within [-1e+09, 1e+09] and span at least 1e-6",
        ),
        ({"calibration": {"input_range": [0, 1e-9]}}, "calibration: input_range: must lie within"),
        (
            {"tuning": {"qat": {"data": {"path": "cal.npz"}, "learning_rate": 0}}},
            "tuning.qat: learning_rate: must be above 0, got 0.0",
        ),
        (
            {"tuning": {"qat": {"data": {"path": "cal.npz"}, "epochs": 10**9}}},
            "tuning.qat.epochs: must be at most 1000",
        ),
        ({"budgets": {"model_bytes": "9" * 400 + "KB"}}, "budgets: model_bytes: '999"),
    ],
)
def test_numbers_that_crashed_later_are_refused_by_validate(
    change: dict[str, Any], message: str, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(_recipe(tmp_path, **change))
    _user_error(_run("validate", "--recipe", str(recipe)), f"recipe.yaml: {message}")


def test_negative_seed_is_exit_2_from_convert(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    recipe = write_recipe(_recipe(tmp_path, data={"calibration": {"path": "cal.npz", "seed": -1, "samples": 2}}))
    _user_error(_run("convert", "--recipe", str(recipe), "--out", str(tmp_path / "out")), "must be at least 0")
    assert not (tmp_path / "out").exists()


# --- 4. errors in --set values blame the option --------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["calibration.method=kl"], "--set calibration.method=kl: expected one of minmax, percentile, entropy"),
        (["calibration.methd=kl"], "--set calibration.methd=kl: unknown key (did you mean 'method'?)"),
        (["data.calibration.seed=-1"], "--set data.calibration.seed=-1: must be at least 0, got -1"),
        (
            ["calibration.input_range=[2, 1]"],
            "--set calibration.input_range=[2, 1]: lo must be below hi, got [2.0, 1.0]",
        ),
        (
            ["data.calibration={path: cal.npz, samples: 0}"],
            "--set data.calibration={path: cal.npz, samples: 0}: data.calibration.samples: must be at least 1, got 0",
        ),
        (
            ["data.calibration.samples=0", "data.calibration={path: cal.npz, samples: 0}"],
            "--set data.calibration={path: cal.npz, samples: 0}: data.calibration.samples: must be at least 1",
        ),
        (["model=gone.tflite"], "--set model=gone.tflite: not found: "),
        (
            ["targets=[{device: raspberry-pi-4, host: pi@x, ssh_options: [ProxyCommand=id]}]"],
            "--set targets=[{device: raspberry-pi-4, host: pi@x, ssh_options: [ProxyCommand=id]}]: targets[0]: "
            "ssh_options[0]: 'ProxyCommand=id': not allowed",
        ),
    ],
)
def test_set_errors_name_the_option(
    overrides: list[str], message: str, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(_recipe(tmp_path))
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, overrides)
    assert str(info.value).startswith(message), str(info.value)


def test_recipe_errors_still_blame_the_file_next_to_overrides(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(_recipe(tmp_path, calibration={"method": "kl"}))
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, ["data.calibration.samples=3"])
    assert str(info.value).startswith(f"{recipe}: calibration.method: expected one of")


# --- 5. every named file exists before anything is loaded ----------------------------------------


@pytest.mark.parametrize(
    ("change", "key", "name"),
    [
        ({"model": "gone.tflite"}, "model", "gone.tflite"),
        ({"data": {"calibration": {"path": "gone.npz"}}}, "data.calibration.path", "gone.npz"),
        (
            {"data": {"calibration": {"path": "cal.npz"}, "evaluation": {"path": "gone"}}},
            "data.evaluation.path",
            "gone",
        ),
        ({"tuning": {"qat": {"data": {"path": "qat.npz"}}}}, "tuning.qat.data.path", "qat.npz"),
        (
            {"targets": [{"device": "raspberry-pi-4", "host": "pi@x", "identity": "id_gone"}]},
            "targets[0].identity",
            "id_gone",
        ),
        (
            {"targets": ["host", {"device": "raspberry-pi-5", "host": "pi@x", "known_hosts": "kh_gone"}]},
            "targets[1].known_hosts",
            "kh_gone",
        ),
    ],
)
def test_validate_checks_every_named_file(
    change: dict[str, Any], key: str, name: str, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(_recipe(tmp_path, **change))
    stderr = _user_error(_run("validate", "--recipe", str(recipe)))
    assert " ".join(stderr.split()) == (
        f"error: {recipe}: {key}: not found: {tmp_path / name}; check the path (relative paths start at the "
        "recipe's folder)"
    )


def test_identity_that_is_a_folder(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    recipe = write_recipe(_recipe(tmp_path, targets=[{"device": "raspberry-pi-4", "host": "pi@x", "identity": "keys"}]))
    _user_error(_run("validate", "--recipe", str(recipe)), f"targets[0].identity: {tmp_path / 'keys'} is a folder")


def test_convert_finds_a_missing_data_file_before_loading_the_model(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    # The model exists but is corrupt: had it been loaded first, the error would be about the model.
    (tmp_path / "broken.keras").write_bytes(b"\x00garbage" * 100)
    recipe = write_recipe(_recipe(tmp_path, model="broken.keras", data={"calibration": {"path": "gone.npz"}}))
    out = tmp_path / "out"
    _user_error(_run("convert", "--recipe", str(recipe), "--out", str(out)), "data.calibration.path: not found")
    assert not out.exists()


def test_control_characters_are_a_yaml_error_naming_the_line(tmp_path: Path) -> None:
    # Found by the fuzz test: PyYAML's reader raised while the loader was being built, outside the handler (exit 3).
    from converter.yamlio import load_yaml_text

    with pytest.raises(RecipeError, match=r"^r\.yaml: line 2: malformed YAML: character U\+0001 "):
        load_yaml_text("version: 1\nname: a\x01b\n", "r.yaml")
