"""The serial settings a DL/T 645 line has unless told otherwise, in one place: the
defaults of :class:`gateway.dlt645_port.Dlt645Port` and of a ``protocol = "dlt645"`` bus
in the configuration (a Modbus RTU bus has its own: 9600 baud, no parity, 0.5 s)."""

from __future__ import annotations

#: The usual line of DL/T 645-2007 meters: 2400 baud, 8 data bits, even parity, 1 stop bit.
BAUD = 2400
PARITY = "E"
#: How long a meter may take to start its reply after the request's last byte: the
#: standard's Td is 20 to 500 ms; twice the longest leaves room for a device server.
REPLY_TIMEOUT_S = 1.0
