"""No-disconnect (friendly credit) windows: configured nights, weekends and public holidays.

Credit used inside a window is still charged; only the disconnection waits for the window
to end. Times are local wall-clock times in the window's time zone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from gateway.core.tariff import zone


@dataclass(frozen=True, slots=True)
class WeeklyWindow:
    """From ``start`` on each of ``weekdays`` (0 = Monday) until ``end``; ``end <= start``
    means ``end`` on the next day (e.g. 18:00 to 11:00)."""

    name: str
    weekdays: frozenset[int]
    start: time
    end: time

    def __post_init__(self) -> None:
        if not self.weekdays or not self.weekdays <= set(range(7)):
            raise ValueError("weekdays must be a non-empty subset of 0..6 (0 = Monday)")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("window times are local wall-clock times, without a zone")

    def spans(self, tz: ZoneInfo, around: date) -> list[tuple[datetime, datetime]]:
        """The window's occurrences that start on the day before ``around`` up to a week
        after it."""
        out = []
        for offset in range(-1, 8):
            day = around + timedelta(days=offset)
            if day.weekday() not in self.weekdays:
                continue
            begin = datetime.combine(day, self.start, tzinfo=tz)
            end_day = day if self.end > self.start else day + timedelta(days=1)
            out.append((begin, datetime.combine(end_day, self.end, tzinfo=tz)))
        return out


@dataclass(frozen=True, slots=True)
class NoDisconnectWindows:
    """When a credit disconnection must wait: weekly windows and whole public holidays."""

    timezone: str = "UTC"
    weekly: tuple[WeeklyWindow, ...] = ()
    holidays: frozenset[date] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        zone(self.timezone)

    def _spans(self, now: datetime) -> list[tuple[str, datetime, datetime]]:
        tz = ZoneInfo(self.timezone)
        today = now.astimezone(tz).date()
        spans = [(w.name, b, e) for w in self.weekly for b, e in w.spans(tz, today)]
        for offset in range(-1, 8) if self.holidays else ():  # asked at every reading
            day = today + timedelta(days=offset)
            if day in self.holidays:
                begin = datetime.combine(day, time(0), tzinfo=tz)
                end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
                spans.append((f"holiday {day.isoformat()}", begin, end))
        return spans

    def active(self, now: datetime) -> str | None:
        """The name of a window ``now`` falls in, or None."""
        for name, begin, end in sorted(self._spans(now), key=lambda s: (s[1], s[0])):
            if begin <= now < end:
                return name
        return None

    def next_edge(self, now: datetime) -> datetime | None:
        """The next instant after ``now`` where a window starts or ends (within a week)."""
        edges = [t for _, b, e in self._spans(now) for t in (b, e) if t > now]
        return min(edges) if edges else None
