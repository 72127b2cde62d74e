"""LeasePeer against scripted backends: when the leader steps down, how failures are
reported and when they end ``serve``, what happens to a call it stopped waiting for, and
the bounds of its options.

Most tests run the backend's calls in Trio's own thread (``InlinePeer``) on a
``MockClock``, so a call takes exactly the virtual time the script says and every time
asserted is exact. The tests of abandoned calls use real worker threads.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

import periodic
from periodic.events import Event, LeadershipChanged
from periodic.peers import DatabaseConfigError, Fault, LeaseBackend, LeasePeer, SQLitePeer
from periodic.peers import _lease as lease_module
from periodic.peers.sqlite import _SQLiteBackend

T = TypeVar("T")


class Scripted(LeaseBackend):
    """A backend whose every call follows ``script``: one entry per acquire, each a
    ``(seconds it takes, outcome)``; the outcome is "lead", "follow", "hang" (never
    answers) or an exception to raise. The last entry repeats."""

    def __init__(self, *script: tuple[float, Any], faults: dict[type, Fault] | None = None):
        self.script = list(script)
        self.faults = faults or {}
        self.calls: list[tuple[float, str]] = []
        self.released: list[float] = []

    def next(self) -> tuple[float, Any]:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def acquire(self, name: str, node: str, ttl: float) -> tuple[str, int] | None:
        raise AssertionError("InlinePeer calls acquire_async")

    async def acquire_async(self, name: str, node: str, ttl: float) -> tuple[str, int] | None:
        took, outcome = self.next()
        self.calls.append((trio.current_time(), str(outcome)))
        if outcome == "hang":
            await trio.sleep_forever()
        await trio.sleep(took)
        if isinstance(outcome, BaseException):
            raise outcome
        return (node, 1) if outcome == "lead" else ("someone/else", 7)

    def release(self, name: str, node: str) -> None:
        self.released.append(trio.current_time())

    def fault(self, exc: Exception) -> Fault:
        return self.faults.get(type(exc), super().fault(exc))

    def close(self) -> None:
        return


class InlinePeer(LeasePeer):
    """Runs the backend's calls in Trio's thread, in virtual time."""

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        backend = self._backend
        assert isinstance(backend, Scripted)
        # _Attempt.run calls backend.acquire; take the asynchronous script instead.
        if getattr(fn, "__func__", None) is lease_module._Attempt.run:
            return await backend.acquire_async(self._name, self._claim, self._ttl)  # type: ignore[return-value]
        await trio.lowlevel.checkpoint()
        return fn(*args)


def at(events: list[tuple[float, Event]]) -> list[tuple[float, bool, str]]:
    return [(t, e.gained, e.reason) for t, e in events if isinstance(e, LeadershipChanged)]


@pytest.fixture
def timed_events() -> Any:
    seen: list[tuple[float, Event]] = []
    with periodic.subscribe(lambda e: seen.append((trio.current_time(), e))):
        yield seen


@pytest.fixture
def no_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every random wait at its longest, so that retry times are exact."""
    monkeypatch.setattr(lease_module.random, "uniform", lambda low, high: high)


# -- the leader's local end -------------------------------------------------------------------


async def test_the_leader_steps_down_exactly_at_sent_plus_ttl_minus_margin(
    autojump_clock: trio.testing.MockClock, timed_events: list[tuple[float, Event]]
) -> None:
    # Each answer takes 0.5 s: the lease counts from when the call was *sent*. The second
    # renewal never answers, and call_timeout is long enough for the margin to decide.
    backend = Scripted((0.5, "lead"), (0.5, "lead"), (0.0, "hang"))
    peer = InlinePeer(backend, name="e", ttl=10.0, margin=1.0, call_timeout=8.5)
    seen: list[tuple[float, bool, float]] = []

    async def watch() -> None:
        for t in (0.75, 5.25, 5.75, 9.5, 13.75, 14.0, 14.25):
            await trio.sleep_until(t)
            seen.append((t, peer.is_leader(), peer.lease_deadline()))

    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await watch()
        nursery.cancel_scope.cancel()

    assert [t for t, _ in backend.calls] == [0.0, 5.0, 10.0]
    assert seen == [
        (0.75, True, 9.0),  # sent at 0: 0 + 10 - 1
        (5.25, True, 9.0),  # the renewal sent at 5 has not answered yet
        (5.75, True, 14.0),  # it has: 5 + 10 - 1
        (9.5, True, 14.0),
        (13.75, True, 14.0),
        (14.0, False, -math.inf),  # the renewal sent at 10 hangs: done at 14, not later
        (14.25, False, -math.inf),
    ]
    assert at(timed_events)[:2] == [
        (0.5, True, "elected"),
        (14.0, False, "lease expired: no renewal in time"),
    ]


async def test_a_reply_after_the_local_lease_would_have_ended_claims_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = Scripted((9.5, "lead"), (0.0, "hang"))  # answers after sent + ttl - margin
    peer = InlinePeer(backend, name="e", ttl=10.0, margin=1.0, call_timeout=8.9)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await trio.sleep(8.95)  # the call is abandoned at 8.9
        assert not peer.is_leader()
        nursery.cancel_scope.cancel()


# -- failures: how they are reported, and which end serve -------------------------------------


class Denied(Exception):
    """Stands for "permission denied": someone must act."""


class Refused(Exception):
    """Stands for "connection refused": it may pass."""


async def test_a_lasting_error_is_logged_at_error_again_and_again_at_growing_intervals(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    no_jitter: None,
) -> None:
    caplog.set_level(logging.DEBUG, logger="periodic")
    backend = Scripted((0.0, Denied("permission denied for table periodic_peers")))
    backend.faults = {Denied: Fault.PERSISTENT}
    peer = InlinePeer(backend, name="e", ttl=10.0, node="n1")
    reports: list[tuple[float, str, str]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                reports.append((trio.current_time(), record.levelname, record.getMessage()))

    handler = Collect()
    logging.getLogger("periodic").addHandler(handler)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            await trio.sleep(160)
            nursery.cancel_scope.cancel()
    finally:
        logging.getLogger("periodic").removeHandler(handler)

    # Retries after 0.25, 0.5, 1, 2, 4, then every ttl / 2 = 5 s.
    assert [t for t, _ in backend.calls][:8] == [0.0, 0.25, 0.75, 1.75, 3.75, 7.75, 12.75, 17.75]
    # Reported at the first failure, then after >= 10, 20, 40, 80 s: growing intervals.
    assert [(t, level) for t, level, _ in reports] == [
        (0.0, "ERROR"),
        (12.75, "ERROR"),
        (32.75, "ERROR"),
        (72.75, "ERROR"),
        (152.75, "ERROR"),
    ]
    first, second = reports[0][2], reports[1][2]
    assert first == (
        "peer 'n1': election 'e' failed (this needs a fix: a grant, a table, a file's "
        "permissions; retrying), not leader until it succeeds again: "
        "Denied('permission denied for table periodic_peers')"
    )
    assert "; 7 attempts in 13 s" in second
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and "again" in r.message]
    assert len(debug) == len(backend.calls) - len(reports)  # the others, for debugging


async def test_a_passing_error_warns_and_recovery_is_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, no_jitter: None
) -> None:
    caplog.set_level(logging.INFO, logger="periodic")
    backend = Scripted(*[(0.0, Refused("connection refused"))] * 3, (0.0, "lead"))
    peer = InlinePeer(backend, name="e", ttl=10.0, node="n1")
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await trio.sleep(2)
        assert peer.is_leader()
        nursery.cancel_scope.cancel()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines[0] == (
        "WARNING",
        "peer 'n1': election 'e' failed (retrying), not leader until it succeeds again: "
        "Refused('connection refused')",
    )
    assert ("INFO", "peer 'n1': election 'e' reachable again after 3 failed attempt(s)") in lines
    assert [level for level, _ in lines].count("WARNING") == 1


async def test_a_fatal_error_before_any_success_ends_serve_at_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    backend = Scripted((0.0, ValueError('FATAL:  role "app" does not exist')))
    backend.faults = {ValueError: Fault.FATAL}
    peer = InlinePeer(backend, name="e", ttl=10.0, node="n1")
    with pytest.raises(DatabaseConfigError) as info:
        await peer.serve()  # by itself, not wrapped in an exception group
    assert str(info.value) == (
        "election 'e' cannot work as configured (ValueError): FATAL:  role \"app\" does not exist"
    )
    assert isinstance(info.value.__cause__, ValueError)
    assert trio.current_time() == 0.0
    assert len(backend.calls) == 1
    assert not peer.is_leader()
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "cannot work as configured, serve stops" in record.getMessage()
    with pytest.raises(DatabaseConfigError):  # and it can be served again, failing again
        await peer.serve()


async def test_a_config_error_of_the_backend_is_raised_as_it_is(
    autojump_clock: trio.testing.MockClock,
) -> None:
    error = DatabaseConfigError("table x has the wrong shape")
    peer = InlinePeer(Scripted((0.0, error)), name="e", ttl=10.0)
    with pytest.raises(DatabaseConfigError) as info:
        await peer.serve()
    assert info.value is error


async def test_a_fatal_error_after_a_success_is_retried_and_logged_at_error(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, no_jitter: None
) -> None:
    # The password was changed under a running service: it has worked, it may again.
    backend = Scripted((0.0, "lead"), (0.0, ValueError("password authentication failed")))
    backend.faults = {ValueError: Fault.FATAL}
    peer = InlinePeer(backend, name="e", ttl=10.0, node="n1")
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await trio.sleep(20)
        assert not peer.is_leader()
        nursery.cancel_scope.cancel()
    assert len(backend.calls) > 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors[0].startswith(
        "peer 'n1': election 'e' failed (this configuration worked before; retrying)"
    )


async def test_a_backend_whose_judgement_fails_counts_as_transient(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Confused(Scripted):
        def fault(self, exc: Exception) -> Fault:
            raise RuntimeError("no idea")

    peer = InlinePeer(Confused((0.0, Refused("x")), (0.0, "lead")), name="e", ttl=10.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await trio.sleep(1)
        assert peer.is_leader()
        nursery.cancel_scope.cancel()
    assert [r.levelname for r in caplog.records if r.levelno >= logging.WARNING] == ["WARNING"]


async def test_a_follower_says_who_leads_once_and_each_skip_is_debug(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="periodic")
    peer = InlinePeer(Scripted((0.0, "follow")), name="e", ttl=10.0, node="n2")
    job = periodic.Periodic(run=lambda: None, every=1, peer=peer, name="job")
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await nursery.start(job.serve)
        await trio.sleep(30.5)
        nursery.cancel_scope.cancel()
    at_info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert at_info == ["peer 'n2' follows 'someone' in election 'e'"]
    skips = [r for r in caplog.records if "not the leader" in r.getMessage()]
    assert len(skips) == 30
    assert {r.levelname for r in skips} == {"DEBUG"}


# -- calls the peer stopped waiting for -------------------------------------------------------


class SlowWin(LeaseBackend):
    """Wins every acquire, but only once ``go`` is set; records what it was asked."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.calls: list[str] = []
        self.done = threading.Event()

    def acquire(self, name: str, node: str, ttl: float) -> tuple[str, int] | None:
        self.calls.append("acquire")
        self.go.wait(10)
        return node, 1

    def release(self, name: str, node: str) -> None:
        self.calls.append("release")
        self.done.set()

    def close(self) -> None:
        self.calls.append("close")


async def test_a_lease_won_by_an_abandoned_call_is_released_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = SlowWin()
    peer = LeasePeer(backend, name="e", ttl=1.0, node="n1")  # call_timeout 0.25 s
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await trio.sleep(0.4)  # the first acquire was abandoned at 0.25 s
        assert backend.calls == ["acquire"]
        assert not peer.is_leader()
        backend.go.set()  # ... and its statement wins after all
        await trio.to_thread.run_sync(backend.done.wait, 5)
        assert backend.calls[:2] == ["acquire", "release"]
        nursery.cancel_scope.cancel()
    # (A retry that was waiting for the thread may be abandoned the same way: more lines.)
    released = [r for r in caplog.records if "won the lease of 'e' after all" in r.getMessage()]
    assert released
    assert {r.levelname for r in released} == {"WARNING"}


async def test_a_lease_won_by_a_call_abandoned_at_shutdown_is_released(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = SlowWin()
    peer = LeasePeer(backend, name="e", ttl=1.0, node="n1")
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()  # the first acquire is still running
    backend.go.set()
    await trio.to_thread.run_sync(backend.done.wait, 5)
    assert "release" in backend.calls


class Slow(LeaseBackend):
    """Another backend, every call of which takes ``delay`` seconds more."""

    def __init__(self, inner: LeaseBackend, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    def acquire(self, name: str, node: str, ttl: float) -> tuple[str, int] | None:
        time.sleep(self.delay)
        return self.inner.acquire(name, node, ttl)

    def release(self, name: str, node: str) -> None:
        self.inner.release(name, node)

    def set_call_timeout(self, seconds: float) -> None:
        self.inner.set_call_timeout(seconds)

    def close(self) -> None:
        self.inner.close()


async def test_a_slow_peer_does_not_keep_everyone_from_leading(tmp_path: Path) -> None:
    # Its calls take longer than call_timeout: each is abandoned, and each still wins
    # the row. Before, those wins kept the lease renewed and nobody led.
    path = str(tmp_path / "p.db")
    slow = LeasePeer(
        Slow(_SQLiteBackend(path, "periodic_peers", True), 0.4), name="e", ttl=1.0, node="slow"
    )
    fast = SQLitePeer(path, name="e", ttl=1.0, node="fast")
    async with trio.open_nursery() as nursery:
        await nursery.start(slow.serve)
        await trio.sleep(0.6)  # its first call has won the row in the database by now
        await nursery.start(fast.serve)
        with trio.fail_after(3):
            while not fast.is_leader():
                await trio.sleep(0.02)
        assert not slow.is_leader()
        nursery.cancel_scope.cancel()
    await trio.sleep(0.6)  # the slow peer's last, abandoned call ends within the test


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [1e-6, 1e-3, 0.999, 86400.5, 1e308, math.inf, math.nan])
def test_ttl_has_a_range(ttl: float) -> None:
    with pytest.raises(ValueError, match=r"ttl must be from 1 to 86400 seconds"):
        LeasePeer(Scripted((0.0, "lead")), name="e", ttl=ttl)


@pytest.mark.parametrize("ttl", [1, 1.0, 86400])
def test_the_ends_of_the_range_are_accepted(ttl: float) -> None:
    assert LeasePeer(Scripted((0.0, "lead")), name="e", ttl=ttl).ttl == ttl


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("name", "a\0b", ValueError),
        ("node", "n\0", ValueError),
        ("name", "x" * 1025, ValueError),
        ("name", "é" * 513, ValueError),  # 1026 bytes in UTF-8
        ("node", "bad \udcff bytes", ValueError),  # os.fsdecode of non-UTF-8
        ("name", "", ValueError),
        ("name", b"e", TypeError),
        ("node", 7, TypeError),
    ],
)
def test_names_must_fit_in_a_database_and_a_notification(
    option: str, value: object, error: type[Exception]
) -> None:
    options: dict[str, Any] = {"name": "e", "node": "n", option: value}
    with pytest.raises(error, match=f"{option} must be a non-empty str of valid UTF-8"):
        LeasePeer(Scripted((0.0, "lead")), **options)


def test_the_longest_names_are_accepted() -> None:
    peer = LeasePeer(Scripted((0.0, "lead")), name="x" * 1024, node="é" * 512)
    assert len(peer.name) == 1024
