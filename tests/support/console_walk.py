"""A page of console blocks as the steps a person takes, and the comparison of what a step
printed with what the page shows (tests/shell/test_docs_walkthrough.py walks
docs/field-guide.md with them).

The page's conventions, each also plain Markdown for a reader:

- A fenced ``console`` block is typed in one terminal. Words after ``console`` in the
  info string (GitHub shows none of them) name the terminal, ``t1`` (the default) to
  ``t9``, and ``retry``: its commands are run again until their output matches, as a
  person runs ``status`` again until the next poll shows what they are waiting for.
- ``$ COMMAND`` starts a command; lines ending in ``\\`` and a here-document
  (``<<'EOF'`` to ``EOF``) belong to it. The lines after it are its output.
- A block that starts with output lines (no ``$``) shows more output of the command
  still running in that terminal; a line starting ``^C`` is Ctrl-C typed there, and the
  rest of it and the lines after it are what the command prints as it stops.
- A shown line ``... [y/N] y`` is a question and the answer the person types.
- A line ``...`` stands for any number of lines, and ``...`` inside a line for any text.

What may differ between the page and a run (the normaliser, applied to both):

- a line is what a terminal shows: text overwritten after a carriage return is gone,
  blank lines and trailing spaces do not count, an echoed ``^C`` is dropped;
- masked: date-times, mosquitto's log stamps and version, 20-digit keypad tokens (the
  vending key is new on every run), measured energy, power and voltage (the meters run
  on the real clock), the age of the gateway's status file and process ids;
- compared with a tolerance: money (``12.34``) within :data:`MONEY_TOLERANCE` (the
  meters consume while the walk runs) and durations (``4.4 s``) within half their value
  or a second;
- the run's own home folder and free ports are turned back into the page's
  (:class:`Substitutions`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum

FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
PROMPT = re.compile(r"^(?P<question>.*\[y/N\]) (?P<answer>\S+)$")
TOKEN = re.compile(r"\b\d{4} \d{4} \d{4} \d{4} \d{4}\b")
TERMINAL = re.compile(r"^t[1-9]$")
DEFAULT_TERMINAL = "t1"
ANY_LINES = "..."
#: money in a run may differ from the page by this much (currency units)
MONEY_TOLERANCE = 0.50

MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?"), "<time>"),
    (re.compile(r"^\d{9,11}: "), "<time>: "),
    (re.compile(r"mosquitto version \S+"), "mosquitto version <v>"),
    (TOKEN, "<token>"),
    (re.compile(r"-?\d+(?:\.\d+)? (Wh|W|V)\b"), r"<n> \1"),
    (re.compile(r"written \d+ s ago"), "written <n> s ago"),
    (re.compile(r"\bPID \d+"), "PID <pid>"),
)
_MONEY = re.compile(r"-?\d+\.\d\d")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class StepKind(Enum):
    COMMAND = "command"  # `$ ...`: a command typed
    OUTPUT = "output"  # more output of the command running in that terminal
    INTERRUPT = "interrupt"  # ^C typed in that terminal


@dataclass
class Step:
    kind: StepKind
    terminal: str
    block: int
    command: str = ""
    shown: list[str] = field(default_factory=list)
    retry: bool = False
    #: the command may still run when the step is done (the terminal's next step shows
    #: more of its output or stops it); otherwise it must have ended
    keeps_running: bool = False


@dataclass(frozen=True)
class Block:
    index: int
    terminal: str
    retry: bool
    steps: tuple[Step, ...]


class PageError(Exception):
    """The page breaks its own conventions (a typo in an info string, output before any
    command in a terminal that runs nothing)."""


def console_blocks(text: str) -> tuple[list[Block], list[str]]:
    """The console blocks of a page, and the languages of its other fenced blocks."""
    blocks: list[Block] = []
    others: list[str] = []
    for info, body in FENCE.findall(text):
        words = info.split()
        if not words or words[0] != "console":
            others.append(words[0] if words else "")
            continue
        terminal, retry = DEFAULT_TERMINAL, False
        for word in words[1:]:
            if TERMINAL.match(word):
                terminal = word
            elif word == "retry":
                retry = True
            else:
                raise PageError(f"console block {len(blocks) + 1}: unknown word {word!r}")
        index = len(blocks)
        steps = tuple(_steps(body, terminal, index, retry))
        if not steps:
            raise PageError(f"console block {index + 1} is empty")
        blocks.append(Block(index, terminal, retry, steps))
    _mark_running(blocks)
    return blocks, others


def _steps(body: str, terminal: str, block: int, retry: bool) -> Iterator[Step]:
    lines = body.splitlines()
    step: Step | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            if step is not None:
                yield step
            command = [line[2:]]
            while command[-1].endswith("\\") and i + 1 < len(lines):
                i += 1
                command.append(lines[i])
            heredoc = HEREDOC.search(command[-1])
            if heredoc:
                end = heredoc.group(2)
                while i + 1 < len(lines) and lines[i] != end:
                    i += 1
                    command.append(lines[i])
                if command[-1] != end:
                    raise PageError(f"console block {block + 1}: here-document without {end}")
            step = Step(StepKind.COMMAND, terminal, block, "\n".join(command), retry=retry)
        elif line.startswith("^C"):
            if step is not None:
                yield step
            step = Step(StepKind.INTERRUPT, terminal, block)
            if line[2:].strip():
                step.shown.append(line[2:])
        else:
            if step is None:
                step = Step(StepKind.OUTPUT, terminal, block)
            step.shown.append(line)
        i += 1
    if step is not None:
        yield step


def _mark_running(blocks: Sequence[Block]) -> None:
    """A command may go on running when its terminal's next step shows more of its
    output or stops it; every other command must end before the walk goes on."""
    steps = [s for b in blocks for s in b.steps]
    for n, step in enumerate(steps):
        later = [s for s in steps[n + 1 :] if s.terminal == step.terminal]
        step.keeps_running = bool(
            step.kind is not StepKind.INTERRUPT and later and later[0].kind is not StepKind.COMMAND
        )
        if step.kind is not StepKind.COMMAND and not _follows_a_command(steps[:n], step):
            raise PageError(
                f"console block {step.block + 1}: output or ^C in {step.terminal}, "
                "where no command runs"
            )


def _follows_a_command(before: Sequence[Step], step: Step) -> bool:
    mine = [s for s in before if s.terminal == step.terminal]
    return bool(mine) and mine[-1].keeps_running


@dataclass(frozen=True)
class Substitutions:
    """What ties a run to its machine, swapped for the page's: the run's home folder for
    the page's, the free ports it took for the ports the page shows."""

    home: str
    page_home: str
    ports: dict[int, int]  # page's port -> the run's

    def for_run(self, command: str) -> str:
        for page, run in self.ports.items():
            command = re.sub(rf"(127\.0\.0\.1:|-p ){page}\b", rf"\g<1>{run}", command)
        return command

    def for_page(self, line: str) -> str:
        line = line.replace(self.home, self.page_home)
        for page, run in self.ports.items():
            line = re.sub(rf"\b{run}\b", str(page), line)
        return line


def screen_lines(raw: str) -> list[str]:
    """What a terminal shows of ``raw``: a carriage return goes back to the line's start
    and what follows overwrites it. Complete lines only (a prompt waiting for its answer
    is :func:`partial_line`)."""
    return [_overwrite(line) for line in raw.replace("\r\n", "\n").split("\n")[:-1]]


def partial_line(raw: str) -> str:
    """The line still being written (a prompt), as the terminal shows it."""
    return _overwrite(raw.replace("\r\n", "\n").split("\n")[-1])


def _overwrite(line: str) -> str:
    shown: list[str] = []
    column = 0
    for char in line:
        if char == "\r":
            column = 0
            continue
        if column < len(shown):
            shown[column] = char
        else:
            shown.append(char)
        column += 1
    return "".join(shown)


def normalise(line: str) -> str:
    """A line with its variable parts masked and its spacing collapsed."""
    line = line.removeprefix("^C")
    for pattern, replacement in MASKS:
        line = pattern.sub(replacement, line)
    return " ".join(line.split())


def normalise_all(lines: Sequence[str]) -> list[str]:
    return [n for n in (normalise(line) for line in lines) if n]


def _same_number(shown: str, ran: str, before_unit: str | None) -> bool:
    if _MONEY.fullmatch(shown) and _MONEY.fullmatch(ran):
        return abs(float(shown) - float(ran)) <= MONEY_TOLERANCE + 1e-9
    if before_unit == "s" and _NUMBER.fullmatch(shown) and _NUMBER.fullmatch(ran):
        expected = float(shown)
        return abs(float(ran) - expected) <= max(1.0, expected / 2)
    return False


def line_matches(shown: str, ran: str) -> bool:
    """Whether a normalised output line is the page's normalised line, in substance."""
    if ANY_LINES in shown:
        parts = [re.escape(p) for p in shown.split(ANY_LINES)]
        return re.fullmatch(".*".join(parts), ran) is not None
    words, got = shown.split(), ran.split()
    if len(words) != len(got):
        return False
    for n, (a, b) in enumerate(zip(words, got, strict=True)):
        unit = words[n + 1] if n + 1 < len(words) else None
        if a != b and not _same_number(a, b, unit):
            return False
    return True


def match_prefix(shown: Sequence[str], ran: Sequence[str], *, whole: bool) -> int | None:
    """How many lines of ``ran`` the page's lines ``shown`` cover (all of them when
    ``whole``), or None when they do not match. A ``...`` line covers any number of lines;
    as the last line of a running command's output, it leaves what follows unread."""
    if not shown:
        return 0 if not whole or not ran else None
    head, rest = shown[0], shown[1:]
    if head == ANY_LINES:
        if not rest:
            return len(ran)
        for skip in range(len(ran) + 1):
            covered = match_prefix(rest, ran[skip:], whole=whole)
            if covered is not None:
                return skip + covered
        return None
    if not ran or not line_matches(head, ran[0]):
        return None
    covered = match_prefix(rest, ran[1:], whole=whole)
    return None if covered is None else 1 + covered


def prompts(shown: Sequence[str]) -> list[tuple[str, str]]:
    """The questions a step's output asks and the answers the page types, in order."""
    found = []
    for line in shown:
        m = PROMPT.match(line)
        if m:
            found.append((normalise(m.group("question")), m.group("answer")))
    return found
