"""protocol.cli.run_main, the console scripts' one main: exit 2 with no command, and Ctrl-C or SIGTERM end in one line with 130 or 143 and put the SIGTERM handler back."""

from __future__ import annotations

import argparse
import signal
import threading

import pytest

from protocol.cli import CliParser, ExitCode, Terminated, run_main


def _parser() -> CliParser:
    parser = CliParser(prog="tool")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("go")
    return parser


def test_the_command_runs_with_its_own_name() -> None:
    seen: list[str] = []

    def run(prog: str, args: argparse.Namespace) -> int:
        seen.append(prog)
        return 7

    assert run_main(_parser, ["go"], run) == 7
    assert seen == ["tool go"]


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(_parser, [], lambda prog, args: 0) == ExitCode.USAGE
    assert capsys.readouterr().err.splitlines()[-1] == "tool: error: give a command (see --help)"


def test_sigterm_ends_the_command_with_one_line_and_143(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = signal.getsignal(signal.SIGTERM)

    def run(prog: str, args: argparse.Namespace) -> int:
        signal.raise_signal(signal.SIGTERM)
        return 0  # not reached: the handler raises

    code = run_main(_parser, ["go"], run, terminated="stopped by SIGTERM while starting")
    assert code == 143
    assert capsys.readouterr().err == "tool go: stopped by SIGTERM while starting\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_ends_the_command_with_one_line_and_130(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def run(prog: str, args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    assert run_main(_parser, ["go"], run) == 130
    assert capsys.readouterr().err == "tool go: interrupted by SIGINT\n"


def test_terminated_raised_in_a_thread_ends_it_the_same_way(
    capsys: pytest.CaptureFixture[str],
) -> None:
    codes: list[int] = []

    def run(prog: str, args: argparse.Namespace) -> int:
        raise Terminated

    thread = threading.Thread(target=lambda: codes.append(run_main(_parser, ["go"], run)))
    thread.start()
    thread.join()
    assert codes == [ExitCode.TERMINATED]
    assert capsys.readouterr().err == "tool go: stopped by SIGTERM\n"
