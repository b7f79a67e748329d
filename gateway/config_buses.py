"""The buses of the gateway's configuration: RS-485 lines (Modbus RTU or DL/T 645) and
Modbus TCP endpoints, each a ``[[buses]]`` table of the TOML file (:mod:`gateway.config`
holds the rest and re-exports these names).
"""

from __future__ import annotations

import zoneinfo
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway import dlt645_line
from gateway.measured import READING_POINTS

#: What a bus's or the gateway's name may be.
ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


class Strict(BaseModel):
    """A configuration table: unknown keys are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: The points a DL/T 645 bus reads for its readings beside energy and status by default:
#: what a Modbus map publishes (phase A's voltage and current on a three-phase meter).
DLT645_MEASURED = (
    "voltage",
    "current",
    "active_power",
    "power_factor",
    "frequency",
    "energy_export",
)
#: Every how many polls of a meter they are read by default: each point is one exchange
#: (about 0.2 s at 2400 baud), so six of them every 10th poll add about 0.12 s of bytes a
#: poll on average to the 0.39 s of energy and status (docs/dlt645.md has the figures).
DLT645_MEASURED_EVERY = 10


class Dlt645Settings(Strict):
    """How the gateway drives the DL/T 645 meters of one bus."""

    time_zone: str = Field(
        default="UTC", description="the meters' clocks (IANA name): broadcast time, deadlines"
    )
    time_sync_h: float = Field(
        default=24.0, gt=0, description="broadcast time (08H) at start and every this many hours"
    )
    clock_drift_max_s: float = Field(
        default=60.0, gt=0, description="a meter's clock further off than this is an event"
    )
    measured: list[str] = Field(
        default_factory=lambda: list(DLT645_MEASURED),
        description="points read for the readings beside energy and status (one exchange "
        "each; a point a meter's model lacks is not read for it)",
    )
    measured_every: int = Field(
        default=DLT645_MEASURED_EVERY,
        ge=1,
        description="read the measured points every this many polls of a meter",
    )

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


#: What a ``protocol = "dlt645"`` bus has where its table leaves the keys out.
DLT645_LINE_DEFAULTS: dict[str, Any] = {
    "baud": dlt645_line.BAUD,
    "parity": dlt645_line.PARITY,
    "timeout_s": dlt645_line.REPLY_TIMEOUT_S,
}


class RtuBus(Strict):
    """An RS-485 line: one master, one request on the wire at a time."""

    name: str = Field(pattern=ID_PATTERN, description="bus name, used by meter enrolment")
    kind: Literal["rtu"] = Field(description="an RS-485 line, or RTU framing over TCP")
    device: str = Field(description="serial device (/dev/ttyUSB0) or socket://host:port")
    baud: int = Field(
        default=9600,
        gt=0,
        description=f"line speed, bits per second (a DL/T 645 bus: {dlt645_line.BAUD})",
    )
    parity: Literal["N", "E", "O"] = Field(
        default="N",
        description=f'none, even or odd (a DL/T 645 bus: "{dlt645_line.PARITY}")',
    )
    stopbits: Literal[1, 2] = Field(default=1, description="stop bits")
    timeout_s: float = Field(
        default=0.5,
        gt=0,
        le=30,
        description="reply timeout per request, after the wire time (a DL/T 645 bus: "
        f"{dlt645_line.REPLY_TIMEOUT_S})",
    )
    retries: int = Field(
        default=1, ge=0, le=5, description="immediate retries of a failed poll before backoff"
    )
    guard_s: float | None = Field(
        default=None, ge=0, description="bus silence after a failure; default from the baud"
    )
    protocol: Literal["modbus", "dlt645"] = Field(
        default="modbus", description="what the meters on this line speak: one bus, one protocol"
    )
    dlt645: Dlt645Settings | None = Field(
        default=None,
        description="DL/T 645 only: the meters' time zone, time sync, measured points (dlt645.md)",
    )

    @model_validator(mode="before")
    @classmethod
    def _dlt645_line_defaults(cls, data: Any) -> Any:
        """A DL/T 645 bus that leaves out its line settings gets the DL/T 645 line's
        (2400 baud 8E1, 1 s), not the Modbus ones of the fields' defaults."""
        if isinstance(data, dict) and data.get("protocol") == "dlt645":
            return {**DLT645_LINE_DEFAULTS, **data}
        return data

    @model_validator(mode="after")
    def _dlt645_settings_need_dlt645(self) -> RtuBus:
        if self.dlt645 is not None and self.protocol != "dlt645":
            raise ValueError('dlt645 settings on a bus whose protocol is not "dlt645"')
        measured = self.dlt645_settings.measured
        for i, point in enumerate(measured):
            if point not in READING_POINTS:
                known = ", ".join(READING_POINTS)
                raise ValueError(
                    f"bus {self.name!r}: dlt645.measured: {point!r} fills no reading field "
                    f"(known: {known})"
                )
            if point in measured[:i]:
                raise ValueError(f"bus {self.name!r}: dlt645.measured: {point!r} named twice")
        return self

    @property
    def dlt645_settings(self) -> Dlt645Settings:
        """This DL/T 645 bus's settings (the defaults unless the file gives them)."""
        return self.dlt645 if self.dlt645 is not None else Dlt645Settings()


class TcpBus(Strict):
    """A Modbus TCP endpoint (a meter or a serial device server) with unit ids behind it."""

    name: str = Field(pattern=ID_PATTERN, description="bus name, used by meter enrolment")
    kind: Literal["tcp"] = Field(description="Modbus TCP (a meter or a serial device server)")
    protocol: Literal["modbus"] = Field(
        default="modbus",
        description="Modbus TCP only (DL/T 645 through a device server: kind rtu, socket://)",
    )
    host: str = Field(description="address of the endpoint")
    port: int = Field(default=502, gt=0, lt=65536, description="Modbus TCP port")
    concurrency: int = Field(default=4, ge=1, le=64, description="requests in flight")
    connections: int = Field(
        default=3,
        ge=1,
        le=32,
        description="connections to the endpoint, opened as the load needs them; the "
        "requests in flight are spread over them (fewer if the device refuses one)",
    )
    timeout_s: float = Field(default=1.0, gt=0, le=30, description="reply timeout per request")
    retries: int = Field(
        default=1, ge=0, le=5, description="immediate retries of a failed poll before backoff"
    )


Bus = Annotated[RtuBus | TcpBus, Field(discriminator="kind")]
