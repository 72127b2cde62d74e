"""The contenders: each starts one scheduler per job of a :class:`Batch` in a nursery.

Every contender runs each run of the job in a task of its own (``nursery.start_soon``, or
APScheduler's own task group), first runs it one period after it started, and records in
``batch.anchors[i]`` the time (``trio.current_time()``) its scheduler ``i`` counts from,
taken just before that scheduler starts, so that it is never after the scheduler's own.
"""

from __future__ import annotations

import datetime
import importlib.util
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

Job = Callable[[], Awaitable[None]]


@dataclass
class Batch:
    """What to schedule: ``n`` schedulers, each running its own job every ``every`` seconds.

    ``jobs[i]`` is ``fn`` bound to ``args[i]``; APScheduler takes ``fn`` and ``args``
    instead. ``names[i]`` is the job's name (APScheduler's schedule id).
    """

    every: float
    fn: Callable[..., Awaitable[None]]
    args: Sequence[tuple[Any, ...]]
    jobs: Sequence[Job]
    names: Sequence[str]
    anchors: array[float]


Start = Callable[[trio.Nursery, Batch], Awaitable[None]]


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    start: Start
    requires: str | None = None  # the optional distribution it needs, by import name

    def available(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None


# -- naive: sleep, then spawn; every wake-up's lateness adds up ---------------------------


async def _naive_loop(nursery: trio.Nursery, job: Job, every: float) -> None:
    while True:
        await trio.sleep(every)
        nursery.start_soon(job)


async def start_naive(nursery: trio.Nursery, batch: Batch) -> None:
    for i, job in enumerate(batch.jobs):
        batch.anchors[i] = trio.current_time()
        nursery.start_soon(_naive_loop, nursery, job, batch.every)


# -- trio_util.periodic -------------------------------------------------------------------


async def _trio_util_loop(nursery: trio.Nursery, job: Job, every: float) -> None:
    from trio_util import periodic  # type: ignore[import-untyped]

    async for elapsed, _ in periodic(every):
        # Its first iteration comes at once (elapsed == 0); the others' first run comes
        # one period after the start, so that one is left out.
        if elapsed:
            nursery.start_soon(job)


async def start_trio_util(nursery: trio.Nursery, batch: Batch) -> None:
    for i, job in enumerate(batch.jobs):
        batch.anchors[i] = trio.current_time()
        nursery.start_soon(_trio_util_loop, nursery, job, batch.every)


# -- APScheduler 4 on anyio's Trio backend, memory data store -----------------------------


async def _apscheduler_serve(
    batch: Batch, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    from apscheduler import AsyncScheduler
    from apscheduler.datastores.memory import MemoryDataStore
    from apscheduler.triggers.interval import IntervalTrigger

    every = datetime.timedelta(seconds=batch.every)
    async with AsyncScheduler(MemoryDataStore()) as scheduler:
        for i, name in enumerate(batch.names):
            # APScheduler plans on the wall clock: its first fire time is start_time.
            batch.anchors[i] = trio.current_time()
            start_time = datetime.datetime.now(datetime.timezone.utc) + every
            await scheduler.add_schedule(
                batch.fn,
                IntervalTrigger(seconds=batch.every, start_time=start_time),
                id=name,
                args=batch.args[i],
            )
        await scheduler.start_in_background()
        task_status.started()
        await trio.sleep_forever()


async def start_apscheduler(nursery: trio.Nursery, batch: Batch) -> None:
    await nursery.start(_apscheduler_serve, batch)


# -- periodic.Periodic --------------------------------------------------------------------


async def start_periodic(nursery: trio.Nursery, batch: Batch) -> None:
    from periodic import Periodic

    for i, job in enumerate(batch.jobs):
        scheduler = Periodic(run=job, every=batch.every, name=batch.names[i])
        batch.anchors[i] = trio.current_time()
        await nursery.start(scheduler.serve)


# -- floors -------------------------------------------------------------------------------


async def _grid_loop(nursery: trio.Nursery, job: Job, every: float, base: float) -> None:
    k = 1
    while True:
        await trio.sleep_until(base + k * every)
        nursery.start_soon(job)
        k += 1


async def start_grid(nursery: trio.Nursery, batch: Batch) -> None:
    """One bare grid loop per job: no features at all."""
    for i, job in enumerate(batch.jobs):
        base = batch.anchors[i] = trio.current_time()
        nursery.start_soon(_grid_loop, nursery, job, batch.every, base)


async def _spawn_loop(
    nursery: trio.Nursery, jobs: Sequence[Job], every: float, base: float
) -> None:
    k = 1
    while True:
        await trio.sleep_until(base + k * every)
        for job in jobs:
            nursery.start_soon(job)
        k += 1


async def start_raw_spawn(nursery: trio.Nursery, batch: Batch) -> None:
    """One loop that spawns every job once a period: the cost of a task and nothing else."""
    base = trio.current_time()
    for i in range(len(batch.jobs)):
        batch.anchors[i] = base
    nursery.start_soon(_spawn_loop, nursery, batch.jobs, batch.every, base)


CONTENDERS = {
    c.key: c
    for c in (
        Contender("naive", "naive sleep loop", start_naive),
        Contender("trio_util", "trio_util.periodic", start_trio_util, "trio_util"),
        Contender("apscheduler", "APScheduler 4", start_apscheduler, "apscheduler"),
        Contender("periodic", "periodic.Periodic", start_periodic),
        Contender("grid", "floor: bare grid loop", start_grid),
        Contender("raw_spawn", "floor: raw start_soon", start_raw_spawn),
    )
}
