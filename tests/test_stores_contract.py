"""The contract of every store, run against MemoryStore, SQLiteStore and PostgresStore.

What :class:`periodic.stores.Store` promises, method by method, with MemoryStore as the
reference: a durable store must behave exactly as it does. Then a job served with each
store in virtual time, across a restart; then racing claims from several handles on one
database. PostgreSQL runs when the test server is reachable (required when
``PERIODIC_REQUIRE_POSTGRES=1``), on two tables of a prefix no other test uses.

The durable stores call their database in worker threads. Under
``MockClock(autojump_threshold=0)`` the clock would jump while such a call is under way
(Trio sees every task blocked) and fire time-outs that no real time justifies:
:class:`Frozen` holds the clock still for the length of each call, so a store call
takes no virtual time at all, whatever the backend, and the expectations stay exact.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from pg_support import drop_table, require_postgres, unique_table

from periodic import Periodic
from periodic.events import Event, Skipped, Started
from periodic.stores import JobPaused, JobState, MemoryStore, RunRecord, Store
from periodic.stores.sqlite import SQLiteStore
from periodic.testing import serve_for

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def real_now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def unstamped(state: JobState | None) -> JobState:
    """``state`` without its ``registered_at``, a time of the store's own clock."""
    assert state is not None
    assert state.registered_at is not None
    return attrs.evolve(state, registered_at=None)


# -- the backends -----------------------------------------------------------------------------

KINDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
DURABLE = KINDS[1:]


@attrs.define
class Backend:
    """One backend, on this test's own database."""

    kind: str
    #: Another handle on the test's database, with these options.
    make: Callable[..., Store]
    #: The SQLite file, or the PostgreSQL DSN and the prefix of the tables.
    target: str = ""
    prefix: str = "periodic_"

    @property
    def durable(self) -> bool:
        return self.kind != "memory"


def make_backend(kind: str, tmp_path: Path, cleanup: list[Callable[[], object]]) -> Backend:
    if kind == "memory":
        made: list[MemoryStore] = []

        def memory(**options: Any) -> Store:
            if not made:
                made.append(MemoryStore(**options))
            return made[0]

        return Backend(kind, memory)
    if kind == "sqlite":
        path = str(tmp_path / "jobs.db")
        return Backend(kind, lambda **options: SQLiteStore(path, **options), path)
    from periodic.stores.postgres import PostgresStore

    dsn = require_postgres()
    prefix = unique_table("periodic_t") + "_"
    for table in ("jobs", "runs"):
        cleanup.append(lambda table=table: drop_table(dsn, prefix + table))
    return Backend(
        kind,
        lambda **options: PostgresStore(dsn, table_prefix=prefix, **options),
        dsn,
        prefix,
    )


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    cleanup: list[Callable[[], object]] = []
    try:
        yield make_backend(request.param, tmp_path, cleanup)
    finally:
        for step in cleanup:
            with contextlib.suppress(Exception):  # a leftover table is harmless
                step()


class _Hold:
    """Keeps a MockClock from jumping while a store call runs (nested calls counted)."""

    def __init__(self) -> None:
        self._depth = 0
        self._saved = 0.0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        clock = trio.lowlevel.current_clock()
        if not isinstance(clock, trio.testing.MockClock):
            yield
            return
        if not self._depth:
            self._saved = clock.autojump_threshold
            clock.autojump_threshold = math.inf
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth:
                clock.autojump_threshold = self._saved


hold = _Hold()


@contextlib.asynccontextmanager
async def serving(*stores: Store) -> AsyncIterator[None]:
    """Serve the stores (those not served already) for the block; the clock held still
    while they open and close."""
    closing = contextlib.ExitStack()
    try:
        async with trio.open_nursery() as nursery:
            with hold():
                for store in stores:
                    if not store.serving:
                        await nursery.start(store.serve)
            try:
                yield
            finally:
                closing.enter_context(hold())  # until the nursery is done
                nursery.cancel_scope.cancel()
    finally:
        closing.close()


class Frozen(Store):
    """A store whose every call takes no virtual time (see the module's docstring)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return repr(self.inner)

    @property
    def serving(self) -> bool:
        return self.inner.serving

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        raise NotImplementedError("serve the inner store")

    async def register(self, name: str, **options: Any) -> JobState:
        with hold():
            return await self.inner.register(name, **options)

    async def claim(self, name: str, **options: Any) -> int | None:
        with hold():
            return await self.inner.claim(name, **options)

    async def finish(self, name: str, run: int, **options: Any) -> None:
        with hold():
            await self.inner.finish(name, run, **options)

    async def jobs(self) -> list[JobState]:
        with hold():
            return await self.inner.jobs()

    async def job(self, name: str) -> JobState | None:
        with hold():
            return await self.inner.job(name)

    async def runs(self, name: str, *, limit: int = 20) -> list[RunRecord]:
        with hold():
            return await self.inner.runs(name, limit=limit)

    async def pause(self, name: str, *, note: str | None = None) -> None:
        with hold():
            await self.inner.pause(name, note=note)

    async def resume(self, name: str) -> None:
        with hold():
            await self.inner.resume(name)

    async def trigger(self, name: str) -> None:
        with hold():
            await self.inner.trigger(name)

    def watch_triggers(self, name: str, notify: Callable[[], object]) -> Callable[[], None]:
        return self.inner.watch_triggers(name, notify)


@pytest.fixture(params=DURABLE)
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    cleanup: list[Callable[[], object]] = []
    try:
        yield make_backend(request.param, tmp_path, cleanup)
    finally:
        for step in cleanup:
            with contextlib.suppress(Exception):
                step()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    made = backend.make()
    async with serving(made):
        yield made


def claim(
    store: Store, slot: float, *, node: str = "a", fence: int | None = None, name: str = "j"
) -> Any:
    return store.claim(name, slot=at(slot), node=node, fence=fence, started_at=at(slot + 1))


def finish(store: Store, run: int, outcome: str, *, at_: float = 0.0, name: str = "j") -> Any:
    error = None if outcome == "ok" else f"{outcome}!"
    return store.finish(
        name, run, outcome=outcome, finished_at=at(at_), duration=0.25, error=error
    )


# -- register, job, jobs ----------------------------------------------------------------------


async def test_register_makes_a_record_once_and_keeps_its_anchor(store: Store) -> None:
    before = real_now()
    first = await store.register("rollup", schedule="every 10s", anchor=at(10))
    assert unstamped(first) == JobState(name="rollup", schedule="every 10s", anchor=at(10))
    # The store's clock (PostgreSQL's own), on this host.
    assert first.registered_at is not None
    slack = datetime.timedelta(seconds=2)
    assert before - slack <= first.registered_at <= real_now() + slack
    assert await store.register("rollup", schedule="every 10s", anchor=at(99)) == first
    changed = await store.register("rollup", schedule="every 20s", anchor=at(99))
    assert changed == attrs.evolve(first, schedule="every 20s")
    # overdue_after is stored at every registration; registered_at never moves.
    later = await store.register("rollup", schedule="every 20s", anchor=at(99), overdue_after=90)
    assert later == attrs.evolve(changed, overdue_after=90.0)
    assert await store.register("rollup", schedule="every 20s", anchor=at(0)) == changed
    assert await store.job("rollup") == changed
    assert await store.jobs() == [changed]
    assert await store.job("other") is None


@pytest.mark.parametrize(
    ("overdue_after", "error"),
    [(0, ValueError), (-1.0, ValueError), (math.inf, ValueError), ("60", TypeError)],
)
async def test_a_bad_overdue_after_is_refused(
    store: Store, overdue_after: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="overdue_after must be a"):
        await store.register("j", schedule="every 1s", anchor=at(0), overdue_after=overdue_after)
    assert await store.job("j") is None


async def test_register_keeps_what_the_job_has_done(store: Store) -> None:
    await store.register("j", schedule="every 1s", anchor=at(0))
    key = await claim(store, 5, fence=3)
    await finish(store, key, "error", at_=7)
    again = await store.register("j", schedule="every 2s", anchor=at(50))
    assert unstamped(again) == JobState(
        name="j",
        schedule="every 2s",
        anchor=at(0),
        last_slot=at(5),
        last_outcome="error",
        last_node="a",
        last_fence=3,
        last_started_at=at(6),
        last_finished_at=at(7),
        consecutive_failures=1,
    )


async def test_jobs_are_sorted_by_name_in_code_point_order(store: Store) -> None:
    names = ["b", "B", "a_b", "a", "ab", "é", "Z", "_x", "a b", "a-b", "Ä"]
    for name in names:
        await store.register(name, schedule="every 1s", anchor=at(0))
    assert [job.name for job in await store.jobs()] == sorted(names)


# -- claim ------------------------------------------------------------------------------------


async def test_a_slot_is_claimed_once_and_never_one_before_the_latest(store: Store) -> None:
    await store.register("j", schedule="every 10s", anchor=at(0))
    first = await claim(store, 10)
    assert isinstance(first, int)
    assert await claim(store, 10, node="b") is None  # the same slot
    assert await claim(store, 5, node="b") is None  # an earlier one
    second = await claim(store, 20, node="b")
    assert isinstance(second, int)
    assert second != first
    assert unstamped(await store.job("j")) == JobState(
        name="j",
        schedule="every 10s",
        anchor=at(0),
        last_slot=at(20),
        last_node="b",
        last_started_at=at(21),
    )
    [latest, earliest] = await store.runs("j")
    assert latest == RunRecord(slot=at(20), node="b", fence=None, started_at=at(21))
    assert earliest == RunRecord(slot=at(10), node="a", fence=None, started_at=at(11))


async def test_a_job_must_be_registered_to_claim(store: Store) -> None:
    with pytest.raises(LookupError, match="'nobody' is not registered"):
        await claim(store, 1, name="nobody")


async def test_fences_never_go_back_and_none_is_judged_by_the_slot_alone(store: Store) -> None:
    await store.register("j", schedule="every 1s", anchor=at(0))
    assert await claim(store, 1, fence=None) is not None  # no fence yet
    assert await claim(store, 2, fence=5) is not None
    assert await claim(store, 3, fence=4) is None  # lower after higher
    assert await claim(store, 3, fence=5) is not None  # equal
    assert await claim(store, 4, fence=None) is not None  # None: only the slot counts
    state = await store.job("j")
    assert state is not None
    assert (state.last_slot, state.last_fence) == (at(4), None)
    assert await claim(store, 5, fence=4) is None  # the highest fence outlives a None
    assert await claim(store, 4, fence=9) is None  # a higher fence wins no old slot
    assert await claim(store, 5, fence=7) is not None
    assert await claim(store, 6, fence=6) is None
    assert await claim(store, 6, fence=None) is not None
    runs = await store.runs("j")
    assert [(r.slot, r.fence) for r in runs] == [
        (at(6), None),
        (at(5), 7),
        (at(4), None),
        (at(3), 5),
        (at(2), 5),
        (at(1), None),
    ]


async def test_runs_beyond_history_are_pruned_oldest_first(backend: Backend) -> None:
    store = backend.make(history=3)
    async with serving(store):
        await store.register("j", schedule="every 1s", anchor=at(0))
        await store.register("k", schedule="every 1s", anchor=at(0))
        other = await claim(store, 1, name="k")
        keys = [await claim(store, slot) for slot in range(1, 6)]
        assert [r.slot for r in await store.runs("j")] == [at(5), at(4), at(3)]
        # Each job keeps its own.
        assert [r.slot for r in await store.runs("k")] == [at(1)]
        # The end of a pruned run is ignored.
        before = (await store.job("j"), await store.runs("j"))
        await finish(store, keys[0], "error")
        await finish(store, keys[1], "ok")
        assert (await store.job("j"), await store.runs("j")) == before
        await finish(store, other, "ok", name="k")
        [run] = await store.runs("k")
        assert run.outcome == "ok"


async def test_a_history_of_one_keeps_the_latest_run(backend: Backend) -> None:
    store = backend.make(history=1)
    async with serving(store):
        await store.register("j", schedule="every 1s", anchor=at(0))
        first = await claim(store, 1)
        second = await claim(store, 2)
        await finish(store, first, "error")
        [run] = await store.runs("j")
        assert (run.slot, run.outcome) == (at(2), None)
        await finish(store, second, "timeout", at_=3)
        [run] = await store.runs("j")
        assert (run.slot, run.outcome, run.finished_at) == (at(2), "timeout", at(3))
        state = await store.job("j")
        assert state is not None
        assert (state.last_outcome, state.consecutive_failures) == ("timeout", 1)


# -- finish -----------------------------------------------------------------------------------


async def test_finish_records_the_run_and_for_the_latest_slot_the_job(store: Store) -> None:
    await store.register("j", schedule="every 10s", anchor=at(0))

    async def state() -> tuple[Any, ...]:
        job = await store.job("j")
        assert job is not None
        return (job.last_outcome, job.last_finished_at, job.consecutive_failures)

    first = await claim(store, 10)
    await finish(store, first, "error", at_=12)
    [run] = await store.runs("j")
    assert run == RunRecord(
        slot=at(10),
        node="a",
        fence=None,
        started_at=at(11),
        finished_at=at(12),
        outcome="error",
        duration=0.25,
        error="error!",
    )
    assert await state() == ("error", at(12), 1)
    await finish(store, await claim(store, 20), "timeout", at_=22)
    assert await state() == ("timeout", at(22), 2)
    older, latest = await claim(store, 30), await claim(store, 40)
    await finish(store, older, "ok", at_=33)  # not the latest slot: its run only
    assert await state() == ("timeout", at(22), 2)
    assert (await store.runs("j"))[1].outcome == "ok"
    await finish(store, latest, "cancelled", at_=44)
    assert await state() == ("cancelled", at(44), 0)
    await finish(store, await claim(store, 50), "error", at_=55)
    assert await state() == ("error", at(55), 1)
    fifty = (await store.runs("j"))[0]
    await finish(store, await claim(store, 60), "ok", at_=66)
    assert await state() == ("ok", at(66), 0)
    # A run finished again is recorded again (the scheduler never does it).
    await finish(store, latest, "error", at_=45)
    assert await state() == ("ok", at(66), 0)
    assert fifty.outcome == "error"


async def test_the_end_of_an_unknown_run_is_ignored(store: Store) -> None:
    await store.register("j", schedule="every 10s", anchor=at(0))
    await store.register("k", schedule="every 10s", anchor=at(0))
    key = await claim(store, 10)
    other = await claim(store, 10, name="k")
    before = (await store.jobs(), await store.runs("j"), await store.runs("k"))
    await finish(store, key + other + 1000, "error")
    await finish(store, key, "error", name="nobody")
    await finish(store, other, "error", name="j")  # a run of another job
    assert (await store.jobs(), await store.runs("j"), await store.runs("k")) == before


# -- runs -------------------------------------------------------------------------------------


async def test_runs_are_newest_first_at_most_limit(store: Store) -> None:
    await store.register("j", schedule="every 1s", anchor=at(0))
    for slot in range(1, 26):
        await claim(store, slot)
    assert [r.slot for r in await store.runs("j", limit=2)] == [at(25), at(24)]
    default = await store.runs("j")
    assert [r.slot for r in default] == [at(s) for s in range(25, 5, -1)]
    assert len(await store.runs("j", limit=100)) == 25
    assert await store.runs("nobody") == []


@pytest.mark.parametrize(
    ("limit", "error"), [(0, ValueError), (-1, ValueError), (True, TypeError), (2.0, TypeError)]
)
async def test_a_bad_limit_is_refused(store: Store, limit: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="limit must be an int >= 1"):
        await store.runs("j", limit=limit)


# -- pause, resume, trigger ------------------------------------------------------------------


@pytest.mark.parametrize("what", ["pause", "resume", "trigger"])
async def test_operating_an_unknown_job_is_a_lookup_error(store: Store, what: str) -> None:
    await store.register("j", schedule="every 1s", anchor=at(0))
    with pytest.raises(LookupError, match="job 'nobody' is not registered"):
        await getattr(store, what)("nobody")
    assert unstamped(await store.job("j")) == JobState(name="j", schedule="every 1s", anchor=at(0))


async def test_a_paused_job_refuses_scheduled_claims_and_runs_when_asked(store: Store) -> None:
    await store.register("j", schedule="every 1s", anchor=at(0))
    await store.register("k", schedule="every 1s", anchor=at(0))
    assert await claim(store, 1) is not None
    await store.pause("j", note="incident 42")
    paused = await store.job("j")
    assert paused is not None
    assert (paused.paused, paused.pause_note) == (True, "incident 42")
    assert paused.paused_at is not None
    assert paused.registered_at is not None
    assert paused.registered_at <= paused.paused_at
    runs = await store.runs("j")
    with pytest.raises(JobPaused, match="job 'j' is paused"):
        await claim(store, 2)
    assert (await store.job("j"), await store.runs("j")) == (paused, runs)  # nothing written
    # Another job is not paused.
    assert await claim(store, 2, name="k") is not None
    # Pausing again: a new note, the same pause.
    await store.pause("j")
    again = await store.job("j")
    assert again == attrs.evolve(paused, pause_note=None)
    # A run asked for in the process runs a paused job (beside the schedule: the
    # latest scheduled slot stays).
    assert (
        await store.claim("j", slot=at(2), node="a", fence=None, started_at=at(3), trigger="local")
        is not None
    )
    with pytest.raises(JobPaused):
        await claim(store, 3)
    state = await store.job("j")
    assert state is not None
    assert (state.paused, state.last_slot, state.resumed_at) == (True, at(1), None)
    await store.resume("j")
    resumed = await store.job("j")
    assert resumed is not None
    assert (resumed.paused, resumed.paused_at, resumed.pause_note) == (False, None, None)
    assert resumed.resumed_at is not None
    assert resumed.resumed_at >= paused.paused_at
    assert await claim(store, 3) is not None
    # Resuming a job that is not paused changes nothing.
    before = await store.job("j")
    await store.resume("j")
    assert await store.job("j") == before


@pytest.mark.parametrize("trigger", ["manual", "", True, 1])
async def test_an_unknown_trigger_is_refused(store: Store, trigger: Any) -> None:
    await store.register("j", schedule="every 1s", anchor=at(0))
    with pytest.raises(ValueError, match='trigger must be None, "local" or "store"'):
        await store.claim("j", slot=at(1), node="a", fence=None, started_at=at(1), trigger=trigger)
    assert await store.runs("j") == []


def take(store: Store, slot: float, *, node: str = "a", fence: int | None = None) -> Any:
    """Claim ``slot`` to take a trigger asked for in the store."""
    return store.claim(
        "j", slot=at(slot), node=node, fence=fence, started_at=at(slot), trigger="store"
    )


async def test_a_store_trigger_is_taken_once(store: Store) -> None:
    await store.register("j", schedule="every 1s", anchor=at(0))
    # None pending: nothing is claimed, nothing written.
    assert await take(store, 1) is None
    assert (unstamped(await store.job("j")), await store.runs("j")) == (
        JobState(name="j", schedule="every 1s", anchor=at(0)),
        [],
    )
    await store.trigger("j")
    first = await store.job("j")
    assert first is not None
    assert first.triggered_at is not None
    assert first.registered_at is not None
    assert first.triggered_at >= first.registered_at
    await store.trigger("j")  # while one is pending: the same one
    assert await store.job("j") == first
    # A scheduled run leaves it pending; so does a claim refused by the fence.
    scheduled = await claim(store, 5, fence=7)
    assert scheduled is not None
    assert await take(store, 6, fence=6) is None
    state = await store.job("j")
    assert state is not None
    assert (state.triggered_at, state.last_slot) == (first.triggered_at, at(5))
    # A paused job runs when a trigger asks for it, at a slot not after the latest
    # scheduled one too: beside the schedule, which it leaves as it is.
    await store.pause("j")
    key = await take(store, 5, node="b", fence=7)
    assert isinstance(key, int)
    state = await store.job("j")
    assert state is not None
    assert (state.triggered_at, state.last_slot, state.last_node) == (None, at(5), "a")
    assert state.paused
    assert await take(store, 7) is None
    [latest, *_] = await store.runs("j")
    assert latest == RunRecord(slot=at(5), node="b", fence=7, started_at=at(5), triggered=True)
    await finish(store, key, "ok", at_=8)
    done = await store.job("j")
    assert done is not None
    assert (done.last_outcome, done.last_ok_at) == (None, at(8))


async def test_racing_takers_of_a_trigger_take_it_once(backend: Backend) -> None:
    handles = [backend.make() for _ in range(4)]  # as many processes (MemoryStore: one)
    async with serving(*handles):
        await handles[0].register("j", schedule="every 1s", anchor=at(0))
        for round_ in range(1, 11):
            await handles[round_ % 4].trigger("j")
            won: list[int] = []

            async def taker(handle: Store, slot: int, won: list[int]) -> None:
                if await take(handle, slot) is not None:
                    won.append(slot)

            async with trio.open_nursery() as nursery:
                for i, handle in enumerate(handles):
                    # Each at its own slot.
                    nursery.start_soon(taker, handle, round_ * 10 + i, won)
            assert len(won) == 1, (round_, won)
            state = await handles[0].job("j")
            assert state is not None
            assert (state.triggered_at, state.last_slot) == (None, None)
            [latest, *_] = await handles[0].runs("j")
            assert (latest.slot, latest.triggered) == (at(won[0]), True)
        assert len(await handles[0].runs("j")) == 10


# -- triggered runs: beside the schedule ------------------------------------------------------


async def triggered(
    store: Store, trigger: str, slot: float, *, node: str = "t", fence: int | None = None
) -> Any:
    """Claim a triggered run at ``slot`` (the time it was asked for); for ``"store"``,
    ask for it in the store first."""
    if trigger == "store":
        await store.trigger("j")
    return await store.claim(
        "j", slot=at(slot), node=node, fence=fence, started_at=at(slot), trigger=trigger
    )


@pytest.mark.parametrize("trigger", ["local", "store"])
async def test_a_triggered_run_leaves_the_scheduled_slots_claimable(
    store: Store, trigger: str
) -> None:
    await store.register("j", schedule="every 100s", anchor=at(0))
    assert await claim(store, 100, fence=1) is not None
    before = await store.job("j")
    assert before is not None
    # Slot 200 is due, its tick delayed by jitter; a trigger at 220 comes first.
    assert await triggered(store, trigger, 220, fence=1) is not None
    assert await store.job("j") == before  # the latest scheduled slot is still 100
    assert await claim(store, 200, fence=1) is not None
    # Triggers at and before the latest scheduled slot run too, and move nothing.
    state = await store.job("j")
    for slot in (200, 150):
        assert await triggered(store, trigger, slot, fence=1) is not None
        assert await store.job("j") == state
    assert state is not None
    assert (state.last_slot, state.last_node, state.last_started_at) == (at(200), "a", at(201))
    # The schedule goes on from its own latest slot: still once each.
    assert await claim(store, 200) is None
    assert await claim(store, 300) is not None
    runs = await store.runs("j")
    assert [(r.slot, r.node, r.triggered) for r in runs] == [
        (at(300), "a", False),
        (at(150), "t", True),
        (at(200), "t", True),
        (at(200), "a", False),
        (at(220), "t", True),
        (at(100), "a", False),
    ]


@pytest.mark.parametrize("trigger", ["local", "store"])
async def test_a_triggered_claim_keeps_the_fence_rule(store: Store, trigger: str) -> None:
    await store.register("j", schedule="every 1s", anchor=at(0))
    assert await claim(store, 1, fence=5) is not None
    before = (await store.job("j"), await store.runs("j"))
    assert await triggered(store, trigger, 2, fence=4) is None  # a stale leader's
    after = await store.job("j")
    assert after is not None
    if trigger == "store":  # refused: the trigger stays pending
        assert after.triggered_at is not None
        after = attrs.evolve(after, triggered_at=None)
    assert (after, await store.runs("j")) == before
    assert await triggered(store, trigger, 2, fence=6) is not None
    state = await store.job("j")
    assert state is not None
    assert (state.last_slot, state.last_fence, state.triggered_at) == (at(1), 5, None)
    # The highest fence is the triggered run's now.
    assert await claim(store, 3, fence=5) is None
    assert await claim(store, 3, fence=6) is not None


async def test_finish_of_a_triggered_run_leaves_the_scheduled_slot_s_outcome(
    store: Store,
) -> None:
    await store.register("j", schedule="every 10s", anchor=at(0))

    async def state() -> tuple[Any, ...]:
        job = await store.job("j")
        assert job is not None
        return (job.last_outcome, job.last_finished_at, job.consecutive_failures, job.last_ok_at)

    await finish(store, await claim(store, 10), "error", at_=12)
    assert await state() == ("error", at(12), 1, None)
    # A triggered run at the latest scheduled slot's own time is not that slot's run.
    for trigger in ("local", "store"):
        key = await triggered(store, trigger, 10)
        await finish(store, key, "ok", at_=13)
        assert await state() == ("error", at(12), 1, at(13))
    key = await triggered(store, "local", 15)
    await finish(store, key, "error", at_=16)
    assert await state() == ("error", at(12), 1, at(13))
    # A scheduled run whose record a triggered one came after: still the latest.
    scheduled = await claim(store, 20)
    between = await triggered(store, "local", 25)
    await finish(store, scheduled, "timeout", at_=27)
    assert await state() == ("timeout", at(27), 2, at(13))
    await finish(store, between, "ok", at_=30)
    assert await state() == ("timeout", at(27), 2, at(30))
    await finish(store, await claim(store, 40), "ok", at_=41)
    assert await state() == ("ok", at(41), 0, at(41))
    [latest, *_] = await store.runs("j")
    assert (latest.outcome, latest.triggered) == ("ok", False)
    [run] = [r for r in await store.runs("j") if r.slot == at(25)]
    assert run == RunRecord(
        slot=at(25),
        node="t",
        fence=None,
        started_at=at(25),
        finished_at=at(30),
        outcome="ok",
        duration=0.25,
        triggered=True,
    )


async def test_racing_takers_of_a_trigger_at_one_slot_take_it_once(backend: Backend) -> None:
    handles = [backend.make() for _ in range(4)]
    async with serving(*handles):
        await handles[0].register("j", schedule="every 1s", anchor=at(0))
        assert await claim(handles[0], 50) is not None
        for _ in range(5):
            await handles[1].trigger("j")
            won: list[str] = []

            async def taker(handle: Store, node: str, won: list[str]) -> None:
                # All at one slot, before the latest scheduled one.
                if await take(handle, 10, node=node) is not None:
                    won.append(node)

            async with trio.open_nursery() as nursery:
                for i, handle in enumerate(handles):
                    nursery.start_soon(taker, handle, f"n{i}", won)
            assert len(won) == 1, won
        state = await handles[0].job("j")
        assert state is not None
        assert (state.last_slot, state.last_node, state.triggered_at) == (at(50), "a", None)
        assert [r.triggered for r in await handles[0].runs("j")] == [True] * 5 + [False]


# -- last ok, overdue -------------------------------------------------------------------------


async def test_last_ok_at_is_the_latest_end_of_a_run_that_ended_ok(store: Store) -> None:
    await store.register("j", schedule="every 1s", anchor=at(0))

    async def last_ok() -> datetime.datetime | None:
        state = await store.job("j")
        assert state is not None
        return state.last_ok_at

    one, two, three = [await claim(store, slot) for slot in (1, 2, 3)]
    await finish(store, three, "error", at_=30)
    assert await last_ok() is None
    await finish(store, two, "ok", at_=20)  # not the latest slot's run: it counts
    assert await last_ok() == at(20)
    await finish(store, one, "ok", at_=10)  # ended before: the later end stays
    assert await last_ok() == at(20)
    state = await store.job("j")
    assert state is not None
    assert (state.last_outcome, state.consecutive_failures) == ("error", 1)
    await finish(store, three, "ok", at_=31)
    assert await last_ok() == at(31)
    # An unknown run's end, ok or not, is ignored.
    await finish(store, one + two + three + 1000, "ok", at_=99)
    assert await last_ok() == at(31)


class Clock:
    """A wall clock set by hand: seconds after T0."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> datetime.datetime:
        return at(self.now)


async def test_overdue_is_judged_on_the_memory_stores_wall_clock() -> None:
    clock = Clock()
    store = MemoryStore(wall_clock=clock)

    async def overdue(at_: float) -> bool:
        clock.now = at_
        state = await store.job("j")
        [listed] = await store.jobs()
        assert state is not None
        assert listed == state
        return state.overdue

    async with serving(store):
        first = await store.register("j", schedule="every 10s", anchor=at(0), overdue_after=60)
        assert (first.registered_at, first.overdue_after, first.overdue) == (at(0), 60.0, False)
        assert not await overdue(59.999999)
        assert await overdue(60)
        # Counted from the first registration: a process that registers again and again
        # but never runs the job ok does not reset it.
        clock.now = 70
        again = await store.register("j", schedule="every 10s", anchor=at(5), overdue_after=60)
        assert (again.registered_at, again.overdue) == (at(0), True)
        # From the end of the last ok run.
        key = await claim(store, 60)
        await finish(store, key, "ok", at_=65)
        assert not await overdue(124.9)
        assert await overdue(125)
        failed = await claim(store, 130)
        await finish(store, failed, "error", at_=131)
        assert await overdue(131)
        # Never while paused; from the resume on.
        clock.now = 200
        await store.pause("j", note="incident")
        assert not await overdue(10_000)
        clock.now = 10_000
        await store.resume("j")
        assert not await overdue(10_059)
        assert await overdue(10_060)
        # The latest of the three counts: a later ok run.
        key = await claim(store, 10_060)
        await finish(store, key, "ok", at_=10_070)
        assert not await overdue(10_129)
        assert await overdue(10_130)
        # A deploy that drops overdue_after.
        clock.now = 10_130
        assert not (await store.register("j", schedule="every 10s", anchor=at(0))).overdue
        assert not await overdue(99_999)
        # The store's clock stamps the operations.
        clock.now = 100_000
        await store.trigger("j")
        await store.pause("j")
        state = await store.job("j")
        assert state is not None
        assert (state.triggered_at, state.paused_at, state.resumed_at) == (
            at(100_000),
            at(100_000),
            at(10_000),
        )


def test_the_memory_stores_wall_clock_is_checked() -> None:
    with pytest.raises(TypeError, match="wall_clock must be None or a callable"):
        MemoryStore(wall_clock=T0)  # type: ignore[arg-type]


async def test_a_naive_wall_clock_is_refused_where_it_is_read() -> None:
    store = MemoryStore(wall_clock=lambda: datetime.datetime(2026, 5, 1))
    async with serving(store):
        with pytest.raises(ValueError, match=r"wall_clock\(\) must be a timezone-aware"):
            await store.register("j", schedule="every 1s", anchor=at(0))


async def test_a_durable_store_judges_overdue_on_its_own_clock(durable: Backend) -> None:
    # Real time: the durable stores' clock is the process's (SQLite) or the database's.
    store = durable.make()

    async def overdue() -> bool:
        state = await store.job("j")
        [listed] = await store.jobs()
        assert state is not None
        assert listed.overdue == state.overdue
        return state.overdue

    async with serving(store):
        first = await store.register("j", schedule="every 1s", anchor=at(0), overdue_after=3600)
        assert not first.overdue
        again = await store.register("j", schedule="every 1s", anchor=at(0), overdue_after=0.5)
        assert not again.overdue
        assert not await overdue()
        await trio.sleep(0.6)
        assert await overdue()
        # Counted from the first registration.
        assert (
            await store.register("j", schedule="every 1s", anchor=at(0), overdue_after=0.5)
        ).overdue
        # From the end of the last ok run.
        key = await claim(store, 1)
        await finish(store, key, "ok", at_=0)  # long ago: still overdue
        assert await overdue()
        key = await store.claim("j", slot=at(2), node="a", fence=None, started_at=real_now())
        assert key is not None
        ended = real_now()
        await store.finish("j", key, outcome="ok", finished_at=ended, duration=0.0, error=None)
        assert not await overdue()
        state = await store.job("j")
        assert state is not None
        assert state.last_ok_at == ended
        await trio.sleep(0.6)
        assert await overdue()
        # Never while paused; from the resume on.
        await store.pause("j")
        assert not await overdue()
        await trio.sleep(0.6)
        assert not await overdue()
        await store.resume("j")
        assert not await overdue()
        await trio.sleep(0.6)
        assert await overdue()


# -- watching triggers ------------------------------------------------------------------------


async def test_watchers_are_told_of_a_trigger_asked_for_in_this_process(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await store.register("j", schedule="every 1s", anchor=at(0))
    await store.register("k", schedule="every 1s", anchor=at(0))
    heard: list[str] = []

    def broken() -> None:
        raise RuntimeError("a broken watcher")

    unwatch_j = store.watch_triggers("j", lambda: heard.append("j"))
    unwatch_broken = store.watch_triggers("j", broken)
    also_j = store.watch_triggers("j", lambda: heard.append("j again"))
    store.watch_triggers("k", lambda: heard.append("k"))
    with caplog.at_level("ERROR", logger="periodic"):
        await store.trigger("j")
    # At once, in order; the broken watcher's error is logged, and the others told.
    assert heard[:2] == ["j", "j again"]
    assert "k" not in heard
    # (PostgreSQL: once more, maybe, as its own NOTIFY comes back.)
    records = [r for r in caplog.records if "a watcher of the triggers of 'j'" in r.message]
    assert records
    for record in records:
        assert record.exc_info is not None
        assert "a broken watcher" in str(record.exc_info[1])
    unwatch_j()
    unwatch_j()  # again: nothing
    unwatch_broken()
    heard.clear()
    await store.trigger("j")
    assert heard[:1] == ["j again"]
    assert set(heard) == {"j again"}
    also_j()
    heard.clear()
    await store.trigger("j")
    await store.trigger("k")
    assert heard[:1] == ["k"]
    assert set(heard) == {"k"}


async def wait_for(heard: list[str], count: int, *, within: float) -> float:
    """Wait (real time) until ``heard`` holds ``count`` entries; the seconds it took."""
    start = trio.current_time()
    with trio.fail_after(within):
        while len(heard) < count:
            await trio.sleep(0.005)
    return trio.current_time() - start


async def test_a_trigger_from_another_process_reaches_the_watchers(durable: Backend) -> None:
    # Real time. The watching store polls every 0.2 s (SQLite) or hears the NOTIFY
    # (PostgreSQL: its poll is set far off, so only the notification can be in time).
    watching, other = durable.make(), durable.make()
    watching.trigger_poll = 0.2 if durable.kind == "sqlite" else 600.0
    heard: list[str] = []
    async with serving(watching, other):
        await other.register("j", schedule="every 1s", anchor=at(0))
        await other.register("k", schedule="every 1s", anchor=at(0))
        unwatch = watching.watch_triggers("j", lambda: heard.append("j"))
        watching.watch_triggers("k", lambda: heard.append("k"))
        await trio.sleep(1.5)  # the first poll, or the LISTEN, is done
        assert heard == []
        await other.trigger("j")
        took = await wait_for(heard, 1, within=5)
        assert heard[0] == "j"
        if durable.kind == "postgres":
            assert took < 0.5
        # Taken by another process: told no more (once a poll under way is over).
        assert await take(other, 1) is not None
        await trio.sleep(0.5)
        told = len(heard)
        await trio.sleep(0.5)
        assert len(heard) == told
        assert set(heard) == {"j"}
        unwatch()
        await other.trigger("j")
        await other.trigger("k")
        await wait_for(heard, told + 1, within=5)
        await trio.sleep(0.5)
        assert set(heard[told:]) == {"k"}  # told again at each poll while pending


async def test_a_trigger_pending_when_watching_begins_is_found_at_once(
    durable: Backend,
) -> None:
    watching, other = durable.make(), durable.make()
    watching.trigger_poll = 600.0  # only the first read, when watching begins, is in time
    heard: list[str] = []
    async with serving(watching, other):
        await other.register("j", schedule="every 1s", anchor=at(0))
        await other.trigger("j")
        await trio.sleep(0.3)
        watching.watch_triggers("j", lambda: heard.append("j"))
        await wait_for(heard, 1, within=5)


# -- times ------------------------------------------------------------------------------------


async def test_times_come_back_exactly_in_utc(store: Store) -> None:
    anchor = datetime.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    slot = datetime.datetime(2026, 5, 1, 12, 0, 0, 1, tzinfo=UTC)
    started = datetime.datetime(2026, 5, 1, 12, 0, 0, 654_321, tzinfo=UTC)
    finished = datetime.datetime(2200, 2, 29 - 1, 23, 59, 59, 999_999, tzinfo=UTC)
    await store.register("j", schedule="every 1s", anchor=anchor)
    key = await store.claim("j", slot=slot, node="a", fence=None, started_at=started)
    assert key is not None
    await store.finish("j", key, outcome="ok", finished_at=finished, duration=1e-6, error=None)
    state = await store.job("j")
    [run] = await store.runs("j")
    assert state is not None
    got = [state.anchor, state.last_slot, state.last_started_at, state.last_finished_at]
    got += [run.slot, run.started_at, run.finished_at]
    assert got == [anchor, slot, started, finished, slot, started, finished]
    for value in got:
        assert value is not None
        assert value.utcoffset() == datetime.timedelta(0)
    assert run.duration == 1e-6


async def test_a_durable_store_keeps_times_of_any_zone_as_utc(durable: Backend) -> None:
    store = durable.make()
    india = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    anchor = datetime.datetime(2026, 5, 1, 17, 30, 0, 123_457, tzinfo=india)
    async with serving(store):
        state = await store.register("j", schedule="every 1s", anchor=anchor)
        assert state.anchor == anchor
        assert state.anchor.tzinfo is UTC
        assert state.anchor.hour == 12
        with pytest.raises(ValueError, match="slot must be a timezone-aware datetime"):
            await store.claim(
                "j", slot=datetime.datetime(2026, 5, 1), node="a", fence=None, started_at=anchor
            )


# -- serving ----------------------------------------------------------------------------------


async def test_a_store_is_served_by_one_task_at_a_time(backend: Backend) -> None:
    store = backend.make()
    assert not store.serving
    async with serving(store):
        assert store.serving
        with pytest.raises(RuntimeError, match="is already being served"):
            await store.serve()
        assert store.serving
    assert not store.serving


async def test_a_durable_store_is_used_only_while_served_and_keeps_its_records(
    durable: Backend,
) -> None:
    store = durable.make()
    name = re.escape(repr(store))
    calls: list[Callable[[], Any]] = [
        lambda: store.register("j", schedule="every 1s", anchor=at(0)),
        lambda: claim(store, 1),
        lambda: finish(store, 1, "ok"),
        store.jobs,
        lambda: store.job("j"),
        lambda: store.runs("j"),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match=f"{name} is not being served"):
            await call()
    async with serving(store):
        await store.register("j", schedule="every 1s", anchor=at(0))
        await claim(store, 1)
    for call in calls:
        with pytest.raises(RuntimeError, match=f"{name} is not being served"):
            await call()
    async with serving(store):  # served again: all is still there
        assert [r.slot for r in await store.runs("j")] == [at(1)]
    # Another handle on the same database sees it too (another process would).
    other = durable.make()
    async with serving(other):
        state = await other.job("j")
        assert state is not None
        assert state.last_slot == at(1)


# -- a job served with the store ------------------------------------------------------------


class Wall:
    """A wall clock that follows Trio's clock, plus a shift (a process that was down)."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> datetime.datetime:
        return T0 + datetime.timedelta(seconds=trio.current_time() + self.shift)


async def nothing() -> None:
    pass


def summary(events: list[Event]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in events:
        if isinstance(e, Started):
            out.append(("started", e.started_at, e.scheduled_at, e.fire_time))
        elif isinstance(e, Skipped):
            out.append(("skipped", str(e.reason), e.scheduled_at, e.count))
    return out


async def test_a_job_keeps_its_grid_and_catches_up_the_latest_slot_after_a_restart(
    autojump_clock: trio.testing.MockClock, backend: Backend
) -> None:
    wall = Wall()

    def job(store: Store) -> Periodic:
        return Periodic(run=nothing, every=10, store=Frozen(store), wall_clock=wall, name="rollup")

    first_process = backend.make()
    async with serving(first_process):
        first = await serve_for(job(first_process), 22)
    assert summary(list(first)) == [
        ("started", 10.0, 10.0, at(10)),
        ("started", 20.0, 20.0, at(20)),
    ]
    wall.shift += 35  # nobody serves the job for 3.5 periods: back at wall time 57
    second_process = backend.make()
    async with serving(second_process):
        again = await serve_for(job(second_process), 4)
        assert summary(list(again)) == [
            ("skipped", "missed", -5.0, 2),
            ("started", 22.0, 15.0, at(50)),
            ("started", 25.0, 25.0, at(60)),
        ]
        state = await Frozen(second_process).job("rollup")
        runs = await Frozen(second_process).runs("rollup")
    assert trio.current_time() == 26.0
    assert state is not None
    assert (state.anchor, state.schedule, state.last_slot) == (at(10), "every 10s", at(60))
    assert (state.last_outcome, state.last_finished_at) == ("ok", at(60))
    assert [(r.slot, r.started_at, r.finished_at, r.outcome, r.duration) for r in runs] == [
        (at(60), at(60), at(60), "ok", 0.0),
        (at(50), at(57), at(57), "ok", 0.0),
        (at(20), at(20), at(20), "ok", 0.0),
        (at(10), at(10), at(10), "ok", 0.0),
    ]


# -- races ------------------------------------------------------------------------------------


async def race(handle: Store, node: str, slot: int, won: list[str]) -> None:
    key = await handle.claim("race", slot=at(slot), node=node, fence=None, started_at=at(slot))
    if key is not None:
        won.append(node)


async def test_racing_claims_from_several_handles_win_each_slot_once(backend: Backend) -> None:
    handles = [backend.make() for _ in range(4)]  # as many processes (MemoryStore: one)
    slots = 25
    async with serving(*handles):
        await handles[0].register("race", schedule="every 1s", anchor=at(0))
        winners: list[str] = []
        for slot in range(1, slots + 1):
            won: list[str] = []

            async with trio.open_nursery() as nursery:
                for i, handle in enumerate(handles):
                    nursery.start_soon(race, handle, f"n{i}", slot, won)
            assert len(won) == 1, (slot, won)
            winners.append(won[0])
        runs = await handles[-1].runs("race", limit=100)
    assert [(r.slot, r.node) for r in runs] == [
        (at(slot), node) for slot, node in reversed(list(enumerate(winners, 1)))
    ]
