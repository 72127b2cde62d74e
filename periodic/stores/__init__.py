"""Durable job state: where jobs claim their slots and record their runs.

:class:`Store` is the interface a backend implements; :class:`MemoryStore` keeps it in
memory (for tests). ``periodic.stores.sqlite.SQLiteStore`` (one host) and
``periodic.stores.postgres.PostgresStore`` (many hosts, extra ``trio-periodic[postgres]``)
are the durable ones; both are importable from here too, their driver loaded on first use.
"""

from typing import TYPE_CHECKING, Any

from ._base import JobPaused as JobPaused
from ._base import JobState as JobState
from ._base import ReminderStore as ReminderStore
from ._base import RunRecord as RunRecord
from ._base import Store as Store
from .memory import MemoryStore as MemoryStore

if TYPE_CHECKING:
    from .postgres import PostgresStore as PostgresStore
    from .sqlite import SQLiteStore as SQLiteStore

__all__ = [
    "JobPaused",
    "JobState",
    "MemoryStore",
    "PostgresStore",
    "ReminderStore",
    "RunRecord",
    "SQLiteStore",
    "Store",
]


def __getattr__(name: str) -> Any:
    # The backends import their drivers at the top: load one only when it is asked for.
    if name == "SQLiteStore":
        from .sqlite import SQLiteStore

        return SQLiteStore
    if name == "PostgresStore":
        from .postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module 'periodic.stores' has no attribute {name!r}")
