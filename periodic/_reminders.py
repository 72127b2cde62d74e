"""Durable reminders: one-shot jobs kept in a store, delivered once due, supervised like
runs of a job."""

from __future__ import annotations

import contextvars
import datetime
import functools
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import attrs
import trio

from . import _options, _telemetry
from ._events import EventSource, Finished, Outcome
from ._runs import Runs
from .peers._base import Peer
from .stores._base import MAX_KEY, Reminder, ReminderStore, Store

_log = logging.getLogger("periodic")

UTC = datetime.timezone.utc
# Reminders claimed by one call at most: a claim is one statement, whatever its size.
_BATCH = 100
# A deliverer that found nothing due where it expected something (another process took
# it, or the database's clock is behind ours) looks again this much later.
_RECHECK = 0.01
# After a store error, the deliverer tries again this much later.
_STORE_RETRY = 1.0
# The pending-reminders gauge is read from the store this often.
_COUNT_EVERY = 10.0
# Error texts kept in a store are cut at this length.
_ERROR_TEXT = 2000

# The reminder a delivery's task hands its handler (set around Runs.spawn, which starts
# the run's task in a copy of the spawning context).
_delivering: contextvars.ContextVar[Reminder] = contextvars.ContextVar("periodic_reminder")


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def _check_store(value: object) -> Store:
    if not isinstance(value, Store) or not isinstance(value, ReminderStore):
        raise TypeError(
            "store must be a periodic.stores store that keeps reminders (MemoryStore, "
            f"SQLiteStore, PostgresStore), got {value!r}"
        )
    return value


def _check_handler(value: object) -> Callable[[Reminder], Any]:
    if not callable(value):
        raise TypeError(f"handler must be a callable taking a Reminder, got {value!r}")
    return value


def _check_name(value: object) -> str:
    return _key(value, "name")


def _key(value: object, option: str = "key") -> str:
    if not isinstance(value, str):
        raise TypeError(f"{option} must be a str, got {value!r}")
    if not value or len(value) > MAX_KEY:
        raise ValueError(
            f"{option} must be a non-empty str of at most {MAX_KEY} characters, "
            f"got {len(value)} characters"
        )
    return value


def _check_peer(value: object) -> Peer | None:
    if value is not None and not isinstance(value, Peer):
        raise TypeError(f"peer must be None or a periodic.peers.Peer, got {value!r}")
    return value


def _count(option: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{option} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{option} must be an int >= 1, got {value!r}")
    return value


def _seconds(option: str, value: object) -> float:
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{option} must be a number of seconds or a timedelta, got {value!r}")
    else:
        seconds = float(value)
    if not 0 < seconds < math.inf:
        raise ValueError(f"{option} must be a positive, finite number of seconds, got {value!r}")
    return seconds


def _check_concurrency(value: object) -> int:
    return _count("concurrency", value)


def _check_max_attempts(value: object) -> int:
    return _count("max_attempts", value)


def _check_retry_delay(value: object) -> float:
    return _seconds("retry_delay", value)


def _check_claim_ttl(value: object) -> float | None:
    return None if value is None else _seconds("claim_ttl", value)


def _payload(value: object) -> str:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"payload must be a JSON value: {exc}") from None


@attrs.define(eq=False, repr=False)
class Reminders(EventSource):
    """Durable one-shot reminders of one ``name`` in a store, and their delivery.

    Set a reminder with :meth:`remind` (or :meth:`remind_after`); once its ``fire_at``
    has come, :meth:`serve` calls ``handler(reminder)`` in a child task, supervised like a
    run of a job (``Started``/``Finished`` events with ``job=name``, the ``periodic``
    logger, a span, ``current_run()``). Delivery is at least once: a version is deleted
    once its handler returned; a handler that raises or times out is retried after
    ``retry_delay`` (doubling each attempt) until ``max_attempts``, then kept as failed
    (:meth:`failed`); a process that dies mid-delivery leaves a claim that expires after
    ``claim_ttl``, and the reminder is delivered again. See the "Durable reminders" page.

    Args:
        store: A served store of :mod:`periodic.stores` (serve it first).
        handler: Called with each due :class:`Reminder`; async, or sync (run in a worker
            thread).
        name: Namespaces the keys: several ``Reminders`` may share a store, and several
            processes serve the same ``name`` (default ``"reminders"``).
        peer: If given, only its leader delivers; else every serving process may, and
            claims keep each version with one of them at a time.
        timeout: Seconds a handler may take (``None``: no limit); a handler that takes
            longer is cancelled, and that delivery failed.
        concurrency: Handlers running at once, at most (default 100).
        claim_ttl: Seconds a delivery holds its reminder before another process may
            deliver it again (default: ``timeout`` + 30 s, or 300 s without a timeout).
        retry_delay: Seconds before a failed delivery is tried again (default 30),
            doubling with each attempt.
        max_attempts: Deliveries tried before a reminder is kept as failed (default 5).
        job_shutdown: Seconds running handlers get to finish when ``serve`` is cancelled
            (default 5); those still running then are cancelled, and their reminders
            given back to be delivered again.
        wall_clock: A zero-argument function returning the wall time as an aware
            datetime (default: the system's clock); tests pass a fake one.

    Raises:
        TypeError, ValueError: An option is invalid (named in the message).
    """

    store: Store = attrs.field(converter=_check_store)
    handler: Callable[[Reminder], Any] = attrs.field(converter=_check_handler)
    name: str = attrs.field(default="reminders", converter=_check_name, kw_only=True)
    peer: Peer | None = attrs.field(default=None, converter=_check_peer, kw_only=True)
    timeout: float = attrs.field(default=None, converter=_options.timeout, kw_only=True)
    concurrency: int = attrs.field(default=100, converter=_check_concurrency, kw_only=True)
    claim_ttl: float = attrs.field(default=None, converter=_check_claim_ttl, kw_only=True)
    retry_delay: float = attrs.field(default=30.0, converter=_check_retry_delay, kw_only=True)
    max_attempts: int = attrs.field(default=5, converter=_check_max_attempts, kw_only=True)
    job_shutdown: float = attrs.field(default=5.0, converter=_options.job_shutdown, kw_only=True)
    wall_clock: Callable[[], datetime.datetime] | None = attrs.field(
        default=None, converter=_options.check_wall_clock, kw_only=True
    )

    _runs: Runs = attrs.field(init=False)
    _serving: bool = attrs.field(init=False, default=False)
    # Set by _poke(): something may have become due sooner than the deliverer knows.
    _poked: bool = attrs.field(init=False, default=False)
    _wake: trio.Event | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if self.claim_ttl is None:
            self.claim_ttl = 300.0 if self.timeout == math.inf else self.timeout + 30.0
        self._runs = Runs(
            name=self.name,
            fn=self._call_handler,
            is_async=_options.is_async_callable(self.handler),
            timeout=self.timeout,
            job_shutdown=self.job_shutdown,
            # Runs would tell a lease peer of runs under *its* fence: a reminder's fence
            # is another thing.
            peer=None,
            cancel_on_leadership_loss=False,
            keys=(self,),
        )

    def __repr__(self) -> str:
        return f"Reminders(name={self.name!r}, store={self.store!r})"

    @property
    def _store(self) -> ReminderStore:
        store = self.store
        assert isinstance(store, ReminderStore)
        return store

    def _now(self) -> datetime.datetime:
        now = (self.wall_clock or _utc_now)()
        if not isinstance(now, datetime.datetime) or now.utcoffset() is None:
            raise TypeError(f"wall_clock must return an aware datetime, got {now!r}")
        return now.astimezone(UTC)

    # -- setting --------------------------------------------------------------------------

    async def remind(self, key: str, *, at: datetime.datetime, payload: object = None) -> Reminder:
        """Set the reminder ``key`` to fire at ``at``, replacing any version of it (a
        failed one included) with a new one of a larger fence.

        Returns:
            The stored reminder, once the store has committed it.

        Raises:
            TypeError: ``key`` is not a str, ``at`` not a datetime, or ``payload`` not a
                JSON value.
            ValueError: ``key`` is empty or longer than 200 characters, or ``at`` is naive.
            RuntimeError: The store is not being served.
            Exception: Whatever the store raised (``TimeoutError``, a driver's error).
        """
        key = _key(key)
        if not isinstance(at, datetime.datetime):
            raise TypeError(f"at must be an aware datetime, got {at!r}")
        if at.utcoffset() is None:
            raise ValueError(f"at must be a timezone-aware datetime, got {at!r}")
        text = _payload(payload)
        return await self._store.set_reminder(
            self.name, key, fire_at=at.astimezone(UTC), payload=text
        )

    async def remind_after(
        self, key: str, delay: float | datetime.timedelta, *, payload: object = None
    ) -> Reminder:
        """Set the reminder ``key`` to fire ``delay`` seconds from now (the wall clock,
        read at once): :meth:`remind` with ``at=now + delay``.

        Raises:
            TypeError: ``delay`` is not a number or a timedelta, or as :meth:`remind`.
            ValueError: ``delay`` is negative or not finite, or as :meth:`remind`.
            RuntimeError: The store is not being served.
            Exception: Whatever the store raised.
        """
        if isinstance(delay, datetime.timedelta):
            seconds = delay.total_seconds()
        elif isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise TypeError(f"delay must be a number of seconds or a timedelta, got {delay!r}")
        else:
            seconds = float(delay)
        if not 0 <= seconds < math.inf:
            raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
        at = self._now() + datetime.timedelta(seconds=seconds)
        return await self.remind(key, at=at, payload=payload)

    async def cancel(self, key: str) -> bool:
        """Remove the reminder ``key``, pending or failed. A delivery under way goes on.

        Returns:
            Whether there was one.

        Raises:
            TypeError, ValueError: ``key`` is not a valid key.
            RuntimeError: The store is not being served.
            Exception: Whatever the store raised.
        """
        return await self._store.cancel_reminder(self.name, _key(key))

    async def get(self, key: str) -> Reminder | None:
        """The pending reminder ``key`` (a failed one is not), or ``None``.

        Raises:
            TypeError, ValueError: ``key`` is not a valid key.
            RuntimeError: The store is not being served.
            Exception: Whatever the store raised.
        """
        return await self._store.get_reminder(self.name, _key(key))

    async def pending(self, *, limit: int = 100) -> list[Reminder]:
        """Pending reminders, soonest due first, at most ``limit``.

        Raises:
            TypeError, ValueError: ``limit`` is not an int >= 1.
            RuntimeError: The store is not being served.
            Exception: Whatever the store raised.
        """
        return await self._store.pending_reminders(self.name, limit=_count("limit", limit))

    async def failed(self, *, limit: int = 100) -> list[Reminder]:
        """Reminders kept as failed (every attempt raised or timed out), at most
        ``limit``; :meth:`remind` sets one again, :meth:`cancel` removes it.

        Raises:
            TypeError, ValueError: ``limit`` is not an int >= 1.
            RuntimeError: The store is not being served.
            Exception: Whatever the store raised.
        """
        return await self._store.failed_reminders(self.name, limit=_count("limit", limit))

    # -- delivering -----------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """Whether :meth:`serve` is running."""
        return self._serving

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver due reminders until cancelled; start it with
        ``await nursery.start(reminders.serve)``.

        Overdue reminders (set while no process served them) are delivered at once,
        soonest first. When cancelled, running handlers get ``job_shutdown`` seconds;
        those cancelled then are given back to the store, to be delivered again.

        Raises:
            RuntimeError: This ``Reminders`` is already being served, or its store is not.
            TypeError: ``wall_clock`` returned something else than an aware datetime.
        """
        if self._serving:
            raise RuntimeError(f"{self!r} is already being served")
        store = self.store
        if not store.serving:
            raise RuntimeError(
                f"{self!r}: its store {store!r} is not being served; start it first, e.g. "
                "await nursery.start(store.serve)"
            )
        self._now()  # a broken wall clock fails here
        self._serving = True
        store.attach()  # the store stays open until the last delivery is recorded
        try:
            async with trio.open_nursery() as nursery:
                self._runs.open(nursery)
                try:
                    await nursery.start(self._store.listen_reminders, self.name, self._poke)
                    if self.peer is not None:
                        nursery.start_soon(self._watch_peer, self.peer)
                    nursery.start_soon(self._count_pending)
                    task_status.started()
                    del task_status
                    await self._deliver_forever()
                finally:
                    await self._runs.shutdown()
                    nursery.cancel_scope.cancel()
        finally:
            store.detach()
            _telemetry.record_reminders_pending(self.name, None)
            self._serving = False

    def _poke(self) -> None:
        self._poked = True
        if self._wake is not None:
            self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if poked (since the last look at the store)."""
        if self._poked or seconds <= 0:
            await trio.lowlevel.checkpoint()
            return
        self._wake = wake = trio.Event()
        try:
            with trio.move_on_after(seconds):
                await wake.wait()
        finally:
            self._wake = None

    async def _deliver_forever(self) -> None:
        store, peer = self._store, self.peer
        while True:
            if peer is not None and not peer.is_leader():
                self._poked = False
                await self._sleep(math.inf)  # until the peer changes
                continue
            room = min(self.concurrency - len(self._runs.running), _BATCH)
            if room <= 0:
                self._poked = False
                await self._sleep(math.inf)  # until a delivery ends
                continue
            self._poked = False
            try:
                batch = await store.claim_reminders(
                    self.name, now=self._now(), claim_ttl=self.claim_ttl, limit=room
                )
                for reminder in batch:
                    self._spawn(reminder)
                if len(batch) == room:
                    continue  # more may be due
                due = await store.next_reminder_due(self.name)
            except Exception as exc:
                _log.warning(
                    "reminders %r: the store failed (%r); trying again in %g s",
                    self.name,
                    exc,
                    _STORE_RETRY,
                    extra={"periodic_job": self.name},
                )
                await self._sleep(_STORE_RETRY)
                continue
            wait = math.inf if due is None else (due - self._now()).total_seconds()
            if wait <= 0 and not batch:
                wait = _RECHECK
            if store.reminder_poll is not None:
                wait = min(wait, store.reminder_poll)
            await self._sleep(wait)

    async def _watch_peer(self, peer: Peer) -> None:
        while True:
            await peer.wait_change()
            self._poke()

    async def _count_pending(self) -> None:
        while True:
            try:
                count = await self._store.count_reminders(self.name)
            except Exception:  # the deliverer reports store errors
                count = None
            if count is not None:
                _telemetry.record_reminders_pending(self.name, count)
            await trio.sleep(_COUNT_EVERY)

    def _spawn(self, reminder: Reminder) -> None:
        lateness = (self._now() - reminder.fire_at).total_seconds()
        token = _delivering.set(reminder)
        try:
            run = self._runs.spawn(
                trio.current_time() - lateness,
                reminder.fence,
                reminder.fire_at,
                recorder=functools.partial(self._record, reminder),
            )
        finally:
            _delivering.reset(token)
        assert run is not None  # spawned only while serving
        run.on_done = self._poke  # room for another delivery

    def _call_handler(self) -> object:
        result: object = self.handler(_delivering.get())
        return result

    async def _record(self, reminder: Reminder, finished: Finished) -> None:
        """Write a delivery's end: done, to be retried, failed, or given back."""
        store, name = self._store, self.name
        try:
            if finished.outcome is Outcome.OK:
                await store.complete_reminder(name, reminder.key, reminder.fence)
            elif finished.outcome is Outcome.CANCELLED:
                await store.release_reminder(name, reminder.key, reminder.fence, now=self._now())
            else:
                error = (
                    f"timed out after {self.timeout:g} s"
                    if finished.error is None
                    else f"{type(finished.error).__name__}: {finished.error}"
                )
                delay = (
                    None
                    if reminder.attempt >= self.max_attempts
                    else self.retry_delay * 2 ** (reminder.attempt - 1)
                )
                await store.retry_reminder(
                    name,
                    reminder.key,
                    reminder.fence,
                    now=self._now(),
                    delay=delay,
                    error=error[:_ERROR_TEXT],
                )
                if delay is None:
                    _log.error(
                        "reminders %r: reminder %r (fence %d) failed %d times; kept as failed",
                        name,
                        reminder.key,
                        reminder.fence,
                        reminder.attempt,
                        extra={"periodic_job": name},
                    )
        except Exception as exc:  # its claim expires, and it is delivered again
            _log.warning(
                "reminders %r: the store could not record the delivery of %r (fence %d): %r",
                name,
                reminder.key,
                reminder.fence,
                exc,
                extra={"periodic_job": name},
            )
