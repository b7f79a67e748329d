"""The demo's screen fits any terminal: never more lines than rows nor a line wider than the columns, the header says `starting` (never a wall-clock time) until the simulated time is known, the story's meters and the status stay on an 80x24 terminal, the story panel fills its rows from its first line; and its console survives a hung-up terminal (a real pty) or a closed pipe by writing to /dev/null; the captures in README.md and docs/demo-screen.txt fit their terminals and agree."""

from __future__ import annotations

import io
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from prepaid_demo.screen import (
    MIN_STORY_ROWS,
    Status,
    clip,
    compose,
    featured,
    header_line,
    status_lines,
    story_rows,
    table_row,
)
from prepaid_demo.terminal import Console, redraw
from prepaid_demo.view import ViewModel

ROOT = Path(__file__).resolve().parents[2]
SIM = datetime(2026, 1, 5, 14, 45, tzinfo=UTC)  # 17:45 in Nairobi, a Monday
CLOCK = re.compile(r"\d{1,2}:\d{2}")
HEALTH = {
    "broker": "connected",
    "health": {"meters_online": 20, "meters_total": 20, "outbox_depth": 0},
}


def _model(meters: int = 20) -> ViewModel:
    """Rows like the demo's: unit 1 protected, 2, 7 and 13 short of credit."""
    model = ViewModel("gw-demo")
    for unit in range(1, meters + 1):
        row = model.row(f"PE1-{unit:06d}")
        row.customer_class = "residential"
        row.role = "protected" if unit == 1 else "low credit" if unit in (2, 7, 13) else ""
        row.balance, row.credit_state, row.power_w, row.relay = 123_456, "normal", 450, "closed"
    row = model.rows["PE1-000002"]
    row.balance, row.credit_state, row.relay = -1250, "normal", "closed"
    row.last_event = "replay rejected (replayed)"
    return model


def _status(sim_time: datetime | None = SIM, focus: str | None = "PE1-000002") -> Status:
    return Status(
        gateway="gw-demo",
        timezone="Africa/Nairobi",
        speed=60.0,
        sim_time=sim_time,
        broker="mosquitto (real broker, /usr/sbin/mosquitto) on 127.0.0.1:45001",
        broker_short="mosquitto on 127.0.0.1:45001",
        viewer_connected=True,
        gateway_state="online",
        health=HEALTH,
        window="night 22:00-06:00",
        window_active=None if sim_time is None else False,
        script="waiting for the replay to be rejected",
        focus=focus,
    )


def _story(lines: int) -> list[str]:
    return [
        f"[{i:5.1f}s Mon 17:{30 + i % 30:02d}] PE1-000002 demo types the same 20 digits again "
        f"(a replay): 0000 0466 6498 3635 7909 (line {i})"
        for i in range(lines)
    ]


def _fits(lines: list[str], width: int, height: int) -> None:
    assert len(lines) <= height
    assert all(len(line) <= width and "\n" not in line for line in lines), lines


def test_before_the_first_message_the_header_says_starting_and_shows_no_clock() -> None:
    for width in (200, 120, 80, 40, 23):
        header = header_line(_status(sim_time=None), width)
        assert "starting" in header
        assert not CLOCK.search(header), header
    assert "Mon 05 Jan 17:45 (Africa/Nairobi) at 60x" in header_line(_status(), 160)
    assert "Mon 05 Jan 17:45" in header_line(_status(), 80)
    assert len(header_line(_status(), 80)) <= 80


def test_at_80x24_the_story_meters_the_status_and_twelve_story_rows_fit() -> None:
    model = _model()
    screen = compose(model, _status(), _story(40), 80, 24)
    _fits(screen, 80, 24)
    assert len(screen) == 24
    assert screen[0].startswith("prepaid-edge demo | Mon 05 Jan 17:45")
    rows = [line for line in screen if line[1:].startswith("PE1-")]
    assert [r[1:11] for r in rows] == ["PE1-000001", "PE1-000002", "PE1-000007", "PE1-000013"]
    assert rows[1].startswith(">PE1-000002")
    assert rows[1].endswith("replay rejected (replayed)")
    assert "-12.50" in rows[1]
    assert rows[0].startswith(" PE1-000001*")
    assert " + 16 more meters (a taller terminal shows them all)" in screen
    for line in status_lines(_status(), 80):
        assert line in screen
    assert screen[screen.index("story:") + 1 :] == story_rows(_story(40), 80, MIN_STORY_ROWS)


def test_at_160x50_every_meter_shows_and_the_story_fills_its_panel_from_its_first_line() -> None:
    model = _model()
    short = compose(model, _status(), _story(5), 160, 50)
    _fits(short, 160, 50)
    for unit in range(1, 21):
        assert any(line[1:].startswith(f"PE1-{unit:06d} ") for line in short)
    panel = short[short.index("story:") + 1 :]
    assert panel == story_rows(_story(5), 160, 50)  # all of it, from its first line
    assert panel[0].startswith("[  0.0s")
    long = compose(model, _status(), _story(60), 160, 50)
    assert len(long) == 50  # lines scrolled away only because no row is left
    assert all(line.strip() for line in long[long.index("story:") + 1 :])


def test_story_lines_wrap_indented_and_the_newest_stay() -> None:
    story = ["a " * 50, "last line"]
    rows = story_rows(story, 40, 100)
    assert all(len(r) <= 40 for r in rows)
    assert rows[-1] == "last line"
    assert all(r.startswith("    ") for r in rows[1:-1])
    assert story_rows(story, 40, 2) == rows[-2:]
    assert story_rows(story, 40, 0) == []


def test_a_narrow_row_drops_an_event_reason_before_cutting_it() -> None:
    row = _model().rows["PE1-000007"]
    row.last_event = "DISCONNECTED (credit_exhausted)"
    narrow = table_row(row, 80, focus=False)
    assert narrow.endswith(" DISCONNECTED")
    assert len(narrow) <= 80
    assert table_row(row, 160, focus=False).endswith("DISCONNECTED (credit_exhausted)")
    assert clip("abcdefgh", 6) == "abc..."
    assert clip("abcdefgh", 2) == "ab"


def test_status_lines_never_pass_the_width() -> None:
    for width in (200, 100, 80, 60, 30, 5):
        lines = status_lines(_status(), width)
        assert all(len(line) <= width for line in lines)
    at_80 = status_lines(_status(), 80)
    assert (
        at_80[0] == "gateway online | uplink connected | meters answering 20/20 | outbox 0 waiting"
    )
    assert "broker: mosquitto on 127.0.0.1:45001 | viewer connected" in at_80
    assert status_lines(_status(sim_time=None), 200)[2].startswith(
        "friendly credit: night 22:00-06:00 (not known yet)"
    )


@given(
    width=st.integers(1, 240),
    height=st.integers(1, 80),
    meters=st.integers(2, 60),
    story=st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=300)),
    focused=st.booleans(),
    started=st.booleans(),
)
def test_any_terminal_gets_a_screen_that_fits_it(
    *, width: int, height: int, meters: int, story: list[str], focused: bool, started: bool
) -> None:
    model = _model(meters)
    status = _status(SIM if started else None, "PE1-000002" if focused else None)
    screen = compose(model, status, story, width, height)
    _fits(screen, width, height)
    assert screen[0] == header_line(status, width)
    block = status_lines(status, width)
    chosen = featured(model, status.focus)
    if height >= 1 + 1 + len(chosen) + 1 + len(block) + 1:
        for meter in chosen:
            shown = meter[: width - 1]  # a meter id is cut only by a terminal narrower than it
            assert any(line[1:].startswith(shown) for line in screen), (meter, screen)
        for line in block:
            assert line in screen
    if width >= 6 and "story:" in screen:
        panel = screen[screen.index("story:") + 1 :]
        everything = story_rows(story, width, 10_000)
        assert panel == everything[len(everything) - len(panel) :]
        assert len(panel) == len(everything) or len(screen) == height  # no idle rows


def test_a_redraw_places_every_line_and_never_writes_a_newline() -> None:
    codes = redraw(["one", "two"], 5)
    assert "\n" not in codes
    assert codes == "\x1b[1;1H\x1b[2Kone\x1b[2;1H\x1b[2Ktwo\x1b[3;1H\x1b[J"
    assert redraw(["a", "b", "c"], 2) == "\x1b[1;1H\x1b[2Ka\x1b[2;1H\x1b[2Kb"


def test_a_hung_up_terminal_sends_the_rest_to_dev_null() -> None:
    master, slave = os.openpty()
    out = io.TextIOWrapper(io.FileIO(slave, "w"), write_through=True)
    err = io.TextIOWrapper(io.FileIO(os.dup(slave), "w"), write_through=True)
    try:
        console = Console(out, err)
        console.print("before")
        assert os.read(master, 100) == b"before\r\n"
        console.hung_up()  # a kill -HUP with the terminal still there: keep it
        assert not console.gone
        os.close(master)  # the terminal closes
        console.hung_up()
        assert console.gone
        console.print("after")  # nowhere, without an error
        console.print("after", error=True)
        for stream in (out, err):
            assert Path(f"/proc/self/fd/{stream.fileno()}").resolve() == Path(os.devnull)
    finally:
        out.close()
        err.close()


def test_a_closed_pipe_detaches_only_that_stream(tmp_path: Path) -> None:
    reader, writer = os.pipe()
    out = io.TextIOWrapper(io.FileIO(writer, "w"), write_through=True)
    log = (tmp_path / "err.log").open("w")
    try:
        console = Console(out, log)
        os.close(reader)  # the pager quit
        console.print("lost")
        assert console.gone
        console.print("still nowhere")
        console.print("kept", error=True)
        assert (tmp_path / "err.log").read_text() == "kept\n"
    finally:
        out.close()
        log.close()


def test_the_documented_captures_fit_their_terminals_and_agree() -> None:
    doc = (ROOT / "docs" / "demo-screen.txt").read_text()
    sections = dict(re.findall(r"--- (\d+x\d+) ---\n(.*?)(?=\n--- |\Z)", doc, re.DOTALL))
    assert set(sections) == {"80x24", "160x50"}
    for size, capture in sections.items():
        width, height = map(int, size.split("x"))
        lines = capture.rstrip("\n").split("\n")
        _fits(lines, width, height)
        assert lines[0].startswith("prepaid-edge demo |")
        assert any(line.startswith(">PE1-") for line in lines)
        assert any(line.startswith("gateway online | ") for line in lines)
    readme = (ROOT / "README.md").read_text()
    assert f"```text\n{sections['80x24'].rstrip()}\n```" in readme
