"""The broker a new gateway talks to, as a field engineer types it for ``init --broker``:
``mqtts://HOST[:PORT]`` (TLS, as on a site; a bare ``HOST[:PORT]`` means the same) or
``mqtt://HOST[:PORT]`` (no TLS: a broker on this machine or a bench network)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from provisioning.errors import ProvisionError

#: scheme -> (TLS, default port)
SCHEMES = {"mqtts": (True, 8883), "mqtt": (False, 1883)}
#: what ``init`` writes when no broker is given: the site's broker, to be filled in
PLACEHOLDER_HOST = "broker.example.invalid"
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:")


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    def toml(self) -> str:
        """The config's inline table (``tls`` is written only when off: on is the default)."""
        tls = "" if self.tls else ", tls = false"
        return f"{{ host = {json.dumps(self.host)}, port = {self.port}{tls} }}"


DEFAULT_BROKER = BrokerAddress(PLACEHOLDER_HOST, SCHEMES["mqtts"][1], tls=True)


def _refuse(text: str, problem: str) -> ProvisionError:
    return ProvisionError(
        f"--broker {text[:80]!r}: {problem}; write mqtts://HOST[:PORT] (TLS) or "
        "mqtt://HOST[:PORT] (no TLS)"
    )


def parse_broker_url(text: str) -> BrokerAddress:
    """``mqtt://127.0.0.1:1884`` -> BrokerAddress("127.0.0.1", 1884, tls=False)."""
    scheme, sep, rest = text.strip().partition("://")
    if not sep:
        scheme, rest = "mqtts", text.strip()
    if scheme.lower() not in SCHEMES:
        raise _refuse(text, f"unknown scheme {scheme!r}")
    tls, port = SCHEMES[scheme.lower()]
    host = rest
    if rest.startswith("["):  # [IPv6]:PORT
        host, bracket, after = rest[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise _refuse(text, "an IPv6 address goes in brackets: [::1]:1883")
        port_text = after[1:] if after else None
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        port_text = None
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise _refuse(text, f"port {port_text!r} is not 1..65535")
        port = int(port_text)
    if ":" in host and not rest.startswith("["):
        raise _refuse(text, "an IPv6 address goes in brackets: [::1]:1883")
    if not host or not set(host) <= _HOST_CHARS:
        raise _refuse(text, "no host name or address")
    return BrokerAddress(host, port, tls)
