"""SSH destinations (``[user@]host``) checked before anything connects.

ssh hands a destination it cannot parse to the resolver (or, when it starts with ``-``, reads it as
an option such as ``-oProxyCommand=...``), so a typo became "connection lost; retrying" and exit 3.
Checking the syntax here turns it into a usage error that names the option or recipe key.
Both the command line (``--host``) and the recipe validator (``targets[].host``) use this module;
it imports nothing from edgeconv so either can.

Accepted: an optional user (letters, digits, ``._-+@``; not starting with ``-``), then a host name
(dot-separated labels of letters, digits, ``-`` and ``_``; an ``~/.ssh/config`` alias follows the
same rule), an IPv4 address, or an IPv6 address, bare or in brackets (``pi@[fe80::1%eth0]``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

EXAMPLES = "e.g. pi@raspberrypi.local, pi@192.168.1.20 or pi@[fe80::1]"
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.+@-]*")
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?")
_SCOPE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_HOST = 253
MAX_LABEL = 63
MAX_USER = 64


@dataclass(frozen=True)
class Destination:
    """A checked destination; ``host`` is bare (IPv6 without brackets)."""

    user: str | None
    host: str

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def for_ssh(self) -> str:
        """The argument ssh takes: it does not strip brackets, so IPv6 goes bare."""
        return f"{self.user}@{self.host}" if self.user else self.host

    def for_scp(self) -> str:
        """The prefix of an scp remote path: IPv6 needs brackets there (``[::1]:dir``)."""
        host = f"[{self.host}]" if self.is_ipv6 else self.host
        return f"{self.user}@{host}" if self.user else host


def _describe(ch: str) -> str:
    if ch == " ":
        return "a space"
    if ch.isspace() or not ch.isprintable():
        return f"a control character ({ch!r})"
    return f"'{ch}'"


def _ipv6_problem(address: str) -> str | None:
    """Why ``address`` is not an IPv6 address with an optional plain scope (``%eth0``), or None.

    ``ipaddress`` accepts anything after ``%``; ssh before 9.6 pasted the host into a
    ``ProxyCommand`` of the user's config (CVE-2023-51385), so the scope must be a plain name.
    """
    bare, percent, scope = address.partition("%")
    try:
        ipaddress.IPv6Address(bare)
    except ValueError:
        return "is not an IPv6 address"
    if percent and not _SCOPE.fullmatch(scope):
        return "has a zone after '%' that is not a plain interface name (letters, digits, '_', '.', '-')"
    return None


def _host_problem(host: str) -> str | None:
    if not host:
        return "the host name is empty"
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            return "unbalanced brackets around the IPv6 address"
        inner = host[1:-1]
        problem = _ipv6_problem(inner)
        return f"'{inner}' in brackets {problem}" if problem else None
    if ":" in host:
        problem = _ipv6_problem(host)
        if problem == "is not an IPv6 address":
            return f"'{host}' has a ':' but is not an IPv6 address (give the port with --port or port:)"
        return f"'{host}' {problem}" if problem else None
    if host.startswith("-"):
        return "the host name starts with '-' (ssh would read it as an option)"
    if len(host) > MAX_HOST:
        return f"the host name is longer than {MAX_HOST} characters"
    for ch in host:
        if not (ch.isascii() and (ch.isalnum() or ch in "._-")):
            return f"the host name contains {_describe(ch)}"
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    for label in labels:
        if not label:
            return "the host name has an empty part between dots"
        if len(label) > MAX_LABEL:
            return f"the host name part '{label[:20]}...' is longer than {MAX_LABEL} characters"
        if not _LABEL.fullmatch(label):
            return f"the host name part '{label}' starts or ends with '-'"
    return None


def _user_problem(user: str) -> str | None:
    if not user:
        return "the user name before '@' is empty (drop the '@' to use your ssh default user)"
    if user.startswith("-"):
        return "the user name starts with '-' (ssh would read it as an option)"
    if len(user) > MAX_USER:
        return f"the user name is longer than {MAX_USER} characters"
    for ch in user:
        if not (ch.isascii() and (ch.isalnum() or ch in "_.+@-")):
            return f"the user name contains {_describe(ch)}"
    return None if _USER.fullmatch(user) else f"the user name starts with '{user[0]}'"


def destination_problem(text: str) -> str | None:
    """Why ``text`` is not a valid ``[user@]host``, or None when it is."""
    if not text:
        return "it is empty"
    if text.startswith("-"):
        return "it starts with '-' (ssh would read it as an option)"
    user, at, host = text.rpartition("@")
    return (_user_problem(user) if at else None) or _host_problem(host)


def parse_destination(text: str) -> Destination:
    """``text`` as a ``Destination``; ``ValueError`` says what is wrong and gives examples."""
    problem = destination_problem(text)
    if problem:
        raise ValueError(f"{text!r} is not an SSH destination: {problem}; write [user@]host, {EXAMPLES}")
    user, at, host = text.rpartition("@")
    if host.startswith("["):
        host = host[1:-1]
    return Destination(user if at else None, host)
