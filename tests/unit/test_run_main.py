"""protocol.cli.run_main, the console scripts' one main: exit 2 with no command, a command's usage errors and failures as one error line with 2 or 1, and Ctrl-C or SIGTERM as one line with 130 or 143, the SIGTERM handler put back."""

from __future__ import annotations

import argparse
import signal
import threading

import pytest

from protocol.cli import CliParser, ExitCode, Terminated, run_main


class BadValueError(Exception):
    pass


class NothingAnsweredError(Exception):
    pass


def _parser() -> CliParser:
    parser = CliParser(prog="tool")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("go")
    return parser


def _main(run_error: BaseException | None, **options: str) -> int:
    def run(args: argparse.Namespace) -> int:
        assert args.command == "go"
        if run_error is not None:
            raise run_error
        return 7

    return run_main(
        _parser,
        ["go"],
        run,
        usage_errors=(BadValueError,),
        failures=(NothingAnsweredError,),
        **options,
    )


def test_the_command_runs_and_its_code_is_the_exit_code() -> None:
    assert _main(None) == 7


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(_parser, [], lambda args: 0) == ExitCode.USAGE
    assert capsys.readouterr().err.splitlines()[-1] == "tool: error: give a command (see --help)"


@pytest.mark.parametrize(
    ("error", "code"), [(BadValueError("bad --x"), 2), (NothingAnsweredError("bad --x"), 1)]
)
def test_a_command_error_is_one_line_naming_the_command(
    capsys: pytest.CaptureFixture[str], error: Exception, code: int
) -> None:
    assert _main(error) == code
    assert capsys.readouterr().err == "tool go: error: bad --x\n"


def test_sigterm_ends_the_command_with_one_line_and_143(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = signal.getsignal(signal.SIGTERM)

    def run(args: argparse.Namespace) -> int:
        signal.raise_signal(signal.SIGTERM)
        return 0  # not reached: the handler raises

    code = run_main(_parser, ["go"], run, terminated="stopped by SIGTERM while starting")
    assert code == 143
    assert capsys.readouterr().err == "tool go: stopped by SIGTERM while starting\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_ends_the_command_with_one_line_and_130(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _main(KeyboardInterrupt()) == 130
    assert capsys.readouterr().err == "tool go: interrupted by SIGINT\n"


def test_terminated_raised_in_a_thread_ends_it_the_same_way(
    capsys: pytest.CaptureFixture[str],
) -> None:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(_main(Terminated())))
    thread.start()
    thread.join()
    assert codes == [ExitCode.TERMINATED]
    assert capsys.readouterr().err == "tool go: stopped by SIGTERM\n"
