"""A store in PostgreSQL: the jobs of processes on many hosts."""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import trio
from psycopg import errors, sql
from psycopg_pool import ConnectionPool, PoolTimeout

from .._db import FailureStreak, Fault, TableName, table_prefix, utc
from .._db import postgres as db
from .._db.calls import Call, ThreadCalls, open_retrying, retry_delay, seconds
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

__all__ = ["PostgresStore"]

T = TypeVar("T")
_log = logging.getLogger("periodic")

UTC = datetime.timezone.utc

_CREATE_JOBS = """
CREATE TABLE IF NOT EXISTS {table} (
    name text PRIMARY KEY,
    schedule text NOT NULL,
    anchor timestamptz NOT NULL,
    last_slot timestamptz,
    last_node text,
    last_fence bigint,
    max_fence bigint,
    last_outcome text,
    last_started_at timestamptz,
    last_finished_at timestamptz,
    consecutive_failures integer NOT NULL DEFAULT 0,
    paused_at timestamptz,
    pause_note text,
    triggered_at timestamptz,
    overdue_after double precision,
    registered_at timestamptz NOT NULL DEFAULT now(),
    resumed_at timestamptz,
    last_ok_at timestamptz
)"""
_CREATE_RUNS = """
CREATE TABLE IF NOT EXISTS {table} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job text NOT NULL,
    slot timestamptz NOT NULL,
    node text NOT NULL,
    fence bigint,
    started_at timestamptz NOT NULL,
    finished_at timestamptz,
    outcome text,
    duration double precision,
    error text,
    triggered boolean NOT NULL DEFAULT false
)"""
_CREATE_INDEX = "CREATE INDEX IF NOT EXISTS {index} ON {runs} (job, id)"

# What existing tables must look like (types as format_type writes them). A timestamp
# without time zone would be read in each session's TimeZone: processes would disagree
# on which slot came first.
_TEXT = ("text", "character varying")
_TIME = ("timestamp with time zone",)
_JOB_COLUMNS = {
    "name": _TEXT,
    "schedule": _TEXT,
    "anchor": _TIME,
    "last_slot": _TIME,
    "last_node": _TEXT,
    "last_fence": ("bigint",),
    "max_fence": ("bigint",),
    "last_outcome": _TEXT,
    "last_started_at": _TIME,
    "last_finished_at": _TIME,
    "consecutive_failures": ("integer", "bigint"),
    "paused_at": _TIME,
    "pause_note": _TEXT,
    "triggered_at": _TIME,
    "overdue_after": ("double precision",),
    "registered_at": _TIME,
    "resumed_at": _TIME,
    "last_ok_at": _TIME,
}
_RUN_COLUMNS = {
    "id": ("bigint", "integer"),
    "job": _TEXT,
    "slot": _TIME,
    "node": _TEXT,
    "fence": ("bigint",),
    "started_at": _TIME,
    "finished_at": _TIME,
    "outcome": _TEXT,
    "duration": ("double precision",),
    "error": _TEXT,
    "triggered": ("boolean",),
}
_JOB_FIELDS = ", ".join(_JOB_COLUMNS)
_RUN_FIELDS = "slot, node, fence, started_at, finished_at, outcome, duration, error, triggered"

# Every read of a job's row comes with the database's clock, which judges `overdue`.
_REGISTER = f"""
INSERT INTO {{jobs}} AS j (name, schedule, anchor, overdue_after, registered_at)
VALUES (%(name)s, %(schedule)s, %(anchor)s, %(overdue_after)s, now())
ON CONFLICT (name) DO UPDATE SET
    schedule = EXCLUDED.schedule,
    overdue_after = EXCLUDED.overdue_after
WHERE j.schedule IS DISTINCT FROM EXCLUDED.schedule
OR j.overdue_after IS DISTINCT FROM EXCLUDED.overdue_after
RETURNING {_JOB_FIELDS}, now()"""

# The claim and the run's record, in one statement. The UPDATE takes the job's row lock:
# a racing claim waits for this transaction, then (READ COMMITTED) judges its WHERE
# again on the row as this one left it, and is refused: so a pause, or a trigger taken
# by another process, is judged as committed, not as the statement's snapshot saw it.
# A triggered run (trigger not NULL) is beside the schedule: it neither needs nor moves
# the latest scheduled slot, so the slots not yet claimed stay claimable.
_CLAIM = """
WITH claimed AS (
    UPDATE {jobs} SET
        last_slot = CASE WHEN %(trigger)s::text IS NULL THEN %(slot)s ELSE last_slot END,
        last_node = CASE WHEN %(trigger)s::text IS NULL THEN %(node)s ELSE last_node END,
        last_fence = CASE WHEN %(trigger)s::text IS NULL THEN %(fence)s::bigint
            ELSE last_fence END,
        max_fence = greatest(max_fence, %(fence)s::bigint),
        last_started_at = CASE WHEN %(trigger)s::text IS NULL THEN %(started_at)s
            ELSE last_started_at END,
        triggered_at = CASE WHEN %(trigger)s::text = 'store' THEN NULL ELSE triggered_at END
    WHERE name = %(name)s
    AND (%(trigger)s::text IS NOT NULL OR last_slot IS NULL OR last_slot < %(slot)s)
    AND (%(fence)s::bigint IS NULL OR max_fence IS NULL OR %(fence)s::bigint >= max_fence)
    AND (%(trigger)s::text IS NOT NULL OR paused_at IS NULL)
    AND (%(trigger)s::text IS DISTINCT FROM 'store' OR triggered_at IS NOT NULL)
    RETURNING name
), run AS (
    INSERT INTO {runs} (job, slot, node, fence, started_at, triggered)
    SELECT name, %(slot)s, %(node)s, %(fence)s::bigint, %(started_at)s,
        %(trigger)s::text IS NOT NULL
    FROM claimed
    RETURNING id
)
SELECT (SELECT id FROM run), EXISTS (SELECT FROM {jobs} WHERE name = %(name)s)"""
# Why a scheduled tick's claim was refused: a statement of its own, whose snapshot sees
# what a concurrent pause committed while the claim waited for the row.
_PAUSED = "SELECT paused_at IS NOT NULL FROM {jobs} WHERE name = %(name)s"
# A statement of its own, in the claim's transaction: its snapshot, taken after the
# row lock, sees every run of the job (all are inserted under that lock), the new one
# included.
_PRUNE = """
DELETE FROM {runs} WHERE job = %(name)s AND id <= (
    SELECT id FROM {runs} WHERE job = %(name)s ORDER BY id DESC OFFSET %(history)s LIMIT 1
)"""

# The run's end, and the job's when it is the latest scheduled slot's run (or it ended
# ok): one statement, one UPDATE of the job (a row updated twice in a statement keeps
# only one of the changes). It judges last_slot on the latest committed row, so a newer
# claim wins. A triggered run never is the latest scheduled slot's, whatever its slot.
_FINISH = """
WITH run AS (
    UPDATE {runs} SET
        finished_at = %(finished_at)s,
        outcome = %(outcome)s,
        duration = %(duration)s,
        error = %(error)s
    WHERE id = %(run)s AND job = %(name)s
    RETURNING slot, triggered
)
UPDATE {jobs} AS j SET
    last_outcome = CASE WHEN {latest} THEN %(outcome)s ELSE j.last_outcome END,
    last_finished_at = CASE WHEN {latest} THEN %(finished_at)s ELSE j.last_finished_at END,
    consecutive_failures = CASE WHEN NOT {latest} THEN j.consecutive_failures
        WHEN %(failed)s THEN j.consecutive_failures + 1 ELSE 0 END,
    last_ok_at = CASE WHEN %(ok)s THEN greatest(j.last_ok_at, %(finished_at)s)
        ELSE j.last_ok_at END
FROM run WHERE j.name = %(name)s AND ({latest} OR %(ok)s)""".replace(
    "{latest}", "(NOT run.triggered AND j.last_slot IS NOT DISTINCT FROM run.slot)"
)

# COLLATE "C": code point order, as Python sorts names (the database's own collation
# may put "B" before "a").
_JOBS = f'SELECT {_JOB_FIELDS}, now() FROM {{jobs}} ORDER BY name COLLATE "C"'
_JOB = f"SELECT {_JOB_FIELDS}, now() FROM {{jobs}} WHERE name = %(name)s"

# Operating a job: each is one statement on its row, on the database's clock.
_PAUSE = """
UPDATE {jobs} SET paused_at = coalesce(paused_at, now()), pause_note = %(note)s
WHERE name = %(name)s"""
_RESUME = """
UPDATE {jobs} SET
    resumed_at = CASE WHEN paused_at IS NULL THEN resumed_at ELSE now() END,
    paused_at = NULL,
    pause_note = NULL
WHERE name = %(name)s"""
# The NOTIFY is sent when the trigger's transaction commits, and only then.
_TRIGGER = """
WITH triggered AS (
    UPDATE {jobs} SET triggered_at = coalesce(triggered_at, now())
    WHERE name = %(name)s
    RETURNING name
)
SELECT pg_notify(%(channel)s, name) FROM triggered"""
_TRIGGERED = "SELECT name FROM {jobs} WHERE triggered_at IS NOT NULL"
_RUNS = f"""
SELECT {_RUN_FIELDS} FROM {{runs}} WHERE job = %(name)s ORDER BY id DESC LIMIT %(limit)s"""


# -- reminders ----------------------------------------------------------------------------

# Fences come from a sequence of their own: strictly increasing across every version of
# every key (a replaced key takes its new fence under the row's lock, so a later version
# always has the larger one).
_CREATE_SEQUENCE = "CREATE SEQUENCE IF NOT EXISTS {sequence}"
_CREATE_REMINDERS = """
CREATE TABLE IF NOT EXISTS {table} (
    fence bigint PRIMARY KEY,
    name text NOT NULL,
    key text NOT NULL,
    fire_at timestamptz NOT NULL,
    due_at timestamptz NOT NULL,
    payload text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    failed boolean NOT NULL DEFAULT false,
    error text,
    UNIQUE (name, key)
)"""
_CREATE_DUE_INDEX = "CREATE INDEX IF NOT EXISTS {index} ON {r} (name, due_at) WHERE NOT failed"
_REMINDER_COLUMNS = {
    "fence": ("bigint",),
    "name": _TEXT,
    "key": _TEXT,
    "fire_at": _TIME,
    "due_at": _TIME,
    "payload": _TEXT,
    "attempts": ("integer", "bigint"),
    "failed": ("boolean",),
    "error": _TEXT,
}
_REMINDER_FIELDS = "key, fire_at, payload, fence, attempts, error"

# Tell the deliverers (LISTEN on the channel) unless a reminder of the name is due as
# soon: those wake by then anyway, and read what is due next.
_SET_REMINDER = f"""
WITH made AS (
    INSERT INTO {{r}} (fence, name, key, fire_at, due_at, payload)
    VALUES (nextval(%(sequence)s), %(name)s, %(key)s, %(fire_at)s, %(fire_at)s, %(payload)s)
    ON CONFLICT (name, key) DO UPDATE SET
        fence = nextval(%(sequence)s),
        fire_at = EXCLUDED.fire_at,
        due_at = EXCLUDED.due_at,
        payload = EXCLUDED.payload,
        attempts = 0,
        failed = false,
        error = NULL
    RETURNING {_REMINDER_FIELDS}
), told AS (
    SELECT pg_notify(%(channel)s, %(name)s) WHERE NOT EXISTS (
        SELECT FROM {{r}} WHERE name = %(name)s AND key <> %(key)s AND NOT failed
        AND due_at <= %(fire_at)s
    )
)
SELECT {_REMINDER_FIELDS}, (SELECT count(*) FROM told) FROM made"""
# A batch of due reminders, claimed by the database's clock; rows another deliverer is
# claiming right now are skipped, not waited for.
_CLAIM_REMINDERS = f"""
WITH due AS (
    SELECT fence FROM {{r}}
    WHERE name = %(name)s AND NOT failed AND due_at <= now()
    ORDER BY due_at, fence LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {{r}} AS r SET
    due_at = now() + %(ttl)s * interval '1 second',
    attempts = r.attempts + 1
FROM due WHERE r.fence = due.fence
RETURNING {", ".join("r." + f for f in _REMINDER_FIELDS.split(", "))}"""
_VERSION = "WHERE name = %(name)s AND key = %(key)s AND fence = %(fence)s"
_REMINDER_STATEMENTS = {
    "set": _SET_REMINDER,
    "claim": _CLAIM_REMINDERS,
    "cancel": "DELETE FROM {r} WHERE name = %(name)s AND key = %(key)s",
    "get": f"SELECT {_REMINDER_FIELDS} FROM {{r}} "
    "WHERE name = %(name)s AND key = %(key)s AND NOT failed",
    "pending": f"SELECT {_REMINDER_FIELDS} FROM {{r}} WHERE name = %(name)s AND NOT failed "
    "ORDER BY due_at, fence LIMIT %(limit)s",
    "failed": f"SELECT {_REMINDER_FIELDS} FROM {{r}} WHERE name = %(name)s AND failed "
    "ORDER BY fire_at, fence LIMIT %(limit)s",
    "count": "SELECT count(*) FROM {r} WHERE name = %(name)s AND NOT failed",
    "next": "SELECT min(due_at) FROM {r} WHERE name = %(name)s AND NOT failed",
    "complete": "DELETE FROM {r} " + _VERSION,
    "retry": "UPDATE {r} SET due_at = now() + %(delay)s * interval '1 second', "
    "error = %(error)s " + _VERSION,
    "fail": "UPDATE {r} SET failed = true, error = %(error)s " + _VERSION,
    "release": "UPDATE {r} SET due_at = now(), attempts = attempts - 1 " + _VERSION,
}


def _reminder(row: tuple[Any, ...], next_attempt: bool = False) -> Reminder:
    key, fire_at, payload, fence, attempts, error = row[:6]
    return Reminder(
        key=key,
        fire_at=fire_at.astimezone(UTC),
        payload=json.loads(payload),
        fence=fence,
        attempt=attempts + 1 if next_attempt else attempts,
        error=error,
    )


class _Reminders:
    """The reminders' statements, their sequence and their channel."""

    def __init__(self, table: sql.Identifier, sequence: str, channel: str) -> None:
        self.sql = {
            what: sql.SQL(text).format(r=table) for what, text in _REMINDER_STATEMENTS.items()
        }
        self.sequence = sequence
        self.channel = channel


def _time(value: datetime.datetime | None) -> datetime.datetime | None:
    return None if value is None else value.astimezone(UTC)


def _job_state(row: tuple[Any, ...]) -> JobState:
    """A job's row, followed by the database's clock as it was read."""
    (name, schedule, anchor, slot, node, fence, _, outcome, started, finished, failures) = row[:11]
    paused_at, note, triggered, overdue_after, registered, resumed, ok, now = row[11:]
    state = JobState(
        name=name,
        schedule=schedule,
        anchor=anchor.astimezone(UTC),
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
        overdue_after=overdue_after,
        registered_at=_time(registered),
        resumed_at=_time(resumed),
        last_ok_at=_time(ok),
    )
    return judged(state, now)


def _run_record(row: tuple[Any, ...]) -> RunRecord:
    slot, node, fence, started, finished, outcome, duration, error, triggered = row
    return RunRecord(
        slot=slot.astimezone(UTC),
        node=node,
        fence=fence,
        started_at=started.astimezone(UTC),
        finished_at=_time(finished),
        outcome=outcome,
        duration=duration,
        error=error,
        triggered=triggered,
    )


class _Abandoned(Exception):
    """The caller stopped waiting for a claim: it is rolled back."""


class _Statements:
    """The statements, with the tables' qualified names filled in."""

    def __init__(self, jobs: sql.Identifier, runs: sql.Identifier) -> None:
        def make(text: str) -> sql.Composed:
            return sql.SQL(text).format(jobs=jobs, runs=runs)

        self.register = make(_REGISTER)
        self.job = make(_JOB)
        self.claim = make(_CLAIM)
        self.paused = make(_PAUSED)
        self.prune = make(_PRUNE)
        self.finish = make(_FINISH)
        self.jobs = make(_JOBS)
        self.runs = make(_RUNS)
        self.pause = make(_PAUSE)
        self.resume = make(_RESUME)
        self.trigger = make(_TRIGGER)
        self.triggered = make(_TRIGGERED)


class PostgresStore(Store, ReminderStore):
    """A :class:`~periodic.stores.Store` in PostgreSQL: processes on many hosts.

    psycopg 3's synchronous driver runs in worker threads (its async API does not run on
    Trio), with a small pool of connections (one to four); install it with
    ``pip install 'trio-periodic[postgres]'``. Every claim is one transaction whose
    ``UPDATE`` of the job's row decides it, so processes that share the database (with or
    without a peer, or leaders of a split brain) never claim a slot twice, and a process
    killed in the middle of one leaves nothing of it behind.

    Two tables, made on first use unless ``create_tables=False`` (and, on the first use of
    :class:`~periodic.reminders.Reminders`, a table ``periodic_reminders`` with its
    sequence ``periodic_reminder_fences``: see the "Durable reminders" page)::

        CREATE TABLE periodic_jobs (
            name text PRIMARY KEY, schedule text NOT NULL, anchor timestamptz NOT NULL,
            last_slot timestamptz, last_node text, last_fence bigint, max_fence bigint,
            last_outcome text, last_started_at timestamptz, last_finished_at timestamptz,
            consecutive_failures integer NOT NULL DEFAULT 0, paused_at timestamptz,
            pause_note text, triggered_at timestamptz, overdue_after double precision,
            registered_at timestamptz NOT NULL DEFAULT now(), resumed_at timestamptz,
            last_ok_at timestamptz);
        CREATE TABLE periodic_runs (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, job text NOT NULL,
            slot timestamptz NOT NULL, node text NOT NULL, fence bigint,
            started_at timestamptz NOT NULL, finished_at timestamptz, outcome text,
            duration double precision, error text,
            triggered boolean NOT NULL DEFAULT false);
        CREATE INDEX periodic_runs_job ON periodic_runs (job, id);

    Give the prefix with its schema (``table_prefix="app.periodic_"``): an unqualified
    one is looked up through the ``search_path`` of the store's role once, at
    :meth:`serve`, and the fully qualified names are logged at INFO and used from then on.

    :meth:`serve` connects and checks the tables before it reports started. It fails
    with :class:`~periodic.peers.DatabaseConfigError` when the configuration cannot work
    (authentication failed, an unknown database or role, a bad connection option, a
    table of the wrong shape); it retries, logging at ERROR, while a grant or a table
    (with ``create_tables=False``) is missing, and at WARNING while the server cannot be
    reached. Afterwards, a connection that the server dropped (a restart,
    ``pg_terminate_backend``) is replaced within the call that finds it broken.

    Every call is bounded by ``call_timeout``: a ``statement_timeout``, a
    ``connect_timeout``, TCP keepalives and ``tcp_user_timeout`` are set on the
    connections (the DSN's own values win), and a longer call raises
    :class:`TimeoutError` (a job then skips its tick with
    ``Skipped(reason="store_error")``); a claim its caller gave up on is rolled back.
    The DSN's password never appears in the store's ``repr``, its log records or the
    errors it raises. Times given to the store must be timezone-aware; they come back
    in UTC.

    The store's clock (``registered_at``, ``paused_at``, ``resumed_at``,
    ``triggered_at``, and ``overdue``) is the database's ``now()``. :meth:`trigger`
    sends a ``NOTIFY`` on the channel named after the jobs' table (its qualified name)
    when it commits; while a trigger is watched
    (:meth:`~periodic.stores.Store.watch_triggers`) or reminders are delivered,
    :meth:`serve` listens on one connection of its own (``periodic-store-listener``),
    replaced with backoff after an error, and also reads the pending triggers every
    :attr:`trigger_poll` seconds, so a notification missed meanwhile is only late.

    Args:
        dsn: A libpq connection string or URI (``postgresql://user:pw@host/db``).
        table_prefix: Begins the names of the tables (default ``periodic_``: tables
            ``periodic_jobs`` and ``periodic_runs``); ``schema.prefix`` names their schema.
        create_tables: Create the tables on first use if they are missing (default
            ``True``).
        call_timeout: Seconds one call may take (default 5).
        history: Runs kept per job (default 100); older ones are pruned as new ones are
            claimed.

    Raises:
        TypeError, ValueError: An option is invalid (named in the message), or ``dsn``
            cannot be parsed (the message says where, without the password).
    """

    #: The pool's size: claims of several jobs at once, and a spare for people and tools.
    MIN_CONNECTIONS = 1
    MAX_CONNECTIONS = 4

    #: A deliverer hears of new reminders by NOTIFY; it also reads the table this often,
    #: in case one was missed while its listening connection was being replaced.
    reminder_poll = 30.0
    #: Triggers are heard of by NOTIFY; the pending ones are also read this often, in
    #: case one was missed while the listening connection was being replaced.
    trigger_poll = 5.0
    #: Seconds a listening call waits for a notification before it looks again at what
    #: to listen on.
    _LISTEN_WAIT = 1.0

    def __init__(
        self,
        dsn: str,
        *,
        table_prefix: str = "periodic_",
        create_tables: bool = True,
        call_timeout: float = 5.0,
        history: int = 100,
    ) -> None:
        if not isinstance(dsn, str):
            raise TypeError(f"dsn must be a str, got {type(dsn).__name__}")
        self._params, self._scrubber = db.parse_dsn(dsn)
        self._where = db.describe(self._params, self._scrubber)
        self._prefix = table_prefix
        self._tables = _check_prefix(table_prefix)
        if not isinstance(create_tables, bool):
            raise TypeError(f"create_tables must be a bool, got {create_tables!r}")
        self._create = create_tables
        self._call_timeout = seconds("call_timeout", call_timeout)
        self._history = check_history(history)
        self._conninfo, self._statement_timeout = db.conninfo(
            dsn, self._params, self._call_timeout, application_name="periodic-store"
        )
        self._listen_conninfo, _ = db.conninfo(
            dsn, self._params, self._call_timeout, application_name="periodic-store-listener"
        )
        self._calls = ThreadCalls(self, timeout=self._call_timeout, threads=self.MAX_CONNECTIONS)
        # Found at the first serve, then fixed: every statement names the same tables
        # however the search_path of a later connection reads.
        self._sql: _Statements | None = None
        self._schema: str | None = None
        self._reminders: _Reminders | None = None
        self._trigger_channel: str | None = None
        self._pool: ConnectionPool[db.Connection] | None = None
        self._served = False
        # Set when there may be a new channel to listen on.
        self._listen_more: trio.Event | None = None

    def __repr__(self) -> str:
        return f"<PostgresStore db={self._where!r} table_prefix={self._prefix!r}>"

    @property
    def serving(self) -> bool:
        return self._calls.open

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect and check the tables, report started, and serve until cancelled; then
        let the calls under way end (within ``call_timeout``) and close the connections.

        Raises:
            RuntimeError: The store is already being served.
            DatabaseConfigError: The configuration cannot work: authentication failed, an
                unknown database or role, a bad connection option, a table of the wrong
                shape (the message names it, without the password).
        """
        if self._served:
            raise RuntimeError(f"{self!r} is already being served")
        self._served = True
        try:
            await open_retrying(self, self._open, db.fault)
            self._calls.open = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._poll_triggers, self._triggered)
                nursery.start_soon(self._listen)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.wait_detached()  # the jobs' last records first
                await self._calls.stop(self._close)
            self._served = False

    # -- in worker threads ----------------------------------------------------------------

    async def _open(self) -> None:
        await self._calls.run(lambda call: self._scrubbed(lambda: self._open_pool(call)))

    def _open_pool(self, call: Call) -> None:
        with db.connect(self._conninfo, self._statement_timeout) as conn:
            self._find_tables(conn)
        pool: ConnectionPool[db.Connection] = ConnectionPool(
            self._conninfo,
            kwargs=db.CONNECTION_OPTIONS,
            min_size=self.MIN_CONNECTIONS,
            max_size=self.MAX_CONNECTIONS,
            configure=self._configure,
            name="periodic-store",
            open=False,
        )
        try:
            pool.open(wait=True, timeout=max(call.left(), 0.1))
        except BaseException:
            pool.close(timeout=0)
            raise
        self._pool = pool

    def _configure(self, conn: db.Connection) -> None:
        db.configure(conn, self._statement_timeout)
        # A claim's transaction lasts milliseconds. One left open longer belongs to a
        # client that hangs or is cut off, and holds its job's row: the server ends it.
        conn.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
            (self._statement_timeout,),
        )

    def _find_tables(self, conn: db.Connection) -> None:
        if self._sql is not None:
            return
        options = {"name_option": "table_prefix", "create_option": "create_tables"}
        schema, jobs = db.find_table(
            conn,
            TableName(self._tables.schema, f"{self._tables.name}jobs"),
            columns=_JOB_COLUMNS,
            key="name",
            create=_CREATE_JOBS if self._create else None,
            **options,
        )
        # The runs live beside the jobs, whatever the search_path finds elsewhere.
        _, runs = db.find_table(
            conn,
            TableName(schema, f"{self._tables.name}runs"),
            columns=_RUN_COLUMNS,
            key="id",
            create=_CREATE_RUNS if self._create else None,
            **options,
        )
        if self._create:
            index = sql.SQL(_CREATE_INDEX).format(
                index=sql.Identifier(f"{self._tables.name}runs_job"),
                runs=sql.Identifier(schema, runs),
            )
            # UniqueViolation: another process made it at the same moment.
            with contextlib.suppress(errors.UniqueViolation, errors.DuplicateTable):
                conn.execute(index)
        self._sql = _Statements(sql.Identifier(schema, jobs), sql.Identifier(schema, runs))
        self._schema = schema
        self._trigger_channel = db.channel(schema, jobs)
        hint = (
            ""
            if self._tables.schema
            else f" (found through the search_path: give table_prefix="
            f"{schema + '.' + self._tables.name!r} so that every role and search_path "
            "finds these)"
        )
        _log.info(
            "PostgreSQL store at %s is in tables %s.%s and %s.%s%s",
            self._where,
            schema,
            jobs,
            schema,
            runs,
            hint,
        )

    def _close(self, call: Call) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=call.left())

    def _scrubbed(self, fn: Callable[[], T]) -> T:
        """``fn()``, its errors without the password, a statement time-out as
        :class:`TimeoutError`."""
        try:
            return fn()
        except errors.QueryCanceled as exc:
            error: Exception = TimeoutError(
                f"{self!r}: a statement took longer than call_timeout "
                f"({self._call_timeout:g} s): {self._scrubber.text(str(exc).strip())}"
            )
        except PoolTimeout as exc:
            error = TimeoutError(
                f"{self!r}: no connection within call_timeout ({self._call_timeout:g} s): "
                f"{self._scrubber.text(str(exc).strip())}"
            )
        except Exception as exc:
            error = self._scrubber.error(exc)
        raise error  # outside the except block: the original may name the password

    def _on_connection(self, call: Call, fn: Callable[[db.Connection], T]) -> T:
        """``fn(connection)`` on a pooled connection; once more on another when the one
        it was given turns out broken (the server dropped it: a restart, a kill)."""
        pool = self._pool
        if pool is None:
            raise RuntimeError(f"{self!r} is not being served")
        for retry in (False, True):
            conn = pool.getconn(timeout=max(call.left(), 0.01))
            try:
                return fn(conn)
            except psycopg.OperationalError:
                if retry or not conn.broken:
                    raise
            finally:
                pool.putconn(conn)  # a broken one is thrown away
            # Its siblings were most likely dropped with it: replace them all now.
            pool.check()
        raise AssertionError("unreachable")

    async def _run(self, fn: Callable[[db.Connection, Call], T]) -> T:
        return await self._calls(
            lambda call: self._scrubbed(
                lambda: self._on_connection(call, lambda conn: fn(conn, call))
            )
        )

    def _statements(self) -> _Statements:
        assert self._sql is not None
        return self._sql

    # -- the Store ------------------------------------------------------------------------

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
            psycopg.Error: The database failed.
        """
        params = {
            "name": name,
            "schedule": schedule,
            "anchor": utc(anchor, "anchor"),
            "overdue_after": check_overdue_after(overdue_after),
        }

        def register(conn: db.Connection, call: Call) -> tuple[Any, ...]:
            statements = self._statements()
            row = conn.execute(statements.register, params).fetchone()
            if row is None:  # there, with this schedule
                row = conn.execute(statements.job, params).fetchone()
            assert row is not None
            return row

        return _job_state(await self._run(register))

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
            psycopg.Error: The database failed.
        """
        params = {
            "name": name,
            "slot": utc(slot, "slot"),
            "node": node,
            "fence": fence,
            "started_at": utc(started_at, "started_at"),
            "history": self._history,
            "trigger": check_trigger(trigger),
        }

        def claim(conn: db.Connection, call: Call) -> int | None:
            statements = self._statements()
            with conn.transaction():
                row = conn.execute(statements.claim, params).fetchone()
                assert row is not None
                key, known = row
                if not known:
                    raise LookupError(f"job {name!r} is not registered with {self!r}")
                if key is None:
                    if trigger is None:
                        paused = conn.execute(statements.paused, params).fetchone()
                        if paused is not None and paused[0]:
                            raise JobPaused(f"job {name!r} is paused in {self!r}")
                    return None
                conn.execute(statements.prune, params)
                # The caller was told the claim failed: it must not have happened.
                if call.abandoned:
                    raise _Abandoned
            return int(key)

        return await self._run(claim)

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
            psycopg.Error: The database failed.
        """
        params = {
            "name": name,
            "run": run,
            "outcome": outcome,
            "finished_at": utc(finished_at, "finished_at"),
            "duration": duration,
            "error": error,
            "failed": outcome in FAILURES,
            "ok": outcome == "ok",
        }
        await self._run(lambda conn, _: conn.execute(self._statements().finish, params))

    async def jobs(self) -> list[JobState]:
        """See :meth:`Store.jobs`.

        Raises:
            RuntimeError: The store is not being served.
            TimeoutError: The call took longer than ``call_timeout``.
            psycopg.Error: The database failed.
        """
        rows = await self._run(lambda conn, _: conn.execute(self._statements().jobs).fetchall())
        return [_job_state(row) for row in rows]

    async def job(self, name: str) -> JobState | None:
        """See :meth:`Store.job`.

        Raises:
            RuntimeError: The store is not being served.
            TimeoutError: The call took longer than ``call_timeout``.
            psycopg.Error: The database failed.
        """
        row = await self._run(
            lambda conn, _: conn.execute(self._statements().job, {"name": name}).fetchone()
        )
        return None if row is None else _job_state(row)

    async def runs(self, name: str, *, limit: int = 20) -> list[RunRecord]:
        """See :meth:`Store.runs`.

        Raises:
            TypeError, ValueError: ``limit`` is not an int >= 1.
            RuntimeError: The store is not being served.
            TimeoutError: The call took longer than ``call_timeout``.
            psycopg.Error: The database failed.
        """
        check_limit(limit)
        params = {"name": name, "limit": limit}
        rows = await self._run(
            lambda conn, _: conn.execute(self._statements().runs, params).fetchall()
        )
        return [_run_record(row) for row in rows]

    # -- operating ------------------------------------------------------------------------

    async def pause(self, name: str, *, note: str | None = None) -> None:
        """See :meth:`Store.pause`.

        Raises:
            LookupError: The job is not registered.
            RuntimeError: The store is not being served.
            TimeoutError: The call took longer than ``call_timeout``.
            psycopg.Error: The database failed.
        """
        await self._change_job(lambda s: s.pause, {"name": name, "note": note})

    async def resume(self, name: str) -> None:
        """See :meth:`Store.resume`.

        Raises:
            LookupError: The job is not registered.
            RuntimeError: The store is not being served.
            TimeoutError: The call took longer than ``call_timeout``.
            psycopg.Error: The database failed.
        """
        await self._change_job(lambda s: s.resume, {"name": name})

    async def trigger(self, name: str) -> None:
        """See :meth:`Store.trigger`: the ``NOTIFY`` goes out as it commits, and this
        process's watchers are told at once.

        Raises:
            LookupError: The job is not registered.
            RuntimeError: The store is not being served.
            TimeoutError: The call took longer than ``call_timeout``.
            psycopg.Error: The database failed.
        """
        await self._change_job(
            lambda s: s.trigger, {"name": name, "channel": self._trigger_channel}
        )
        self._notify_triggers(name)

    async def _change_job(
        self, statement: Callable[[_Statements], sql.Composed], params: dict[str, Any]
    ) -> None:
        changed = await self._run(
            lambda conn, _: conn.execute(statement(self._statements()), params).rowcount
        )
        if not changed:
            raise LookupError(f"job {params['name']!r} is not registered with {self!r}")

    async def _triggered(self) -> list[str]:
        rows = await self._run(
            lambda conn, _: conn.execute(self._statements().triggered).fetchall()
        )
        return [row[0] for row in rows]

    # -- listening ------------------------------------------------------------------------

    def _channels(self) -> dict[str, Callable[[str], None]]:
        """The channels there is something to listen on for, with what to do with a
        notification's payload (a job's or a reminders' name)."""
        wanted: dict[str, Callable[[str], None]] = {}
        if self._watched and self._trigger_channel is not None:
            wanted[self._trigger_channel] = self._notify_triggers
        reminders = self._reminders
        if reminders is not None and any((self._reminder_listeners or {}).values()):
            wanted[reminders.channel] = self._reminder_set
        return wanted

    def _missed(self, channel: str) -> None:
        """Nobody listened on ``channel`` for a while: look for what was said meanwhile."""
        if channel == self._trigger_channel:
            self._poll_now()
            return
        for name, listeners in list((self._reminder_listeners or {}).items()):
            if listeners:
                self._reminder_set(name)

    async def _listen(self) -> None:
        """Until cancelled: listen on the store's channels (triggers, reminders) while
        there is something to listen for, on one connection of its own; after an error,
        again on a new connection, with backoff. Never raises but Cancelled."""

        def connect() -> db.Connection:
            return db.connect(self._listen_conninfo, self._statement_timeout)

        listener = db.Listener(connect)
        streak = FailureStreak()
        try:
            while True:
                wanted = self._channels()
                if not wanted:
                    listener.disconnect(0)  # no connection is kept for nothing
                    await self._wait_for_channels()
                    continue
                try:
                    heard, fresh = await trio.to_thread.run_sync(
                        functools.partial(self._hear, listener, wanted), abandon_on_cancel=True
                    )
                except Exception as exc:
                    if streak.failed(trio.current_time(), Fault.TRANSIENT):
                        _log.warning(
                            "%r: listening for notifications failed (%d time(s) in a row); "
                            "trying again: %r",
                            self,
                            streak.attempts,
                            exc,
                        )
                    await trio.sleep(retry_delay(streak.attempts))
                    continue
                if streak.attempts:
                    _log.info(
                        "%r: listening for notifications again after %d failure(s)",
                        self,
                        streak.succeeded(),
                    )
                try:
                    for channel in fresh:
                        self._missed(channel)
                    for channel, payload in heard:
                        if channel in wanted:
                            wanted[channel](payload)
                except Exception:  # a listener's bug must not end the store's serve
                    _log.exception("%r: telling the listeners of a notification failed", self)
        finally:
            listener.close(0)

    async def _wait_for_channels(self) -> None:
        """Return when there may be something to listen for."""
        if self._listen_more is None:
            self._listen_more = trio.Event()
        more = self._listen_more
        async with trio.open_nursery() as nursery:

            async def first(wait: Callable[[], Awaitable[object]]) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(first, more.wait)
            nursery.start_soon(first, self._wait_watched)
        if more.is_set():
            self._listen_more = None

    def _hear(
        self, listener: db.Listener, wanted: dict[str, Callable[[str], None]]
    ) -> tuple[list[tuple[str, str]], set[str]]:
        return self._scrubbed(
            lambda: listener.hear(wanted, wait=self._LISTEN_WAIT, timeout=self._call_timeout)
        )

    # -- reminders (see ReminderStore; every method raises RuntimeError when the store is
    # not being served, TimeoutError after call_timeout, psycopg.Error when the database
    # fails) --------------------------------------------------------------------------

    def _find_reminders(self, conn: db.Connection) -> _Reminders:
        """The reminders' table and sequence, beside the jobs' table: made or checked on
        the first use of reminders (a store whose jobs use none needs neither)."""
        found = self._reminders
        if found is not None:
            return found
        schema = self._schema
        assert schema is not None
        prefix = self._tables.name
        sequence = sql.Identifier(schema, f"{prefix}reminder_fences")
        if self._create:
            with contextlib.suppress(errors.UniqueViolation, errors.DuplicateTable):
                conn.execute(sql.SQL(_CREATE_SEQUENCE).format(sequence=sequence))
        _, table = db.find_table(
            conn,
            TableName(schema, f"{prefix}reminders"),
            columns=_REMINDER_COLUMNS,
            key="fence",
            create=_CREATE_REMINDERS if self._create else None,
            name_option="table_prefix",
            create_option="create_tables",
        )
        if self._create:
            index = sql.SQL(_CREATE_DUE_INDEX).format(
                index=sql.Identifier(f"{prefix}reminders_due"),
                r=sql.Identifier(schema, table),
            )
            with contextlib.suppress(errors.UniqueViolation, errors.DuplicateTable):
                conn.execute(index)
        found = self._reminders = _Reminders(
            sql.Identifier(schema, table), sequence.as_string(conn), db.channel(schema, table)
        )
        return found

    async def _reminder_call(
        self, what: str, params: dict[str, Any], *, rows: bool = True
    ) -> list[tuple[Any, ...]]:
        def call(conn: db.Connection, _: Call) -> list[tuple[Any, ...]]:
            found = self._find_reminders(conn)
            cursor = conn.execute(found.sql[what], params)
            return cursor.fetchall() if rows else [(cursor.rowcount,)]

        return await self._run(call)

    async def set_reminder(
        self, name: str, key: str, *, fire_at: datetime.datetime, payload: str
    ) -> Reminder:
        fire_at = utc(fire_at, "fire_at")

        def call(conn: db.Connection, _: Call) -> tuple[Any, ...]:
            found = self._find_reminders(conn)
            params = {
                "name": name,
                "key": key,
                "fire_at": fire_at,
                "payload": payload,
                "sequence": found.sequence,
                "channel": found.channel,
            }
            row = conn.execute(found.sql["set"], params).fetchone()
            assert row is not None
            return row

        made = _reminder(await self._run(call), next_attempt=True)
        self._reminder_set(name)
        return made

    async def cancel_reminder(self, name: str, key: str) -> bool:
        done = await self._reminder_call("cancel", {"name": name, "key": key}, rows=False)
        return bool(done[0][0])

    async def get_reminder(self, name: str, key: str) -> Reminder | None:
        rows = await self._reminder_call("get", {"name": name, "key": key})
        return _reminder(rows[0], next_attempt=True) if rows else None

    async def pending_reminders(self, name: str, *, limit: int) -> list[Reminder]:
        check_limit(limit)
        rows = await self._reminder_call("pending", {"name": name, "limit": limit})
        return [_reminder(row, next_attempt=True) for row in rows]

    async def failed_reminders(self, name: str, *, limit: int) -> list[Reminder]:
        check_limit(limit)
        rows = await self._reminder_call("failed", {"name": name, "limit": limit})
        return [_reminder(row) for row in rows]

    async def count_reminders(self, name: str) -> int:
        return int((await self._reminder_call("count", {"name": name}))[0][0])

    async def next_reminder_due(self, name: str) -> datetime.datetime | None:
        return _time((await self._reminder_call("next", {"name": name}))[0][0])

    async def claim_reminders(
        self, name: str, *, now: datetime.datetime, claim_ttl: float, limit: int
    ) -> list[Reminder]:
        utc(now, "now")  # the database's clock decides
        params = {"name": name, "ttl": claim_ttl, "limit": limit}

        def claim(conn: db.Connection, call: Call) -> list[tuple[Any, ...]]:
            found = self._find_reminders(conn)
            with conn.transaction():
                rows = conn.execute(found.sql["claim"], params).fetchall()
                # The caller was told the claim failed: it must not have happened.
                if call.abandoned:
                    raise _Abandoned
            return rows

        rows = await self._run(claim)
        return sorted((_reminder(row) for row in rows), key=lambda r: (r.fire_at, r.fence))

    async def complete_reminder(self, name: str, key: str, fence: int) -> bool:
        params = {"name": name, "key": key, "fence": fence}
        return bool((await self._reminder_call("complete", params, rows=False))[0][0])

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
        utc(now, "now")
        params = {"name": name, "key": key, "fence": fence, "delay": delay, "error": error}
        await self._reminder_call("fail" if delay is None else "retry", params, rows=False)

    async def release_reminder(
        self, name: str, key: str, fence: int, *, now: datetime.datetime
    ) -> None:
        utc(now, "now")
        params = {"name": name, "key": key, "fence": fence}
        await self._reminder_call("release", params, rows=False)

    async def listen_reminders(
        self,
        name: str,
        notify: Callable[[], object],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """As :meth:`ReminderStore.listen_reminders`, and for the reminders other
        processes set too: the store's :meth:`serve` listens for them (``LISTEN``, on
        the connection it listens for triggers on)."""
        await self._run(lambda conn, _: self._find_reminders(conn))
        # The listener looks again at what to listen on (at its next checkpoint, by
        # which time this listener is registered).
        more, self._listen_more = self._listen_more, None
        if more is not None:
            more.set()
        await super().listen_reminders(name, notify, task_status=task_status)


def _check_prefix(value: object) -> TableName:
    suffixes = ("jobs", "runs", "runs_job", "reminders", "reminders_due", "reminder_fences")
    return table_prefix(value, qualified=True, suffixes=suffixes)
