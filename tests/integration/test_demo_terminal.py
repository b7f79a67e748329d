"""`make demo`'s live view in a real terminal (a tmux pane): at 80x24 and at 160x50 the header (the simulated time, never the wall clock), the row of the meter the story is about and the status line are on screen, no line is wider than the terminal and the story fills its panel; a resize is followed; and every way the demo ends (its normal end, Ctrl-C, SIGTERM, a closed terminal, an error) removes its temporary prepaid-demo-* folder and leaves no child running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.demo_run import (
    REPO,
    Terminal,
    demo_command,
    descendants,
    running,
    started_children,
    until,
)

pytestmark = [pytest.mark.slow]

STORY_WITHIN_S = 90
STARTED_WITHIN_S = 60
STOPPED_WITHIN_S = 40
#: The script's last phase, with the meter it chose, as the status says it.
STORY_DONE = re.compile(r"demo script: (PE1-\d{6}) story complete")
#: The simulated time in the header: the demo's clock starts at 17:30 on a weekday.
HEADER_TIME = re.compile(r"\b(Mon|Tue|Wed|Thu|Fri) (?:\d{2} \w{3} )?(\d{2}):(\d{2})\b")
STATUS = "gateway online | uplink connected | meters answering 20/20 | outbox"


def _check_frame(lines: list[str], width: int, height: int) -> None:
    """What holds on every frame: nothing wider than the terminal (a line the terminal
    wrapped comes back joined by the capture) and a header that shows either ``starting``
    or the simulated time (from 17:30 on), never the wall clock."""
    text = "\n".join(lines)
    assert len(lines) <= height, text
    too_wide = [line for line in lines if len(line) > width]
    assert too_wide == [], f"wider than {width} columns: {too_wide}\n{text}"
    header = lines[0] if lines else ""
    if header.strip():
        assert header.startswith("prepaid-edge"), text
        if "starting" not in header:
            clock = HEADER_TIME.search(header)
            assert clock, f"the header shows no simulated time: {header!r}"
            assert (clock.group(2), clock.group(3)) >= ("17", "30"), header


@dataclass
class LiveDemo:
    """The demo on a terminal, with the temporary folder it makes kept under ``tmpdir``."""

    terminal: Terminal
    pid: int
    tmpdir: Path
    #: every process seen below the demo, so the end can check each one is gone
    seen: dict[int, str] = field(default_factory=dict)

    def screen(self) -> list[str]:
        lines = self.terminal.screen()
        _check_frame(lines, self.terminal.width, self.terminal.height)
        return lines

    def wait(self, predicate: Callable[[str], object], within: float, what: str) -> list[str]:
        """The first screen on which ``predicate(text)`` holds; every frame is checked."""
        found: list[list[str]] = []

        def shown() -> bool:
            self.seen.update(descendants(self.pid))
            if self.terminal.pane("#{pane_dead}") == "1":
                pytest.fail(f"the demo ended before {what}:\n" + "\n".join(self.screen()))
            lines = self.screen()
            if predicate("\n".join(lines)):
                found.append(lines)
                return True
            return False

        until(shown, within, what)
        return found[0]

    def folders(self) -> list[Path]:
        return sorted(self.tmpdir.glob("prepaid-demo-*"))

    def left_running(self) -> list[str]:
        return [f"{pid}: {cmd}" for pid, cmd in self.seen.items() if running(pid)]


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Callable[[int, int], LiveDemo]]:
    """Start the demo in a terminal of a given size; at the end, close the terminal and
    wait until the demo and everything it started are gone."""
    started: list[LiveDemo] = []

    def start(width: int, height: int) -> LiveDemo:
        tmpdir = tmp_path / "tmp"
        tmpdir.mkdir()
        terminal = Terminal(tmp_path, width, height)
        pid = terminal.start(demo_command(), {"TMPDIR": str(tmpdir)})
        demo = LiveDemo(terminal, pid, tmpdir)
        started.append(demo)
        return demo

    yield start
    for demo in started:
        _close(demo)


def _close(demo: LiveDemo) -> None:
    demo.terminal.stop_server()
    demo.seen[demo.pid] = "the demo"
    until(lambda: demo.left_running() == [], STOPPED_WITHIN_S, "the demo and its children gone")


def _story_meter(text: str) -> str:
    done = STORY_DONE.search(text)
    assert done, text
    return done.group(1)


def _rows(screen: list[str], meter: str) -> list[str]:
    return [line for line in screen if line[1:].startswith(meter)]


def test_at_80x24_the_compact_view_shows_the_story_meter_and_the_status(
    live: Callable[[int, int], LiveDemo],
) -> None:
    demo = live(80, 24)
    first = demo.wait(lambda text: "uplink connected" in text, STARTED_WITHIN_S, "the gateway up")
    assert "story:" in first
    screen = demo.wait(STORY_DONE.search, STORY_WITHIN_S, "the story told")
    text = "\n".join(screen)
    meter = _story_meter(text)
    assert screen[0].startswith("prepaid-edge demo |"), text
    assert screen[0].endswith("| Ctrl-C stops"), text
    story_row = _rows(screen, meter)
    assert len(story_row) == 1, text
    assert story_row[0].startswith(">"), text
    assert " closed " in story_row[0], text
    assert story_row[0].endswith("replay rejected (replayed)"), text
    assert any(line.startswith(STATUS) for line in screen), text
    assert any(line.startswith(" + 16 more meters") for line in screen), text
    # The story panel runs to the last row: no row left empty under it.
    assert screen[-1].strip(), text


def test_at_160x50_every_meter_and_the_whole_story_panel_show_and_a_resize_is_followed(
    live: Callable[[int, int], LiveDemo],
) -> None:
    demo = live(160, 50)
    early = demo.wait(lambda text: "uplink connected" in text, STARTED_WITHIN_S, "the gateway up")
    panel = early[early.index("story:") + 1 :]
    assert "site folder" in panel[0], "\n".join(early)  # the story's first line stays in view
    screen = demo.wait(STORY_DONE.search, STORY_WITHIN_S, "the story told")
    text = "\n".join(screen)
    meter = _story_meter(text)
    assert "simulated time" in screen[0], text
    assert "(Africa/Nairobi) at 60x | Ctrl-C stops" in screen[0], text
    for unit in range(1, 21):
        assert len(_rows(screen, f"PE1-{unit:06d}")) == 1, f"PE1-{unit:06d} missing:\n{text}"
    assert _rows(screen, meter)[0].startswith(">"), text
    assert any(line.startswith(STATUS) for line in screen), text
    panel = screen[screen.index("story:") + 1 :]
    if not any("site folder" in line for line in panel):
        # Lines scrolled away: only because the panel is full to the last row.
        assert len(panel) == 50 - screen.index("story:") - 1, text
        assert all(line.strip() for line in panel), text

    demo.terminal.resize(80, 24)
    small = demo.wait(lambda text: "+ 16 more meters" in text, 10, "the compact view")
    small_text = "\n".join(small)
    assert small[0].startswith("prepaid-edge demo |"), small_text
    assert _rows(small, meter)[0].startswith(">"), small_text
    assert any(line.startswith(STATUS) for line in small), small_text


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_every_signal_removes_the_folder_and_every_child(
    live: Callable[[int, int], LiveDemo], how: str
) -> None:
    demo = live(80, 24)
    demo.wait(lambda text: "uplink connected" in text, STARTED_WITHIN_S, "the gateway up")
    assert len(demo.folders()) == 1
    children = " ".join(demo.seen.values())
    for name in ("meter_sim serve", "gateway run"):
        assert name in children, demo.seen
    if how == "SIGINT":
        demo.terminal.keys("C-c")  # the terminal's Ctrl-C: SIGINT to its foreground group
    elif how == "SIGTERM":
        os.kill(demo.pid, signal.SIGTERM)
    else:
        demo.terminal.close()  # the window closed: the terminal hangs up (SIGHUP)
    until(lambda: not running(demo.pid), STOPPED_WITHIN_S, "the demo ended")
    assert demo.folders() == []
    assert demo.left_running() == []
    if how != "SIGHUP":  # a closed terminal shows nothing; the others show the last lines
        reason = {"SIGINT": "Ctrl-C", "SIGTERM": "SIGTERM"}[how]
        until(lambda: demo.terminal.pane("#{pane_dead}") == "1", 10, "tmux to see the end")
        text = "\n".join(demo.terminal.screen())
        assert f"demo over ({reason}); exit 0" in text, text
        assert "Traceback" not in text, text


def _plain_demo(tmpdir: Path, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        demo_command(*flags),
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmpdir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_normal_end_removes_the_folder_and_every_child(tmp_path: Path) -> None:
    proc = _plain_demo(tmp_path, "--duration", "4")
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "demo over (--duration 4 s reached); exit 0" in output
    assert sorted(tmp_path.glob("prepaid-demo-*")) == []
    children = started_children(output)
    assert set(children) == {"broker", "simulator", "gateway"}
    assert [name for name, pid in children.items() if running(pid)] == []


def test_an_error_removes_the_folder_and_every_child(tmp_path: Path) -> None:
    """A child that dies on its own (the gateway, killed) ends the demo with exit 1."""
    log = tmp_path / "demo.out"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    with log.open("w") as out:
        proc = subprocess.Popen(
            demo_command(),
            cwd=REPO,
            env={**os.environ, "TMPDIR": str(tmpdir)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        until(lambda: "gateway gw-demo is online" in log.read_text(), 60, "the gateway online")
        children = started_children(log.read_text())
        assert len(list(tmpdir.glob("prepaid-demo-*"))) == 1
        os.kill(children["gateway"], signal.SIGKILL)
        assert proc.wait(timeout=STOPPED_WITHIN_S) == 1, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert "demo over (error: gateway exited with -9); exit 1" in output
    assert "Traceback" not in output
    assert sorted(tmpdir.glob("prepaid-demo-*")) == []
    assert [name for name, pid in children.items() if running(pid)] == []
