"""docs/field-guide.md walks as written: its console blocks run in page order, from the Markdown, each in its own terminal (a pseudo-terminal, Ctrl-C and answers typed as a person types them), in a clean home folder with the clone at ~/prepaid-edge and the console scripts put on PATH the way the page says; the simulator, broker and gateway start and stop where the page says; every output matches the page's in substance (tests/support/console_walk.py says what may differ), every block and command of the page is counted as run, and nothing is left running."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.console_walk import (
    FENCE,
    TOKEN,
    PageError,
    Step,
    StepKind,
    Substitutions,
    console_blocks,
    match_prefix,
    normalise,
    normalise_all,
    partial_line,
    prompts,
    screen_lines,
)
from tests.support.pty_terminal import CTRL_C, Terminal, TypedCommand

pytestmark = [pytest.mark.asyncio, pytest.mark.broker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "field-guide.md"
# The page's first steps run in the clone itself: `make venv` there is quick where the
# venv is current (as under `make test`, whose first prerequisite made it), and installs
# it otherwise, as it would for a person; `. .venv/bin/activate` then puts on PATH the
# console scripts every later step runs.
#: where the page's person lives, and the ports the page uses (a run takes free ones)
PAGE_HOME = "/home/field"
PAGE_PORTS = (5021, 5022, 1884)
#: how long one step may take (a scan, a commissioning, a gateway's first poll)
STEP_TIMEOUT_S = 60.0
#: how long a `retry` block's command is run again until the run shows what the page shows
RETRY_FOR_S = 30.0
#: set by a person's profile, not by the page: none of them may leak in from the test run
NOT_A_PERSONS = ("PREPAID_EDGE", "MAKE", "MFLAGS", "PYTEST", "VIRTUAL_ENV", "PYTHONPATH")


class WalkMismatchError(AssertionError):
    """What a step printed is not what the page shows."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _persons_env(home: Path) -> dict[str, str]:
    """A new terminal's environment: the machine's, without this test run's venv."""
    venv_bins = {str(Path(sys.executable).parent), str(ROOT / ".venv" / "bin")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(NOT_A_PERSONS)}
    path = env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in path if p not in venv_bins)
    env["HOME"] = str(home)
    env["TERM"] = "xterm"
    return env


def _page_counts(text: str) -> tuple[int, int, int]:
    """Console blocks, ``$`` commands and ``^C`` lines, counted from the raw page."""
    bodies = [body for info, body in FENCE.findall(text) if info.split()[:1] == ["console"]]
    lines = [line for body in bodies for line in body.splitlines()]
    return (
        len(bodies),
        sum(line.startswith("$ ") for line in lines),
        sum(line.startswith("^C") for line in lines),
    )


@dataclass
class Walk:
    home: Path
    subs: Substitutions
    terminals: dict[str, Terminal] = field(default_factory=dict)
    last_token: str | None = None
    commands_run: int = 0
    interrupts: int = 0
    steps_run: int = 0
    #: what each step printed, as the page would show it (WALK_TRANSCRIPT=FILE writes it)
    transcript: list[tuple[Step, str, list[str]]] = field(default_factory=list)

    def write_transcript(self, path: Path) -> None:
        """For whoever updates the page: each step's command and output, unmasked."""
        out = []
        for step, command, seen in self.transcript:
            head = f"$ {command}" if step.kind is StepKind.COMMAND else f"({step.kind.value})"
            out += [f"--- {step.terminal} block {step.block + 1}", head, *seen]
        path.write_text("\n".join(out) + "\n", encoding="utf-8")

    def terminal(self, name: str) -> Terminal:
        """A terminal opens in the home folder, with the machine's PATH."""
        if name not in self.terminals:
            state = self.home.parent / "walk-state" / name
            self.terminals[name] = Terminal(name, self.home, _persons_env(self.home), state)
        return self.terminals[name]

    def typed(self, command: str) -> str:
        """The command as typed on this run: a keypad token is the one just printed (a
        person copies it), the ports are this run's."""
        if TOKEN.search(command):
            assert self.last_token is not None, f"no token printed before: {command}"
            command = TOKEN.sub(self.last_token, command)
        return self.subs.for_run(command)

    async def take(self, step: Step) -> None:
        term = self.terminal(step.terminal)
        if step.kind is StepKind.COMMAND:
            command = self.typed(step.command)
            if step.retry:
                await self._until_it_matches(term, command, step)
            else:
                await self.follow(await term.type_command(command), step)
            self.commands_run += 1
        else:
            running = term.running
            assert running is not None, step
            if step.kind is StepKind.INTERRUPT:
                assert running.proc.returncode is None, (
                    f"{step.terminal} block {step.block + 1}: ^C, but {running.command!r} "
                    "has ended already"
                )
                running.type(CTRL_C)
                self.interrupts += 1
            await self.follow(running, step)
        self.steps_run += 1

    async def _until_it_matches(self, term: Terminal, command: str, step: Step) -> None:
        """A `retry` block: the person runs it again until the gateway's next poll shows."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_FOR_S
        while True:
            try:
                await self.follow(await term.type_command(command), step)
                return
            except WalkMismatchError:
                if loop.time() > deadline:
                    raise
            await asyncio.sleep(1.0)  # the next poll of another process: nothing to await

    def _screen(self, typed: TypedCommand) -> list[str]:
        return [normalise(line) for line in self._lines(typed)]

    def _lines(self, typed: TypedCommand) -> list[str]:
        """The terminal's lines as the page would show them (non-blank, page's paths and
        ports), not yet normalised."""
        lines = (self.subs.for_page(line) for line in screen_lines(typed.raw))
        return [line for line in lines if normalise(line)]

    async def follow(self, typed: TypedCommand, step: Step) -> None:
        """Wait for the output the page shows (answering its questions), then for the
        command's end unless the page lets it run on; compare."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STEP_TIMEOUT_S
        shown = normalise_all(step.shown)
        questions = prompts(step.shown)
        while True:
            waiting = self.subs.for_page(partial_line(typed.raw))
            # the whole question, with the space a person waits for before answering
            if questions and waiting.endswith(" ") and normalise(waiting) == questions[0][0]:
                typed.type(questions.pop(0)[1].encode() + b"\n")
            done = typed.proc.returncode is not None and typed.eof
            if done or step.keeps_running:
                ran = self._screen(typed)[typed.cursor :]
                covered = match_prefix(shown, ran, whole=done)
                if covered is not None:
                    seen = self._lines(typed)[typed.cursor : typed.cursor + covered]
                    self.transcript.append((step, step.command, seen))
                    typed.cursor += covered
                    break
                if done:
                    raise self._mismatch(typed, step, shown, ran, "output differs")
            try:
                await typed.next_change(deadline)
            except TimeoutError:
                ran = self._screen(typed)[typed.cursor :]
                raise self._mismatch(typed, step, shown, ran, "timed out") from None
        tokens = TOKEN.findall(typed.raw)
        if tokens:
            self.last_token = tokens[-1]
        if not step.keeps_running:
            code = await typed.finish(deadline)
            failed = any(": error:" in line for line in step.shown)
            assert (code != 0) == failed, (
                f"{step.terminal} block {step.block + 1}: {typed.command!r} exit {code}"
            )

    def _mismatch(
        self, typed: TypedCommand, step: Step, shown: list[str], ran: list[str], why: str
    ) -> WalkMismatchError:
        return WalkMismatchError(
            f"{why}: {step.terminal}, console block {step.block + 1}, {typed.command!r}\n"
            "--- the page shows (normalised):\n"
            + "\n".join(shown)
            + "\n--- the run printed (normalised):\n"
            + "\n".join(ran)
            + f"\n--- raw tail:\n{typed.raw[-1500:]}"
        )

    async def close(self) -> list[str]:
        """Stop whatever still runs; which terminals it was in."""
        left = []
        for term in self.terminals.values():
            if term.running is not None and not term.running.ended:
                if term.running.proc.returncode is None:
                    left.append(term.name)
                await term.running.kill()
        return left


async def test_the_field_guide_walks_as_written(tmp_path: Path) -> None:
    text = GUIDE.read_text(encoding="utf-8")
    try:
        blocks, others = console_blocks(text)
    except PageError as exc:
        pytest.fail(f"docs/field-guide.md: {exc}")
    assert not others, f"fenced blocks the walk does not run: {others}"
    for port in PAGE_PORTS:
        assert f"127.0.0.1:{port}" in text, port
    home = tmp_path / "home"
    home.mkdir()
    (home / "prepaid-edge").symlink_to(ROOT)  # the clone, where the page says it is
    subs = Substitutions(str(home), PAGE_HOME, {port: _free_port() for port in PAGE_PORTS})
    walk = Walk(home, subs)
    blocks_run = 0
    started = asyncio.get_running_loop().time()
    try:
        for block in blocks:
            for step in block.steps:
                await walk.take(step)
            blocks_run += 1
    finally:
        left = await walk.close()
        if os.environ.get("WALK_TRANSCRIPT"):
            walk.write_transcript(Path(os.environ["WALK_TRANSCRIPT"]))
    assert not left, f"the guide leaves commands running in {left}"
    page_blocks, page_commands, page_interrupts = _page_counts(text)
    assert (blocks_run, walk.commands_run, walk.interrupts) == (
        page_blocks,
        page_commands,
        page_interrupts,
    )
    assert walk.steps_run == sum(len(b.steps) for b in blocks)
    took = asyncio.get_running_loop().time() - started
    print(f"walked {blocks_run} blocks, {walk.commands_run} commands in {took:.0f} s")
