"""Which ``ssh -o`` options a recipe or ``--ssh-option`` may pass (destinations: ``ssh_names``).

Recipes arrive in pull requests and CI runs them, so nothing in one may make ssh run a
local command, read another config, weaken host-key checking, or send local secrets to
the device. Options are allowed by name (an allowlist, case-insensitive, ``Key=Value``
or ``Key Value``) and each value must match a strict pattern: ssh pastes some values
(ProxyJump hosts, ``%h``) into a command line its shell runs, so a value with quotes,
spaces or ``$`` could still run code. Everything else belongs in the user's own
``~/.ssh/config``, which stays theirs: we never pass ``-F``.

Allowed: ProxyJump, Port, User, ConnectTimeout, ConnectionAttempts, ServerAliveInterval,
ServerAliveCountMax, TCPKeepAlive, Compression, AddressFamily, CheckHostIP=yes, IdentitiesOnly,
LogLevel, Ciphers, MACs, KexAlgorithms, HostKeyAlgorithms, PubkeyAcceptedAlgorithms
(PubkeyAcceptedKeyTypes), CASignatureAlgorithms, PreferredAuthentications,
PubkeyAuthentication, PasswordAuthentication, KbdInteractiveAuthentication,
GSSAPIAuthentication, NumberOfPasswordPrompts.

Options that turn host-key checking off (``StrictHostKeyChecking=no|off|accept-new``,
``UserKnownHostsFile=/dev/null``, ``GlobalKnownHostsFile=/dev/null``, ``CheckHostIP=no``) are
refused too, except on the command line together with ``--insecure-host-key`` (``insecure_ok``):
a user may mean it for a board being re-imaged, a recipe or fleet file never may (it arrives in a
pull request, and a changed key then goes unnoticed by everyone).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_YES_NO = re.compile(r"(?i)yes|no|true|false")
_ALGORITHMS = re.compile(r"[+^-]?[A-Za-z0-9@._-]+(,[A-Za-z0-9@._-]+)*")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
# A host name, an IPv4 address, or a bracketed IPv6 address: nothing a shell or ssh's
# option parser would read specially (no leading '-', spaces, quotes, '$', '%', ';', ...).
_HOST = r"(?:[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,252})|\[[0-9A-Fa-f:.]+\])"
_JUMP = re.compile(rf"(?:{_USER.pattern}@)?{_HOST}(?::[0-9]{{1,5}})?")


def _integer(lo: int, hi: int) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if not value.isdigit() or not lo <= int(value) <= hi:
            return f"expected a whole number from {lo} to {hi}"
        return None

    return check


def _pattern(pattern: re.Pattern[str], what: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if pattern.fullmatch(value) else f"expected {what}"

    return check


def _choice(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value.lower() in choices else f"expected one of {', '.join(choices)}"

    return check


def _proxy_jump(value: str) -> str | None:
    if value.lower() == "none":
        return None
    for hop in value.split(","):
        if not _JUMP.fullmatch(hop):
            return (
                f"jump host {hop!r} is not [user@]host[:port] made of letters, digits, '.', '_' and '-' "
                "(ssh pastes it into a command its shell runs)"
            )
    return None


_yes_no = _pattern(_YES_NO, "yes or no")
_algorithms = _pattern(_ALGORITHMS, "a comma-separated algorithm list")
_seconds = _integer(0, 86400)

# Canonical name -> value check (returns the problem, or None when the value is fine).
ALLOWED: dict[str, Callable[[str], str | None]] = {
    "ProxyJump": _proxy_jump,
    "Port": _integer(1, 65535),
    "User": _pattern(_USER, "a user name of letters, digits, '.', '_' and '-'"),
    "ConnectTimeout": _seconds,
    "ConnectionAttempts": _integer(1, 100),
    "ServerAliveInterval": _seconds,
    "ServerAliveCountMax": _integer(0, 1000),
    "TCPKeepAlive": _yes_no,
    "Compression": _yes_no,
    "AddressFamily": _choice("any", "inet", "inet6"),
    "CheckHostIP": _yes_no,
    "IdentitiesOnly": _yes_no,
    "LogLevel": _choice("quiet", "fatal", "error", "info", "verbose", "debug", "debug1", "debug2", "debug3"),
    "Ciphers": _algorithms,
    "MACs": _algorithms,
    "KexAlgorithms": _algorithms,
    "HostKeyAlgorithms": _algorithms,
    "PubkeyAcceptedAlgorithms": _algorithms,
    "PubkeyAcceptedKeyTypes": _algorithms,
    "CASignatureAlgorithms": _algorithms,
    "PreferredAuthentications": _pattern(re.compile(r"[a-z-]+(,[a-z-]+)*"), "a comma-separated list of methods"),
    "PubkeyAuthentication": _yes_no,
    "PasswordAuthentication": _yes_no,
    "KbdInteractiveAuthentication": _yes_no,
    "GSSAPIAuthentication": _yes_no,
    "NumberOfPasswordPrompts": _integer(0, 10),
}
_BY_LOWER = {name.lower(): name for name in ALLOWED}

_PERSONAL = "put it in your own ~/.ssh/config, which edgeconv leaves to you"
_RUNS_CODE = "runs a local command; recipes arrive in pull requests and CI runs them; " + _PERSONAL
# Options refused with a reason of their own (anything else not allowed gets the generic one).
REFUSED: dict[str, str] = {
    "proxycommand": "ProxyCommand " + _RUNS_CODE,
    "localcommand": "LocalCommand " + _RUNS_CODE,
    "permitlocalcommand": "PermitLocalCommand enables LocalCommand, which " + _RUNS_CODE,
    "knownhostscommand": "KnownHostsCommand " + _RUNS_CODE,
    "remotecommand": "RemoteCommand replaces the command edgeconv runs on the device",
    "match": "Match can run a local command (Match exec); " + _PERSONAL,
    "include": "Include reads another config file, which can run commands; " + _PERSONAL,
    "host": "Host starts a config block; " + _PERSONAL,
    "hostname": "HostName would send the connection somewhere other than the host the recipe names; set the host",
    "securitykeyprovider": "SecurityKeyProvider loads a local library into ssh (runs its code); " + _PERSONAL,
    "pkcs11provider": "PKCS11Provider loads a local library into ssh (runs its code); " + _PERSONAL,
    "proxyusefdpass": "ProxyUseFdpass only matters with ProxyCommand, which runs a local command",
    "stricthostkeychecking": "edgeconv always verifies host keys (BatchMode refuses unknown ones); add the device's "
    "key to known_hosts (ssh-keyscan) or name a known_hosts file with the target's known_hosts key",
    "userknownhostsfile": "name the file with the target's known_hosts key (checked to exist, relative to the "
    "recipe); a recipe could otherwise point it at /dev/null and turn host-key checking off",
    "globalknownhostsfile": "name the file with the target's known_hosts key",
    "updatehostkeys": "UpdateHostKeys writes to your known_hosts file",
    "identityfile": "name the key with the target's identity key (checked to exist, relative to the recipe)",
    "identityagent": "IdentityAgent points ssh at another agent socket; " + _PERSONAL,
    "batchmode": "edgeconv sets BatchMode=yes so ssh never waits for a password or a prompt",
    "controlmaster": "connection sharing leaves sockets and background ssh processes behind; " + _PERSONAL,
    "controlpath": "connection sharing leaves sockets and background ssh processes behind; " + _PERSONAL,
    "controlpersist": "connection sharing leaves sockets and background ssh processes behind; " + _PERSONAL,
    "sendenv": "SendEnv sends local environment variables (CI secrets) to the device",
    "setenv": "SetEnv sets environment variables for the command on the device",
    "forwardagent": "ForwardAgent hands the device your SSH agent (and with it your keys)",
    "forwardx11": "ForwardX11 exposes your display to the device",
    "forwardx11trusted": "ForwardX11Trusted exposes your display to the device",
    "localforward": "port forwarding opens ports on this machine or the device",
    "remoteforward": "port forwarding opens ports on this machine or the device",
    "dynamicforward": "port forwarding opens ports on this machine or the device",
    "tunnel": "Tunnel opens a network device between this machine and the device",
    "tunneldevice": "TunnelDevice opens a network device between this machine and the device",
}

_OPTION = re.compile(r"\s*([A-Za-z][A-Za-z0-9]*)(?:\s*=\s*|\s+)(.*?)\s*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


INSECURE_FLAG = "--insecure-host-key"
_NULL_FILES = ("/dev/null", "none")
# lower-case key -> the values that turn host-key checking off
_INSECURE: dict[str, Callable[[str], bool]] = {
    "stricthostkeychecking": lambda v: v.lower() in ("no", "off", "accept-new", "false"),
    "userknownhostsfile": lambda v: v.lower() in _NULL_FILES,
    "globalknownhostsfile": lambda v: v.lower() in _NULL_FILES,
    "checkhostip": lambda v: v.lower() in ("no", "false"),
}


def option_key(text: str) -> str | None:
    """The option's name in lower case (``"connecttimeout"``), or None when ``text`` is not Key=Value."""
    m = _OPTION.fullmatch(text)
    return m.group(1).lower() if m else None


def disables_host_key_checking(text: str) -> bool:
    """True for an option that makes ssh accept an unknown or changed host key (see the module docstring)."""
    m = _OPTION.fullmatch(text)
    if not m or _CONTROL.search(text):
        return False
    check = _INSECURE.get(m.group(1).lower())
    return bool(check and check(m.group(2)))


def insecure_problem(text: str, flag: str | None) -> str:
    """Why a host-key-disabling option is refused here; ``flag`` is the opt-in of this context, if it has one."""
    key = option_key(text) or ""
    reason = REFUSED.get(key) or (
        f"{text} turns off part of host-key checking (ssh no longer checks the address's key in known_hosts)"
    )
    head = (
        f"not allowed: {reason}; with {text} a changed or unknown device key (another machine answering at that "
        "address) would be accepted"
    )
    if flag:
        return f"{head}. If you mean it (a board being re-imaged), pass {flag} as well, for this run only"
    return (
        f"{head}. A recipe or fleet file may never turn host-key checking off (they arrive in pull requests); "
        f"for one run, pass --ssh-option '{text}' {INSECURE_FLAG} on the command line"
    )


def ssh_option_problem(text: str, insecure_ok: bool = False, flag: str | None = None) -> str | None:
    """Why ``text`` may not be passed as ``ssh -o text``, or None when it is harmless.

    ``insecure_ok``: the user asked for host-key checking to be off (``--insecure-host-key``); ``flag``:
    the opt-in the message offers when it is not (None where there is none: recipes, fleet files).
    """
    if _CONTROL.search(text):
        return "contains a control character (a newline would start another config line)"
    m = _OPTION.fullmatch(text)
    if not m:
        return "expected Key=Value (or 'Key Value'), e.g. ConnectTimeout=5"
    key, value = m.group(1), m.group(2)
    if disables_host_key_checking(text):
        return None if insecure_ok else insecure_problem(text, flag)
    name = _BY_LOWER.get(key.lower())
    if name is None:
        reason = REFUSED.get(key.lower())
        if reason:
            return f"not allowed: {reason}"
        return f"'{key}' is not an option edgeconv passes to ssh; allowed: {', '.join(ALLOWED)}; " + _PERSONAL
    if not value:
        return f"{name} needs a value"
    problem = ALLOWED[name](value)
    return f"{name}: {problem}, got {value!r}" if problem else None
