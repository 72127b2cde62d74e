"""A store in an SQLite file: the jobs of processes on one host."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import trio

from .._db import Fault, table_prefix, utc
from .._db import sqlite as db
from .._db.calls import Call, ThreadCalls, open_retrying, seconds
from ._base import (
    FAILURES,
    JobPaused,
    JobState,
    Reminder,
    ReminderStore,
    RunRecord,
    Store,
    check_history,
    check_limit,
    check_overdue_after,
    check_trigger,
    judged,
)

__all__ = ["SQLiteStore"]

T = TypeVar("T")
_log = logging.getLogger("periodic")

UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)

# Times are INTEGER microseconds since the epoch, UTC: exact, and ordered as numbers.
_CREATE_JOBS = (
    "CREATE TABLE IF NOT EXISTS {table} ("
    "name TEXT PRIMARY KEY, schedule TEXT NOT NULL, anchor INTEGER NOT NULL, "
    "last_slot INTEGER, last_node TEXT, last_fence INTEGER, max_fence INTEGER, "
    "last_outcome TEXT, last_started_at INTEGER, last_finished_at INTEGER, "
    "consecutive_failures INTEGER NOT NULL DEFAULT 0, paused_at INTEGER, pause_note TEXT, "
    "triggered_at INTEGER, overdue_after REAL, registered_at INTEGER NOT NULL, "
    "resumed_at INTEGER, last_ok_at INTEGER)"
)
# AUTOINCREMENT: a run's key is never given again, so a late finish() of a pruned run
# can never land on another one.
_CREATE_RUNS = (
    "CREATE TABLE IF NOT EXISTS {table} ("
    "id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, slot INTEGER NOT NULL, "
    "node TEXT NOT NULL, fence INTEGER, started_at INTEGER NOT NULL, finished_at INTEGER, "
    "outcome TEXT, duration REAL, error TEXT, triggered INTEGER NOT NULL DEFAULT 0)"
)
# The affinities existing tables must give their columns: a TEXT slot would compare as
# text, and claims would be judged in the wrong order.
_JOB_COLUMNS = {
    "name": ("TEXT",),
    "schedule": ("TEXT",),
    "anchor": ("INTEGER",),
    "last_slot": ("INTEGER",),
    "last_node": ("TEXT",),
    "last_fence": ("INTEGER",),
    "max_fence": ("INTEGER",),
    "last_outcome": ("TEXT",),
    "last_started_at": ("INTEGER",),
    "last_finished_at": ("INTEGER",),
    "consecutive_failures": ("INTEGER",),
    "paused_at": ("INTEGER",),
    "pause_note": ("TEXT",),
    "triggered_at": ("INTEGER",),
    "overdue_after": ("REAL", "NUMERIC"),
    "registered_at": ("INTEGER",),
    "resumed_at": ("INTEGER",),
    "last_ok_at": ("INTEGER",),
}
_RUN_COLUMNS = {
    "id": ("INTEGER",),
    "job": ("TEXT",),
    "slot": ("INTEGER",),
    "node": ("TEXT",),
    "fence": ("INTEGER",),
    "started_at": ("INTEGER",),
    "finished_at": ("INTEGER",),
    "outcome": ("TEXT",),
    "duration": ("REAL", "NUMERIC"),
    "error": ("TEXT",),
    "triggered": ("INTEGER", "NUMERIC"),  # (NUMERIC: a column declared BOOLEAN)
}
# AUTOINCREMENT: SQLite's own counter of the table (in sqlite_sequence, written in the
# same transaction) makes the fences, strictly increasing and never given twice; setting
# a key again deletes its row and inserts a new one.
_CREATE_REMINDERS = (
    "CREATE TABLE IF NOT EXISTS {table} ("
    "fence INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, key TEXT NOT NULL, "
    "fire_at INTEGER NOT NULL, due_at INTEGER NOT NULL, payload TEXT NOT NULL, "
    "attempts INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, error TEXT, "
    "UNIQUE (name, key))"
)
_REMINDER_COLUMNS = {
    "fence": ("INTEGER",),
    "name": ("TEXT",),
    "key": ("TEXT",),
    "fire_at": ("INTEGER",),
    "due_at": ("INTEGER",),
    "payload": ("TEXT",),
    "attempts": ("INTEGER",),
    "failed": ("INTEGER",),
    "error": ("TEXT",),
}
_REMINDER_FIELDS = "key, fire_at, payload, fence, attempts, error"
_JOB_FIELDS = ", ".join(_JOB_COLUMNS)
_RUN_FIELDS = "slot, node, fence, started_at, finished_at, outcome, duration, error, triggered"


def _micros(value: datetime.datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def _time(micros: int | None) -> datetime.datetime | None:
    return None if micros is None else _EPOCH + datetime.timedelta(microseconds=micros)


def _now() -> datetime.datetime:
    """The store's clock: this process's, in UTC."""
    return datetime.datetime.now(UTC)


def _job_state(row: tuple[Any, ...], now: datetime.datetime) -> JobState:
    (name, schedule, anchor, slot, node, fence, _, outcome, started, finished, failures) = row[:11]
    paused_at, note, triggered, overdue_after, registered, resumed, ok = row[11:]
    state = JobState(
        name=name,
        schedule=schedule,
        anchor=_EPOCH + datetime.timedelta(microseconds=anchor),
        last_slot=_time(slot),
        last_outcome=outcome,
        last_node=node,
        last_fence=fence,
        last_started_at=_time(started),
        last_finished_at=_time(finished),
        consecutive_failures=failures,
        paused=paused_at is not None,
        paused_at=_time(paused_at),
        pause_note=note,
        triggered_at=_time(triggered),
        overdue_after=None if overdue_after is None else float(overdue_after),
        registered_at=_time(registered),
        resumed_at=_time(resumed),
        last_ok_at=_time(ok),
    )
    return judged(state, now)


def _run_record(row: tuple[Any, ...]) -> RunRecord:
    slot, node, fence, started, finished, outcome, duration, error, triggered = row
    return RunRecord(
        slot=_EPOCH + datetime.timedelta(microseconds=slot),
        node=node,
        fence=fence,
        started_at=_EPOCH + datetime.timedelta(microseconds=started),
        finished_at=_time(finished),
        outcome=outcome,
        duration=None if duration is None else float(duration),
        error=error,
        triggered=bool(triggered),
    )


def _reminder(row: tuple[Any, ...], next_attempt: bool = False) -> Reminder:
    key, fire_at, payload, fence, attempts, error = row
    return Reminder(
        key=key,
        fire_at=_EPOCH + datetime.timedelta(microseconds=fire_at),
        payload=json.loads(payload),
        fence=fence,
        attempt=attempts + 1 if next_attempt else attempts,
        error=error,
    )


class _Abandoned(Exception):
    """The caller stopped waiting for a claim: it is rolled back."""


class _Database:
    """The file, its one connection (used by one call at a time) and the statements."""

    def __init__(self, path: str, prefix: str, create: bool, busy_timeout: float) -> None:
        self._path = path
        self._names = (f"{prefix}jobs", f"{prefix}runs")
        # Quoted: a valid identifier may still be an SQL keyword.
        self._jobs, self._runs = (f'"{name}"' for name in self._names)
        self._index = f'"{prefix}runs_job"'
        self._reminder_table = f"{prefix}reminders"
        self._reminders = f'"{self._reminder_table}"'
        self._due_index = f'"{prefix}reminders_due"'
        self._reminders_found = False
        self._create = create
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._close_when_done = False

    # -- connection -----------------------------------------------------------------------

    def open(self, call: Call) -> None:
        """Connect, and make or check the tables."""
        with self._locked(call):
            self._drop()
            conn = db.connect(self._path, self._busy_timeout)
            try:
                for name, columns, key, create in (
                    (self._names[0], _JOB_COLUMNS, "name", _CREATE_JOBS),
                    (self._names[1], _RUN_COLUMNS, "id", _CREATE_RUNS),
                ):
                    db.find_table(
                        conn,
                        name,
                        columns=columns,
                        key=key,
                        create=create if self._create else None,
                        name_option="table_prefix",
                        create_option="create_tables",
                    )
                if self._create:
                    conn.execute(
                        f"CREATE INDEX IF NOT EXISTS {self._index} ON {self._runs} (job, id)"
                    )
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        _log.info("SQLite store in %s, tables %s and %s", self._path, *self._names)

    def close(self, call: Call) -> None:
        if self._lock.acquire(timeout=call.left()):
            try:
                self._drop()
            finally:
                self._lock.release()
        else:  # an abandoned call still runs: it closes the connection when it ends
            self._close_when_done = True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    @contextlib.contextmanager
    def _locked(self, call: Call) -> Iterator[None]:
        if not self._lock.acquire(timeout=call.left()):
            raise TimeoutError("an earlier call on the SQLite connection is still running")
        try:
            yield
        finally:
            if self._close_when_done:
                self._close_when_done = False
                self._drop()
            self._lock.release()

    def run(self, call: Call, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)``, one call at a time, on a new connection after an error."""
        with self._locked(call):
            if self._conn is None:
                self._conn = db.connect(self._path, self._busy_timeout)
            conn = self._conn
            try:
                return fn(conn)
            except sqlite3.OperationalError as exc:
                self._reset(conn)
                if db.fault(exc) is Fault.TRANSIENT and "locked" in str(exc):
                    raise TimeoutError(
                        f"SQLite database {self._path!r} stayed locked for longer than "
                        f"call_timeout ({self._busy_timeout:g} s): {exc}"
                    ) from exc
                raise
            except BaseException:
                self._reset(conn)
                raise

    def _reset(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            self._drop()  # the next call connects afresh

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        # IMMEDIATE: take the write lock first, so the reads inside see what the
        # writes will be judged against (a deferred one could fail to upgrade).
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("COMMIT")

    # -- statements -----------------------------------------------------------------------

    def register(self, conn: sqlite3.Connection, params: dict[str, Any]) -> Any:
        with self._transaction(conn):
            conn.execute(
                f"INSERT INTO {self._jobs} (name, schedule, anchor, overdue_after, "
                "registered_at) VALUES (:name, :schedule, :anchor, :overdue_after, :now) "
                "ON CONFLICT (name) DO NOTHING",
                params,
            )
            conn.execute(
                f"UPDATE {self._jobs} SET schedule = :schedule, overdue_after = :overdue_after "
                "WHERE name = :name AND (schedule IS NOT :schedule "
                "OR overdue_after IS NOT :overdue_after)",
                params,
            )
            return conn.execute(
                f"SELECT {_JOB_FIELDS} FROM {self._jobs} WHERE name = :name", params
            ).fetchone()

    def claim(
        self, conn: sqlite3.Connection, call: Call, history: int, params: dict[str, Any]
    ) -> int | None:
        with self._transaction(conn):
            # Judged under the write lock: a pause or a taken trigger is seen as it is.
            found = conn.execute(
                f"SELECT paused_at IS NOT NULL, triggered_at IS NOT NULL FROM {self._jobs} "
                "WHERE name = :name",
                params,
            ).fetchone()
            if found is None:
                raise LookupError(f"job {params['name']!r} is not registered")
            paused, pending = found
            if paused and params["trigger"] is None:
                raise JobPaused(f"job {params['name']!r} is paused")
            if params["trigger"] == "store" and not pending:
                return None
            # A triggered run is beside the schedule: it neither needs nor moves the
            # latest scheduled slot, so the slots not yet claimed stay claimable.
            if params["trigger"] is None:
                latest = (
                    "last_slot = :slot, last_node = :node, last_fence = :fence, "
                    "last_started_at = :started_at, "
                )
                after = "AND (last_slot IS NULL OR last_slot < :slot) "
            else:
                latest = after = ""
            claimed = conn.execute(
                f"UPDATE {self._jobs} SET {latest}"
                "max_fence = CASE WHEN :fence IS NULL OR max_fence >= :fence "
                "THEN max_fence ELSE :fence END, "
                "triggered_at = CASE WHEN :trigger = 'store' THEN NULL ELSE triggered_at END "
                f"WHERE name = :name {after}"
                "AND (:fence IS NULL OR max_fence IS NULL OR :fence >= max_fence)",
                params,
            ).rowcount
            if not claimed:
                return None
            key = conn.execute(
                f"INSERT INTO {self._runs} (job, slot, node, fence, started_at, triggered) "
                "VALUES (:name, :slot, :node, :fence, :started_at, :trigger IS NOT NULL)",
                params,
            ).lastrowid
            conn.execute(
                f"DELETE FROM {self._runs} WHERE job = ? AND id <= "
                f"(SELECT id FROM {self._runs} WHERE job = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (params["name"], params["name"], history),
            )
            # The caller was told the claim failed: it must not have happened.
            if call.abandoned:
                raise _Abandoned
        assert key is not None
        return key

    def finish(self, conn: sqlite3.Connection, params: dict[str, Any]) -> None:
        with self._transaction(conn):
            row = conn.execute(
                f"SELECT slot, triggered FROM {self._runs} WHERE id = :run AND job = :name",
                params,
            ).fetchone()
            if row is None:  # unknown, or pruned
                return
            conn.execute(
                f"UPDATE {self._runs} SET finished_at = :finished_at, outcome = :outcome, "
                "duration = :duration, error = :error WHERE id = :run",
                params,
            )
            slot, triggered = row
            if not triggered:  # the latest scheduled slot's run (each is claimed once)
                conn.execute(
                    f"UPDATE {self._jobs} SET last_outcome = :outcome, "
                    "last_finished_at = :finished_at, consecutive_failures = "
                    "CASE WHEN :failed THEN consecutive_failures + 1 ELSE 0 END "
                    "WHERE name = :name AND last_slot = :slot",
                    {**params, "slot": slot},
                )
            if params["outcome"] == "ok":
                conn.execute(
                    f"UPDATE {self._jobs} SET last_ok_at = :finished_at WHERE name = :name "
                    "AND (last_ok_at IS NULL OR last_ok_at < :finished_at)",
                    params,
                )

    def jobs(self, conn: sqlite3.Connection) -> list[Any]:
        # BINARY collation: code point order, as Python sorts names.
        return conn.execute(f"SELECT {_JOB_FIELDS} FROM {self._jobs} ORDER BY name").fetchall()

    def job(self, conn: sqlite3.Connection, name: str) -> Any:
        return conn.execute(
            f"SELECT {_JOB_FIELDS} FROM {self._jobs} WHERE name = ?", (name,)
        ).fetchone()

    def change_job(self, conn: sqlite3.Connection, change: str, params: dict[str, Any]) -> None:
        """``UPDATE`` the job's row with ``change`` (a SET clause) in a transaction.

        Raises:
            LookupError: There is no such job.
        """
        with self._transaction(conn):
            changed = conn.execute(
                f"UPDATE {self._jobs} SET {change} WHERE name = :name", params
            ).rowcount
            if not changed:
                raise LookupError(f"job {params['name']!r} is not registered")

    def triggered(self, conn: sqlite3.Connection) -> list[str]:
        return [
            row[0]
            for row in conn.execute(
                f"SELECT name FROM {self._jobs} WHERE triggered_at IS NOT NULL"
            ).fetchall()
        ]

    def runs(self, conn: sqlite3.Connection, name: str, limit: int) -> list[Any]:
        return conn.execute(
            f"SELECT {_RUN_FIELDS} FROM {self._runs} WHERE job = ? ORDER BY id DESC LIMIT ?",
            (name, limit),
        ).fetchall()

    # -- reminders ------------------------------------------------------------------------

    def reminders(self, conn: sqlite3.Connection) -> str:
        """The reminders' table, made or checked on the first use of reminders (a store
        whose jobs never use any needs no such table)."""
        if not self._reminders_found:
            db.find_table(
                conn,
                self._reminder_table,
                columns=_REMINDER_COLUMNS,
                key="fence",
                create=_CREATE_REMINDERS if self._create else None,
                name_option="table_prefix",
                create_option="create_tables",
            )
            if self._create:
                conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {self._due_index} ON {self._reminders} "
                    "(name, due_at) WHERE failed = 0"
                )
            self._reminders_found = True
        return self._reminders

    def set_reminder(self, conn: sqlite3.Connection, params: dict[str, Any]) -> Any:
        table = self.reminders(conn)
        with self._transaction(conn):
            conn.execute(f"DELETE FROM {table} WHERE name = :name AND key = :key", params)
            conn.execute(
                f"INSERT INTO {table} (name, key, fire_at, due_at, payload) "
                "VALUES (:name, :key, :fire_at, :fire_at, :payload)",
                params,
            )
            return conn.execute(
                f"SELECT {_REMINDER_FIELDS} FROM {table} WHERE name = :name AND key = :key",
                params,
            ).fetchone()

    def reminder_query(
        self, conn: sqlite3.Connection, where: str, params: tuple[Any, ...], tail: str = ""
    ) -> list[Any]:
        table = self.reminders(conn)
        return conn.execute(
            f"SELECT {_REMINDER_FIELDS} FROM {table} WHERE {where} {tail}", params
        ).fetchall()

    def reminder_value(self, conn: sqlite3.Connection, what: str, name: str) -> Any:
        table = self.reminders(conn)
        return conn.execute(
            f"SELECT {what} FROM {table} WHERE name = ? AND failed = 0", (name,)
        ).fetchone()[0]

    def reminder_change(self, conn: sqlite3.Connection, change: str, params: Any) -> int:
        table = self.reminders(conn)
        with self._transaction(conn):
            return conn.execute(change.format(table=table), params).rowcount

    def claim_reminders(
        self, conn: sqlite3.Connection, call: Call, params: dict[str, Any]
    ) -> list[Any]:
        table = self.reminders(conn)
        with self._transaction(conn):
            rows = conn.execute(
                f"SELECT {_REMINDER_FIELDS} FROM {table} "
                "WHERE name = :name AND failed = 0 AND due_at <= :now "
                "ORDER BY due_at, fence LIMIT :limit",
                params,
            ).fetchall()
            conn.executemany(
                f"UPDATE {table} SET due_at = ?, attempts = attempts + 1 WHERE fence = ?",
                [(params["until"], row[3]) for row in rows],
            )
            # The caller was told the claim failed: it must not have happened.
            if call.abandoned:
                raise _Abandoned
        return [(*row[:4], row[4] + 1, row[5]) for row in rows]


class SQLiteStore(Store, ReminderStore):
    """A :class:`~periodic.stores.Store` in an SQLite file: processes on one host.

    The stdlib ``sqlite3`` runs in worker threads, on one connection per store used by
    one call at a time, in WAL mode (readers never wait for a writer). Every claim is
    one ``BEGIN IMMEDIATE`` transaction, so processes that share the file (with or
    without a peer, or leaders of a split brain) never claim a slot twice; a process
    killed in the middle of one leaves nothing of it behind.

    Two tables, made on first use unless ``create_tables=False`` (times are INTEGER
    microseconds since the epoch, UTC), and a third, ``periodic_reminders``, on the first
    use of :class:`~periodic.reminders.Reminders` (see the "Durable reminders" page)::

        CREATE TABLE periodic_jobs (
            name TEXT PRIMARY KEY, schedule TEXT NOT NULL, anchor INTEGER NOT NULL,
            last_slot INTEGER, last_node TEXT, last_fence INTEGER, max_fence INTEGER,
            last_outcome TEXT, last_started_at INTEGER, last_finished_at INTEGER,
            consecutive_failures INTEGER NOT NULL DEFAULT 0, paused_at INTEGER,
            pause_note TEXT, triggered_at INTEGER, overdue_after REAL,
            registered_at INTEGER NOT NULL, resumed_at INTEGER, last_ok_at INTEGER);
        CREATE TABLE periodic_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, slot INTEGER NOT NULL,
            node TEXT NOT NULL, fence INTEGER, started_at INTEGER NOT NULL,
            finished_at INTEGER, outcome TEXT, duration REAL, error TEXT,
            triggered INTEGER NOT NULL DEFAULT 0);
        CREATE INDEX periodic_runs_job ON periodic_runs (job, id);

    The path is made absolute when the store is made; ``":memory:"`` and ``""`` (a
    database of each connection's own) are refused. :meth:`serve` opens the file and
    checks the tables before it reports started; it fails with
    :class:`~periodic.peers.DatabaseConfigError` when the file's directory does not
    exist or a table has the wrong shape, and retries (logging at ERROR) while the file
    is not a database, is read-only, or lacks a table with ``create_tables=False``.

    Every call is bounded by ``call_timeout``, a wait for another process's lock on the
    file included: a longer one raises :class:`TimeoutError` (a job then skips its tick
    with ``Skipped(reason="store_error")``), and a claim its caller gave up on is rolled
    back. Times given to the store must be timezone-aware; they come back in UTC.

    The store's clock (``registered_at``, ``paused_at``, ``resumed_at``,
    ``triggered_at``, and ``overdue``) is this process's UTC time. While a trigger is
    watched (:meth:`~periodic.stores.Store.watch_triggers`), :meth:`serve` reads the
    pending triggers every :attr:`trigger_poll` seconds.

    Args:
        path: The database file (made if missing). Give every process the same file.
        table_prefix: Begins the names of the tables (default ``periodic_``: tables
            ``periodic_jobs`` and ``periodic_runs``).
        create_tables: Create the tables on first use if they are missing (default
            ``True``).
        call_timeout: Seconds one call may take (default 5).
        history: Runs kept per job (default 100); older ones are pruned as new ones are
            claimed.

    Raises:
        TypeError, ValueError: An option is invalid (named in the message).
    """

    #: Other processes' reminders are found by reading the file this often.
    reminder_poll = 1.0
    #: Other processes' triggers are found by reading the file this often (so that a
    #: trigger starts a run within a second).
    trigger_poll = 0.5

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table_prefix: str = "periodic_",
        create_tables: bool = True,
        call_timeout: float = 5.0,
        history: int = 100,
    ) -> None:
        self._path = db.absolute_path(path)
        self._prefix = _check_prefix(table_prefix)
        if not isinstance(create_tables, bool):
            raise TypeError(f"create_tables must be a bool, got {create_tables!r}")
        self._call_timeout = seconds("call_timeout", call_timeout)
        self._history = check_history(history)
        self._db = _Database(self._path, self._prefix, create_tables, self._call_timeout)
        # One call at a time: SQLite has one writer anyway, and a call abandoned at its
        # time-out keeps the place until its thread ends.
        self._calls = ThreadCalls(self, timeout=self._call_timeout, threads=1)
        self._served = False

    @property
    def path(self) -> str:
        """The database file, absolute."""
        return self._path

    def __repr__(self) -> str:
        return f"<SQLiteStore path={self._path!r} table_prefix={self._prefix!r}>"

    @property
    def serving(self) -> bool:
        return self._calls.open

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the file and check the tables, report started, and serve until cancelled;
        then let the calls under way end (within ``call_timeout``) and close the file.

        Raises:
            RuntimeError: The store is already being served.
            DatabaseConfigError: The file's directory does not exist, or a table has the
                wrong shape.
        """
        if self._served:
            raise RuntimeError(f"{self!r} is already being served")
        self._served = True
        try:
            await open_retrying(self, self._open, db.fault)
            self._calls.open = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._poll_triggers, self._triggered)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.wait_detached()  # the jobs' last records first
                await self._calls.stop(self._db.close)
            self._served = False

    async def _open(self) -> None:
        await self._calls.run(self._db.open)

    async def _run(self, fn: Callable[[sqlite3.Connection, Call], T]) -> T:
        return await self._calls(lambda call: self._db.run(call, lambda conn: fn(conn, call)))

    async def register(
        self,
        name: str,
        *,
        schedule: str,
        anchor: datetime.datetime,
        overdue_after: float | None = None,
    ) -> JobState:
        """See :meth:`Store.register`.

        Raises:
            RuntimeError: The store is not being served.
            TimeoutError: The call took longer than ``call_timeout``.
            TypeError, ValueError: ``overdue_after`` is neither ``None`` nor a positive,
                finite number of seconds, or ``anchor`` is not timezone-aware.
            sqlite3.Error: SQLite failed.
        """
        now = _now()
        params = {
            "name": name,
            "schedule": schedule,
            "anchor": _micros(utc(anchor, "anchor")),
            "overdue_after": check_overdue_after(overdue_after),
            "now": _micros(now),
        }
        row = await self._run(lambda conn, _: self._db.register(conn, params))
        return _job_state(row, now)

    async def claim(
        self,
        name: str,
        *,
        slot: datetime.datetime,
        node: str,
        fence: int | None,
        started_at: datetime.datetime,
        trigger: str | None = None,
    ) -> int | None:
        """See :meth:`Store.claim`.

        Raises:
            LookupError: The job is not registered.
            JobPaused: ``trigger`` is ``None`` and the job is paused.
            RuntimeError: The store is not being served.
            TimeoutError: The call took longer than ``call_timeout`` (the claim, if it
                was about to succeed, is rolled back).
            ValueError: A time is not timezone-aware, or ``trigger`` is unknown.
            sqlite3.Error: SQLite failed.
        """
        params = {
            "name": name,
            "slot": _micros(utc(slot, "slot")),
            "node": node,
            "fence": fence,
            "started_at": _micros(utc(started_at, "started_at")),
            "trigger": check_trigger(trigger),
        }
        try:
            return await self._run(
                lambda conn, call: self._db.claim(conn, call, self._history, params)
            )
        except LookupError as exc:
            raise LookupError(f"{exc} with {self!r}") from None
        except JobPaused as exc:
            raise JobPaused(f"{exc} in {self!r}") from None

    async def finish(
        self,
        name: str,
        run: int,
        *,
        outcome: str,
        finished_at: datetime.datetime,
        duration: float,
        error: str | None,
    ) -> None:
        """See :meth:`Store.finish`.

        Raises:
            RuntimeError: The store is not being served.
            TimeoutError: The call took longer than ``call_timeout``.
            ValueError: ``finished_at`` is not timezone-aware.
            sqlite3.Error: SQLite failed.
        """
        params = {
            "name": name,
            "run": run,
            "outcome": outcome,
            "finished_at": _micros(utc(finished_at, "finished_at")),
            "duration": duration,
            "error": error,
            "failed": outcome in FAILURES,
        }
        await self._run(lambda conn, _: self._db.finish(conn, params))

    async def jobs(self) -> list[JobState]:
        """See :meth:`Store.jobs`.

        Raises:
            RuntimeError: The store is not being served.
            TimeoutError: The call took longer than ``call_timeout``.
            sqlite3.Error: SQLite failed.
        """
        rows = await self._run(lambda conn, _: self._db.jobs(conn))
        now = _now()
        return [_job_state(row, now) for row in rows]

    async def job(self, name: str) -> JobState | None:
        """See :meth:`Store.job`.

        Raises:
            RuntimeError: The store is not being served.
            TimeoutError: The call took longer than ``call_timeout``.
            sqlite3.Error: SQLite failed.
        """
        row = await self._run(lambda conn, _: self._db.job(conn, name))
        return None if row is None else _job_state(row, _now())

    async def runs(self, name: str, *, limit: int = 20) -> list[RunRecord]:
        """See :meth:`Store.runs`.

        Raises:
            TypeError, ValueError: ``limit`` is not an int >= 1.
            RuntimeError: The store is not being served.
            TimeoutError: The call took longer than ``call_timeout``.
            sqlite3.Error: SQLite failed.
        """
        check_limit(limit)
        rows = await self._run(lambda conn, _: self._db.runs(conn, name, limit))
        return [_run_record(row) for row in rows]

    # -- operating ------------------------------------------------------------------------

    async def pause(self, name: str, *, note: str | None = None) -> None:
        """See :meth:`Store.pause`.

        Raises:
            LookupError: The job is not registered.
            RuntimeError: The store is not being served.
            TimeoutError: The call took longer than ``call_timeout``.
            sqlite3.Error: SQLite failed.
        """
        change = "paused_at = coalesce(paused_at, :now), pause_note = :note"
        await self._change_job(change, {"name": name, "note": note, "now": _micros(_now())})

    async def resume(self, name: str) -> None:
        """See :meth:`Store.resume`.

        Raises:
            LookupError: The job is not registered.
            RuntimeError: The store is not being served.
            TimeoutError: The call took longer than ``call_timeout``.
            sqlite3.Error: SQLite failed.
        """
        change = (
            "resumed_at = CASE WHEN paused_at IS NULL THEN resumed_at ELSE :now END, "
            "paused_at = NULL, pause_note = NULL"
        )
        await self._change_job(change, {"name": name, "now": _micros(_now())})

    async def trigger(self, name: str) -> None:
        """See :meth:`Store.trigger`: this process's watchers are told at once, the
        others' at their store's next poll.

        Raises:
            LookupError: The job is not registered.
            RuntimeError: The store is not being served.
            TimeoutError: The call took longer than ``call_timeout``.
            sqlite3.Error: SQLite failed.
        """
        change = "triggered_at = coalesce(triggered_at, :now)"
        await self._change_job(change, {"name": name, "now": _micros(_now())})
        self._notify_triggers(name)

    async def _change_job(self, change: str, params: dict[str, Any]) -> None:
        try:
            await self._run(lambda conn, _: self._db.change_job(conn, change, params))
        except LookupError as exc:
            raise LookupError(f"{exc} with {self!r}") from None

    async def _triggered(self) -> list[str]:
        return await self._run(lambda conn, _: self._db.triggered(conn))

    # -- reminders (see ReminderStore; every method raises RuntimeError when the store is
    # not being served, TimeoutError after call_timeout, sqlite3.Error when SQLite fails)

    async def set_reminder(
        self, name: str, key: str, *, fire_at: datetime.datetime, payload: str
    ) -> Reminder:
        params = {
            "name": name,
            "key": key,
            "fire_at": _micros(utc(fire_at, "fire_at")),
            "payload": payload,
        }
        row = await self._run(lambda conn, _: self._db.set_reminder(conn, params))
        self._reminder_set(name)
        return _reminder(row, next_attempt=True)

    async def cancel_reminder(self, name: str, key: str) -> bool:
        change = "DELETE FROM {table} WHERE name = ? AND key = ?"
        return bool(await self._change(change, (name, key)))

    async def get_reminder(self, name: str, key: str) -> Reminder | None:
        where = "name = ? AND key = ? AND failed = 0"
        rows = await self._run(lambda conn, _: self._db.reminder_query(conn, where, (name, key)))
        return _reminder(rows[0], next_attempt=True) if rows else None

    async def pending_reminders(self, name: str, *, limit: int) -> list[Reminder]:
        check_limit(limit)
        rows = await self._run(
            lambda conn, _: self._db.reminder_query(
                conn, "name = ? AND failed = 0", (name, limit), "ORDER BY due_at, fence LIMIT ?"
            )
        )
        return [_reminder(row, next_attempt=True) for row in rows]

    async def failed_reminders(self, name: str, *, limit: int) -> list[Reminder]:
        check_limit(limit)
        rows = await self._run(
            lambda conn, _: self._db.reminder_query(
                conn, "name = ? AND failed = 1", (name, limit), "ORDER BY fire_at, fence LIMIT ?"
            )
        )
        return [_reminder(row) for row in rows]

    async def count_reminders(self, name: str) -> int:
        count = await self._run(lambda conn, _: self._db.reminder_value(conn, "count(*)", name))
        return int(count)

    async def next_reminder_due(self, name: str) -> datetime.datetime | None:
        due = await self._run(lambda conn, _: self._db.reminder_value(conn, "min(due_at)", name))
        return _time(due)

    async def claim_reminders(
        self, name: str, *, now: datetime.datetime, claim_ttl: float, limit: int
    ) -> list[Reminder]:
        at = _micros(utc(now, "now"))
        params = {
            "name": name,
            "now": at,
            "until": at + round(claim_ttl * 1e6),
            "limit": limit,
        }
        rows = await self._run(lambda conn, call: self._db.claim_reminders(conn, call, params))
        return [_reminder(row) for row in rows]

    async def complete_reminder(self, name: str, key: str, fence: int) -> bool:
        change = "DELETE FROM {table} WHERE name = ? AND key = ? AND fence = ?"
        return bool(await self._change(change, (name, key, fence)))

    async def retry_reminder(
        self,
        name: str,
        key: str,
        fence: int,
        *,
        now: datetime.datetime,
        delay: float | None,
        error: str | None,
    ) -> None:
        where = "WHERE name = ? AND key = ? AND fence = ?"
        if delay is None:
            await self._change(
                f"UPDATE {{table}} SET failed = 1, error = ? {where}", (error, name, key, fence)
            )
        else:
            due = _micros(utc(now, "now")) + round(delay * 1e6)
            await self._change(
                f"UPDATE {{table}} SET due_at = ?, error = ? {where}",
                (due, error, name, key, fence),
            )

    async def release_reminder(
        self, name: str, key: str, fence: int, *, now: datetime.datetime
    ) -> None:
        params = (_micros(utc(now, "now")), name, key, fence)
        await self._change(
            "UPDATE {table} SET due_at = ?, attempts = attempts - 1 "
            "WHERE name = ? AND key = ? AND fence = ?",
            params,
        )

    async def _change(self, change: str, params: tuple[Any, ...]) -> int:
        return await self._run(lambda conn, _: self._db.reminder_change(conn, change, params))


def _check_prefix(value: object) -> str:
    suffixes = ("jobs", "runs", "runs_job", "reminders", "reminders_due")
    return table_prefix(value, qualified=False, suffixes=suffixes).name
