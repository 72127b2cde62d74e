"""Every option is checked at construction, with an error that names it."""

from __future__ import annotations

import datetime
import functools
import math
import re
from pathlib import Path
from typing import Any

import pytest
import trio

import periodic
from periodic import DelayMode, Mode, Overlap, Periodic


async def job() -> None:
    pass


def sync_job() -> None:
    pass


class AsyncCallable:
    async def __call__(self) -> None:
        pass


BAD_OPTIONS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"every": 0}, ValueError, "every must be"),
    ({"every": -1}, ValueError, "every must be"),
    ({"every": math.nan}, ValueError, "every must be .* NaN"),
    ({"every": math.inf}, ValueError, "every must be"),
    ({"every": True}, TypeError, "every must be"),
    ({"every": "10"}, ValueError, "every: bad duration '10'"),
    ({"every": "1h 30m"}, ValueError, "every: bad duration"),
    ({"every": None}, TypeError, "needs a schedule: every="),
    ({"every": [1]}, TypeError, "every must be"),
    ({"every": datetime.timedelta(0)}, ValueError, "every must be"),
    ({"every": datetime.timedelta(seconds=-1)}, ValueError, "every must be"),
    ({"every": 1, "initial_delay": -0.5}, ValueError, "initial_delay must be"),
    ({"every": 1, "initial_delay": math.nan}, ValueError, "initial_delay must be"),
    ({"every": 1, "initial_delay": math.inf}, ValueError, "initial_delay must be"),
    ({"every": 1, "initial_delay": "1"}, TypeError, "initial_delay must be"),
    ({"every": 10**400}, ValueError, "every must be .* too large"),
    ({"every": 1, "delay_mode": "fixed"}, ValueError, "delay_mode must be one of 'regular'"),
    ({"every": 1, "delay_mode": 1}, TypeError, "delay_mode must be one of"),
    ({"every": 1, "on_overlap": "skip"}, ValueError, "on_overlap must be one of 'run'"),
    ({"every": 1, "on_overlap": Mode.AUTO}, TypeError, "on_overlap must be one of"),
    ({"every": 1, "mode": "test"}, ValueError, "mode must be one of 'auto', 'manual'"),
    ({"every": 1, "timeout": 0}, ValueError, "timeout must be"),
    ({"every": 1, "timeout": -1}, ValueError, "timeout must be"),
    ({"every": 1, "timeout": math.nan}, ValueError, "timeout must be"),
    ({"every": 1, "timeout": "5"}, TypeError, "timeout must be"),
    ({"every": 1, "job_shutdown": -1}, ValueError, "job_shutdown must be"),
    ({"every": 1, "job_shutdown": math.nan}, ValueError, "job_shutdown must be"),
    ({"every": 1, "job_shutdown": None}, TypeError, "job_shutdown must be"),
    ({"every": 1, "when": True}, TypeError, "when must be None or a callable"),
    ({"every": 1, "name": ""}, ValueError, "name must be a non-empty str"),
    ({"every": 1, "name": "  "}, ValueError, "name must be a non-empty str"),
    ({"every": 1, "name": 7}, TypeError, "name must be a non-empty str"),
    ({"every": 1, "name": None}, TypeError, "name must be a non-empty str"),
    ({"every": 1, "evry": 2}, TypeError, "evry"),
]


@pytest.mark.parametrize(("options", "error", "match"), BAD_OPTIONS)
def test_bad_option_is_refused_with_a_message_naming_it(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Periodic(run=job, **options)


def test_run_is_required() -> None:
    with pytest.raises(TypeError, match="run"):
        Periodic(every=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="run is required"):
        Periodic(run=None, every=1)


def test_every_is_required() -> None:
    with pytest.raises(TypeError, match="every"):
        Periodic(run=job)  # type: ignore[call-arg]


def test_run_must_be_callable() -> None:
    with pytest.raises(TypeError, match="run must be a callable"):
        Periodic(run=42, every=1)


def test_a_coroutine_object_is_refused_with_a_hint() -> None:
    with pytest.raises(TypeError, match=r"pass run=f, not run=f\(\)"):
        Periodic(run=job(), every=1)


def test_an_async_generator_function_is_refused() -> None:
    async def agen():  # type: ignore[no-untyped-def]
        yield 1

    with pytest.raises(TypeError, match="not an async generator function"):
        Periodic(run=agen, every=1)


def test_a_wrapped_async_function_is_async() -> None:
    def logged(fn):  # type: ignore[no-untyped-def]
        @functools.wraps(fn)
        def wrapper():  # type: ignore[no-untyped-def]
            return fn()

        return wrapper

    assert Periodic(run=logged(job), every=1)._is_async


def test_run_needing_arguments_is_refused() -> None:
    async def needs(x: int) -> None:
        pass

    with pytest.raises(TypeError, match=r"no arguments.*functools.partial"):
        Periodic(run=needs, every=1)
    Periodic(run=functools.partial(needs, 1), every=1)


def test_defaults() -> None:
    p = Periodic(run=job, every=10)
    assert p.every == 10.0
    assert p.initial_delay == 10.0
    assert p.delay_mode is DelayMode.REGULAR
    assert p.on_overlap is Overlap.RUN
    assert p.when is None
    assert p.timeout == math.inf
    assert p.job_shutdown == 5.0
    assert p.mode is Mode.AUTO
    assert p.name == "job"


def test_strings_enums_and_timedeltas_are_accepted() -> None:
    p = Periodic(
        run=job,
        every=datetime.timedelta(minutes=1),
        initial_delay=datetime.timedelta(0),
        delay_mode="shifted",
        on_overlap=Overlap.STOP_PREVIOUS,
        timeout=datetime.timedelta(seconds=30),
        job_shutdown=math.inf,
        mode="manual",
        when=lambda: True,
        name="cleanup",
    )
    assert p.every == 60.0
    assert p.initial_delay == 0.0
    assert p.delay_mode is DelayMode.SHIFTED
    assert p.on_overlap is Overlap.STOP_PREVIOUS
    assert p.timeout == 30.0
    assert p.job_shutdown == math.inf
    assert p.mode is Mode.MANUAL
    assert p.name == "cleanup"


def test_none_means_the_default_for_initial_delay_and_delay_mode() -> None:
    p = Periodic(run=job, every=3, initial_delay=None, delay_mode=None)
    assert (p.initial_delay, p.delay_mode) == (3.0, DelayMode.REGULAR)


def test_every_takes_duration_strings() -> None:
    assert Periodic(run=job, every="1h30m").every == 5400.0
    assert Periodic(run=job, every="90s").initial_delay == 90.0


def test_timeout_none_and_inf_mean_no_limit() -> None:
    assert Periodic(run=job, every=1, timeout=None).timeout == math.inf
    assert Periodic(run=job, every=1, timeout=math.inf).timeout == math.inf


def test_job_shutdown_zero_is_allowed() -> None:
    assert Periodic(run=job, every=1, job_shutdown=0).job_shutdown == 0.0


class Jobs:
    async def method(self) -> None:
        pass


@pytest.mark.parametrize(
    ("run", "name"),
    [
        (job, "job"),
        (sync_job, "sync_job"),
        (functools.partial(functools.partial(job)), "job"),
        (Jobs().method, "Jobs.method"),
        (AsyncCallable(), "AsyncCallable"),
    ],
)
def test_default_name_is_the_qualname(run: Any, name: str) -> None:
    assert Periodic(run=run, every=1).name == name


def test_options_cannot_be_changed_after_construction() -> None:
    p = Periodic(run=job, every=1)
    with pytest.raises(AttributeError):
        p.every = 2  # type: ignore[misc]


def test_repr_names_the_job_without_noise() -> None:
    p = Periodic(run=job, every=1.5, name="cleanup")
    assert repr(p) == "Periodic(name='cleanup', every=1.5, delay_mode='regular', mode='auto')"


def test_enum_values_read_as_their_strings() -> None:
    assert str(DelayMode.SHIFTED) == "shifted"
    assert str(Overlap.STOP_PREVIOUS) == "stop_previous"
    assert str(Mode.MANUAL) == "manual"
    assert Overlap("ignore") is Overlap.IGNORE


def test_a_one_word_cron_spec_is_one_field() -> None:
    with pytest.raises(ValueError, match=r"bad cron spec 'x': 1 field; expected 5 fields"):
        Periodic(run=job, cron="x")
    with pytest.raises(ValueError, match=r"bad cron spec 'a b': 2 fields; expected 5 fields"):
        Periodic(run=job, cron="a b")


DOCS = Path(__file__).resolve().parent.parent / "docs"


def quoted_errors() -> list[tuple[str, str, str]]:
    """Each ``% raised-by: <call>`` of the docs, with the error text block after it."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for call, shown in re.findall(
            r"^% raised-by: (.+)\n```text\n(.*?)\n```$", text, flags=re.M | re.S
        ):
            found.append((page.name, call, shown))
    return found


def test_the_docs_quote_errors() -> None:
    assert {page for page, _, _ in quoted_errors()} >= {"options.md", "cron.md"}


@pytest.mark.parametrize(("page", "call", "shown"), quoted_errors())
def test_an_error_quoted_in_the_docs_is_the_one_raised(page: str, call: str, shown: str) -> None:
    namespace = {"Periodic": Periodic, "cleanup": job}
    with pytest.raises(Exception) as info:  # noqa: PT011  (any error: its text is checked)
        eval(call, namespace)
    raised = f"{type(info.value).__name__}: {info.value}"
    # "..." in the docs stands for a part of the message left out.
    pattern = ".*".join(re.escape(part) for part in shown.split("..."))
    assert re.fullmatch(pattern, raised, flags=re.S), f"{page}: {raised!r}"


async def test_a_timeout_shorter_than_every_leaves_stop_previous_nothing_to_stop(
    autojump_clock: Any,
) -> None:
    # As the options page says: each run is cancelled by its timeout before the next tick.
    from periodic.events import Event, Finished, StoppedPrevious

    async def hang() -> None:
        await trio.sleep_forever()

    seen: list[Event] = []
    job = Periodic(run=hang, every=10, timeout=5, on_overlap="stop_previous")
    with periodic.subscribe(seen.append, job=job):
        async with trio.open_nursery() as nursery:
            await nursery.start(job.serve)
            await trio.sleep(45)
            nursery.cancel_scope.cancel()
    assert not [e for e in seen if isinstance(e, StoppedPrevious)]
    assert [e.outcome for e in seen if isinstance(e, Finished)] == ["timeout"] * 4
