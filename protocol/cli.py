"""What every prepaid-edge command line keeps, so that scripts and people meet one
convention: the exit codes, errors as one line ``PROG: error: ...`` (no usage dump, no
traceback), ``--version`` from the package metadata, and help that shows each default
and ends with the exit codes.

The gateway, the simulator and the provisioning CLI import nothing of each other; this is
the one module all three may import.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from enum import IntEnum
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeAlias

DISTRIBUTION = "prepaid-edge"


class ExitCode(IntEnum):
    OK = 0
    #: the command ran and found a failure: a check failed, nothing answered
    FAILURE = 1
    #: a bad command line, value, file or configuration: nothing was done
    USAGE = 2
    #: Ctrl-C (SIGINT): 128 + the signal number, as a shell reports it
    INTERRUPTED = 128 + signal.SIGINT
    #: SIGTERM (a service manager, ``kill``)
    TERMINATED = 128 + signal.SIGTERM


#: What each exit code means, in the words the help shows.
EXIT_CODE_MEANINGS = {
    ExitCode.OK: "ok",
    ExitCode.FAILURE: "a failure found (a check failed, nothing answered, a request refused)",
    ExitCode.USAGE: "a usage, value, file or configuration error: nothing was done",
    ExitCode.INTERRUPTED: "interrupted by Ctrl-C (SIGINT); what was done is kept",
    ExitCode.TERMINATED: "stopped by SIGTERM; what was done is kept",
}


def exit_code_for_signal(signum: int) -> ExitCode:
    return ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED


def exit_codes_help(note: str = "") -> str:
    """The ``exit codes:`` section of a program's epilog; ``note`` adds a line (e.g. that
    a service's normal stop by signal exits 0)."""
    lines = ["exit codes:"]
    lines += [f"  {int(code):<4} {text}" for code, text in EXIT_CODE_MEANINGS.items()]
    if note:
        lines.append(f"  {note}")
    return "\n".join(lines) + "\n"


def package_version() -> str:
    """The installed package's version (pyproject.toml is the one place it is written)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples and exit codes kept as written; every option with a default shows it as
    ``(default: ...)`` (not an absent one, an off switch, or one its help already names)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
            or "(default" in text
            or "%(default)" in text
        ):
            return action.help
        return f"{text} (default: %(default)s)"


class CliParser(argparse.ArgumentParser):
    """argparse with the shared conventions: a bad command line is one line
    ``PROG: error: ... (see --help)`` and exit 2; the help shows defaults. Subcommand
    parsers made from it are CliParsers too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see --help)\n")

    def add_version(self) -> None:
        self.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")

    def no_command(self) -> int:
        """A run with no subcommand: the usage line and one error line, exit 2."""
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: give a command (see --help)", file=sys.stderr)
        return ExitCode.USAGE


def survive_closed_stdout(run: Callable[[], int]) -> int:
    """``run()``'s exit code, with standard output flushed before returning. A reader that
    went away (``... --json | head`` read enough) ends the program quietly with exit 1
    (not all output was delivered) instead of a BrokenPipeError traceback: standard
    output is pointed at /dev/null so the flush at exit cannot fail again, as the Python
    documentation advises (*Note on SIGPIPE*)."""
    try:
        code = run()
        sys.stdout.flush()
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout replaced, e.g. in a test
            pass
        return ExitCode.FAILURE
    return code


class Terminated(Exception):  # noqa: N818 (a signal, not an error)
    """SIGTERM while the command has no handler of its own (a service installs one once
    it runs; before that, and in a short command, this is how SIGTERM ends it)."""


def _raise_terminated(_signum: int, _frame: FrameType | None) -> None:
    raise Terminated


#: Exception types a command's errors are of (``except`` takes a tuple of them).
Errors: TypeAlias = tuple[type[Exception], ...]


def run_main(
    build_parser: Callable[[], CliParser],
    argv: Sequence[str] | None,
    run: Callable[[argparse.Namespace], int],
    *,
    usage_errors: Errors = (),
    failures: Errors = (),
    terminated: str = "stopped by SIGTERM",
) -> int:
    """A console script with subcommands, from parsing to exit code: no command prints the
    usage (exit 2); otherwise ``run(args)``. What ends it is one line on stderr naming the
    command (``meter-sim serve``): one of ``usage_errors`` (exit 2) or ``failures`` (1) as
    :func:`error_line`, Ctrl-C as ``interrupted by SIGINT`` (130), SIGTERM as
    ``terminated`` (143); a closed standard output ends quietly
    (:func:`survive_closed_stdout`). SIGTERM raises :class:`Terminated` from the main
    thread only (the only one that may set a handler), and the handler before is put back
    on return."""

    def main() -> int:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            return parser.no_command()
        prog = f"{parser.prog} {args.command}"
        try:
            return run(args)
        except usage_errors as exc:
            print(error_line(prog, exc), file=sys.stderr)
            return ExitCode.USAGE
        except failures as exc:
            print(error_line(prog, exc), file=sys.stderr)
            return ExitCode.FAILURE
        except KeyboardInterrupt:  # before the command's own handlers are installed
            print(f"{prog}: interrupted by SIGINT", file=sys.stderr)
            return ExitCode.INTERRUPTED
        except Terminated:
            print(f"{prog}: {terminated}", file=sys.stderr)
            return ExitCode.TERMINATED

    if threading.current_thread() is not threading.main_thread():
        return survive_closed_stdout(main)
    before = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return survive_closed_stdout(main)
    finally:
        signal.signal(signal.SIGTERM, before)


def error_line(prog: str, problem: object) -> str:
    """The one line every refusal prints on stderr."""
    return f"{prog}: error: {problem}"


#: What ``add_subparsers`` of a :class:`CliParser` returns; commands add themselves to it.
Subcommands: TypeAlias = "argparse._SubParsersAction[CliParser]"


#: Where meter-gateway and meter-provision look for the gateway's config without --config.
DEFAULT_CONFIG = "gateway.toml"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, the same in meter-gateway and meter-provision: the gateway's
    config file, ``./gateway.toml`` unless given."""
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(DEFAULT_CONFIG),
        metavar="FILE",
        help="the gateway's config file",
    )
