"""Reminders in virtual time on a MemoryStore, with a wall clock that moves with Trio's:
every delivery is asserted at its exact time."""

from __future__ import annotations

import datetime
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio
import trio.testing

import periodic
from periodic.events import Event, Finished, Started
from periodic.peers import LocalPeer
from periodic.reminders import Reminder, Reminders
from periodic.stores import MemoryStore

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


# Trio's clock when the test began (a MockClock does not start at 0).
_start = 0.0


def now() -> float:
    """Seconds since the test began, on Trio's clock."""
    return trio.current_time() - _start


def wall() -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=now())


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


class Recorder:
    """A handler that records each delivery (time, key, fence, attempt), and raises for
    the keys in ``failing``."""

    def __init__(self, failing: set[str] | None = None, sleep: float = 0.0) -> None:
        self.seen: list[tuple[float, str, int, int]] = []
        self.failing = failing or set()
        self.sleep = sleep

    async def __call__(self, r: Reminder) -> None:
        self.seen.append((now(), r.key, r.fence, r.attempt))
        if self.sleep:
            await trio.sleep(self.sleep)
        if r.key in self.failing:
            raise ValueError(f"failing {r.key}")


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    made = MemoryStore()
    async with trio.open_nursery() as nursery:
        await nursery.start(made.serve)
        yield made
        nursery.cancel_scope.cancel()


def make(store: MemoryStore, handler: Callable[[Reminder], Any], **options: Any) -> Reminders:
    """The test's Reminders; its clocks start now."""
    global _start
    _start = trio.current_time()
    return Reminders(store, handler, name="app", wall_clock=wall, **options)


async def test_delivered_at_fire_at_and_removed(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, events: list[Event]
) -> None:
    handler = Recorder()
    reminders = make(store, handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(reminders.serve)
        a = await reminders.remind("a", at=at(10), payload={"invoice": 42})
        b = await reminders.remind_after("b", 2.5)
        c = await reminders.remind_after("c", datetime.timedelta(seconds=4))
        assert b.fire_at == at(2.5)
        assert [r.key for r in await reminders.pending()] == ["b", "c", "a"]
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert handler.seen == [
        (2.5, "b", b.fence, 1),
        (4.0, "c", c.fence, 1),
        (10.0, "a", a.fence, 1),
    ]
    assert await reminders.pending() == []
    started = [e for e in events if isinstance(e, Started)]
    assert [(e.job, e.run_id, e.fence, e.fire_time) for e in started] == [
        ("app", 1, b.fence, at(2.5)),
        ("app", 2, c.fence, at(4)),
        ("app", 3, a.fence, at(10)),
    ]
    assert [e.scheduled_at - _start for e in started] == [2.5, 4.0, 10.0]
    finished = [e for e in events if isinstance(e, Finished)]
    assert [(e.run_id, e.outcome.value) for e in finished] == [(1, "ok"), (2, "ok"), (3, "ok")]


async def test_replace_and_cancel(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    handler = Recorder()
    reminders = make(store, handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(reminders.serve)
        first = await reminders.remind("k", at=at(5), payload=1)
        await reminders.remind("gone", at=at(3))
        await trio.sleep(1)
        second = await reminders.remind("k", at=at(8), payload=2)  # later: replaces
        third = await reminders.remind("k", at=at(7), payload=3)  # sooner again
        assert first.fence < second.fence < third.fence
        assert await reminders.get("k") == third
        assert await reminders.cancel("gone") is True
        assert await reminders.cancel("gone") is False
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert handler.seen == [(7.0, "k", third.fence, 1)]


async def test_a_reminder_set_sooner_wakes_the_deliverer(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    handler = Recorder()
    reminders = make(store, handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(reminders.serve)
        await reminders.remind("far", at=at(100))
        await trio.sleep(1)
        await reminders.remind("near", at=at(1.25))
        await reminders.remind("now", at=at(0))  # overdue: at once
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    assert [(t, k) for t, k, _, _ in handler.seen] == [
        (1.0, "now"),
        (1.25, "near"),
        (100.0, "far"),
    ]


async def test_failed_handler_retried_with_doubling_delay_then_kept_as_failed(
    autojump_clock: trio.testing.MockClock,
    store: MemoryStore,
) -> None:
    handler = Recorder(failing={"bad"})
    reminders = make(store, handler, retry_delay=10, max_attempts=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(reminders.serve)
        bad = await reminders.remind("bad", at=at(1), payload=[1])
        await trio.sleep(1000)
        nursery.cancel_scope.cancel()
    assert handler.seen == [
        (1.0, "bad", bad.fence, 1),
        (11.0, "bad", bad.fence, 2),
        (31.0, "bad", bad.fence, 3),
        (71.0, "bad", bad.fence, 4),
    ]
    assert await reminders.get("bad") is None
    assert await reminders.failed() == [
        Reminder(
            key="bad",
            fire_at=at(1),
            payload=[1],
            fence=bad.fence,
            attempt=4,
            error="ValueError: failing bad",
        )
    ]
    assert await reminders.cancel("bad") is True
    assert await reminders.failed() == []


async def test_a_timeout_is_a_failed_delivery(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    handler = Recorder(sleep=10)
    reminders = make(store, handler, timeout=3, retry_delay=1, max_attempts=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(reminders.serve)
        await reminders.remind("slow", at=at(1))
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert [(t, a) for t, _, _, a in handler.seen] == [(1.0, 1), (5.0, 2)]
    [failed] = await reminders.failed()
    assert failed.error == "timed out after 3 s"
    assert reminders.claim_ttl == 33.0


async def test_replaced_while_in_flight_the_newer_version_stays(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    handler = Recorder(sleep=5)
    reminders = make(store, handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(reminders.serve)
        old = await reminders.remind("k", at=at(1), payload="old")
        await trio.sleep(2)  # its delivery runs until 6
        new = await reminders.remind("k", at=at(10), payload="new")
        await trio.sleep(5)
        assert await reminders.get("k") == new  # the old delivery's end left it
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert handler.seen == [(1.0, "k", old.fence, 1), (10.0, "k", new.fence, 1)]


async def test_restart_delivers_what_fell_due_while_down_once(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    handler = Recorder()
    reminders = make(store, handler)
    made = [await reminders.remind(k, at=at(t)) for k, t in [("b", 20), ("a", 10), ("c", 90)]]
    await trio.sleep(50)  # nobody serves: a and b fall due
    async with trio.open_nursery() as nursery:
        await nursery.start(reminders.serve)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    # Overdue: both at once (their handlers run concurrently, so in no set order).
    assert sorted(handler.seen, key=lambda seen: seen[1]) == [
        (50.0, "a", made[1].fence, 1),
        (50.0, "b", made[0].fence, 1),
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(reminders.serve)
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert len(handler.seen) == 3  # a and b are not delivered again
    assert handler.seen[-1][:2] == (90.0, "c")


async def test_a_delivery_stopped_by_shutdown_is_given_back(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    handler = Recorder(sleep=100)
    reminders = make(store, handler, job_shutdown=1)
    made = await reminders.remind("k", at=at(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(reminders.serve)
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert now() == 3.0  # a second of grace
    assert await reminders.get("k") == made  # attempt 1 again: the stopped one is not counted
    async with trio.open_nursery() as nursery:
        await nursery.start(reminders.serve)
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert [(t, a) for t, _, _, a in handler.seen] == [(1.0, 1), (3.0, 1)]


async def test_concurrency_bounds_the_handlers_running(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    handler = Recorder(sleep=1)
    reminders = make(store, handler, concurrency=2)
    async with trio.open_nursery() as nursery:
        for i in range(5):
            await reminders.remind(f"k{i}", at=at(0))
        await nursery.start(reminders.serve)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert [t for t, _, _, _ in handler.seen] == [0.0, 0.0, 1.0, 1.0, 2.0]


async def test_only_the_leader_delivers(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    handler = Recorder()
    peer = LocalPeer(leader=False)
    reminders = make(store, handler, peer=peer)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await nursery.start(reminders.serve)
        await reminders.remind("k", at=at(1))
        await trio.sleep(5)
        assert handler.seen == []
        peer.set_leader(True)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert [(t, k) for t, k, _, _ in handler.seen] == [(5.0, "k")]


async def test_sync_handler_and_current_run(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    seen: list[tuple[str, int | None, datetime.datetime | None, object]] = []

    def handler(r: Reminder) -> None:  # in a worker thread
        run = periodic.current_run()
        seen.append((run.job, run.fence, run.fire_time, r.payload))

    reminders = make(store, handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(reminders.serve)
        made = await reminders.remind("k", at=at(2), payload={"a": [1, 2.5, None, True]})
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert seen == [("app", made.fence, at(2), {"a": [1, 2.5, None, True]})]


async def test_several_reminders_share_a_store_by_name(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    one, two = Recorder(), Recorder()
    first = make(store, one)
    second = Reminders(store, two, name="other", wall_clock=wall)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.serve)
        await nursery.start(second.serve)
        await first.remind("k", at=at(1))
        await second.remind("k", at=at(2))
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert [(t, k) for t, k, _, _ in one.seen] == [(1.0, "k")]
    assert [(t, k) for t, k, _, _ in two.seen] == [(2.0, "k")]


async def test_serve_refuses_an_unserved_store_and_a_second_serve(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    reminders = Reminders(store, Recorder())
    with pytest.raises(RuntimeError, match="not being served"):
        await reminders.serve()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)
        await nursery.start(reminders.serve)
        with pytest.raises(RuntimeError, match="already being served"):
            await reminders.serve()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"name": ""}, ValueError, "name"),
        ({"name": 3}, TypeError, "name"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"concurrency": 0}, ValueError, "concurrency"),
        ({"concurrency": 1.5}, TypeError, "concurrency"),
        ({"claim_ttl": 0}, ValueError, "claim_ttl"),
        ({"claim_ttl": "1"}, TypeError, "claim_ttl"),
        ({"retry_delay": math.inf}, ValueError, "retry_delay"),
        ({"max_attempts": 0}, ValueError, "max_attempts"),
        ({"max_attempts": True}, TypeError, "max_attempts"),
        ({"peer": object()}, TypeError, "peer"),
        ({"wall_clock": 3}, TypeError, "wall_clock"),
        ({"job_shutdown": -1}, ValueError, "job_shutdown"),
    ],
)
def test_bad_options(options: dict[str, Any], error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        Reminders(MemoryStore(), Recorder(), **options)


def test_bad_store_and_handler() -> None:
    with pytest.raises(TypeError, match="store"):
        Reminders(object(), Recorder())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="handler"):
        Reminders(MemoryStore(), 3)  # type: ignore[arg-type]


async def test_bad_input_to_remind(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    reminders = make(store, Recorder())
    with pytest.raises(ValueError, match="key"):
        await reminders.remind("", at=at(1))
    with pytest.raises(ValueError, match="key"):
        await reminders.remind("k" * 201, at=at(1))
    await reminders.remind("k" * 200, at=at(1))
    with pytest.raises(TypeError, match="key"):
        await reminders.remind(3, at=at(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at"):
        await reminders.remind("k", at=datetime.datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="at"):
        await reminders.remind("k", at="2026-01-01")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="payload"):
        await reminders.remind("k", at=at(1), payload=object())
    with pytest.raises(TypeError, match="payload"):
        await reminders.remind("k", at=at(1), payload=math.nan)
    with pytest.raises(ValueError, match="delay"):
        await reminders.remind_after("k", -1)
    with pytest.raises(TypeError, match="delay"):
        await reminders.remind_after("k", "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        await reminders.pending(limit=0)
    assert [r.key for r in await reminders.pending()] == ["k" * 200]
