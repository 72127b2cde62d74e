"""The :class:`Store` interface, and the records it returns."""

from __future__ import annotations

import abc
import datetime
from collections.abc import Callable

import attrs
import trio

#: Outcomes that count as a failure in :attr:`JobState.consecutive_failures`.
FAILURES = frozenset({"error", "timeout"})


def _count(option: str, value: object, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{option} must be an int >= 1{what}, got {value!r}")
    if value < 1:
        raise ValueError(f"{option} must be an int >= 1{what}, got {value!r}")
    return value


def check_history(value: object) -> int:
    """The ``history`` option of every store: runs kept per job.

    Raises:
        TypeError: Not an int.
        ValueError: Less than 1.
    """
    return _count("history", value, " (runs kept per job)")


@attrs.frozen(kw_only=True)
class JobState:
    """What a store knows of a job; see :meth:`Store.jobs`.

    Attributes:
        name: The job's name, its durable identity.
        schedule: The job's schedule as text (``"every 60s"``, ``"cron 0 2 * * * Europe/Berlin"``).
        anchor: Where the job's interval grid starts (aware UTC): slots are ``anchor + k *
            every``. Set with the job's first record, never moved.
        last_slot: The latest slot claimed (aware UTC), or ``None``.
        last_outcome: How the run of the latest finished slot ended (``"ok"``,
            ``"error"``, ``"timeout"``, ``"cancelled"``), or ``None``.
        last_node: The node that claimed the latest slot.
        last_fence: The fence the latest slot was claimed with, or ``None``.
        last_started_at: When the run of the latest slot started (aware UTC).
        last_finished_at: When the latest finished run ended (aware UTC).
        consecutive_failures: Runs in a row, up to the latest finished one, whose outcome
            was ``error`` or ``timeout``.
    """

    name: str
    schedule: str
    anchor: datetime.datetime
    last_slot: datetime.datetime | None = None
    last_outcome: str | None = None
    last_node: str | None = None
    last_fence: int | None = None
    last_started_at: datetime.datetime | None = None
    last_finished_at: datetime.datetime | None = None
    consecutive_failures: int = 0


@attrs.frozen(kw_only=True)
class RunRecord:
    """One run of a job, as the store recorded it; see :meth:`Store.runs`.

    Attributes:
        slot: The slot the run was claimed for (aware UTC).
        node: The node that ran it.
        fence: Its leadership fence, or ``None``.
        started_at: When it started (aware UTC).
        finished_at: When it ended, or ``None`` while it runs (or if its process died).
        outcome: ``"ok"``, ``"error"``, ``"timeout"``, ``"cancelled"``, or ``None`` while
            it runs.
        duration: Seconds it took, or ``None``.
        error: The error's text (at most 2 000 characters), or ``None``.
    """

    slot: datetime.datetime
    node: str
    fence: int | None
    started_at: datetime.datetime
    finished_at: datetime.datetime | None = None
    outcome: str | None = None
    duration: float | None = None
    error: str | None = None


class Store(abc.ABC):
    """Where jobs keep their durable state: the slots they claimed and their runs.

    One store serves any number of jobs (``Periodic(store=...)``), each known by its
    ``name``; serve it with ``await nursery.start(store.serve)`` before the jobs. The
    scheduler calls :meth:`register` when a job is served, :meth:`claim` before each run
    and :meth:`finish` after it; :meth:`jobs`, :meth:`job` and :meth:`runs` are for
    people and tools. See the "Writing a store" section of the docs for the contract a
    backend must keep; every method may raise what its database raises (the scheduler
    then skips the tick with ``Skipped(reason="store_error")`` and goes on).
    """

    # Jobs being served with this store (see attach()); set when the last one leaves.
    _attached: int = 0
    _detached: trio.Event | None = None

    def attach(self) -> None:
        """A job starts serving with this store; :meth:`detach` follows when it has stopped
        (after its last run's end was recorded).

        ``Periodic.serve`` calls both. A backend's :meth:`serve` awaits
        :meth:`wait_detached` (shielded) before it closes, so that the jobs served in the
        same nursery as their store, all cancelled together, still record how their last
        runs ended.
        """
        self._attached += 1

    def detach(self) -> None:
        """A job that :meth:`attach` announced has stopped serving."""
        self._attached -= 1
        if not self._attached and self._detached is not None:
            self._detached.set()
            self._detached = None

    async def wait_detached(self) -> None:
        """Wait until no job is attached (at once if none is)."""
        while self._attached:
            if self._detached is None:
                self._detached = trio.Event()
            await self._detached.wait()

    @property
    @abc.abstractmethod
    def serving(self) -> bool:
        """Whether :meth:`serve` is running and the store can be used."""

    @abc.abstractmethod
    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Make the store usable until cancelled.

        Raises:
            RuntimeError: The store is already being served.
        """

    @abc.abstractmethod
    async def register(self, name: str, *, schedule: str, anchor: datetime.datetime) -> JobState:
        """Make the job's record unless it exists, and return what the store knows.

        ``anchor`` is used only for a new record: an existing one keeps its own.
        ``schedule`` is stored as it is given, for people to read.
        """

    @abc.abstractmethod
    async def claim(
        self,
        name: str,
        *,
        slot: datetime.datetime,
        node: str,
        fence: int | None,
        started_at: datetime.datetime,
    ) -> int | None:
        """Claim ``slot`` for a run, atomically, and record the run's start.

        The claim succeeds only if no slot at or after ``slot`` was claimed for the job,
        and, when ``fence`` is not ``None``, if ``fence`` is at least the highest fence
        ever claimed with. Runs beyond the store's ``history`` are pruned.

        Returns:
            A key of the run's record (for :meth:`finish`), or ``None`` when the claim was
            refused.

        Raises:
            LookupError: The job was never registered.
        """

    @abc.abstractmethod
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
        """Record the end of the run ``run`` (a key from :meth:`claim`).

        Updates the job's last outcome and its count of consecutive failures when the run
        is the job's latest; a run whose record was pruned is ignored.
        """

    @abc.abstractmethod
    async def jobs(self) -> list[JobState]:
        """Every job the store knows, by name."""

    @abc.abstractmethod
    async def job(self, name: str) -> JobState | None:
        """The job called ``name``, or ``None``."""

    @abc.abstractmethod
    async def runs(self, name: str, *, limit: int = 20) -> list[RunRecord]:
        """The job's latest runs, newest first, at most ``limit``."""


def check_limit(limit: object) -> int:
    """The ``limit`` of :meth:`Store.runs`.

    Raises:
        TypeError: Not an int.
        ValueError: Less than 1.
    """
    return _count("limit", limit)


# -- reminders --------------------------------------------------------------------------------

#: The longest reminder key, in characters.
MAX_KEY = 200


@attrs.frozen(kw_only=True)
class Reminder:
    """One version of a durable reminder; see :class:`periodic.reminders.Reminders`.

    Attributes:
        key: Its key, unique within its :class:`~periodic.reminders.Reminders`' name.
        fire_at: When it is due (aware UTC).
        payload: The JSON value it was set with (decoded afresh from the store).
        fence: The id of this version: setting the key again makes a new version with a
            larger fence. Fences grow strictly across all keys and names of one store,
            so a handler can dedupe (and order) deliveries by it.
        attempt: For a delivery, which delivery of this version it is (1 for the first;
            more after a failed handler or a process that died mid-delivery). For a
            pending reminder, the delivery it waits for; for a failed one, the last.
        error: For a reminder kept as failed (or waiting to be retried), what its last
            delivery raised, as text; else ``None``.
    """

    key: str
    fire_at: datetime.datetime
    payload: object
    fence: int
    attempt: int = 1
    error: str | None = None


class ReminderStore(abc.ABC):
    """Where :class:`~periodic.reminders.Reminders` keep their reminders.

    Every store of :mod:`periodic.stores` implements it. Keys are namespaced by ``name``
    (the ``Reminders``' name). A reminder is *due* when its due time has come: its
    ``fire_at`` at first, then the time of its next retry, or the end of the claim of a
    delivery under way. Payloads are handed over as JSON text and come back decoded.
    Times are aware datetimes; a store with a clock of its own (PostgreSQL) judges
    claims and retries by that clock rather than by the ``now`` it is given.
    """

    #: Seconds between reads of the store by a waiting deliverer, for what other
    #: processes set; ``None`` when the store tells of every change itself.
    reminder_poll: float | None = None

    # In-process listeners of listen_reminders(), by name.
    _reminder_listeners: dict[str, list[Callable[[], object]]] | None = None

    @abc.abstractmethod
    async def set_reminder(
        self, name: str, key: str, *, fire_at: datetime.datetime, payload: str
    ) -> Reminder:
        """Set the reminder ``key`` (replacing any version of it, a failed one included)
        with a new fence, atomically; return it once committed."""

    @abc.abstractmethod
    async def cancel_reminder(self, name: str, key: str) -> bool:
        """Remove the reminder ``key``, pending or failed; whether there was one."""

    @abc.abstractmethod
    async def get_reminder(self, name: str, key: str) -> Reminder | None:
        """The pending (not failed) reminder ``key``, or ``None``."""

    @abc.abstractmethod
    async def pending_reminders(self, name: str, *, limit: int) -> list[Reminder]:
        """Pending reminders, soonest due first (then by fence), at most ``limit``."""

    @abc.abstractmethod
    async def failed_reminders(self, name: str, *, limit: int) -> list[Reminder]:
        """Reminders kept as failed, oldest ``fire_at`` first, at most ``limit``."""

    @abc.abstractmethod
    async def count_reminders(self, name: str) -> int:
        """How many reminders are pending (not failed)."""

    @abc.abstractmethod
    async def next_reminder_due(self, name: str) -> datetime.datetime | None:
        """The soonest due time of a pending reminder (a claimed one: its claim's end)."""

    @abc.abstractmethod
    async def claim_reminders(
        self, name: str, *, now: datetime.datetime, claim_ttl: float, limit: int
    ) -> list[Reminder]:
        """Claim at most ``limit`` due reminders for delivery, soonest due first,
        atomically: each is due again only ``claim_ttl`` seconds later, and its attempt
        counts one more. Returns them with that attempt."""

    @abc.abstractmethod
    async def complete_reminder(self, name: str, key: str, fence: int) -> bool:
        """Delete the reminder ``key`` if its version is still ``fence`` (a newer version
        set meanwhile stays); whether it was deleted."""

    @abc.abstractmethod
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
        """A delivery of version ``fence`` failed: make it due ``delay`` seconds from
        now, or keep it as failed when ``delay`` is ``None``. A newer version is left
        alone."""

    @abc.abstractmethod
    async def release_reminder(
        self, name: str, key: str, fence: int, *, now: datetime.datetime
    ) -> None:
        """A delivery of version ``fence`` was stopped before it ended (a shutdown): make
        it due now, and take back the attempt it counted."""

    async def listen_reminders(
        self,
        name: str,
        notify: Callable[[], object],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``notify()`` when a reminder of ``name`` may have become due sooner,
        until cancelled: here, when this process set one; a backend that hears of other
        processes' changes does more."""
        listeners = self._reminder_listeners
        if listeners is None:
            listeners = self._reminder_listeners = {}
        mine = listeners.setdefault(name, [])
        mine.append(notify)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            mine.remove(notify)

    def _reminder_set(self, name: str) -> None:
        """Tell this process's listeners of ``name`` that a reminder was set."""
        listeners = self._reminder_listeners
        for notify in listeners.get(name, ()) if listeners else ():
            notify()


def check_reminder_limit(limit: object) -> int:
    """The ``limit`` of the reminder listings.

    Raises:
        TypeError: Not an int.
        ValueError: Less than 1.
    """
    return _count("limit", limit)
