"""Meter clock values: the wall time a DL/T 645 meter keeps, with no time zone of its own.

A meter's clock shows local wall time; which zone that is belongs to the site, not to
the protocol. :class:`MeterTime` therefore holds the six fields and nothing else:
:meth:`MeterTime.from_datetime` takes the fields of an aware ``datetime`` already in the
site's zone, :meth:`MeterTime.to_datetime` attaches one. On the wire (broadcast time,
a control command's valid-until) the fields go ``ss mm hh DD MM YY``, low byte first;
the date point ``YYMMDDWW`` goes ``WW DD MM YY`` and the time point ``hhmmss`` goes
``ss mm hh``. Years are 2000..2099.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, tzinfo

from protocol.dlt645.bcd import bcd_byte, byte_value
from protocol.errors import DecodeError, EncodeError


@dataclass(frozen=True, slots=True, order=True)
class MeterTime:
    """A meter's wall time, to the second."""

    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int

    def __post_init__(self) -> None:
        if not 2000 <= self.year <= 2099:
            raise EncodeError(f"year {self.year} outside 2000..2099")
        try:
            date(self.year, self.month, self.day)
        except ValueError as exc:
            raise EncodeError(f"{self.year}-{self.month}-{self.day}: {exc}") from None
        if not (0 <= self.hour <= 23 and 0 <= self.minute <= 59 and 0 <= self.second <= 59):
            raise EncodeError(f"{self.hour}:{self.minute}:{self.second} is not a time of day")

    @classmethod
    def from_datetime(cls, when: datetime) -> MeterTime:
        """The wall-clock fields of ``when`` (convert it to the meters' zone first)."""
        return cls(when.year, when.month, when.day, when.hour, when.minute, when.second)

    def to_datetime(self, tz: tzinfo) -> datetime:
        """This wall time in zone ``tz``."""
        return datetime(self.year, self.month, self.day, self.hour, self.minute, self.second, 0, tz)

    @property
    def weekday(self) -> int:
        """DL/T 645's day of the week: 0 Sunday .. 6 Saturday."""
        return date(self.year, self.month, self.day).isoweekday() % 7

    def to_bytes(self) -> bytes:
        """``ss mm hh DD MM YY``."""
        fields = (self.second, self.minute, self.hour, self.day, self.month, self.year - 2000)
        return bytes(bcd_byte(f) for f in fields)

    @classmethod
    def from_bytes(cls, data: bytes) -> MeterTime:
        if len(data) != 6:
            raise DecodeError(f"a meter time is 6 bytes, got {len(data)}", data)
        ss, mm, hh, dd, mo, yy = (byte_value(b, data) for b in data)
        return _checked(data, 2000 + yy, mo, dd, hh, mm, ss)

    def date_bytes(self) -> bytes:
        """The date point ``YYMMDDWW``: ``WW DD MM YY``."""
        fields = (self.weekday, self.day, self.month, self.year - 2000)
        return bytes(bcd_byte(f) for f in fields)

    def time_bytes(self) -> bytes:
        """The time point ``hhmmss``: ``ss mm hh``."""
        return bytes(bcd_byte(f) for f in (self.second, self.minute, self.hour))

    @classmethod
    def from_date_and_time(cls, date_data: bytes, time_data: bytes) -> MeterTime:
        """A meter's clock read as its date point and its time point."""
        raw = date_data + time_data
        if len(date_data) != 4 or len(time_data) != 3:
            raise DecodeError("a date point is 4 bytes and a time point 3", raw)
        _ww, dd, mo, yy = (byte_value(b, raw) for b in date_data)
        ss, mm, hh = (byte_value(b, raw) for b in time_data)
        return _checked(raw, 2000 + yy, mo, dd, hh, mm, ss)


def _checked(raw: bytes, *fields: int) -> MeterTime:
    try:
        return MeterTime(*fields)
    except EncodeError as exc:
        raise DecodeError(f"not a meter time: {exc}", raw) from None


@dataclass(frozen=True, slots=True)
class DateFormat:
    """``YYMMDDWW``: the date point of a meter's clock."""

    @property
    def size(self) -> int:
        return 4

    @property
    def text(self) -> str:
        return "YYMMDDWW"


@dataclass(frozen=True, slots=True)
class TimeFormat:
    """``hhmmss``: the time point of a meter's clock."""

    @property
    def size(self) -> int:
        return 3

    @property
    def text(self) -> str:
        return "hhmmss"
