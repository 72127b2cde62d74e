"""The OpenTelemetry subscriber: spans, metrics, and containment of a failing SDK.

OpenTelemetry's global providers can be set only once per process, so each test gets
fresh SDK providers through the private seam ``periodic._telemetry._use_providers`` (the
``otel`` fixture) and nothing here touches the globals. The one test of the global path
(an SDK configured after ``periodic`` was imported, and after its first runs) runs in a
subprocess of its own. Times are virtual (``autojump_clock``) and asserted exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import (
    NoOpCounter,
    NoOpHistogram,
    NoOpMeter,
    NoOpMeterProvider,
    NoOpUpDownCounter,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

import periodic
from periodic import Periodic, _telemetry
from periodic.events import Event, Finished, Outcome, Started
from periodic.peers import LocalPeer, SQLitePeer
from periodic.testing import serve_for

JOB = "telemetry-job"

# -- fixtures and helpers --------------------------------------------------------------


@attrs.frozen
class OTel:
    """The SDK a test's telemetry goes to."""

    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider

    @property
    def tracer(self) -> trace.Tracer:
        """A tracer for the job's own spans."""
        return self.tracer_provider.get_tracer("the-job")

    def spans(self, name: str = _telemetry.SPAN_NAME) -> list[ReadableSpan]:
        """Finished spans called ``name``, in the order they ended."""
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def run_spans(self) -> dict[int, ReadableSpan]:
        """Finished ``periodic.run`` spans by run id."""
        return {_attr(s, "periodic.run_id"): s for s in self.spans()}

    def metrics(self) -> dict[str, Any]:
        """Every metric the ``periodic`` meter has recorded, by name."""
        data = self.reader.get_metrics_data()
        found: dict[str, Any] = {}
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                if scope_metrics.scope.name == "periodic":
                    found.update({m.name: m for m in scope_metrics.metrics})
        return found

    def points(self, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        """The data points of metric ``name``, by their sorted attributes."""
        metric = self.metrics().get(name)
        if metric is None:
            return {}
        return {tuple(sorted(p.attributes.items())): p for p in metric.data.data_points}

    def sums(self, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        """Values of counter ``name``, by attributes."""
        return {k: p.value for k, p in self.points(name).items()}

    def histogram(self, name: str, job: str = JOB) -> tuple[int, float]:
        """``(count, sum)`` of histogram ``name`` for ``job``."""
        point = self.points(name)[(("periodic.job", job),)]
        return point.count, point.sum


def _attr(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    return span.attributes[key]


def key(job: str = JOB, **attributes: str) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted({"periodic.job": job, **attributes}.items()))


def make_otel(
    *processors: SpanProcessor, sampler: Sampler | None = None
) -> tuple[OTel, TracerProvider, MeterProvider]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    for processor in processors:
        tracer_provider.add_span_processor(processor)
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    return OTel(exporter, reader, tracer_provider), tracer_provider, meter_provider


@pytest.fixture
def use_providers() -> Iterator[Any]:
    """``use_providers(tp, mp)`` routes periodic's telemetry there until the test ends."""
    used: list[Any] = []

    def use(tracer_provider: Any, meter_provider: Any) -> None:
        used.extend([tracer_provider, meter_provider])
        _telemetry._use_providers(tracer_provider, meter_provider)

    try:
        yield use
    finally:
        _telemetry._use_providers()
        for provider in used:
            shutdown = getattr(provider, "shutdown", None)
            if shutdown is not None:
                shutdown()


@pytest.fixture
def otel(use_providers: Any) -> OTel:
    """A real SDK with an in-memory span exporter and metric reader."""
    sdk, tracer_provider, meter_provider = make_otel()
    use_providers(tracer_provider, meter_provider)
    return sdk


async def sleep_forever() -> None:
    await trio.sleep_forever()


# -- spans ---------------------------------------------------------------------------


async def test_an_ok_run_is_one_internal_root_span(
    autojump_clock: trio.testing.MockClock, otel: OTel
) -> None:
    async def job() -> None:
        await trio.sleep(0.5)

    await serve_for(Periodic(run=job, every=2, name=JOB), 3)
    [span] = otel.spans()
    assert span.name == "periodic.run"
    assert span.kind is SpanKind.INTERNAL
    assert span.parent is None
    assert list(span.links) == []
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "periodic.job": JOB,
        "periodic.run_id": 1,
        "periodic.scheduled_at": 2.0,
        "periodic.lateness": 0.0,
        "periodic.outcome": "ok",
    }
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "periodic"
    assert span.instrumentation_scope.version == periodic.__version__


@pytest.mark.parametrize("kind", ["async", "child task", "sync"])
async def test_the_jobs_spans_are_children_of_the_run(
    autojump_clock: trio.testing.MockClock, otel: OTel, kind: str
) -> None:
    def make_inner() -> None:
        with otel.tracer.start_as_current_span("inner"):
            pass

    async def async_job() -> None:
        make_inner()

    async def spawning_job() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(async_job)

    run = {"async": async_job, "child task": spawning_job, "sync": make_inner}[kind]
    await serve_for(Periodic(run=run, every=1, name=JOB), 1.5)
    [outer] = otel.spans()
    [inner] = otel.spans("inner")
    assert outer.context is not None
    assert inner.parent is not None
    assert inner.parent.span_id == outer.context.span_id
    assert inner.context is not None
    assert inner.context.trace_id == outer.context.trace_id


async def test_each_run_is_a_new_trace_linked_to_the_span_serve_started_in(
    autojump_clock: trio.testing.MockClock, otel: OTel
) -> None:
    async def job() -> None:
        pass

    with otel.tracer.start_as_current_span("app") as app:
        await serve_for(Periodic(run=job, every=1, name=JOB), 2.5)
    runs = otel.run_spans()
    assert sorted(runs) == [1, 2]
    app_context = app.get_span_context()
    trace_ids = set()
    for span in runs.values():
        assert span.parent is None
        assert span.context is not None
        trace_ids.add(span.context.trace_id)
        [link] = span.links
        assert link.context == app_context
    assert app_context.trace_id not in trace_ids
    assert len(trace_ids) == 2


async def test_the_run_context_is_detached_when_the_run_finishes(otel: OTel) -> None:
    # Drives the subscriber directly, in one task, to see that task's context.
    before = otel_context.get_current()
    _telemetry._subscriber(Started(job=JOB, run_id=1, scheduled_at=0.0, started_at=0.0))
    current = trace.get_current_span()
    assert current.is_recording()
    _telemetry._subscriber(Finished(job=JOB, run_id=1, outcome=Outcome.OK, duration=0.0))
    assert otel_context.get_current() == before
    assert not trace.get_current_span().is_recording()
    [span] = otel.spans()
    assert span.context == current.get_span_context()


async def test_the_fence_is_an_attribute_when_set(otel: OTel) -> None:
    _telemetry._subscriber(
        Started(job=JOB, run_id=3, scheduled_at=10.0, started_at=10.25, fence=42)
    )
    _telemetry._subscriber(Finished(job=JOB, run_id=3, outcome=Outcome.OK, duration=1.0))
    [span] = otel.spans()
    assert _attr(span, "periodic.fence") == 42
    assert _attr(span, "periodic.lateness") == 0.25
    assert otel.histogram("periodic.tick.lateness") == (1, 0.25)


async def test_a_sampler_sees_the_attributes_and_the_jobs_spans_follow_its_decision(
    autojump_clock: trio.testing.MockClock, use_providers: Any
) -> None:
    class DropNoisyRuns(Sampler):
        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: Any = None,
            attributes: Any = None,
            links: Any = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            if name == "periodic.run" and (attributes or {}).get("periodic.job") == "noisy":
                return SamplingResult(Decision.DROP)
            return ALWAYS_ON.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return "DropNoisyRuns"

    otel, tracer_provider, meter_provider = make_otel(sampler=ParentBased(DropNoisyRuns()))
    use_providers(tracer_provider, meter_provider)

    def job_named(name: str) -> Periodic:
        async def job() -> None:
            with otel.tracer.start_as_current_span(f"inner {name}"):
                pass

        return Periodic(run=job, every=1, name=name)

    async with trio.open_nursery() as nursery:
        await nursery.start(job_named("noisy").serve)
        await nursery.start(job_named("kept").serve)
        await trio.sleep(1.5)
        nursery.cancel_scope.cancel()
    assert [_attr(s, "periodic.job") for s in otel.spans()] == ["kept"]
    assert [s.name for s in otel.spans("inner noisy")] == []
    assert [s.name for s in otel.spans("inner kept")] == ["inner kept"]
    # Metrics do not sample.
    assert otel.sums("periodic.runs") == {
        key("noisy", outcome="ok"): 1,
        key("kept", outcome="ok"): 1,
    }


# -- outcomes ------------------------------------------------------------------------


async def test_ok(autojump_clock: trio.testing.MockClock, otel: OTel) -> None:
    async def job() -> None:
        await trio.sleep(0.25)

    await serve_for(Periodic(run=job, every=2, name=JOB), 4.5)
    runs = otel.run_spans()
    assert sorted(runs) == [1, 2]
    assert [_attr(runs[i], "periodic.scheduled_at") for i in (1, 2)] == [2.0, 4.0]
    assert otel.sums("periodic.runs") == {key(outcome="ok"): 2}
    assert otel.histogram("periodic.run.duration") == (2, 0.5)
    assert otel.histogram("periodic.tick.lateness") == (2, 0.0)
    assert otel.sums("periodic.running") == {key(): 0}
    assert otel.sums("periodic.skips") == {}


async def test_overdue_jobs_are_counted_up_and_down(
    autojump_clock: trio.testing.MockClock, otel: OTel
) -> None:
    failing = True

    async def job() -> None:
        if failing:
            raise ValueError("down")

    p = Periodic(run=job, every=10, overdue_after=15, name=JOB)
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        await trio.sleep(14)
        assert otel.sums("periodic.overdue") == {}
        await trio.sleep(2)  # overdue at 15
        assert otel.sums("periodic.overdue") == {key(): 1}
        failing = False
        await trio.sleep(5)  # the run at 20 is ok
        assert otel.sums("periodic.overdue") == {key(): 0}
        failing = True
        await trio.sleep(20)  # overdue again at 35
        assert otel.sums("periodic.overdue") == {key(): 1}
        nursery.cancel_scope.cancel()
    assert otel.sums("periodic.overdue") == {key(): 0}  # serve ended: not overdue any more


async def test_error(autojump_clock: trio.testing.MockClock, otel: OTel) -> None:
    async def job() -> None:
        await trio.sleep(0.5)
        raise ValueError("boom")

    await serve_for(Periodic(run=job, every=1, name=JOB), 1.5)
    [span] = otel.spans()
    assert _attr(span, "periodic.outcome") == "error"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError: boom"
    [exception] = [e for e in span.events if e.name == "exception"]
    assert exception.attributes is not None
    assert exception.attributes["exception.type"] == "ValueError"
    assert exception.attributes["exception.message"] == "boom"
    assert "periodic.cancel_reason" not in (span.attributes or {})
    assert otel.sums("periodic.runs") == {key(outcome="error"): 1}
    assert otel.histogram("periodic.run.duration") == (1, 0.5)
    assert otel.sums("periodic.running") == {key(): 0}


async def test_timeout(autojump_clock: trio.testing.MockClock, otel: OTel) -> None:
    await serve_for(Periodic(run=sleep_forever, every=2, timeout=1.25, name=JOB), 3.5)
    [span] = otel.spans()
    assert _attr(span, "periodic.outcome") == "timeout"
    assert span.status.status_code is StatusCode.UNSET
    assert span.events == ()
    assert "periodic.cancel_reason" not in (span.attributes or {})
    assert otel.sums("periodic.runs") == {key(outcome="timeout"): 1}
    assert otel.histogram("periodic.run.duration") == (1, 1.25)


async def test_cancelled_by_stop_previous(
    autojump_clock: trio.testing.MockClock, otel: OTel
) -> None:
    job = Periodic(
        run=sleep_forever, every=2, on_overlap="stop_previous", job_shutdown=0, name=JOB
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(job.serve)
        await trio.sleep(4.5)
        assert otel.sums("periodic.running") == {key(): 1}
        [span] = otel.spans()
        nursery.cancel_scope.cancel()
    assert _attr(span, "periodic.run_id") == 1
    assert _attr(span, "periodic.outcome") == "cancelled"
    assert _attr(span, "periodic.cancel_reason") == "stop_previous"
    assert span.status.status_code is StatusCode.UNSET
    assert otel.sums("periodic.runs") == {key(outcome="cancelled"): 2}
    assert otel.histogram("periodic.run.duration") == (2, 2.0 + 0.5)  # run 2 at shutdown


async def test_cancelled_at_shutdown(autojump_clock: trio.testing.MockClock, otel: OTel) -> None:
    await serve_for(Periodic(run=sleep_forever, every=2, job_shutdown=0.75, name=JOB), 2.5)
    [span] = otel.spans()
    assert _attr(span, "periodic.outcome") == "cancelled"
    assert _attr(span, "periodic.cancel_reason") == "shutdown"
    assert span.status.status_code is StatusCode.UNSET
    assert otel.sums("periodic.runs") == {key(outcome="cancelled"): 1}
    assert otel.histogram("periodic.run.duration") == (1, 1.25)
    assert otel.sums("periodic.running") == {key(): 0}


async def test_running_counts_the_runs_going_on(
    autojump_clock: trio.testing.MockClock, otel: OTel
) -> None:
    async def job() -> None:
        await trio.sleep(2.5)

    async with trio.open_nursery() as nursery:
        await nursery.start(Periodic(run=job, every=1, name=JOB).serve)
        await trio.sleep(3.25)  # runs from 1.0, 2.0 and 3.0 are going on
        assert otel.sums("periodic.running") == {key(): 3}
        await trio.sleep(0.5)  # the run from 1.0 is over
        assert otel.sums("periodic.running") == {key(): 2}
        nursery.cancel_scope.cancel()
    assert otel.sums("periodic.running") == {key(): 0}


# -- skips ---------------------------------------------------------------------------


async def test_skipped_for_overlap(autojump_clock: trio.testing.MockClock, otel: OTel) -> None:
    async def job() -> None:
        await trio.sleep(2.5)

    await serve_for(Periodic(run=job, every=1, on_overlap="ignore", name=JOB), 3.75)
    assert otel.sums("periodic.skips") == {key(reason="overlap"): 2}  # at 2.0 and 3.0
    assert otel.sums("periodic.runs") == {key(outcome="ok"): 1}
    assert len(otel.spans()) == 1


async def test_skipped_by_the_guard(autojump_clock: trio.testing.MockClock, otel: OTel) -> None:
    await serve_for(Periodic(run=sleep_forever, every=1, when=lambda: False, name=JOB), 3.5)
    assert otel.sums("periodic.skips") == {key(reason="guard"): 3}
    assert otel.spans() == []
    assert "periodic.runs" not in otel.metrics()


async def test_skipped_because_the_guard_raised(
    autojump_clock: trio.testing.MockClock, otel: OTel
) -> None:
    def guard() -> bool:
        raise RuntimeError("no database")

    await serve_for(Periodic(run=sleep_forever, every=1, when=guard, name=JOB), 2.5)
    assert otel.sums("periodic.skips") == {key(reason="guard_error"): 2}
    assert otel.spans() == []


async def test_missed_ticks_count_every_tick(
    autojump_clock: trio.testing.MockClock, otel: OTel
) -> None:
    slow_once = [3.5]

    async def guard() -> bool:
        if slow_once:
            await trio.sleep(slow_once.pop())  # the tick at 1.0 lets its run start at 4.5
        return True

    async def job() -> None:
        pass

    await serve_for(Periodic(run=job, every=1, when=guard, name=JOB), 4.75)
    # Woken at 4.5 for the tick due at 2.0: 2.0 and 3.0 were missed, 4.0 runs late.
    assert otel.sums("periodic.skips") == {key(reason="missed"): 2}
    runs = otel.run_spans()
    assert [_attr(runs[i], "periodic.scheduled_at") for i in (1, 2)] == [1.0, 4.0]
    assert [_attr(runs[i], "periodic.lateness") for i in (1, 2)] == [3.5, 0.5]
    assert otel.histogram("periodic.tick.lateness") == (2, 4.0)


# -- metadata ------------------------------------------------------------------------


async def test_instruments_names_units_and_scope(
    autojump_clock: trio.testing.MockClock, otel: OTel
) -> None:
    await serve_for(Periodic(run=sleep_forever, every=1, when=lambda: False, name="g"), 1.5)
    await serve_for(Periodic(run=trio.lowlevel.checkpoint, every=1, name=JOB), 1.5)
    metrics = otel.metrics()
    assert {name: m.unit for name, m in metrics.items()} == {
        "periodic.runs": "{run}",
        "periodic.skips": "{tick}",
        "periodic.run.duration": "s",
        "periodic.tick.lateness": "s",
        "periodic.running": "{run}",
    }
    [resource_metrics] = otel.reader.get_metrics_data().resource_metrics  # type: ignore[union-attr]
    [scope_metrics] = resource_metrics.scope_metrics
    assert (scope_metrics.scope.name, scope_metrics.scope.version) == (
        "periodic",
        periodic.__version__,
    )
    # Advisory buckets (opentelemetry-api >= 1.30) are in seconds, not milliseconds.
    [point] = metrics["periodic.run.duration"].data.data_points
    assert point.explicit_bounds[0] < 1
    assert point.explicit_bounds[-1] >= 3600


# -- containment ---------------------------------------------------------------------


class Boom(Exception):
    pass


class RaisingOnStart(SpanProcessor):
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        raise Boom("on_start")


class RaisingOnEnd(SpanProcessor):
    def on_end(self, span: ReadableSpan) -> None:
        raise Boom("on_end")


class RaisingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise Boom("export")


class RaisingCounter(NoOpCounter):
    def add(self, *args: Any, **kwargs: Any) -> None:
        raise Boom("add")


class RaisingUpDownCounter(NoOpUpDownCounter):
    def add(self, *args: Any, **kwargs: Any) -> None:
        raise Boom("add")


class RaisingHistogram(NoOpHistogram):
    def record(self, *args: Any, **kwargs: Any) -> None:
        raise Boom("record")


class RaisingMeter(NoOpMeter):
    def create_counter(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return RaisingCounter(name)

    def create_up_down_counter(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return RaisingUpDownCounter(name)

    def create_histogram(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return RaisingHistogram(name)


class RaisingMeterProvider(NoOpMeterProvider):
    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return RaisingMeter(name)


class RaisingTracerProvider(NoOpTracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        raise Boom("get_tracer")


async def run_a_few(events: list[Event]) -> list[tuple[str, int, str]]:
    """Serve a job for three runs; what finished, and how."""

    async def job() -> None:
        await trio.sleep(0.5)

    await serve_for(Periodic(run=job, every=1, name=JOB), 3.5)
    return [
        (type(e).__name__, e.run_id, str(e.outcome)) for e in events if isinstance(e, Finished)
    ]


@pytest.mark.parametrize(
    "failure", ["on_start", "on_end", "export", "metrics", "get_tracer", "everything"]
)
async def test_a_failing_sdk_never_breaks_the_scheduler(
    autojump_clock: trio.testing.MockClock,
    use_providers: Any,
    events: list[Event],
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    processors: dict[str, list[SpanProcessor]] = {
        "on_start": [RaisingOnStart()],
        "on_end": [RaisingOnEnd()],
        "export": [SimpleSpanProcessor(RaisingExporter())],
        "everything": [RaisingOnStart(), RaisingOnEnd()],
    }
    otel, tracer_provider, meter_provider = make_otel(*processors.get(failure, []))
    tp: Any = RaisingTracerProvider() if failure == "get_tracer" else tracer_provider
    mp: Any = RaisingMeterProvider() if failure in ("metrics", "everything") else meter_provider
    use_providers(tp, mp)
    caplog.set_level(logging.ERROR)

    assert await run_a_few(events) == [("Finished", i, "ok") for i in (1, 2, 3)]
    assert [e.run_id for e in events if isinstance(e, Started)] == [1, 2, 3]

    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures, "the failure was not logged"
    assert all(r.exc_info is not None for r in failures)
    if failure in ("on_start", "everything"):
        assert otel.spans() == []
    elif failure in ("on_end", "export", "metrics"):
        assert sorted(otel.run_spans()) == [1, 2, 3]
    if failure in ("on_start", "on_end", "export"):
        assert otel.sums("periodic.runs") == {key(outcome="ok"): 3}
        assert otel.sums("periodic.running") == {key(): 0}


async def test_a_failed_start_leaves_nothing_attached(use_providers: Any) -> None:
    otel, tracer_provider, meter_provider = make_otel(RaisingOnStart())
    use_providers(tracer_provider, meter_provider)
    before = otel_context.get_current()
    _telemetry._subscriber(Started(job=JOB, run_id=1, scheduled_at=0.0, started_at=0.0))
    assert otel_context.get_current() == before
    _telemetry._subscriber(Finished(job=JOB, run_id=1, outcome=Outcome.OK, duration=0.0))
    assert otel_context.get_current() == before
    assert otel.sums("periodic.running") == {key(): 0}


async def test_a_failed_end_still_detaches_and_ends_the_span(use_providers: Any) -> None:
    otel, tracer_provider, meter_provider = make_otel(RaisingOnEnd())
    use_providers(tracer_provider, meter_provider)
    before = otel_context.get_current()
    _telemetry._subscriber(Started(job=JOB, run_id=1, scheduled_at=0.0, started_at=0.0))
    span = trace.get_current_span()
    assert span.is_recording()
    _telemetry._subscriber(Finished(job=JOB, run_id=1, outcome=Outcome.OK, duration=0.0))
    assert otel_context.get_current() == before
    assert not span.is_recording()  # ended, although on_end raised
    assert otel.sums("periodic.running") == {key(): 0}


async def test_a_finished_whose_start_was_never_seen_leaves_other_runs_alone(otel: OTel) -> None:
    # A job that serves another scheduler: the inner runs' tasks inherit the outer run's
    # context. If the inner Started never reached us, its Finished must not end the outer
    # span.
    _telemetry._subscriber(Started(job="outer", run_id=1, scheduled_at=0.0, started_at=0.0))
    outer = trace.get_current_span()

    async def inner_finished_only() -> None:
        _telemetry._subscriber(Finished(job="inner", run_id=1, outcome=Outcome.OK, duration=0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(inner_finished_only)
    assert outer.is_recording()
    assert trace.get_current_span() is outer
    _telemetry._subscriber(Finished(job="outer", run_id=1, outcome=Outcome.OK, duration=0))
    assert not outer.is_recording()
    assert [_attr(s, "periodic.job") for s in otel.spans()] == ["outer"]
    assert otel.sums("periodic.runs") == {
        key("outer", outcome="ok"): 1,
        key("inner", outcome="ok"): 1,
    }
    assert otel.sums("periodic.running") == {key("outer"): 0}


async def test_nested_schedulers_each_get_their_span(
    autojump_clock: trio.testing.MockClock, otel: OTel
) -> None:
    async def inner() -> None:
        pass

    async def outer() -> None:
        await serve_for(Periodic(run=inner, every=1, name="inner"), 2.5)

    await serve_for(Periodic(run=outer, every=1, name="outer", job_shutdown=math.inf), 1.5)
    spans = otel.spans()
    assert [_attr(s, "periodic.job") for s in spans] == ["inner", "inner", "outer"]
    assert all(s.parent is None for s in spans)
    outer_span = spans[-1]
    assert outer_span.context is not None
    for inner_span in spans[:2]:
        [link] = inner_span.links
        assert link.context.span_id == outer_span.context.span_id


async def test_no_sdk_costs_nothing_visible(
    autojump_clock: trio.testing.MockClock,
    use_providers: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    use_providers(NoOpTracerProvider(), NoOpMeterProvider())
    seen: list[bool] = []

    async def job() -> None:
        seen.append(trace.get_current_span().get_span_context().is_valid)

    caplog.set_level(logging.WARNING)
    await serve_for(Periodic(run=job, every=1, name=JOB), 2.5)
    assert seen == [False, False]
    assert caplog.records == []


# -- the global providers, in a process of their own -----------------------------------

GLOBAL_SDK_SCRIPT = textwrap.dedent(
    """
    import json

    import trio
    import trio.testing

    import periodic
    from opentelemetry import metrics, trace

    async def job():
        inner = trace.get_tracer("the-job").start_span("inner")
        inner.end()

    async def serve_once():
        async with trio.open_nursery() as nursery:
            await nursery.start(periodic.Periodic(run=job, every=1, name="j").serve)
            await trio.sleep(1.5)
            nursery.cancel_scope.cancel()

    # Runs before any SDK exists: periodic's instruments are the API's proxies.
    trio.run(serve_once, clock=trio.testing.MockClock(autojump_threshold=0))

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    trio.run(serve_once, clock=trio.testing.MockClock(autojump_threshold=0))

    spans = {
        s.name: {
            "span_id": s.context.span_id,
            "parent": s.parent and s.parent.span_id,
            "scope": [s.instrumentation_scope.name, s.instrumentation_scope.version],
            "job": (s.attributes or {}).get("periodic.job"),
        }
        for s in exporter.get_finished_spans()
    }
    runs = {
        m.name: [[dict(p.attributes), p.value] for p in m.data.data_points]
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "periodic.runs"
    }
    print(json.dumps({"spans": spans, "runs": runs}))
    """
)


def test_an_sdk_installed_after_import_and_after_the_first_runs_is_used() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("OTEL_PYTHON_TRACER_PROVIDER", None)
    env.pop("OTEL_PYTHON_METER_PROVIDER", None)
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL_SDK_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    found = json.loads(done.stdout)
    spans = found["spans"]
    assert sorted(spans) == ["inner", "periodic.run"]
    run = spans["periodic.run"]
    assert run["scope"] == ["periodic", periodic.__version__]
    assert run["job"] == "j"
    assert spans["inner"]["parent"] == run["span_id"]
    assert found["runs"] == {"periodic.runs": [[{"periodic.job": "j", "outcome": "ok"}, 1]]}


def test_the_console_example_on_the_docs_page_prints_spans_and_metrics() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "telemetry.md").read_text()
    found = re.search(r"^% example: console\n```python\n(.*?)^```$", page, re.M | re.S)
    assert found, "no console example in docs/telemetry.md"
    driver = textwrap.dedent(
        """
        import trio, trio.testing
        import periodic

        async def main():
            job = periodic.Periodic(run=trio.lowlevel.checkpoint, every=1, name="j")
            async with trio.open_nursery() as nursery:
                await nursery.start(job.serve)
                await trio.sleep(1.5)
                nursery.cancel_scope.cancel()

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", found.group(1) + driver],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert '"name": "periodic.run"' in done.stdout
    assert '"periodic.job": "j"' in done.stdout
    for metric in ("periodic.runs", "periodic.run.duration", "periodic.running"):
        assert f'"name": "{metric}"' in done.stdout


# -- leadership ---------------------------------------------------------------------------


async def test_leadership_changes_are_counted(
    autojump_clock: trio.testing.MockClock, otel: OTel
) -> None:
    peer = LocalPeer(name="cluster")
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        peer.set_leader(False)
        peer.set_leader(True)
        nursery.cancel_scope.cancel()
    assert otel.sums("periodic.leadership.changes") == {
        (("change", "gained"), ("periodic.peer", "cluster")): 2,
        (("change", "lost"), ("periodic.peer", "cluster")): 2,
    }


async def test_elections_are_counted_by_result(otel: OTel, tmp_path: Path) -> None:
    first = SQLitePeer(tmp_path / "peers.db", name="e", ttl=1.0, node="a")
    second = SQLitePeer(tmp_path / "peers.db", name="e", ttl=1.0, node="b")
    async with trio.open_nursery() as nursery:
        await nursery.start(first.serve)
        with trio.fail_after(5):
            while not first.is_leader():
                await trio.sleep(0.01)
        await nursery.start(second.serve)
        with trio.fail_after(5):
            while second.leader() != "a":
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    sums = otel.sums("periodic.peer.elections")
    assert sums[(("periodic.peer", "e"), ("result", "leader"))] >= 1
    assert sums[(("periodic.peer", "e"), ("result", "follower"))] >= 1


async def test_each_try_of_a_retried_run_gets_a_span_and_the_run_counts_once(
    autojump_clock: trio.testing.MockClock, otel: OTel
) -> None:
    tries: list[float] = []

    async def job() -> None:
        tries.append(trio.current_time())
        with otel.tracer.start_as_current_span("inner"):
            pass
        if len(tries) < 3:
            raise ValueError(f"try {len(tries)}")

    await serve_for(Periodic(run=job, every=10, retry=periodic.Retry(delay=1), name=JOB), 15)
    spans = otel.spans()
    assert tries == [10.0, 11.0, 13.0]
    assert [_attr(s, "periodic.outcome") for s in spans] == ["error", "error", "ok"]
    assert [dict(s.attributes or {}).get("periodic.attempt") for s in spans] == [1, 2, 3]
    assert [dict(s.attributes or {}).get("periodic.will_retry") for s in spans] == [
        True,
        True,
        False,
    ]
    assert {_attr(s, "periodic.run_id") for s in spans} == {1}
    assert [s.status.status_code for s in spans] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    # The job's own spans are children of the span of their try.
    inner = otel.spans("inner")
    assert [s.parent.span_id for s in inner if s.parent] == [
        s.context.span_id for s in spans if s.context
    ]
    assert otel.sums("periodic.runs") == {key(outcome="ok"): 1}
    assert otel.sums("periodic.running") == {key(): 0}


async def test_the_pending_reminders_gauge_counts_each_name(
    autojump_clock: trio.testing.MockClock, otel: OTel
) -> None:
    import datetime

    from periodic.reminders import Reminders
    from periodic.stores import MemoryStore

    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)

    def wall() -> datetime.datetime:
        return start + datetime.timedelta(seconds=trio.current_time())

    async def handler(reminder: object) -> None:
        pass

    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)
        a = Reminders(store, handler, name="a", wall_clock=wall)
        b = Reminders(store, handler, name="b", wall_clock=wall)
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        for name in ("x", "y", "z"):
            await a.remind(name, at=start + datetime.timedelta(hours=1))
        await b.remind_after("w", 3600)
        await trio.sleep(11)  # the counts are read every 10 s
        gauge = otel.points("periodic.reminders.pending")
        assert {k: p.value for k, p in gauge.items()} == {key(job="a"): 3, key(job="b"): 1}
        await a.cancel("x")
        await trio.sleep(10)
        gauge = otel.points("periodic.reminders.pending")
        assert {k: p.value for k, p in gauge.items()} == {key(job="a"): 2, key(job="b"): 1}
        nursery.cancel_scope.cancel()
    # A Reminders that stopped serving is forgotten.
    assert otel.points("periodic.reminders.pending") == {}
