"""The life of a job's runs: spawn, begin, execute, finish, stop, shut down, and the
leadership watch.

A :class:`Runs` belongs to one :class:`~periodic.Periodic` for its whole life (run ids
and counters go on across serves); ``serve`` binds it to its nursery with :meth:`open`
and lets go with :meth:`shutdown`. It reports only through events.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._events import (
    CancelReason,
    Finished,
    Outcome,
    Retrying,
    Started,
    StoppedPrevious,
    emit,
)
from ._retry import Retry
from ._runinfo import RunInfo, _current

if TYPE_CHECKING:
    from .peers._base import Peer

_log = logging.getLogger("periodic")

# A run's end is written to its store within this many seconds (stores have their own
# call time-out; this is for one that has none).
_RECORD_TIMEOUT = 60.0
# Worker threads a job's sync runs may hold at once (Trio's own default is 40, shared).
_THREADS_PER_JOB = 40


@attrs.frozen(kw_only=True)
class Statistics:
    """A snapshot of a scheduler's counters; see :meth:`Periodic.statistics`.

    Attributes:
        runs_started: Runs started since the :class:`Periodic` was made.
        running: Runs going on now.
        finished: Finished runs by outcome (``"ok"``, ``"error"``, ``"timeout"``,
            ``"cancelled"``), every outcome present.
        skipped: Skipped ticks by reason (``"overlap"``, ``"guard"``, ``"guard_error"``,
            ``"missed"``, ``"not_leader"``, for a job with a store ``"claimed"`` and
            ``"store_error"``, and ``"paused"`` once the job skipped a tick paused), every
            reason present; ``missed`` counts ticks, not events.
        next_tick_at: When the next automatic tick is due (``trio.current_time()``), or
            ``None`` when not served, in manual mode, or in shifted mode while a run goes on.
    """

    runs_started: int
    running: int
    finished: Mapping[str, int]
    skipped: Mapping[str, int]
    next_tick_at: float | None


@attrs.define(eq=False)
class Run:
    """One run of a job, from its spawn to its :class:`Finished`.

    The handle the scheduler and :mod:`periodic.testing` share: ``run_id``, ``done`` (set
    once the run's ``Finished`` has been emitted) and ``finished`` (that event).
    """

    run_id: int
    scheduled_at: float
    fence: int | None
    fire_time: datetime.datetime | None
    scope: trio.CancelScope
    # Made when first asked for: most runs are never waited for.
    _done: trio.Event | None = None
    cancel_reason: CancelReason | None = None
    started: bool = False
    finished: Finished | None = None
    # The two deadlines of the run's scope: its timeout, and the end of the lease it
    # was started under (for a peer-guarded job that cancels on leadership loss).
    timeout_at: float = math.inf
    lease_at: float = math.inf
    # The peer told of this run (Peer.run_began), to be told when it ends.
    tracked_by: Peer | None = None
    # stop_previous reached the run before its task began: StoppedPrevious must still
    # come after its Started, so the run's task emits it.
    stop_pending: bool = False
    # Called once the run is over (shifted mode arms the next tick from it).
    on_done: Callable[[], object] | None = None
    # When the job's next tick is due: no retry starts at or after it.
    retry_until: float = math.inf
    # Writes the run's end to the job's store (awaited after its last Finished).
    recorder: Callable[[Finished], Awaitable[None]] | None = None
    # Waiting to try again: shutdown stops such a run at once.
    retry_pending: bool = False
    # Its Started, once emitted; and an event for whoever waits for it (made when asked).
    began: Started | None = None
    _start_waiter: trio.Event | None = None

    @property
    def done(self) -> trio.Event:
        """Set once the run's :class:`Finished` has been emitted."""
        done = self._done
        if done is None:
            done = self._done = trio.Event()
            if self.finished is not None:
                done.set()
        return done

    async def wait_started(self) -> Started | None:
        """The run's :class:`Started`, once emitted; ``None`` if it ended without one."""
        if self.began is None and self.finished is None:
            if self._start_waiter is None:
                self._start_waiter = trio.Event()
            await self._start_waiter.wait()
        return self.began

    def set_deadlines(
        self, *, timeout_at: float | None = None, lease_at: float | None = None
    ) -> None:
        if timeout_at is not None:
            self.timeout_at = timeout_at
        if lease_at is not None:
            self.lease_at = lease_at
        self.scope.deadline = min(self.timeout_at, self.lease_at)

    def cancel(self, reason: CancelReason) -> None:
        # A run whose timeout already fired stays a timeout.
        if self.cancel_reason is None and not self.scope.cancel_called:
            self.cancel_reason = reason
        self.scope.cancel()


@attrs.define(eq=False)
class Runs:
    """The runs of one job: what starts them, watches them and ends them.

    Args:
        name: The job's name, for events.
        fn: The job.
        is_async: Whether ``fn`` is awaited (else it runs in a worker thread).
        timeout: Seconds a run may take.
        job_shutdown: Seconds of grace at shutdown.
        peer: The job's peer, told of runs started under its leadership.
        cancel_on_leadership_loss: Whether runs end with the lease they started under.
        keys: What event filters may name to get this job's events.
        retry: The retry policy of failed tries, if any.
    """

    name: str
    fn: Callable[[], Any]
    is_async: bool
    timeout: float
    job_shutdown: float
    peer: Peer | None
    cancel_on_leadership_loss: bool
    keys: tuple[object, ...]
    retry: Retry | None = None
    # Called when a run finishes ok (an overdue_after job's alarm), if set.
    on_ok: Callable[[], object] | None = None

    running: dict[int, Run] = attrs.field(init=False, factory=dict)
    runs_started: int = attrs.field(init=False, default=0)
    # Counts by outcome, of the outcomes seen so far.
    finished: dict[Outcome, int] = attrs.field(init=False, factory=dict)
    _next_run_id: int = attrs.field(init=False, default=1)
    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)
    _thread_limiter: trio.CapacityLimiter | None = attrs.field(init=False, default=None)
    # The leadership watch's scope, while it runs.
    _watch_scope: trio.CancelScope | None = attrs.field(init=False, default=None)

    @property
    def accepting(self) -> bool:
        """Whether new runs can start: between :meth:`open` and :meth:`shutdown`."""
        return self._nursery is not None

    def open(self, nursery: trio.Nursery) -> None:
        """Start runs in ``nursery`` from now on."""
        self._nursery = nursery
        if self.peer is not None and self.cancel_on_leadership_loss:
            # Shielded like the runs, so leadership loss still stops runs during the
            # shutdown grace; shutdown() cancels it once every run is over.
            self._watch_scope = trio.CancelScope(shield=True)
            nursery.start_soon(self._watch_leadership, self.peer, self._watch_scope)

    def spawn(
        self,
        scheduled_at: float,
        fence: int | None,
        fire_time: datetime.datetime | None,
        retry_until: float = math.inf,
        recorder: Callable[[Finished], Awaitable[None]] | None = None,
    ) -> Run | None:
        """Start a run now (its task begins at Trio's next scheduling round); its retries
        must start before ``retry_until``.

        Returns:
            The run, or ``None`` when runs are not accepted (shutting down).
        """
        nursery = self._nursery
        if nursery is None:
            return None
        run = Run(self._next_run_id, scheduled_at, fence, fire_time, trio.CancelScope(shield=True))
        run.retry_until = retry_until
        run.recorder = recorder
        self._next_run_id += 1
        self.runs_started += 1
        self.running[run.run_id] = run
        # In the caller's context: the timer calls this in a copy of serve's.
        nursery.start_soon(self._run_task, run)
        return run

    def stop(self, runs: list[Run]) -> None:
        """Cancel ``runs`` for ``stop_previous``, announcing each that is not a timeout."""
        for run in runs:
            timed_out = run.scope.cancel_called  # its timeout fired: nothing to stop
            run.cancel(CancelReason.STOP_PREVIOUS)
            if timed_out:
                continue
            if run.started:
                emit(StoppedPrevious(job=self.name, run_id=run.run_id), self.keys)
            else:
                run.stop_pending = True

    async def shutdown(self) -> None:
        """Accept no more runs; give running ones ``job_shutdown`` seconds, cancel the
        rest, and wait for all of them (shielded: it finishes even when cancelled)."""
        self._nursery = None
        running = self.running
        for run in running.values():
            if run.retry_pending:  # no grace for a run waiting to try again
                run.cancel(CancelReason.SHUTDOWN)
        if running:
            with trio.CancelScope(shield=True) as grace:
                grace.deadline = trio.current_time() + self.job_shutdown
                for run in list(running.values()):
                    await run.done.wait()
            for run in list(running.values()):
                run.cancel(CancelReason.SHUTDOWN)
            with trio.CancelScope(shield=True):
                for run in list(running.values()):
                    await run.done.wait()
        if self._watch_scope is not None:
            self._watch_scope.cancel()
            self._watch_scope = None

    # -- a run's task ---------------------------------------------------------------------

    async def _run_task(self, run: Run) -> None:
        started_at = trio.current_time()
        attempt = 1
        try:
            try:
                self._begin(run, started_at)
            except Exception as exc:  # a peer's lease_deadline() that raised, say
                await self._end(run, Outcome.ERROR, started_at, None, exc, attempt)
                return
            # The job runs in the run's scope, which also holds the waits between tries,
            # so that stopping the run stops a waiting retry at once. (One coroutine
            # layer: this is the hot path.)
            scope = run.scope
            result: Any = None
            error: BaseException | None = None
            try:
                with scope:
                    while True:
                        try:
                            if self.is_async:
                                result = await self.fn()
                            else:
                                result = await trio.to_thread.run_sync(
                                    self._call_sync, limiter=self._limiter()
                                )
                                if isinstance(result, _Coroutine):
                                    # A sync wrapper around an async job (run=lambda: job(x)).
                                    result = await result.coroutine
                        except Exception as exc:
                            error = exc
                        if error is None or self.retry is None:
                            break
                        wait = self._retry_wait(run, attempt)
                        if wait is None:
                            break
                        self._finish_try(run, attempt, started_at, error)
                        run.retry_pending = True
                        run.set_deadlines(timeout_at=math.inf)  # the timeout is per try
                        await trio.sleep(wait)
                        run.retry_pending = False
                        attempt += 1
                        started_at = trio.current_time()
                        error = None
                        self._begin_try(run, attempt, started_at)
            except Exception as exc:
                # What is left of an exception group once the scope removed its own
                # Cancelled (a job's nursery cancelled by timeout or stop_previous).
                error = exc
        except BaseException as exc:
            # KeyboardInterrupt, or a test's failure raised from an event handler:
            # report the run (once), then let it through.
            if run.finished is None:
                self._finish(run, Outcome.CANCELLED, started_at, error=exc, attempt=attempt)
            raise
        if scope.cancel_called:
            if run.cancel_reason is None and run.lease_at < run.timeout_at:
                run.cancel_reason = CancelReason.LEADERSHIP_LOST  # the lease ran out
            outcome = Outcome.CANCELLED if run.cancel_reason is not None else Outcome.TIMEOUT
            result = None
        elif error is not None:
            outcome, result = Outcome.ERROR, None
        else:
            outcome = Outcome.OK
        await self._end(run, outcome, started_at, result, error, attempt)

    async def _end(
        self,
        run: Run,
        outcome: Outcome,
        started_at: float,
        result: Any,
        error: BaseException | None,
        attempt: int,
    ) -> None:
        """The run is over: its Finished, then its record (if it keeps one), then done."""
        recorder = run.recorder
        if recorder is None:
            self._finish(run, outcome, started_at, result=result, error=error, attempt=attempt)
            return
        try:
            self._finish(
                run, outcome, started_at, result=result, error=error, attempt=attempt, done=False
            )
            assert run.finished is not None
            # Even at shutdown: a run's end is written (within the store's own call
            # time-out; this bound is for a store that has none).
            with trio.CancelScope(shield=True, deadline=trio.current_time() + _RECORD_TIMEOUT):
                await recorder(run.finished)
        finally:
            self._done(run)

    def _retry_wait(self, run: Run, attempt: int) -> float | None:
        """The wait before the next try, or ``None`` when try ``attempt`` was the last."""
        retry = self.retry
        if retry is None or attempt >= retry.attempts or self._nursery is None:
            return None  # no policy, no tries left, or shutting down
        wait = retry.wait_after(attempt)
        if trio.current_time() + wait >= run.retry_until:
            return None  # a retry never crosses into the next tick
        return wait

    def _begin_try(self, run: Run, attempt: int, started_at: float) -> None:
        _current.set(attrs.evolve(_current.get(), attempt=attempt, started_at=started_at))
        emit(
            Retrying(job=self.name, run_id=run.run_id, attempt=attempt, started_at=started_at),
            self.keys,
        )
        if self.timeout != math.inf:
            run.set_deadlines(timeout_at=started_at + self.timeout)

    def _finish_try(self, run: Run, attempt: int, started_at: float, error: BaseException) -> None:
        """A try failed and another follows: its Finished, and nothing else ends."""
        emit(
            Finished(
                job=self.name,
                run_id=run.run_id,
                outcome=Outcome.ERROR,
                duration=trio.current_time() - started_at,
                error=error,
                attempt=attempt,
                will_retry=True,
            ),
            self.keys,
        )

    def _begin(self, run: Run, started_at: float) -> None:
        _current.set(
            RunInfo(
                job=self.name,
                run_id=run.run_id,
                scheduled_at=run.scheduled_at,
                started_at=started_at,
                fence=run.fence,
                fire_time=run.fire_time,
            )
        )
        run.started = True
        run.began = started = Started(
            job=self.name,
            run_id=run.run_id,
            scheduled_at=run.scheduled_at,
            started_at=started_at,
            fence=run.fence,
            fire_time=run.fire_time,
        )
        emit(started, self.keys)
        if run._start_waiter is not None:
            run._start_waiter.set()
        peer = self.peer
        if run.fence is not None and peer is not None:
            # A lease peer hands its lease over only once such runs are over.
            run.tracked_by = peer
            peer.run_began(run.fence)
        if run.stop_pending:
            emit(StoppedPrevious(job=self.name, run_id=run.run_id), self.keys)
        lease_at = (
            peer.lease_deadline()
            if peer is not None and self.cancel_on_leadership_loss and run.fence is not None
            else math.inf
        )
        timeout_at = started_at + self.timeout
        if timeout_at != math.inf or lease_at != math.inf:  # (a new scope has none)
            run.set_deadlines(timeout_at=timeout_at, lease_at=lease_at)

    def _limiter(self) -> trio.CapacityLimiter:
        # A limiter of the job's own: its stuck threads (never abandoned) cannot starve
        # the rest of the program of Trio's default worker threads.
        limiter = self._thread_limiter
        if limiter is None:
            limiter = self._thread_limiter = trio.CapacityLimiter(_THREADS_PER_JOB)
        return limiter

    def _call_sync(self) -> Any:
        result = self.fn()
        if inspect.iscoroutine(result):
            # Trio refuses a coroutine from a thread: hand it back wrapped, to be awaited.
            return _Coroutine(result)
        return result

    def _finish(
        self,
        run: Run,
        outcome: Outcome,
        started_at: float,
        *,
        result: Any = None,
        error: BaseException | None = None,
        attempt: int = 1,
        done: bool = True,
    ) -> None:
        del self.running[run.run_id]
        self.finished[outcome] = self.finished.get(outcome, 0) + 1
        peer = run.tracked_by
        if peer is not None:
            run.tracked_by = None
            assert run.fence is not None
            try:
                peer.run_ended(run.fence)
            except Exception:
                _log.exception("peer %r raised in run_ended(); the run ends anyway", peer)
        run.finished = event = Finished(
            job=self.name,
            run_id=run.run_id,
            outcome=outcome,
            duration=trio.current_time() - started_at,
            result=result,
            error=error,
            cancel_reason=run.cancel_reason if outcome is Outcome.CANCELLED else None,
            attempt=attempt,
        )
        try:
            emit(event, self.keys)
            if outcome is Outcome.OK and self.on_ok is not None:
                self.on_ok()
        finally:
            if done:
                self._done(run)

    @staticmethod
    def _done(run: Run) -> None:
        if run._done is not None:
            run._done.set()
        if run._start_waiter is not None:  # ended without a Started: stop waiting
            run._start_waiter.set()
        if run.on_done is not None:
            run.on_done()

    # -- leadership -----------------------------------------------------------------------

    async def _watch_leadership(self, peer: Peer, scope: trio.CancelScope) -> None:
        """Cancel the runs started under a fence the peer no longer holds, and move the
        deadline of the others with each renewal of the lease."""
        with scope:
            while True:
                await peer.wait_lease_change()
                # Ask the peer only about runs that hold a fence: once those are over
                # (a lease peer drains them before it stops), a peer that is stopping
                # is not asked about a leadership nobody depends on.
                fenced = [r for r in self.running.values() if r.fence is not None]
                if not fenced or scope.cancel_called:
                    continue
                current = peer.fence if peer.is_leader() else None
                for run in fenced:
                    if run.fence != current:
                        run.cancel(CancelReason.LEADERSHIP_LOST)
                    elif run.started:
                        run.set_deadlines(lease_at=peer.lease_deadline())


@attrs.frozen
class _Coroutine:
    coroutine: Coroutine[Any, Any, Any]
