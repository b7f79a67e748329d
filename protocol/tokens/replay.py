"""The replay window: the highest purchase counter seen plus a 64-bit map of the 64
counters below it, so tokens typed out of order are accepted once each.

Plain ints, so the store keeps them in three columns. ``bitmap`` bit ``i`` set means
counter ``highest - 1 - i`` was used; ``highest == -1`` means no counter used yet in this
key epoch. Every check and update is a few integer operations whatever the counter:
there is no loop over counters and no clock, so nothing rolls over.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.tokens.errors import RejectReason, TokenRejected
from protocol.tokens.keys import check_epoch

WINDOW_BITS = 64
WINDOW_MASK = (1 << WINDOW_BITS) - 1
MAX_COUNTER = 0xFFFF


@dataclass(frozen=True, slots=True)
class ReplayWindow:
    epoch: int
    highest: int = -1
    bitmap: int = 0

    def __post_init__(self) -> None:
        check_epoch(self.epoch)
        if not -1 <= self.highest <= MAX_COUNTER:
            raise ValueError(f"highest counter must be -1..{MAX_COUNTER}: {self.highest}")
        if not 0 <= self.bitmap <= WINDOW_MASK:
            raise ValueError(f"bitmap must be a 64-bit unsigned int: {self.bitmap}")
        if self.highest < WINDOW_BITS and self.bitmap >> max(self.highest, 0):
            raise ValueError(f"bitmap {self.bitmap:#x} marks counters below 0")

    @classmethod
    def fresh(cls, epoch: int) -> ReplayWindow:
        """The window of a meter that has used no counter in ``epoch`` (after a key change)."""
        return cls(epoch)

    def check(self, counter: int) -> RejectReason | None:
        """``None`` when ``counter`` may be applied; REPLAYED or TOO_OLD otherwise."""
        if not 0 <= counter <= MAX_COUNTER:
            return RejectReason.MALFORMED
        if counter > self.highest:
            return None
        if counter == self.highest:
            return RejectReason.REPLAYED
        distance = self.highest - counter
        if distance > WINDOW_BITS:
            return RejectReason.TOO_OLD
        if self.bitmap >> (distance - 1) & 1:
            return RejectReason.REPLAYED
        return None

    def record(self, counter: int) -> ReplayWindow:
        """The window after applying ``counter``; raises :class:`TokenRejected` if
        :meth:`check` refuses it."""
        reason = self.check(counter)
        if reason is not None:
            raise TokenRejected(reason, f"counter {counter} in {self}")
        if self.highest < 0:
            return ReplayWindow(self.epoch, counter, 0)
        if counter > self.highest:
            shift = counter - self.highest
            if shift > WINDOW_BITS:
                return ReplayWindow(self.epoch, counter, 0)
            bitmap = ((self.bitmap << shift) | (1 << (shift - 1))) & WINDOW_MASK
            return ReplayWindow(self.epoch, counter, bitmap)
        return ReplayWindow(
            self.epoch, self.highest, self.bitmap | 1 << (self.highest - counter - 1)
        )
