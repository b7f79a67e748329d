"""The live view laid out for one terminal size: header, meter table, status and story.

Pure: the view model, the status and the story lines go in with the terminal's columns and
rows; the lines to draw come out, none wider than the terminal and no more than its rows,
so the terminal never wraps or scrolls them. A terminal tall enough for every meter gets
the full table; a smaller one (80x24) gets a compact layout that keeps the header, the
meters the story is about and the status, and gives the rest to the story. The story
panel fills the rows left, from its first line: only what no longer fits scrolls away,
the oldest first.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from prepaid_demo.view import MeterRow, ViewModel, money

#: Columns from which the table shows the customer class and the currency on every row.
WIDE_FROM = 100
#: Rows the story keeps in the compact layout before other meters get a row.
MIN_STORY_ROWS = 12
#: How a story line that does not fit the width continues on the next rows.
STORY_INDENT = "    "
FOCUS_MARK = ">"


@dataclass(frozen=True, slots=True)
class Status:
    """What the header and the status lines say, as the shell knows it at one redraw."""

    gateway: str
    timezone: str
    speed: float
    #: the gateway's simulated time (its latest message); None until one arrived
    sim_time: datetime | None
    broker: str
    broker_short: str
    viewer_connected: bool
    gateway_state: str
    #: the gateway's status file (``broker``, ``health``), None until it wrote one
    health: Mapping[str, object] | None
    window: str
    #: the friendly-credit window is on now; None until the simulated time is known
    window_active: bool | None
    script: str
    #: the meter the story is about, once the script chose it
    focus: str | None


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns, ``...`` saying it was cut."""
    if len(text) <= width:
        return text
    if width <= 3:
        return text[: max(0, width)]
    return text[: width - 3] + "..."


def header_line(status: Status, width: int) -> str:
    """The first line: the longest form that fits. Before the gateway's first message it
    says ``starting``: the simulated time is not known, and the wall clock is not it."""
    if status.sim_time is None:
        forms = [
            f"prepaid-edge demo | gateway {status.gateway} | simulated time: starting "
            f"| Ctrl-C stops",
            "prepaid-edge demo | starting | Ctrl-C stops",
            "prepaid-edge | starting",
        ]
    else:
        t = status.sim_time.astimezone(ZoneInfo(status.timezone))
        forms = [
            f"prepaid-edge demo | gateway {status.gateway} | simulated time "
            f"{t:%a %d %b %H:%M} ({status.timezone}) at {status.speed:g}x | Ctrl-C stops",
            f"prepaid-edge demo | {t:%a %d %b %H:%M} {status.timezone} ({status.speed:g}x) "
            f"| Ctrl-C stops",
            f"prepaid-edge | {t:%a %H:%M} | Ctrl-C stops",
            f"{t:%a %H:%M}",
        ]
    return _first_fitting(forms, width)


def _first_fitting(forms: Sequence[str], width: int) -> str:
    for form in forms:
        if len(form) <= width:
            return form
    return clip(forms[-1], width)


def _health_segments(status: Status) -> list[str]:
    segments = [f"gateway {status.gateway_state}"]
    if status.health is not None:
        h = status.health.get("health")
        h = h if isinstance(h, Mapping) else {}
        segments += [
            f"uplink {status.health.get('broker')}",
            f"meters answering {h.get('meters_online')}/{h.get('meters_total')}",
            f"outbox {h.get('outbox_depth')} waiting",
        ]
    return segments


def status_lines(status: Status, width: int) -> list[str]:
    """The gateway's health, the broker and viewer, the friendly-credit window and the
    demo script: segments joined by `` | ``, a segment that does not fit going to the next
    line (never wrapped by the terminal)."""
    viewer = "viewer " + ("connected" if status.viewer_connected else "connecting")
    broker = f"broker: {status.broker}"
    if len(f"{broker} | {viewer}") > width:
        broker = f"broker: {status.broker_short}"
    if status.window_active is None:
        window = "not known yet"
    else:
        window = "ACTIVE: no disconnections" if status.window_active else "not active"
    script = "demo script: " + (f"{status.focus} " if status.focus else "") + status.script
    groups = [
        _health_segments(status),
        [broker, viewer],
        [f"friendly credit: {status.window} ({window})", "* protected supply", script],
    ]
    lines: list[str] = []
    for group in groups:
        line = ""
        for segment in group:
            if line and len(f"{line} | {segment}") <= width:
                line = f"{line} | {segment}"
            else:
                if line:
                    lines.append(line)
                line = clip(segment, width)
        lines.append(line)
    return lines


def _event_cell(event: str, room: int) -> str:
    """The last event in ``room`` columns: without its ``(reason)`` if that is what fits."""
    if len(event) > room and " (" in event:
        event = event.split(" (", 1)[0]
    return clip(event, room) if room > 0 else ""


def table_head(width: int) -> str:
    if width >= WIDE_FROM:
        head = f" {'meter':<10} {'class':<11} {'balance':>15} {'credit state':<18} {'power':>8} {'relay':<7} last event"
    else:
        head = f" {'meter':<11} {'balance':>9} {'credit state':<16} {'power':>6} {'relay':<6} last event"
    return clip(head, width)


def table_row(row: MeterRow, width: int, *, focus: bool) -> str:
    """One meter; ``>`` in the first column marks the meter the story is about, ``*`` a
    protected one."""
    mark = FOCUS_MARK if focus else " "
    power = "-" if row.power_w is None else f"{row.power_w} W"
    protected = "*" if row.role == "protected" else ""
    if width >= WIDE_FROM:
        cls = row.customer_class + protected
        cells = (
            f"{mark}{row.meter:<10} {cls:<11} {money(row.balance, row.currency):>15} "
            f"{row.credit_state:<18} {power:>8} {row.relay:<7} "
        )
    else:
        balance = money(row.balance, row.currency).removesuffix(f" {row.currency}")
        cells = (
            f"{mark}{row.meter + protected:<11} {balance:>9} {row.credit_state:<16} "
            f"{power:>6} {row.relay:<6} "
        )
    cells = cells[:width]
    return cells + _event_cell(row.last_event, width - len(cells))


def story_rows(story: Sequence[str], width: int, rows: int) -> list[str]:
    """The last ``rows`` rows of the story at ``width`` columns, like a log scrolled to its
    end: a line longer than the width continues, indented, on the next row, and only what
    no longer fits scrolls away, the oldest first."""
    if rows <= 0 or width <= 0:
        return []
    indent = STORY_INDENT if width > 2 * len(STORY_INDENT) else ""
    shown: list[str] = []
    for line in reversed(story):
        wrapped = textwrap.wrap(line, width, subsequent_indent=indent, break_on_hyphens=False)
        shown[:0] = wrapped or [""]
        if len(shown) >= rows:
            return shown[-rows:]
    return shown


def featured(model: ViewModel, focus: str | None) -> list[str]:
    """The meters the story is about: the one the script chose, the meters planned to run
    out of credit and the protected one."""
    return [m for m, r in sorted(model.rows.items()) if m == focus or r.role]


def compose(
    model: ViewModel, status: Status, story: Sequence[str], width: int, height: int
) -> list[str]:
    """The screen for a terminal of ``width`` columns and ``height`` rows."""
    width, height = max(width, 1), max(height, 1)
    header = header_line(status, width)
    status_block = status_lines(status, width)
    meters = sorted(model.rows)
    focus = status.focus

    def row(meter: str) -> str:
        return table_row(model.rows[meter], width, focus=meter == focus)

    head = table_head(width)
    full_fixed = 1 + 1 + 2 + len(meters) + 1 + len(status_block) + 1 + 1
    if full_fixed + MIN_STORY_ROWS <= height:
        rule = "-" * min(width, len(head) + 30)
        label = clip("story:", width)
        lines = [header, "", head, rule, *map(row, meters), "", *status_block, "", label]
        return lines + story_rows(story, width, height - len(lines))

    # Compact: no blank lines; the story's meters first, other meters while the story
    # keeps MIN_STORY_ROWS rows, then how many are not shown.
    room = height - (1 + 1 + len(status_block) + 1)  # header, table head, status, "story:"
    if room < 1:  # smaller than any layout: the header, the story's meter, the status
        mine = [row(focus)] if focus in model.rows else []
        return [header, *mine, *status_block][:height]
    chosen = featured(model, focus)
    others = [m for m in meters if m not in chosen]
    if len(meters) + MIN_STORY_ROWS <= room:
        shown = meters
    else:
        spare = max(0, room - 1 - MIN_STORY_ROWS - len(chosen))
        shown = sorted(chosen + others[:spare])
        if len(shown) + 1 > room:  # not even the story's meters fit: the chosen one first
            keep = [focus] if focus in chosen else []
            shown = sorted(keep + [m for m in chosen if m != focus][: max(0, room - 2)])
    hidden = len(meters) - len(shown)
    lines = [header, head, *map(row, shown)]
    if hidden:
        lines.append(clip(f" + {hidden} more meters (a taller terminal shows them all)", width))
    lines += status_block
    if len(lines) < height:
        lines.append(clip("story:", width))
        lines += story_rows(story, width, height - len(lines))
    return lines[:height]
