"""The scenarios, as run inside one worker process; each returns a dict of measurements.

Times on the scheduling side are Trio's clock (``trio.current_time()``), CPU is the
process's CPU clock (``time.process_time()``, user + system of every thread), memory is
the resident set size.
"""

from __future__ import annotations

import functools
import gc
import itertools
import math
import statistics
import time
from array import array
from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from . import _durable, _jobs, _reminders
from ._contenders import CONTENDERS, Batch, Job


def _rss() -> int:
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:  # Linux without psutil: the second field of statm, in pages
        import os

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.Process().memory_info().rss)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest-rank."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _batch(
    every: float, fn: Any, args: list[tuple[Any, ...]], anchors: array[float] | None = None
) -> Batch:
    jobs: list[Job] = [functools.partial(fn, *a) for a in args]
    return Batch(
        every=every,
        fn=fn,
        args=args,
        jobs=jobs,
        names=[f"job-{i}" for i in range(len(args))],
        anchors=array("d", [0.0] * len(args)) if anchors is None else anchors,
    )


# -- scenario 1: one job, many fast ticks ------------------------------------------------


def ticks(contender: str, every: float, ticks: int) -> dict[str, Any]:
    """Drift, gap jitter and CPU per tick of one job ticking ``ticks`` times."""
    log = _jobs.ticks = _jobs.TickLog(ticks + 1)
    start = CONTENDERS[contender].start

    async def main() -> None:
        batch = _batch(every, _jobs.tick_job, [()])
        with trio.fail_after(ticks * every * 5 + 30):
            async with trio.open_nursery() as nursery:
                await start(nursery, batch)
                await log.done.wait()
                nursery.cancel_scope.cancel()

    trio.run(main)
    times = log.times[: ticks + 1]
    first = times[0]
    drift = [t - (first + k * every) for k, t in enumerate(times)]
    jitter = [abs(b - a - every) for a, b in itertools.pairwise(times)]
    return {
        "final_drift_ms": drift[-1] * 1e3,
        "p99_jitter_ms": percentile(jitter, 99) * 1e3,
        "cpu_per_tick_us": (log.cpu_last - log.cpu_first) / ticks * 1e6,
        "drift_ms": [round(d * 1e3, 4) for d in drift],
    }


# -- scenarios 2, 3 and 6: many schedulers -----------------------------------------------


def many(
    contender: str, n: int, every: float, periods: int, startup_allowance: float = 20.0
) -> dict[str, Any]:
    """CPU per run, CPU share, on-time delivery and memory of ``n`` schedulers.

    The schedulers are all started first; then a window of exactly ``periods`` periods
    is measured, in which every scheduler is due ``periods`` times whatever its phase,
    starting half a period after the last scheduler started.
    Ticks due in the window's last period are not counted as due, as they may
    rightfully come after its end. A contender that cannot start its ``n`` schedulers
    within ``startup_allowance`` seconds (those started already tick meanwhile) is
    reported as overloaded.
    """
    log = _jobs.slots = _jobs.SlotLog(n, periods + int(startup_allowance / every) + 2, every)
    start = CONTENDERS[contender].start
    batch = _batch(every, _jobs.slot_job, [(i,) for i in range(n)], log.anchors)
    out: dict[str, Any] = {}

    async def main() -> None:
        gc.collect()
        rss_before = _rss()
        async with trio.open_nursery() as nursery:
            t = trio.current_time()
            with trio.move_on_after(startup_allowance) as startup:
                await start(nursery, batch)
            out["startup_s"] = trio.current_time() - t
            if startup.cancelled_caught:
                out["error"] = (
                    f"overloaded: starting {n} schedulers took over {startup_allowance:g} s "
                    f"(the {log.runs} runs of those already started competed with it)"
                )
                nursery.cancel_scope.cancel()
                return
            # Half a period on, the ticks of schedulers that all started within half a
            # period are as far as can be from the window's edges.
            window_start = trio.current_time() + every / 2
            await trio.sleep_until(window_start)
            cpu_start, runs_start, prompt_start = time.process_time(), log.runs, log.prompt
            await trio.sleep_until(window_start + periods * every)
            cpu, runs = time.process_time() - cpu_start, log.runs - runs_start
            prompt = log.prompt - prompt_start
            window = trio.current_time() - window_start
            out["rss_per_scheduler_kb"] = (_rss() - rss_before) / n / 1024
            nursery.cancel_scope.cancel()
        due, delivered = log.on_time(window_start, window_start + (periods - 1) * every)
        out["runs"] = runs
        out["cpu_per_run_us"] = cpu / max(runs, 1) * 1e6
        out["cpu_share_pct"] = cpu / window * 100
        out["on_time_pct"] = delivered / max(due, 1) * 100
        out["within_100ms_pct"] = prompt / max(runs, 1) * 100
        out["due"] = due

    trio.run(main)
    return out


# -- scenario 4: virtual time ------------------------------------------------------------


def virtual(contender: str, every: float, seconds: float) -> dict[str, Any]:
    """Wall time to serve one job for ``seconds`` of MockClock time."""
    counter = _jobs.counter = _jobs.Counter()
    start = CONTENDERS[contender].start
    batch = _batch(every, _jobs.count_job, [()])

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await start(nursery, batch)
            await trio.sleep(seconds + every / 2)
            nursery.cancel_scope.cancel()

    wall, cpu = time.perf_counter(), time.process_time()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall_s": wall, "cpu_s": cpu, "runs": counter.runs}


# -- scenario 5: sync_tick round trip ----------------------------------------------------


def sync_tick(contender: str, rounds: int, warmup: int) -> dict[str, Any]:
    """Median and p99 of one ``periodic.testing.sync_tick`` of a trivial job.

    The floor (``raw_spawn``) spawns the job in a task and waits for it to set an Event.
    """
    samples: list[float] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            if contender == "periodic":
                from periodic import Periodic
                from periodic.testing import sync_tick

                job = Periodic(run=_jobs.empty_job, every=1, mode="manual")
                await nursery.start(job.serve)

                async def round_trip() -> None:
                    await sync_tick(job)
            else:

                async def _run(done: trio.Event) -> None:
                    await _jobs.empty_job()
                    done.set()

                async def round_trip() -> None:
                    done = trio.Event()
                    nursery.start_soon(_run, done)
                    await done.wait()

            for _ in range(warmup):
                await round_trip()
            clock = time.perf_counter
            for _ in range(rounds):
                t = clock()
                await round_trip()
                samples.append(clock() - t)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return {
        "median_us": statistics.median(samples) * 1e6,
        "p99_us": percentile(samples, 99) * 1e6,
    }


def configure_otel_sdk() -> None:
    """Install the OpenTelemetry SDK globally: spans batched to an exporter that drops
    them, metrics aggregated in memory."""
    from collections.abc import Sequence

    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class DropExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DropExporter()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "durable": _durable.durable,
    "reminders": _reminders.reminders,
    "ticks": ticks,
    "many": many,
    "virtual": virtual,
    "sync_tick": sync_tick,
}
