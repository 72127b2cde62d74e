"""What is measured: the scenarios of issue 7, their contenders and their sizes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Scenario:
    key: str
    title_template: str  # formatted with the parameters, see title()
    func: str  # the function of bench._scenarios the worker calls
    contenders: tuple[str, ...]
    full: dict[str, Any]
    smoke: dict[str, Any]
    # Variants of a contender, as "contender+variant": what the worker's spec gets
    # ("otel": install the OTel SDK), and the module it requires, if any.
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def params(self, smoke: bool) -> dict[str, Any]:
        return self.smoke if smoke else self.full

    def title(self, smoke: bool) -> str:
        params = self.params(smoke)
        every = params.get("every", 1.0)
        window = params.get("periods", 0) * every
        return self.title_template.format(
            every_ms=every * 1000, hz=1 / every, window=window, **params
        )


TIMED = ("naive", "trio_util", "apscheduler", "periodic", "grid")
ALL = (*TIMED, "raw_spawn")

SCENARIOS = (
    Scenario(
        "s1",
        "1. one job, {ticks} ticks at {every_ms:g} ms",
        "ticks",
        TIMED,
        full={"every": 0.01, "ticks": 1000},
        smoke={"every": 0.005, "ticks": 20},
    ),
    Scenario(
        "s2",
        "2. {n} schedulers at {hz:g} Hz for {window:g} s",
        "many",
        ALL,
        full={"n": 1000, "every": 1.0, "periods": 3},
        smoke={"n": 50, "every": 0.1, "periods": 3, "startup_allowance": 5.0},
    ),
    Scenario(
        "s3",
        "3. {n} schedulers at {hz:g} Hz for {window:g} s",
        "many",
        ALL,
        full={"n": 10000, "every": 1.0, "periods": 10, "startup_allowance": 15.0},
        smoke={"n": 200, "every": 0.1, "periods": 3, "startup_allowance": 5.0},
    ),
    Scenario(
        "s4",
        "4. a {every:g} s job for {seconds:g} simulated seconds under MockClock",
        "virtual",
        # APScheduler plans on the wall clock (datetime.now()), which MockClock cannot move.
        ("naive", "trio_util", "periodic", "grid"),
        full={"every": 1.0, "seconds": 86400},
        smoke={"every": 1.0, "seconds": 300},
    ),
    Scenario(
        "s5",
        "5. sync_tick round trip of a trivial job ({rounds} rounds)",
        "sync_tick",
        ("periodic", "raw_spawn"),
        full={"rounds": 3000, "warmup": 300},
        smoke={"rounds": 30, "warmup": 3},
    ),
    Scenario(
        "s6",
        "6. scenario 2 ({n} schedulers) without and with the OpenTelemetry SDK",
        "many",
        ("periodic", "periodic+otel"),
        full={"n": 1000, "every": 1.0, "periods": 3},
        smoke={"n": 50, "every": 0.1, "periods": 3, "startup_allowance": 5.0},
        variants={"periodic+otel": {"otel": True, "requires": "opentelemetry.sdk"}},
    ),
    Scenario(
        "s7",
        "7. {n} schedulers every {every:g} s for {window:g} s",
        "many",
        ("periodic", "grid", "raw_spawn"),
        full={"n": 100_000, "every": 10.0, "periods": 2, "startup_allowance": 60.0},
        smoke={"n": 1000, "every": 1.0, "periods": 2, "startup_allowance": 10.0},
    ),
    Scenario(
        "s8",
        "8. {n} jobs at {hz:g} Hz sharing one store, for {window:g} s",
        "durable",
        ("periodic+memory", "periodic+sqlite", "periodic+postgres"),
        full={"n": 1000, "every": 1.0, "periods": 5, "claims": 1000},
        smoke={"n": 20, "every": 0.5, "periods": 2, "claims": 20},
        variants={
            "periodic+memory": {"params": {"store": "memory"}},
            "periodic+sqlite": {"params": {"store": "sqlite"}},
            "periodic+postgres": {"params": {"store": "postgres"}, "requires": "psycopg_pool"},
        },
    ),
    Scenario(
        "s9",
        "9. durable reminders: {pending} (SQLite) or {pending_postgres} (PostgreSQL) pending, "
        "{due} due in the same second",
        "reminders",
        ("periodic+sqlite", "periodic+postgres"),
        full={"pending": 10_000, "pending_postgres": 100_000, "due": 1000},
        smoke={"pending": 100, "pending_postgres": 100, "due": 20},
        variants={
            "periodic+sqlite": {"params": {"store": "sqlite"}},
            "periodic+postgres": {"params": {"store": "postgres"}, "requires": "psycopg_pool"},
        },
    ),
)
