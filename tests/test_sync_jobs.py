"""Sync jobs run in a worker thread, which is never abandoned."""

from __future__ import annotations

import threading
from typing import Any

import trio
import trio.testing

import periodic
from periodic import Periodic
from periodic.events import (
    CancelReason,
    Event,
    Finished,
    Outcome,
    Skipped,
    Started,
    StoppedPrevious,
)


def of(kind: type[Any], events: list[Event]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


class Gate:
    """Lets a test hold a sync job's thread until it says so."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def wait(self) -> None:
        self.entered.set()
        # Bounded, so a failing test cannot hang forever on a stuck thread.
        assert self.release.wait(timeout=30), "the test never released the job"

    async def wait_entered(self) -> None:
        """Wait (in real time: threads do not run on virtual time) for the job's thread."""
        assert await trio.to_thread.run_sync(self.entered.wait, 30)


async def wait_for(events: list[Event], kind: type[Any], count: int = 1) -> None:
    # Poll in small virtual steps: the autojump clock would otherwise leap to the next
    # tick while a worker thread runs in real time.
    while len(of(kind, events)) < count:
        await trio.sleep(0.01)


async def test_a_sync_job_runs_in_a_worker_thread_with_current_run(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    main = threading.current_thread()

    def job() -> tuple[bool, int, str]:
        info = periodic.current_run()
        return threading.current_thread() is not main, info.run_id, info.job

    async with trio.open_nursery() as nursery:
        await nursery.start(Periodic(run=job, every=1000, initial_delay=1, name="sync").serve)
        await wait_for(events, Finished)
        nursery.cancel_scope.cancel()
    assert of(Finished, events)[0].result == (True, 1, "sync")
    assert of(Finished, events)[0].outcome is Outcome.OK


async def test_a_sync_job_that_raises_is_an_error(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    def job() -> None:
        raise OSError("disk full")

    async with trio.open_nursery() as nursery:
        await nursery.start(Periodic(run=job, every=1000, initial_delay=1).serve)
        await wait_for(events, Finished)
        nursery.cancel_scope.cancel()
    finished = of(Finished, events)[0]
    assert finished.outcome is Outcome.ERROR
    assert isinstance(finished.error, OSError)


async def test_a_sync_wrapper_returning_a_coroutine_is_awaited(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    async def real(x: int) -> int:
        await trio.sleep(0)
        return x * 2

    async with trio.open_nursery() as nursery:
        await nursery.start(Periodic(run=lambda: real(21), every=1000, initial_delay=1).serve)
        await wait_for(events, Finished)
        nursery.cancel_scope.cancel()
    finished = of(Finished, events)[0]
    assert (finished.outcome, finished.result) == (Outcome.OK, 42)


async def test_timeout_waits_for_the_thread_then_drops_its_result(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    gate = Gate()

    def job() -> str:
        gate.wait()
        return "too late"

    # Threads take real time, during which the autojump clock runs ahead: "ignore" keeps
    # the ticks that come meanwhile from starting more runs.
    p = Periodic(run=job, every=100, initial_delay=1, timeout=0.5, on_overlap="ignore")
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        await gate.wait_entered()
        await trio.sleep(3)  # well past the timeout: the thread is still blocked
        assert not of(Finished, events)
        assert p.statistics().running == 1
        gate.release.set()
        await wait_for(events, Finished)
        nursery.cancel_scope.cancel()
    [finished] = of(Finished, events)
    assert (finished.outcome, finished.result) == (Outcome.TIMEOUT, None)


async def test_stop_previous_never_overlaps_a_running_thread(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    gate = Gate()

    def job() -> None:
        if periodic.current_run().run_id == 1:
            gate.wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(Periodic(run=job, every=1, on_overlap="stop_previous").serve)
        await gate.wait_entered()
        await trio.sleep(4.5)  # the tick at 2.0 is waiting for run 1's thread
        assert [type(e) for e in events] == [Started, StoppedPrevious]
        gate.release.set()
        await wait_for(events, Started, 2)
        nursery.cancel_scope.cancel()
    kinds = [(type(e), getattr(e, "run_id", None)) for e in events if not isinstance(e, Skipped)]
    assert kinds[:4] == [(Started, 1), (StoppedPrevious, 1), (Finished, 1), (Started, 2)]
    first = of(Finished, events)[0]
    assert (first.outcome, first.cancel_reason) == (Outcome.CANCELLED, CancelReason.STOP_PREVIOUS)


async def test_shutdown_waits_for_the_thread(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    gate = Gate()
    serve_returned = False
    scope = trio.CancelScope()
    p = Periodic(run=gate.wait, every=1, job_shutdown=0, on_overlap="ignore")

    async def serve() -> None:
        nonlocal serve_returned
        with scope:
            await p.serve()
        serve_returned = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await gate.wait_entered()
        scope.cancel()
        await trio.sleep(10)
        assert not serve_returned
        assert not of(Finished, events)
        gate.release.set()
    assert serve_returned
    [finished] = of(Finished, events)
    assert (finished.outcome, finished.cancel_reason) == (Outcome.CANCELLED, CancelReason.SHUTDOWN)
