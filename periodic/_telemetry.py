"""The OpenTelemetry subscriber: one span per run and a few metrics, from the event stream.

Like the log subscriber, this module is only a consumer of events; the scheduler knows
nothing of OpenTelemetry. It needs nothing but ``opentelemetry-api``: with no SDK
configured the API hands out no-op objects and each event costs a few cheap calls.

A run's span is started on :class:`~periodic.events.Started` and ended on
:class:`~periodic.events.Finished`, which the scheduler emits synchronously in the run's
own task. Started makes the span the current context of that task, so the spans the job
creates (in the task, in tasks it starts, or in the worker thread of a sync job) are its
children; Finished restores the task's previous context.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Sequence
from contextvars import Token

import attrs
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from ._events import (
    Event,
    Finished,
    LeadershipChanged,
    Outcome,
    Overdue,
    Recovered,
    Retrying,
    Skipped,
    Started,
    subscribe,
)
from ._version import __version__

_log = logging.getLogger("periodic")

SPAN_NAME = "periodic.run"

# Periodic jobs last from milliseconds to hours, and a tick is usually late by far less
# than a second: the SDK's default buckets (0..10000, meant for milliseconds) fit neither.
_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
_LATENESS_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

# Each run starts a new trace rather than joining whatever span was current where
# ``serve`` was started: a scheduler lives for days, and one trace holding every run of
# it would never end. The span it would have joined is linked instead.
_ROOT = Context()

# The attribute dicts of metrics are reused, never mutated: a few (job, outcome) pairs
# cover a whole process, and reusing them spares an allocation per measurement.
# Bounded all the same, in case job names are made up on the fly.
_ATTRS_CACHE_MAX = 1024
_AttrKey = tuple[str, str, str]
_attrs_cache: dict[_AttrKey, dict[str, str]] = {}


def _attrs(job: str, key: str = "", value: str = "") -> dict[str, str]:
    cache_key = (job, key, value)
    cached = _attrs_cache.get(cache_key)
    if cached is None:
        if len(_attrs_cache) >= _ATTRS_CACHE_MAX:
            _attrs_cache.clear()
        cached = {"periodic.job": job, key: value} if key else {"periodic.job": job}
        _attrs_cache[cache_key] = cached
    return cached


@attrs.frozen
class _Instruments:
    tracer: trace.Tracer
    runs: metrics.Counter
    skips: metrics.Counter
    duration: metrics.Histogram
    lateness: metrics.Histogram
    running: metrics.UpDownCounter
    leadership: metrics.Counter
    elections: metrics.Counter
    pending: metrics.ObservableGauge
    overdue: metrics.UpDownCounter

    @classmethod
    def create(
        cls,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
    ) -> _Instruments:
        # The global getters hand out proxies until an SDK is installed, and the proxies
        # switch to the SDK's objects once it is: configuring the SDK after periodic was
        # imported, or after the first runs, works.
        if tracer_provider is None:
            tracer = trace.get_tracer("periodic", __version__)
        else:
            tracer = tracer_provider.get_tracer("periodic", __version__)
        if meter_provider is None:
            meter = metrics.get_meter("periodic", __version__)
        else:
            meter = meter_provider.get_meter("periodic", __version__)
        return cls(
            tracer=tracer,
            runs=meter.create_counter(
                "periodic.runs", unit="{run}", description="Runs finished, by outcome."
            ),
            skips=meter.create_counter(
                "periodic.skips", unit="{tick}", description="Ticks that started no run."
            ),
            duration=_histogram(
                meter, "periodic.run.duration", "How long runs took.", _DURATION_BUCKETS
            ),
            lateness=_histogram(
                meter,
                "periodic.tick.lateness",
                "Time between a tick's due time and the start of its run.",
                _LATENESS_BUCKETS,
            ),
            running=meter.create_up_down_counter(
                "periodic.running", unit="{run}", description="Runs going on now."
            ),
            leadership=meter.create_counter(
                "periodic.leadership.changes",
                unit="{change}",
                description="Leadership gained or lost by a peer, by change.",
            ),
            elections=meter.create_counter(
                "periodic.peer.elections",
                unit="{election}",
                description="Lease elections a peer took part in, by result.",
            ),
            pending=meter.create_observable_gauge(
                "periodic.reminders.pending",
                callbacks=[_observe_pending],
                unit="{reminder}",
                description="Reminders pending in the store, by Reminders' name.",
            ),
            overdue=meter.create_up_down_counter(
                "periodic.overdue",
                unit="{job}",
                description="Jobs overdue now: no run finished ok for their overdue_after.",
            ),
        )


# The latest count of pending reminders of each Reminders being served, by name.
_pending: dict[str, int] = {}


def _observe_pending(options: metrics.CallbackOptions) -> list[metrics.Observation]:
    return [metrics.Observation(count, _attrs(name)) for name, count in _pending.items()]


def _histogram(
    meter: metrics.Meter, name: str, description: str, buckets: Sequence[float]
) -> metrics.Histogram:
    try:
        return meter.create_histogram(
            name, unit="s", description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # opentelemetry-api < 1.30 takes no bucket advice
        return meter.create_histogram(name, unit="s", description=description)


@attrs.define(eq=False)
class _RunState:
    """What Started left for the Finished of the same run."""

    job: str
    run_id: int
    span: trace.Span | None = None
    token: Token[Context] | None = None
    counted_running: bool = False
    # For the spans of later tries (retries): the first span's attributes and link.
    attributes: dict[str, str | int | float] = attrs.field(factory=dict)
    link: tuple[Link, ...] | None = None


# Per-run state lives in a context variable rather than in a dict keyed by (job, run_id):
# Started and Finished of a run are emitted in the run's own task, and every Trio task has
# a context of its own, so the variable is private to the run without any key. A dict
# would mix up two schedulers that share a job name (both count runs from 1) and would
# grow whenever a Finished never came to clear it. Tasks and threads the job starts copy
# the variable but never emit this run's events; the (job, run_id) check below is for a
# Finished whose Started we never saw (the subscriber came later) in a task that
# inherited an outer run's state (a job serving another scheduler).
try:  # the API's stand-in until an SDK sets a meter provider (a private class)
    from opentelemetry.metrics._internal import _ProxyMeterProvider as _PROXY_METER_PROVIDER
except ImportError:  # pragma: no cover - then we cannot tell, and always record
    _PROXY_METER_PROVIDER = None  # type: ignore[assignment,misc]

# The API keeps the providers an SDK sets in these module globals (None until then). Read
# directly, they tell "no SDK" in a fraction of the time get_*_provider() takes (which also
# looks at the environment): the common case, on every event. Should a future API rename
# them, the sentinel sends every call down the slow, public path.
_MISSING = object()
try:
    from opentelemetry.metrics import _internal as _metrics_internal
except ImportError:  # pragma: no cover
    _metrics_internal = None  # type: ignore[assignment]
# Providers named in the environment are loaded by the API at first use.
_ENV_PROVIDERS = bool(
    {"OTEL_PYTHON_TRACER_PROVIDER", "OTEL_PYTHON_METER_PROVIDER"} & set(os.environ)
)


def _api_has_no_provider() -> bool:
    return (
        not _ENV_PROVIDERS
        and getattr(trace, "_TRACER_PROVIDER", _MISSING) is None
        and getattr(_metrics_internal, "_METER_PROVIDER", _MISSING) is None
    )


_run_state: contextvars.ContextVar[_RunState | None] = contextvars.ContextVar(
    "periodic_telemetry_run", default=None
)


class _TelemetrySubscriber:
    """Turns events into spans and measurements; contains every error OpenTelemetry raises."""

    def __init__(self) -> None:
        self._tracer_provider: trace.TracerProvider | None = None
        self._meter_provider: metrics.MeterProvider | None = None
        self._instruments: _Instruments | None = None

    def use_providers(
        self,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
    ) -> None:
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._instruments = None

    def _active(self) -> bool:
        """Whether an SDK (or an injected provider) is there to receive anything."""
        if self._tracer_provider is not None or self._meter_provider is not None:
            return True
        if _api_has_no_provider():
            return False
        return not (
            isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
            and _PROXY_METER_PROVIDER is not None
            and isinstance(metrics.get_meter_provider(), _PROXY_METER_PROVIDER)
        )

    def __call__(self, event: Event) -> None:
        if not self._active():
            # No SDK: the API would hand out no-op objects, at a few microseconds a run.
            # A run started while an SDK was there still gets its span ended.
            if isinstance(event, Finished) and _run_state.get() is not None:
                self._finished(event)
            return
        if isinstance(event, Started):
            # First, so that whatever fails below, Finished finds what there is to undo.
            state = _RunState(event.job, event.run_id)
            _run_state.set(state)
            self._started(event, state, self._get_instruments())
        elif isinstance(event, Finished):
            self._finished(event)
        elif isinstance(event, Retrying):
            self._retrying(event, self._get_instruments())
        elif isinstance(event, Skipped):
            self._skipped(event, self._get_instruments())
        elif isinstance(event, LeadershipChanged):
            self._leadership(event, self._get_instruments())
        elif isinstance(event, (Overdue, Recovered)):
            self._overdue(event, self._get_instruments())

    def _overdue(self, event: Overdue | Recovered, inst: _Instruments) -> None:
        try:
            inst.overdue.add(1 if isinstance(event, Overdue) else -1, {"periodic.job": event.job})
        except Exception:
            _log.exception("OpenTelemetry raised while counting an overdue job")

    def _leadership(self, event: LeadershipChanged, inst: _Instruments) -> None:
        try:
            inst.leadership.add(
                1,
                {"periodic.peer": event.name, "change": "gained" if event.gained else "lost"},
            )
        except Exception:
            _log.exception("OpenTelemetry raised while counting a leadership change")

    def record_election(self, name: str, result: str) -> None:
        try:
            self._get_instruments().elections.add(1, {"periodic.peer": name, "result": result})
        except Exception:
            _log.exception("OpenTelemetry raised while counting an election")

    def _get_instruments(self) -> _Instruments:
        instruments = self._instruments
        if instruments is None:
            instruments = _Instruments.create(self._tracer_provider, self._meter_provider)
            self._instruments = instruments
        return instruments

    def _started(self, event: Started, state: _RunState, inst: _Instruments) -> None:
        lateness = event.started_at - event.scheduled_at
        attributes: dict[str, str | int | float] = {
            "periodic.job": event.job,
            "periodic.run_id": event.run_id,
            "periodic.scheduled_at": event.scheduled_at,
            "periodic.lateness": lateness,
        }
        if event.fence is not None:
            attributes["periodic.fence"] = event.fence
        state.attributes = attributes
        ambient = trace.get_current_span().get_span_context()
        state.link = (Link(ambient),) if ambient.is_valid else None
        self._start_span(event, state, inst, attributes)
        job_attrs = _attrs(event.job)
        try:
            inst.running.add(1, job_attrs)
            state.counted_running = True
        except Exception:
            _contained(event, "counting the run as running")
        try:
            inst.lateness.record(lateness, job_attrs)
        except Exception:
            _contained(event, "recording the tick's lateness")

    def _start_span(
        self,
        event: Started | Retrying,
        state: _RunState,
        inst: _Instruments,
        attributes: dict[str, str | int | float],
    ) -> None:
        try:
            span = inst.tracer.start_span(
                SPAN_NAME,
                context=_ROOT,
                kind=SpanKind.INTERNAL,
                attributes=attributes,
                links=state.link,
            )
            state.span = span
            # A span the SDK sampled out still has a valid context, which children must
            # inherit to be sampled out too; the no-op API's has none, and is not attached.
            if span.get_span_context().is_valid:
                state.token = otel_context.attach(trace.set_span_in_context(span))
        except Exception:
            _contained(event, "starting the run's span")

    def _retrying(self, event: Retrying, inst: _Instruments) -> None:
        # One span per try: the next try gets a span of its own, like the first's.
        state = _run_state.get()
        if state is None or state.job != event.job or state.run_id != event.run_id:
            return
        attributes = {**state.attributes, "periodic.attempt": event.attempt}
        self._start_span(event, state, inst, attributes)

    def _finished(self, event: Finished) -> None:
        state = _run_state.get()
        if state is not None and state.job == event.job and state.run_id == event.run_id:
            _end_span(event, state)
            if event.will_retry:  # the run goes on: counted when its last try ends
                state.span = state.token = None
                return
            _run_state.set(None)
        elif event.will_retry:
            return
        else:
            state = None
        inst = self._get_instruments()
        job_attrs = _attrs(event.job)
        if state is not None and state.counted_running:
            try:
                inst.running.add(-1, job_attrs)
            except Exception:
                _contained(event, "counting the run as no longer running")
        try:
            inst.runs.add(1, _attrs(event.job, "outcome", event.outcome.value))
            inst.duration.record(event.duration, job_attrs)
        except Exception:
            _contained(event, "recording the run's outcome and duration")

    def _skipped(self, event: Skipped, inst: _Instruments) -> None:
        try:
            inst.skips.add(event.count, _attrs(event.job, "reason", event.reason.value))
        except Exception:
            _contained(event, "counting the skipped tick")


def _end_span(event: Finished, state: _RunState) -> None:
    span = state.span
    try:
        if span is not None:
            try:
                if span.is_recording():
                    span.set_attribute("periodic.outcome", event.outcome.value)
                    if event.attempt > 1 or event.will_retry:
                        span.set_attribute("periodic.attempt", event.attempt)
                        span.set_attribute("periodic.will_retry", event.will_retry)
                    if event.cancel_reason is not None:
                        span.set_attribute("periodic.cancel_reason", event.cancel_reason.value)
                    error = event.error
                    if event.outcome is Outcome.ERROR and error is not None:
                        span.record_exception(error)
                        span.set_status(
                            Status(StatusCode.ERROR, f"{type(error).__name__}: {error}")
                        )
            finally:
                span.end()
    except Exception:
        _contained(event, "ending the run's span")
    finally:
        if state.token is not None:
            otel_context.detach(state.token)  # logs rather than raises


def _contained(event: Event, doing: str) -> None:
    run = f" run {event.run_id}" if isinstance(event, (Started, Finished, Retrying)) else ""
    _log.exception(
        "OpenTelemetry raised while %s (job %r%s); the job and the scheduler go on",
        doing,
        getattr(event, "job", None),
        run,
    )


_subscriber = _TelemetrySubscriber()
_subscription = subscribe(_subscriber)


def record_election(name: str, result: str) -> None:
    """Count one lease election of the peer ``name``: ``leader``, ``follower``,
    ``no_quorum``, ``error``."""
    _subscriber.record_election(name, result)


def record_reminders_pending(name: str, count: int | None) -> None:
    """The count of pending reminders of the ``Reminders`` called ``name``, read from its
    store just now; ``None`` when it stops being served (the gauge forgets it)."""
    if count is None:
        _pending.pop(name, None)
        return
    _pending[name] = count
    if _subscriber._active():
        try:
            _subscriber._get_instruments()  # the gauge, observed at each collection
        except Exception:
            _log.exception("OpenTelemetry raised while making the reminders' gauge")


def _use_providers(
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> None:
    """Test seam: take the tracer and meter from these providers, not the global ones.

    OpenTelemetry's global providers can be set only once per process, so tests give each
    test fresh SDK providers here instead. ``None`` (the default) means the global one.
    Runs already going on keep their span. Not public API.
    """
    _subscriber.use_providers(tracer_provider, meter_provider)
