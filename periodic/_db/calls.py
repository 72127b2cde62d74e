"""Database calls from Trio: in worker threads, bounded in time, and an opening that
retries what may heal.

A backend whose driver blocks (sqlite3, psycopg's sync API) runs each call in a worker
thread through :class:`ThreadCalls`; its ``serve`` opens the database with
:func:`open_retrying`. Neither knows any SQL.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from . import DatabaseConfigError, FailureStreak, Fault

T = TypeVar("T")

_log = logging.getLogger("periodic")


def seconds(option: str, value: Any) -> float:
    """Check an option that is a positive, finite number of seconds.

    Raises:
        TypeError: ``value`` is not a number.
        ValueError: It is not positive and finite.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{option} must be a number of seconds, got {value!r}")
    if not 0 < value < math.inf:
        raise ValueError(f"{option} must be a positive, finite number of seconds, got {value!r}")
    return float(value)


class Call:
    """What a call running in its worker thread may ask: how long it has left, and
    whether its caller has stopped waiting for it."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._abandoned = threading.Event()

    def left(self) -> float:
        """Seconds until the caller gives up (``time.monotonic`` runs in the thread)."""
        return max(0.0, self._deadline - time.monotonic())

    @property
    def abandoned(self) -> bool:
        """Whether the caller stopped waiting (timed out or cancelled).

        A call whose change must not happen unless its caller hears of it (a claim: a
        slot claimed by nobody who runs it) checks this just before it commits.
        """
        return self._abandoned.is_set()

    def abandon(self) -> None:
        self._abandoned.set()


class ThreadCalls:
    """Calls of one backend in worker threads: at most ``threads`` at once, each bounded
    by ``timeout`` seconds, accepted only while :attr:`open`.

    A call that times out, or whose caller is cancelled, is abandoned: Trio stops waiting,
    the thread runs on until the driver's own time-outs end it, and keeps its place in the
    limiter until then, so hung calls never pile up beyond ``threads``.

    Args:
        owner: The backend, named in errors by its ``repr``.
        timeout: Seconds a call may take, waiting for a thread included.
        threads: Calls that may run at once.
    """

    def __init__(self, owner: object, *, timeout: float, threads: int) -> None:
        self._owner = owner
        self._timeout = timeout
        self._limiter = trio.CapacityLimiter(threads)
        # For the few calls that must not queue behind abandoned ones.
        self._unlimited = trio.CapacityLimiter(math.inf)
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        #: Whether calls are accepted (set by the backend's ``serve``).
        self.open = False

    async def __call__(self, fn: Callable[[Call], T]) -> T:
        """``fn(call)`` in a worker thread.

        Raises:
            RuntimeError: The backend is not open (not being served).
            TimeoutError: The call took longer than ``timeout`` (it is abandoned).
            Exception: What ``fn`` raised.
        """
        return await self.run(fn, require_open=True)

    async def run(
        self, fn: Callable[[Call], T], *, require_open: bool = False, limited: bool = True
    ) -> T:
        """``fn(call)`` in a worker thread, open or not (for opening and closing); without
        a place in the limiter if not ``limited`` (a close that must not wait behind
        abandoned calls).

        Raises:
            RuntimeError: ``require_open`` and the backend is not open.
            TimeoutError: The call took longer than ``timeout`` (it is abandoned).
            Exception: What ``fn`` raised.
        """
        if require_open and not self.open:
            raise RuntimeError(
                f"{self._owner!r} is not being served; start it first, e.g. "
                "await nursery.start(store.serve)"
            )
        call = Call(time.monotonic() + self._timeout)
        if not self._in_flight:
            self._idle = trio.Event()
        self._in_flight += 1
        returned = False
        try:
            with trio.move_on_after(self._timeout):
                result = await trio.to_thread.run_sync(
                    fn,
                    call,
                    limiter=self._limiter if limited else self._unlimited,
                    abandon_on_cancel=True,
                )
                returned = True
                return result
            raise TimeoutError(
                f"{self._owner!r}: a database call took longer than call_timeout "
                f"({self._timeout:g} s)"
            )
        finally:
            if not returned:
                call.abandon()
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no call is in flight (calls that start meanwhile included)."""
        while self._in_flight:
            await self._idle.wait()

    async def stop(self, close: Callable[[Call], None]) -> None:
        """The end of a serve: let the calls under way end, and those that tasks cancelled
        at the same time are about to make (a run's record at shutdown), for at most
        ``timeout``; then refuse new ones, and ``close(call)`` in a worker thread (it
        must cope with abandoned calls still running).

        Failures to close are logged, not raised: a serve that ends is not an error.
        """
        with trio.move_on_after(self._timeout):
            await trio.lowlevel.checkpoint()
            await self.wait_idle()
        self.open = False
        try:
            await self.run(close, limited=False)
        except Exception as exc:
            _log.warning("%r: closing the database failed: %r", self._owner, exc)


async def open_retrying(
    owner: object,
    attempt: Callable[[], Awaitable[T]],
    fault: Callable[[BaseException], Fault],
    *,
    longest: float = 15.0,
) -> T:
    """``await attempt()`` until it succeeds; how a backend's ``serve`` opens its database.

    A fault that may heal (the server down, a refused connection) is logged at WARNING,
    one that needs someone to act (a missing table or grant) at ERROR, again at growing
    intervals while it lasts; both are retried with backoff (0.25 s doubling, at most
    ``longest``, with jitter). A configuration that can never work raises at once.

    Raises:
        DatabaseConfigError: ``attempt`` failed with a fault that ``fault`` calls fatal
            (its message names the cause, which is chained).
    """
    streak = FailureStreak()
    while True:
        try:
            result = await attempt()
        except Exception as exc:
            kind = _judge(fault, exc)
            if kind is Fault.FATAL:
                _log.error("%r cannot work as configured: %s", owner, exc)
                if isinstance(exc, DatabaseConfigError):
                    raise
                raise DatabaseConfigError(
                    f"{owner!r} cannot work as configured ({type(exc).__name__}): {exc}"
                ) from exc
            now = trio.current_time()
            if streak.failed(now, kind):
                so_far = (
                    ""
                    if streak.attempts == 1
                    else f"; {streak.attempts} attempts in {now - streak.began:.0f} s"
                )
                _log.log(
                    logging.WARNING if kind is Fault.TRANSIENT else logging.ERROR,
                    "%r could not open its database (%s%s): %r",
                    owner,
                    _FAULT_TEXT[kind],
                    so_far,
                    exc,
                    extra={"periodic_fault": kind.value, "periodic_attempts": streak.attempts},
                )
            else:
                _log.debug("%r could not open its database again: %r", owner, exc)
            await trio.sleep(retry_delay(streak.attempts, longest))
            continue
        if streak.attempts:
            _log.info("%r opened its database after %d failed attempt(s)", owner, streak.attempts)
        return result


def retry_delay(attempts: int, longest: float = 15.0) -> float:
    """Seconds to wait after ``attempts`` failures in a row before the next attempt:
    0.25 s doubling, at most ``longest``, with jitter (so that processes that failed
    together do not retry together)."""
    delay = min(longest, 0.25 * 2 ** min(max(attempts, 1) - 1, 16))
    return float(delay * random.uniform(0.5, 1.0))


_FAULT_TEXT = {
    Fault.TRANSIENT: "retrying",
    Fault.PERSISTENT: "this needs a fix: a table, a grant, a file's permissions; retrying",
    Fault.FATAL: "",
}


def _judge(fault: Callable[[BaseException], Fault], exc: Exception) -> Fault:
    try:
        kind = fault(exc)
    except Exception:  # a backend's judgement must not end the opening
        return Fault.TRANSIENT
    return kind if isinstance(kind, Fault) else Fault.TRANSIENT
