"""The demo's script: wait for a low-credit meter to be cut off, type a top-up on its
keypad, wait for the reconnection, then type the same digits again (a replay).

Pure: :meth:`Director.step` looks at the view model and the wall time and returns what to
type, if anything; the shell types it through the simulator's control port.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from prepaid_demo.view import ViewModel, money
from prepaid_demo.world import TOP_UP_AMOUNT, keypad_token, meter_id

#: Wall seconds between a step of the story and the demo's next keypad entry, so a viewer
#: sees each state before the next one.
PAUSE_S = 2.0


class Phase(StrEnum):
    WAIT_DISCONNECT = "waiting for a disconnection"
    PAUSE_BEFORE_TOP_UP = "pause before top-up"
    WAIT_RECONNECT = "waiting for the reconnection"
    PAUSE_BEFORE_REPLAY = "pause before replay"
    WAIT_REPLAY_REJECTED = "waiting for the replay to be rejected"
    DONE = "story complete"


@dataclass(frozen=True, slots=True)
class TypeKeypad:
    unit: int
    digits: str
    line: str


@dataclass
class Director:
    candidates: tuple[int, ...]
    phase: Phase = Phase.WAIT_DISCONNECT
    unit: int | None = None
    digits: str = ""
    since: float = 0.0

    @property
    def meter(self) -> str:
        assert self.unit is not None
        return meter_id(self.unit)

    def step(self, model: ViewModel, now: float) -> TypeKeypad | None:
        """Advance the script; the keypad entry to type now, if any."""
        match self.phase:
            case Phase.WAIT_DISCONNECT:
                for unit in self.candidates:
                    row = model.rows.get(meter_id(unit))
                    if row is not None and row.relay == "open":
                        self.unit, self.phase, self.since = unit, Phase.PAUSE_BEFORE_TOP_UP, now
                        break
            case Phase.PAUSE_BEFORE_TOP_UP if now - self.since >= PAUSE_S:
                assert self.unit is not None
                self.digits = keypad_token(self.unit, counter=1)
                self.phase = Phase.WAIT_RECONNECT
                return TypeKeypad(
                    self.unit,
                    self.digits,
                    f"{self.meter} demo types a keypad top-up of {money(TOP_UP_AMOUNT)}: "
                    f"{grouped(self.digits)}",
                )
            case Phase.WAIT_RECONNECT:
                row = model.rows[self.meter]
                if row.relay == "closed" and (row.balance or 0) > 0:
                    self.phase, self.since = Phase.PAUSE_BEFORE_REPLAY, now
            case Phase.PAUSE_BEFORE_REPLAY if now - self.since >= PAUSE_S:
                assert self.unit is not None
                self.phase = Phase.WAIT_REPLAY_REJECTED
                return TypeKeypad(
                    self.unit,
                    self.digits,
                    f"{self.meter} demo types the same 20 digits again (a replay): "
                    f"{grouped(self.digits)}",
                )
            case Phase.WAIT_REPLAY_REJECTED:
                if self.meter in model.replays_rejected:
                    self.phase = Phase.DONE
        return None


def grouped(digits: str) -> str:
    """20 digits the way a receipt prints them: ``1234 5678 ...``."""
    return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))
