"""The jobs every contender runs, and where they write what they saw.

They are module-level functions taking plain arguments because APScheduler finds a task's
function again by its import path; the other contenders get the same functions, bound
with :func:`functools.partial`, so every contender pays for the same job.
"""

from __future__ import annotations

import time
from array import array

import trio


class TickLog:
    """Scenario 1: the time of every run, and the CPU clock at the first and last one."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.times: list[float] = []
        self.cpu_first = 0.0
        self.cpu_last = 0.0
        self.done = trio.Event()


class SlotLog:
    """Many schedulers: which period ("slot") of its own grid each scheduler ran in.

    Scheduler ``i`` is due at ``anchors[i] + k * every`` for k = 1, 2, ...; a run at time
    ``t`` belongs to slot ``k = floor((t - anchors[i]) / every)``, the last due time before
    it. A due tick was delivered on time when its slot holds a run. Everything is
    preallocated, so that the job's own bookkeeping stays out of the RSS measurement.
    """

    def __init__(self, n: int, slots: int, every: float) -> None:
        self.n = n
        self.slots = slots
        self.rate = 1.0 / every
        self.anchors = array("d", bytes(8 * n))
        self.hits = bytearray(n * slots)
        self.runs = 0
        # Runs that came at most 100 ms after the due time of their slot.
        self.prompt = 0

    def on_time(self, first_due: float, last_due: float) -> tuple[int, int]:
        """Return (due ticks, delivered ticks) for ticks due in ``[first_due, last_due)``."""
        every = 1.0 / self.rate
        due = delivered = 0
        for i in range(self.n):
            anchor = self.anchors[i]
            row = i * self.slots
            for k in range(1, self.slots):
                at = anchor + k * every
                if first_due <= at < last_due:
                    due += 1
                    delivered += self.hits[row + k]
        return due, delivered


class Counter:
    """Scenario 4: just count the runs."""

    def __init__(self) -> None:
        self.runs = 0


ticks = TickLog(0)
slots = SlotLog(0, 0, 1.0)
counter = Counter()


async def tick_job() -> None:
    log = ticks
    times = log.times
    times.append(trio.current_time())
    n = len(times)
    if n == 1:
        log.cpu_first = time.process_time()
    elif n == log.target:
        log.cpu_last = time.process_time()
        log.done.set()


async def slot_job(i: int) -> None:
    log = slots
    log.runs += 1
    since = trio.current_time() - log.anchors[i]
    k = int(since * log.rate)
    if 0 <= k < log.slots:
        log.hits[i * log.slots + k] = 1
    if since - k / log.rate <= 0.1:
        log.prompt += 1


async def count_job() -> None:
    counter.runs += 1


async def empty_job() -> None:
    pass
