"""The :class:`Store` interface, and the records it returns."""

from __future__ import annotations

import abc
import datetime

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
