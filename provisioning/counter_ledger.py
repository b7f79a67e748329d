"""The vendor's counter ledger: per meter and key epoch, the last purchase counter
`meter-provision vend` issued, so that the next token takes the next counter and a
counter is never issued twice by mistake (the meter would refuse the second token as
``REPLAYED`` and the customer would have paid for nothing).

One JSON file, mode 0600. A vend holds an exclusive ``flock`` on ``FILE.lock`` from
reading the ledger to writing it back, so two vends at once cannot take the same counter;
the new ledger is written to a temporary file, fsynced and renamed over the old one (and
the folder fsynced) before the token is printed, so a crash never leaves a printed token
whose counter is not recorded.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from protocol.tokens.replay import MAX_COUNTER
from protocol.tokens.token_class import TokenClass
from provisioning.errors import ProvisionError

FORMAT = "prepaid-edge-vend-counters"
VERSION = 1
#: where the ledger is without --ledger: this variable, else the file below
LEDGER_ENV = "PREPAID_EDGE_VEND_LEDGER"
DEFAULT_LEDGER = Path("vend-counters.json")
#: the counter of a meter's first token in a key epoch (the meter accepts 0..65535)
FIRST_COUNTER = 1
#: the last counter of an epoch, kept for the key-change token that moves the meter to the
#: next epoch: that token needs an unused counter of the current one, so no other class
#: may take it
KEY_CHANGE_COUNTER = MAX_COUNTER


class LedgerError(ProvisionError):
    """The ledger refuses the counter asked for, or cannot be read or written."""


def default_ledger_path() -> Path:
    return Path(os.environ.get(LEDGER_ENV) or DEFAULT_LEDGER)


class CounterLedger:
    """The last counter issued per meter and epoch; changed by :meth:`take`, written by
    :meth:`commit` (only inside :func:`open_ledger`, which holds the lock)."""

    def __init__(self, path: Path, last: dict[str, dict[str, int]]) -> None:
        self.path = path
        self._last = last

    def last(self, meter: str, epoch: int) -> int | None:
        return self._last.get(meter, {}).get(str(epoch))

    def take(
        self,
        meter: str,
        epoch: int,
        counter: int | None,
        *,
        force: bool = False,
        token_class: TokenClass = TokenClass.CREDIT,
    ) -> int:
        """The counter for the next token of ``meter`` in ``epoch``: ``counter`` if given
        (refused when already issued, unless ``force``), else the one after the last.
        Only a key-change token may take :data:`KEY_CHANGE_COUNTER`."""
        last = self.last(meter, epoch)
        highest = MAX_COUNTER if token_class is TokenClass.KEY_CHANGE else KEY_CHANGE_COUNTER - 1
        if counter is None:
            counter = FIRST_COUNTER if last is None else last + 1
            if counter > MAX_COUNTER:
                raise LedgerError(
                    f"{meter} has used every counter of key epoch {epoch} (last {last}): "
                    f"once the meter has taken its key-change token, vend with --epoch {epoch + 1}"
                )
        elif not 0 <= counter <= MAX_COUNTER:
            raise LedgerError(f"--counter {counter}: a purchase counter is 0..{MAX_COUNTER}")
        elif last is not None and counter <= last and not force:
            raise LedgerError(
                f"counter {counter} of {meter} (epoch {epoch}) was issued already (the last "
                f"was {last}): the meter would refuse its token as replayed; leave out "
                "--counter to take the next one, or add --force to issue it anyway"
            )
        if counter > highest:
            raise LedgerError(
                f"counter {counter} of {meter} (epoch {epoch}) is kept for the key-change "
                f"token that ends the epoch: vend that now (--class key-change --value "
                f"{epoch + 1}, once the gateway holds epoch {epoch + 1}'s keys), then vend "
                f"with --epoch {epoch + 1}"
            )
        self._last.setdefault(meter, {})[str(epoch)] = max(counter, -1 if last is None else last)
        return counter

    def commit(self) -> None:
        """Write the ledger durably: a 0600 temporary file, fsync, rename, fsync the folder."""
        doc = {"format": FORMAT, "version": VERSION, "last_counter": self._last}
        folder = self.path.parent
        fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(doc, out, indent=2, sort_keys=True)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        folder_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)


def _read(path: Path) -> dict[str, dict[str, int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerError(f"cannot read the counter ledger {path}: {exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LedgerError(f"{path} line {exc.lineno}: not a counter ledger: {exc.msg}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LedgerError(f"{path}: not a {FORMAT} file")
    if doc.get("version") != VERSION:
        raise LedgerError(f"{path}: version {doc.get('version')!r} (this tool reads {VERSION})")
    last = doc.get("last_counter")
    if not isinstance(last, dict) or not all(
        isinstance(epochs, dict)
        and all(
            e.isdigit() and isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= MAX_COUNTER
            for e, c in epochs.items()
        )
        for epochs in last.values()
    ):
        raise LedgerError(f"{path}: last_counter must map meter -> epoch -> 0..{MAX_COUNTER}")
    return {str(m): {str(e): int(c) for e, c in epochs.items()} for m, epochs in last.items()}


@contextmanager
def open_ledger(path: Path) -> Iterator[CounterLedger]:
    """The ledger at ``path`` (empty if it does not exist yet), locked until the block
    ends; changes are kept only by :meth:`CounterLedger.commit`."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise LedgerError(f"cannot open the ledger lock {lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        yield CounterLedger(path, _read(path))
    finally:
        os.close(lock_fd)  # closing releases the lock
