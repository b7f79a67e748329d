"""Every command shown in README.md and docs/ still works as written: our own CLIs parse it (subcommands, flags and arguments exist), make targets exist, scripts exist, and anything else is a named system tool; `--help` of each of our programs runs. The simulator page is also executed, in order, by tests/shell/test_docs_simulator_page.py, and the field guide walked as a person walks it by tests/shell/test_docs_walkthrough.py."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.__main__ import build_parser as gateway_parser
from meter_sim.cli_args import build_parser as sim_parser
from prepaid_demo.arguments import build_parser as demo_parser
from provisioning.__main__ import build_parser as provision_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: a shell block; the words after ``console`` (the walkthrough's terminal names) are kept
FENCE = re.compile(r"```(sh|console|bash)(?:[ \t][^\n]*)?\n(.*?)```", re.DOTALL)

PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "meter-gateway": gateway_parser,
    "meter-sim": sim_parser,
    "meter-provision": provision_parser,
    "gateway": gateway_parser,
    "meter_sim": sim_parser,
    "provisioning": provision_parser,
    "prepaid_demo": demo_parser,
}
#: System administration and shell tools the docs show around our commands; they are
#: not ours to run in a test (they need root, a service manager or a real site).
SYSTEM_TOOLS = {
    "sudo",
    "systemctl",
    "journalctl",
    "useradd",
    "install",
    "cp",
    "sqlite3",
    "apt-get",
    "chmod",
    "chown",
    "tmux",
    "mosquitto",
    "curl",
    "cat",
    "ls",
    "export",
    "cd",
    "git",
    "mkdir",
    ".",  # sourcing a venv's activate script
}


def _commands(text: str, console: bool | None = None) -> Iterator[str]:
    """Command lines of one fenced block (console blocks: the lines after ``$ ``; a
    console block may hold only output, or a ^C). Without ``console``, a block with a
    ``$ `` line is taken for one."""
    lines = text.splitlines()
    if console is None:
        console = any(line.startswith("$ ") for line in lines)
    buffer = ""
    for raw in lines:
        line = raw.rstrip()
        if console:
            if line.startswith("$ "):
                line = line[2:]
            elif not buffer:
                continue  # output of the previous command
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        yield (buffer + line).strip()
        buffer = ""


ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def _expand(commands: Iterator[str]) -> Iterator[str]:
    """Substitute the block's own simple shell variables (``C="--control ..."``)."""
    variables: dict[str, str] = {}
    for cmd in commands:
        match = ASSIGNMENT.match(cmd)
        if match:
            variables[match.group(1)] = " ".join(shlex.split(match.group(2)))
            continue
        expanded = cmd
        for name, value in variables.items():
            expanded = expanded.replace(f"${{{name}}}", value).replace(f"${name}", value)
        yield expanded


def documented_commands() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for lang, block in FENCE.findall(doc.read_text()):
            commands = _commands(block, console=lang == "console" or None)
            out += [(doc.name, cmd) for cmd in _expand(commands)]
    return out


COMMANDS = documented_commands()
MAKE_TARGETS = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))


def _words(command: str) -> list[str]:
    command = command.split(" # ", maxsplit=1)[0]
    words = shlex.split(command, comments=True)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        words = words[1:]  # environment assignments before the program
    return words


def _parse(prog: str, argv: list[str]) -> None:
    parser = PARSERS[prog]()
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()) as err,
    ):
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            assert exc.code == 0, f"{prog} {' '.join(argv)}: {err.getvalue().strip()}"


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) > 20


@pytest.mark.parametrize(("doc", "command"), COMMANDS)
def test_documented_command_still_parses(doc: str, command: str) -> None:
    words = _words(command)
    if not words:
        return
    prog, args = words[0], words[1:]
    if "$" in command and prog not in PARSERS:
        args = [a for a in args if "$" not in a]
    if prog.endswith("/python") or prog in ("python", "python3"):
        if args[:1] == ["-m"] and args[1] in PARSERS:
            _parse(args[1], args[2:])
        elif args[:1] == ["-m"]:
            assert importlib.util.find_spec(args[1]) is not None, f"{doc}: no module {args[1]}"
        else:
            assert (ROOT / args[0]).exists(), f"{doc}: no script {args[0]}"
        return
    if prog == "make":
        target = args[0] if args else "all"
        assert target in MAKE_TARGETS, f"{doc}: no make target {target!r}"
        return
    if prog in PARSERS:
        _parse(prog, args)
        return
    if "=" in prog or prog.startswith("$"):
        return  # a shell variable the next lines use
    if prog.startswith(("/usr/sbin/", "/usr/bin/")):
        prog = Path(prog).name  # a system tool called by its path (not on every PATH)
    assert prog in SYSTEM_TOOLS, f"{doc}: unknown program {prog!r} in {command!r}"


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_help_of_every_program_runs(prog: str) -> None:
    _parse(prog, ["--help"])
