"""The help of every CLI (prepaid-demo too) keeps the shared conventions: each command and subcommand (vend, the keys and ctl subcommands included) shows an example of itself, every option with a default shows it, and each program's help lists its exit codes and has --version."""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Callable, Iterator

import pytest

from gateway.__main__ import build_parser as gateway_parser
from meter_sim.cli_args import build_parser as sim_parser
from prepaid_demo.arguments import build_parser as demo_parser
from protocol.cli import EXIT_CODE_MEANINGS, CliParser
from provisioning.__main__ import build_parser as provision_parser

PROGRAMS: dict[str, Callable[[], CliParser]] = {
    "meter-provision": provision_parser,
    "meter-sim": sim_parser,
    "meter-gateway": gateway_parser,
    "prepaid-demo": demo_parser,
}
#: how a person runs a program that is not a console script, as its examples show it
RUN_AS = {"prepaid-demo": ("make demo ARGS=", "python -m prepaid_demo ")}


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every subcommand parser under ``parser``, at any depth."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield sub
                yield from _subcommands(sub)


def _commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every command a person types: the subcommands, or the program itself when it has
    none."""
    subs = list(_subcommands(parser))
    yield from subs or [parser]


ALL_COMMANDS = [
    (name, command.prog) for name, build in PROGRAMS.items() for command in _commands(build())
]


def _find(prog: str) -> argparse.ArgumentParser:
    name = prog.split(maxsplit=1)[0]
    return next(c for c in _commands(PROGRAMS[name]()) if c.prog == prog)


def test_every_program_has_commands() -> None:
    names = {prog for _, prog in ALL_COMMANDS}
    assert {"meter-provision vend", "meter-provision keys meter-key", "meter-sim ctl keypad",
            "meter-gateway status", "meter-provision enrol"} <= names  # fmt: skip


@pytest.mark.parametrize(("program", "prog"), ALL_COMMANDS)
def test_every_command_shows_an_example_of_itself(program: str, prog: str) -> None:
    text = _find(prog).format_help()
    assert "example" in text, prog
    starts = RUN_AS.get(prog, (f"{prog} ",))
    assert any(f"\n  {start}" in text for start in starts), f"{prog}: no example line"


@pytest.mark.parametrize(("program", "prog"), ALL_COMMANDS)
def test_every_default_is_shown(program: str, prog: str) -> None:
    parser = _find(prog)
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        default = action.default
        if not action.option_strings or default in (None, False, [], argparse.SUPPRESS):
            continue
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        assert action.help is not None, (prog, action.dest)
        shown = " ".join(parser._get_formatter()._expand_help(action).split())
        assert "(default: " in shown, (prog, action.option_strings)
        assert shown in text


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_program_lists_its_exit_codes_and_has_a_version(program: str) -> None:
    parser = PROGRAMS[program]()
    text = parser.format_help()
    assert "exit codes:" in text
    for code, meaning in EXIT_CODE_MEANINGS.items():
        assert f"  {int(code):<4} {meaning}" in text
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        parser.parse_args(["--version"])
    assert done.value.code == 0
    assert out.getvalue().startswith(f"{program} ")


def test_the_config_option_is_the_same_in_gateway_and_provisioning() -> None:
    def config_of(parser: argparse.ArgumentParser) -> tuple[object, object, object]:
        (action,) = [a for a in parser._actions if "--config" in a.option_strings]
        return action.default, action.metavar, action.help

    gateway = {config_of(p) for p in _subcommands(gateway_parser())}
    provisioning = {
        config_of(p)
        for p in _subcommands(provision_parser())
        if any("--config" in a.option_strings for a in p._actions)
    }
    assert len(gateway | provisioning) == 1
