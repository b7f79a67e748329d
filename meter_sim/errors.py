"""The simulator's exceptions: one base, names that say whose fault it is."""

from __future__ import annotations


class SimError(Exception):
    """Base of every error the simulator raises on purpose."""


class ControlError(SimError):
    """A control request (keypad, tamper, load, fault, ...) the caller got wrong; nothing changed."""


class FaultPlanError(SimError):
    """A fault plan file that is malformed; names the file and the problem."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class SetupError(SimError):
    """The simulator cannot start as asked (port in use, unknown map, too many meters)."""
