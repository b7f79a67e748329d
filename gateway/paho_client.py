"""paho's client with its socket I/O batched, for a publisher of thousands of QoS 1
messages a second.

paho 2.x sends each packet with its own ``send`` and reads each incoming packet with
three ``recv`` calls (the type byte, the length byte, the rest); and it decodes every
PUBACK into a new reason code and property set. With two messages per reading that was
about half of the gateway's CPU per reading (bench/bench_gateway.py (a) and (d)). Here:

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
pyproject pins ``paho-mqtt<3``); tests/integration/test_paho_client.py runs every
override against Mosquitto, so a paho that changed them fails there.
"""

from __future__ import annotations

import ssl
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

#: the most read from the socket at once
READ_CHUNK = 65536
_DISCONNECT = 0xE0
#: the PUBACK reason codes that say delivered: success and "no matching subscribers"
_PUBACK_OK = {code: ReasonCode(PacketTypes.PUBACK, identifier=code) for code in (0x00, 0x10)}
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]


class BufferedClient(paho.Client):
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
