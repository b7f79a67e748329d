"""What the store's rooms (meters, cycle, outbox, commands) share: the connections, the
waiting acknowledgements and the writer thread's view of the enrolled meters."""

from __future__ import annotations

from pathlib import Path

from gateway.core.settings import MeterSettings
from gateway.store.acks import Acks
from gateway.store.connections import Reader, Writer
from gateway.store.state_row import StateRows


class StoreBase:
    """The parts ``Store`` sets up in its ``__init__``; each room is a base of ``Store``."""

    path: Path
    _writer: Writer
    _reader: Reader
    _acks: Acks
    #: meter -> the last outbox seq it was given (written on the writer thread)
    _seq: dict[str, int]
    #: meter -> the settings last committed, so that a commit writes them only on change
    #: (the writer thread's)
    _settings: dict[str, MeterSettings]
    #: writes ``ledgers.state_json`` (the writer thread's)
    _state_rows: StateRows
