"""paho's client with its socket I/O batched, for a publisher of thousands of QoS 1
messages a second.

paho 2.x sends each packet with its own ``send`` and reads each incoming packet with
three ``recv`` calls (the type byte, the length byte, the rest); and it decodes every
PUBACK into a new reason code and property set. With two messages per reading that was
a large share of the gateway's CPU per reading (measured in docs/benchmarks.md). Here:

- packets paho writes in one ``loop_write`` go out in one ``send`` (what the socket does
  not take stays buffered, and the client keeps asking for writability until it is
  gone; a DISCONNECT is flushed at once, before paho closes the socket);
- reads take what the socket holds (up to 64 KiB) and paho's small reads are served
  from it; :meth:`BufferedClient.has_buffered_input` tells the event loop that packets
  are left to process with no readiness left to wake it;
- a PUBACK saying delivered (``mid``; reason success, absent or "no matching
  subscribers"; no properties) goes to ``on_publish`` with shared reason code and
  property objects; anything else takes paho's own path.

Only paho's private ``_sock_send``, ``_sock_recv``, ``_sock_close``, ``loop_write`` and
``_handle_pubackcomp`` are overridden, as paho 2.2.0 defines them (read and tested;
pyproject pins the 2.2 series); tests/integration/test_paho_client.py runs every
override against Mosquitto with both clients. In case another paho is installed anyway,
:func:`client_class` first checks the private methods used here (their parameters, then
a round of reads, writes, PUBACKs and a close on a socket pair) and, when that fails,
logs one warning and gives paho's own client (:class:`PlainClient`) instead.
"""

from __future__ import annotations

import functools
import inspect
import logging
import socket
import ssl
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

#: the most read from the socket at once
READ_CHUNK = 65536
_DISCONNECT = 0xE0
#: the PUBACK reason codes that say delivered: success and "no matching subscribers"
_PUBACK_OK = {code: ReasonCode(PacketTypes.PUBACK, identifier=code) for code in (0x00, 0x10)}
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
#: the paho series this module was read against (pyproject pins it)
PAHO_SERIES = "2.2"
#: paho's private methods overridden or called here, with their parameters as paho 2.2
#: defines them
PAHO_PRIVATE_API: dict[str, tuple[str, ...]] = {
    "_sock_recv": ("self", "bufsize"),
    "_sock_send": ("self", "buf"),
    "_sock_close": ("self",),
    "loop_write": ("self",),
    "want_write": ("self",),
    "_handle_pubackcomp": ("self", "cmd"),
    "_do_on_publish": ("self", "mid", "reason_code", "properties"),
    "_loop_rc_handle": ("self", "rc"),
    "_call_socket_register_write": ("self",),
    "_call_socket_unregister_write": ("self", "sock"),
}

log = logging.getLogger(__name__)


class PlainClient(paho.Client):
    """paho's own client, its socket I/O unchanged: the fallback when the self-check of
    :class:`BufferedClient` fails. Answers the two questions the MQTT link asks."""

    def has_buffered_input(self) -> bool:
        """Whether a TLS socket holds decrypted bytes (no readiness will come for them)."""
        sock = self._sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def has_buffered_output(self) -> bool:
        return False


class BufferedClient(PlainClient):
    """:class:`paho.mqtt.client.Client` with batched socket reads and writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._buffers()  # before paho's own __init__, which may already close a socket
        super().__init__(*args, **kwargs)

    def _buffers(self) -> None:
        self._inbuf, self._inpos, self._outbuf = bytearray(), 0, bytearray()

    def has_buffered_input(self) -> bool:
        """Whether bytes already read from the socket wait for ``loop_read`` (here, or
        decrypted inside a TLS socket): the socket will not turn readable for them."""
        if self._inpos < len(self._inbuf):
            return True
        sock = self._sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def has_buffered_output(self) -> bool:
        return bool(self._outbuf)

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._inpos >= len(self._inbuf):
            data = super()._sock_recv(READ_CHUNK)  # BlockingIOError when there is none
            if not data:
                return data  # the connection closed
            self._inbuf[:] = data
            self._inpos = 0
        start = self._inpos
        end = min(start + bufsize, len(self._inbuf))
        self._inpos = end
        return bytes(self._inbuf[start:end])

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if self._sock is None:
            raise ConnectionError("self._sock is None")
        self._outbuf += buf
        if buf and buf[0] & 0xF0 == _DISCONNECT:
            self._flush()  # paho closes the socket right after this packet
        return len(buf)

    def _flush(self) -> None:
        """Send what the socket takes now; the rest waits for the next writability."""
        while self._outbuf:
            try:
                sent = super()._sock_send(self._outbuf)
            except BlockingIOError:
                return  # paho's _sock_send asked for writability
            del self._outbuf[:sent]

    def want_write(self) -> bool:
        return super().want_write() or self.has_buffered_output()

    def loop_write(self) -> MQTTErrorCode:
        rc = super().loop_write()  # queues paho's packets into the buffer
        if self._sock is None or not self.has_buffered_output():
            return rc
        try:
            self._flush()
        except OSError:
            self._outbuf.clear()
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        if self.want_write():
            self._call_socket_register_write()
        else:
            self._call_socket_unregister_write()
        return rc

    def _sock_close(self) -> None:
        self._buffers()  # a new connection starts with nothing half read or unsent
        super()._sock_close()

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        size = len(packet)
        if cmd == "PUBACK" and 2 <= size <= 4:
            reason = _PUBACK_OK.get(packet[2] if size > 2 else 0)
            if reason is not None and (
                size == 2 or (self._protocol == paho.MQTTv5 and (size == 3 or packet[3] == 0))
            ):
                mid = packet[0] << 8 | packet[1]
                with self._out_message_mutex:
                    if mid in self._out_messages:
                        return self._do_on_publish(mid, reason, _NO_PROPERTIES)
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._handle_pubackcomp(cmd)


def _signature_problem(paho_class: type[paho.Client]) -> str | None:
    for name, expected in PAHO_PRIVATE_API.items():
        method = getattr(paho_class, name, None)
        if not callable(method):
            return f"paho.Client.{name} is missing"
        try:
            params = tuple(inspect.signature(method).parameters)
        except (TypeError, ValueError):
            return f"paho.Client.{name} has no signature to check"
        if params != expected:
            return f"paho.Client.{name}{params} differs from {expected}"
    return None


def _behaviour_problem(client_class: type[BufferedClient]) -> str | None:
    """One round of what the gateway does, on a socket pair: small reads served from one
    socket read, a packet written by ``loop_write``, a PUBACK on the fast path and one on
    paho's own path, then a close."""
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        client = client_class(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        acks: list[tuple[int, int]] = []
        client.on_publish = lambda _c, _u, mid, rc, _p: acks.append((mid, rc.value))
        client._sock = ours
        theirs.sendall(b"\x40\x02\x00\x01")
        got = client._sock_recv(1) + client._sock_recv(1) + client._sock_recv(8)
        if got != b"\x40\x02\x00\x01" or client.has_buffered_input():
            return f"reads came back as {got!r}"
        client._sock_send(b"\xc0\x00")
        if client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS or client.want_write():
            return "loop_write did not send what was written"
        if theirs.recv(16) != b"\xc0\x00":
            return "the written packet did not reach the socket"
        for mid, packet in ((1, b"\x00\x01"), (2, b"\x00\x02\x87")):
            message = paho.MQTTMessage(mid)
            message.qos = 1
            client._out_messages[mid] = message
            client._in_packet = {
                **client._in_packet,
                "command": 0x40,
                "remaining_length": len(packet),
                "packet": bytearray(packet),
            }
            if client._handle_pubackcomp("PUBACK") != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return f"PUBACK {packet.hex()} was refused"
        if acks != [(1, 0x00), (2, 0x87)] or client._out_messages:
            return f"PUBACKs reported {acks}"
        client._sock_close()
        if client._sock is not None or client.has_buffered_output():
            return "the close left the socket or output behind"
    except Exception as exc:  # any difference in paho's private parts
        return f"{type(exc).__name__}: {exc}"
    finally:
        ours.close()
        theirs.close()
    return None


def self_check(paho_class: type[paho.Client] = paho.Client) -> str | None:
    """Why :class:`BufferedClient` cannot run on ``paho_class`` (paho's own by default),
    or None when it can."""
    problem = _signature_problem(paho_class)
    if problem is not None:
        return problem
    probe: type[BufferedClient] = BufferedClient
    if paho_class is not paho.Client:
        probe = type("BufferedProbe", (BufferedClient, paho_class), {})
    return _behaviour_problem(probe)


def choose_client(paho_class: type[paho.Client] = paho.Client) -> type[PlainClient]:
    """:class:`BufferedClient` if its self-check passes, else (with one warning) paho's
    own client."""
    problem = self_check(paho_class)
    if problem is None:
        return BufferedClient
    log.warning(
        "paho-mqtt %s does not behave as the %s series this gateway was read against "
        "(%s): using paho's own client, slower socket I/O",
        paho_version,
        PAHO_SERIES,
        problem,
    )
    return PlainClient


@functools.cache
def client_class() -> type[PlainClient]:
    """The client the MQTT link uses: checked once per process."""
    return choose_client()
