"""Field types every MQTT payload model shares: a UTC time and an identifier."""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, Field, PlainSerializer

from protocol.messages import ID_PATTERN, utc_stamp

#: An aware time, sent as :func:`protocol.messages.utc_stamp` writes it.
UtcTime = Annotated[AwareDatetime, PlainSerializer(utc_stamp, return_type=str)]
#: A gateway, meter, key or request id (:data:`protocol.messages.ID_PATTERN`).
Identifier = Annotated[str, Field(pattern=ID_PATTERN)]
