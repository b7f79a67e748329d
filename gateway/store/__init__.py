"""The durable store: SQLite in WAL mode with ``synchronous=FULL``, one file per gateway.

One transaction holds everything a step of the core decided for a batch of meters, so a
crash keeps all of it or none of it. The rooms:

- ``schema.py``: the tables and their migrations; ``opening.py``: the checks a file passes
  before anything is written to it; ``errors.py``: what the store refuses, and
  ``storage_problem`` (a full or read-only file system, which may clear by itself);
- ``connections.py``: the writer thread and its transactions, the reader, the checkpointer;
- ``cycle.py``: the cycle commit; ``state_row.py``: a meter's state as stored;
- ``outbox.py``: pending rows, resend reads, purge; ``acks.py``: broker acknowledgements,
  the one place they are batched;
- ``meters.py``: enrolment changes and loading; ``commands.py``: executed signed commands;
- ``store.py``: ``Store``, which holds them together; ``records.py``: what goes in and out.
"""

from gateway.store.acks import ACK_FAILURE_LOG_S, ACK_FLUSH_ROWS, ACK_FLUSH_S
from gateway.store.connections import CHECKPOINT_PAGES, WAL_AUTOCHECKPOINT_PAGES
from gateway.store.errors import (
    MIN_FREE_BYTES,
    READ_ONLY,
    CorruptStoreError,
    DuplicateMeterError,
    ForeignFileError,
    SchemaTooNewError,
    StorageUnavailableError,
    StoreError,
    TokenAlreadyAppliedError,
    UnknownMeterError,
    storage_problem,
)
from gateway.store.opening import SQLITE_MAGIC
from gateway.store.records import (
    MeterRecord,
    MeterUpdate,
    OutboxRow,
    RawOutboxRow,
    StoredMeter,
    TokenWindow,
    WindowLike,
)
from gateway.store.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from gateway.store.state_row import StateRows, state_from_row
from gateway.store.store import Store

__all__ = [
    "ACK_FAILURE_LOG_S",
    "ACK_FLUSH_ROWS",
    "ACK_FLUSH_S",
    "APPLICATION_ID",
    "CHECKPOINT_PAGES",
    "MIGRATIONS",
    "MIN_FREE_BYTES",
    "READ_ONLY",
    "SCHEMA_VERSION",
    "SQLITE_MAGIC",
    "WAL_AUTOCHECKPOINT_PAGES",
    "CorruptStoreError",
    "DuplicateMeterError",
    "ForeignFileError",
    "MeterRecord",
    "MeterUpdate",
    "OutboxRow",
    "RawOutboxRow",
    "SchemaTooNewError",
    "StateRows",
    "StorageUnavailableError",
    "Store",
    "StoreError",
    "StoredMeter",
    "TokenAlreadyAppliedError",
    "TokenWindow",
    "UnknownMeterError",
    "WindowLike",
    "state_from_row",
    "storage_problem",
]
