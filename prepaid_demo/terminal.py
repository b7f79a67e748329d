"""The demo's terminal: its size, one redraw as escape codes, and writes that outlive it.

When the terminal is closed (SIGHUP) the demo still has to stop its children and remove
its folder; a write to a hung-up terminal fails (EIO), so the first failed write points
that stream, and any other stream on the same terminal, at /dev/null and the demo goes on
stopping quietly.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

#: The size assumed when the output is not a terminal that can say its size.
FALLBACK_SIZE = (120, 40)
ENTER_VIEW = "\x1b[?1049h\x1b[?25l"  # alternate screen, cursor hidden
LEAVE_VIEW = "\x1b[?25h\x1b[?1049l"


def redraw(lines: Sequence[str], height: int) -> str:
    """Escape codes that draw ``lines`` from the top-left corner: each line placed and
    cleared on its own row (never a newline, so the terminal neither wraps nor scrolls
    what fits), and everything below the last one erased."""
    parts = [f"\x1b[{i};1H\x1b[2K{line}" for i, line in enumerate(lines[:height], 1)]
    if len(lines) < height:
        parts.append(f"\x1b[{len(lines) + 1};1H\x1b[J")
    return "".join(parts)


def _same_file(a: int, b: int) -> bool:
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino, sa.st_rdev) == (sb.st_dev, sb.st_ino, sb.st_rdev)


@dataclass
class Console:
    """stdout and stderr, written so that a closed terminal ends nothing but the output."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    #: the terminal was lost: nothing more is shown
    gone: bool = False

    def size(self) -> tuple[int, int]:
        """Columns and rows of the output terminal, read afresh (it may have been
        resized); the fallback when it is not a terminal. The terminal itself, not the
        COLUMNS/LINES a shell may have exported at its start."""
        try:
            size = os.get_terminal_size(self.out.fileno())
        except (OSError, ValueError):
            return FALLBACK_SIZE
        return size.columns, size.lines

    def write(self, text: str) -> None:
        self._write(self.out, text)

    def print(self, text: str, *, error: bool = False) -> None:
        self._write(self.err if error else self.out, text + "\n")

    def _write(self, stream: TextIO, text: str) -> None:
        try:
            stream.write(text)
            stream.flush()
        except OSError:
            self.detach(stream)

    def detach(self, stream: TextIO) -> None:
        """Point ``stream``'s file descriptor, and the other stream's when it is the same
        terminal or file, at /dev/null: the rest of the run writes nowhere and fails
        nowhere (Python's last flush at exit included)."""
        self.gone = True
        try:
            lost = stream.fileno()
        except (OSError, ValueError):
            return
        others = [s for s in (self.out, self.err) if s is not stream]
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            for other in others:
                try:
                    fd = other.fileno()
                except (OSError, ValueError):
                    continue
                if fd != lost and _same_file(fd, lost):
                    os.dup2(devnull, fd)
            os.dup2(devnull, lost)
        finally:
            os.close(devnull)

    def hung_up(self) -> None:
        """SIGHUP: if the output terminal is gone (no longer answers as a terminal),
        write nowhere from now on; if it is still there (a ``kill -HUP``), keep it."""
        try:
            fd = self.out.fileno()
        except (OSError, ValueError):
            return
        if not os.isatty(fd) and _was_tty(fd):
            self.detach(self.out)


def _was_tty(fd: int) -> bool:
    """``fd`` is a character device (a terminal that hung up stays one, a file or pipe
    never was)."""
    try:
        return stat.S_ISCHR(os.fstat(fd).st_mode)
    except OSError:
        return False
