"""The built-in log subscriber: levels, messages and fields of the ``periodic`` records.

Times are virtual (``autojump_clock``), so every duration in a message is exact.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import periodic
from periodic import Periodic
from periodic.peers import LocalPeer
from periodic.testing import serve_for

ROOT = Path(__file__).resolve().parents[1]
JOB = "cleanup"


@pytest.fixture(autouse=True)
def periodic_records(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Capture every level from ``periodic``; leave the built-in logger as it was."""
    caplog.set_level(logging.DEBUG, logger="periodic")
    try:
        yield
    finally:
        periodic.configure_logging()


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "periodic"]


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in records(caplog)]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k.startswith("periodic_")}


def rendered(record: logging.LogRecord) -> str:
    return logging.Formatter().format(record)


async def sleep_forever() -> None:
    await trio.sleep_forever()


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


# -- runs ----------------------------------------------------------------------------


async def test_a_run_that_returns_logs_started_and_finished_at_info(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def job() -> None:
        await trio.sleep(0.25)

    await serve_for(Periodic(run=job, every=2, name=JOB), 2.5)
    assert lines(caplog) == [
        ("INFO", "job 'cleanup' run 1 started, 0.000s after it was due"),
        ("INFO", "job 'cleanup' run 1 finished ok in 0.250s"),
    ]
    started, finished = records(caplog)
    assert fields(started) == {
        "periodic_event": "Started",
        "periodic_job": JOB,
        "periodic_run_id": 1,
        "periodic_scheduled_at": 2.0,
        "periodic_started_at": 2.0,
        "periodic_fence": None,
    }
    assert fields(finished) == {
        "periodic_event": "Finished",
        "periodic_job": JOB,
        "periodic_run_id": 1,
        "periodic_outcome": "ok",
        "periodic_duration": 0.25,
        "periodic_cancel_reason": None,
    }
    assert finished.exc_info is None


async def test_a_late_run_and_its_fence_are_in_the_started_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The scheduler sets no fence yet: hand the logger the event it will get.
    from periodic._logging import _event_logger
    from periodic.events import Started

    _event_logger(Started(job=JOB, run_id=4, scheduled_at=10.0, started_at=10.25, fence=7))
    assert lines(caplog) == [
        ("INFO", "job 'cleanup' run 4 started with fence 7, 0.250s after it was due")
    ]
    assert fields(records(caplog)[0])["periodic_fence"] == 7


async def test_an_error_is_logged_at_error_with_its_traceback(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def job() -> None:
        await trio.sleep(0.5)
        raise ValueError("boom")

    await serve_for(Periodic(run=job, every=1, name=JOB), 1.5)
    _, finished = records(caplog)
    assert (finished.levelname, finished.getMessage()) == (
        "ERROR",
        "job 'cleanup' run 1 finished error in 0.500s: ValueError('boom')",
    )
    assert finished.exc_info is not None
    assert isinstance(finished.exc_info[1], ValueError)
    text = rendered(finished)
    assert "Traceback (most recent call last):" in text
    assert 'raise ValueError("boom")' in text
    assert fields(finished)["periodic_outcome"] == "error"


async def test_a_timeout_is_logged_at_error(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    await serve_for(Periodic(run=sleep_forever, every=2, timeout=1.25, name=JOB), 2.5)
    finished = [r for r in records(caplog) if r.periodic_event == "Finished"]
    assert [(r.levelname, r.getMessage()) for r in finished] == [
        ("ERROR", "job 'cleanup' run 1 finished timeout in 1.250s"),
    ]
    assert finished[0].exc_info is None
    assert fields(finished[0])["periodic_outcome"] == "timeout"


async def test_stop_previous_warns_and_shutdown_is_info(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    job = Periodic(
        run=sleep_forever, every=2, on_overlap="stop_previous", job_shutdown=0, name=JOB
    )
    await serve_for(job, 4.5)
    assert lines(caplog) == [
        ("INFO", "job 'cleanup' run 1 started, 0.000s after it was due"),
        ("WARNING", "job 'cleanup' stopping run 1 (on_overlap=stop_previous)"),
        ("WARNING", "job 'cleanup' run 1 finished cancelled (stop_previous) in 2.000s"),
        ("INFO", "job 'cleanup' run 2 started, 0.000s after it was due"),
        ("INFO", "job 'cleanup' run 2 finished cancelled (shutdown) in 0.500s"),
    ]
    _, stopping, stopped, _, shut_down = records(caplog)
    assert fields(stopping) == {
        "periodic_event": "StoppedPrevious",
        "periodic_job": JOB,
        "periodic_run_id": 1,
    }
    assert fields(stopped)["periodic_outcome"] == "cancelled"
    assert fields(stopped)["periodic_cancel_reason"] == "stop_previous"
    assert fields(shut_down)["periodic_cancel_reason"] == "shutdown"


async def test_a_run_cancelled_at_shutdown_is_info(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    await serve_for(Periodic(run=sleep_forever, every=2, job_shutdown=0.75, name=JOB), 2.5)
    assert lines(caplog)[-1] == (
        "INFO",
        "job 'cleanup' run 1 finished cancelled (shutdown) in 1.250s",
    )


# -- skips ---------------------------------------------------------------------------


def skips(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in records(caplog) if r.periodic_event == "Skipped"]


async def test_a_tick_skipped_for_overlap_is_info(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def job() -> None:
        await trio.sleep(1.5)

    await serve_for(Periodic(run=job, every=1, on_overlap="ignore", name=JOB), 2.25)
    [skip] = skips(caplog)
    assert (skip.levelname, skip.getMessage()) == (
        "INFO",
        "job 'cleanup' skipped a tick: the previous run is still going (on_overlap=ignore)",
    )
    assert fields(skip) == {
        "periodic_event": "Skipped",
        "periodic_job": JOB,
        "periodic_reason": "overlap",
        "periodic_count": 1,
        "periodic_scheduled_at": 2.0,
    }


async def test_a_tick_the_guard_refused_is_info(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    await serve_for(Periodic(run=sleep_forever, every=1, when=lambda: False, name=JOB), 1.5)
    assert lines(caplog) == [("INFO", "job 'cleanup' skipped a tick: the when-guard said no")]
    assert fields(records(caplog)[0])["periodic_reason"] == "guard"


async def test_a_follower_skips_each_tick_at_debug_only(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    peer = LocalPeer(leader=False, name="cluster", node="n2")
    job = Periodic(run=sleep_forever, every=1, peer=peer, name=JOB)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await serve_for(job, 3.5)
        nursery.cancel_scope.cancel()
    assert (
        lines(caplog)
        == [("DEBUG", "job 'cleanup' skipped a tick: this process is not the leader")] * 3
    )
    assert fields(records(caplog)[0])["periodic_reason"] == "not_leader"


async def test_leadership_is_news_and_only_a_lost_lease_is_a_warning(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    peer = LocalPeer(name="cluster", node="n1")
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        peer.set_leader(False, reason="lease expired: no renewal in time")
        peer.set_leader(True, reason="elected")
        nursery.cancel_scope.cancel()  # a clean stop
    assert lines(caplog) == [
        ("INFO", "peer 'n1' is now leader of 'cluster' with fence 1 (served)"),
        (
            "WARNING",
            "peer 'n1' lost the leadership of 'cluster' (fence 1): "
            "lease expired: no renewal in time",
        ),
        ("INFO", "peer 'n1' is now leader of 'cluster' with fence 2 (elected)"),
        ("INFO", "peer 'n1' lost the leadership of 'cluster' (fence 2): stopped"),
    ]
    assert fields(records(caplog)[3]) == {
        "periodic_event": "LeadershipChanged",
        "periodic_job": None,
        "periodic_peer": "cluster",
        "periodic_node": "n1",
        "periodic_fence": 2,
        "periodic_leader": None,
        "periodic_reason": "stopped",
    }


async def test_a_guard_that_raises_is_logged_at_error_with_its_traceback(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    def guard() -> bool:
        raise RuntimeError("no database")

    await serve_for(Periodic(run=sleep_forever, every=1, when=guard, name=JOB), 1.5)
    [skip] = records(caplog)
    assert (skip.levelname, skip.getMessage()) == (
        "ERROR",
        "job 'cleanup' skipped a tick: the when-guard raised: RuntimeError('no database')",
    )
    assert fields(skip)["periodic_reason"] == "guard_error"
    assert skip.exc_info is not None
    assert isinstance(skip.exc_info[1], RuntimeError)
    assert 'raise RuntimeError("no database")' in rendered(skip)


@pytest.mark.parametrize(("slow", "message"), [(2.5, "1 tick"), (3.5, "2 ticks")])
async def test_missed_ticks_warn_with_their_count(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    slow: float,
    message: str,
) -> None:
    delays = [slow]

    async def guard() -> bool:
        if delays:
            await trio.sleep(delays.pop())  # the tick at 1.0 wakes the scheduler late
        return True

    job = Periodic(run=trio.lowlevel.checkpoint, every=1, when=guard, name=JOB)
    await serve_for(job, slow + 1.25)
    [skip] = skips(caplog)
    assert (skip.levelname, skip.getMessage()) == (
        "WARNING",
        f"job 'cleanup' missed {message}: it ran late",
    )
    assert fields(skip)["periodic_count"] == int(slow - 1)
    assert fields(skip)["periodic_scheduled_at"] == 2.0
    assert skip.exc_info is None


# -- configure_logging ---------------------------------------------------------------


async def stop_previous_once() -> None:
    """Produces INFO, WARNING and (a timeout) ERROR records."""
    job = Periodic(
        run=sleep_forever, every=2, on_overlap="stop_previous", timeout=3, job_shutdown=9, name=JOB
    )
    await serve_for(job, 4.5)


async def test_configure_logging_turns_the_subscriber_off_and_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    periodic.configure_logging(enabled=False)
    periodic.configure_logging(enabled=False)
    await stop_previous_once()
    assert records(caplog) == []

    periodic.configure_logging()
    periodic.configure_logging(enabled=True)
    await stop_previous_once()
    assert [level for level, _ in lines(caplog)] == [
        "INFO",  # run 1 started
        "WARNING",  # stopping run 1
        "WARNING",  # run 1 cancelled (stop_previous)
        "INFO",  # run 2 started
        "ERROR",  # run 2 timed out
    ]


@pytest.mark.parametrize("level", ["WARNING", "warning", "WARN", logging.WARNING, 25])
async def test_configure_logging_level_drops_records_below_it(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, level: Any
) -> None:
    periodic.configure_logging(level=level)
    await stop_previous_once()
    assert [lvl for lvl, _ in lines(caplog)] == ["WARNING", "WARNING", "ERROR"]


async def test_configure_logging_level_error(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    periodic.configure_logging(level="ERROR")
    await stop_previous_once()
    assert lines(caplog) == [("ERROR", "job 'cleanup' run 2 finished timeout in 3.000s")]


async def test_the_periodic_loggers_own_level_is_respected(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="periodic")
    await stop_previous_once()
    assert [lvl for lvl, _ in lines(caplog)] == ["ERROR"]


@pytest.mark.parametrize(
    ("level", "error"),
    [("LOUD", ValueError), ("Level 5", ValueError), (True, TypeError), (1.5, TypeError)],
)
async def test_configure_logging_rejects_a_bad_level(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    level: Any,
    error: type[Exception],
) -> None:
    with pytest.raises(error, match="level must be"):
        periodic.configure_logging(level=level)
    await stop_previous_once()
    assert len(records(caplog)) == 5  # unchanged


def test_the_periodic_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("periodic").handlers
    assert len(handlers) == 1
    assert isinstance(handlers[0], logging.NullHandler)


NOTHING_CONFIGURED_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    import trio, trio.testing
    import periodic

    how = sys.argv[1:]
    if how == ["basic-config"]:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    elif how == ["last-resort-off"]:
        logging.lastResort = None
    elif how == ["child-handler"]:
        logging.getLogger("periodic").addHandler(logging.StreamHandler(sys.stdout))

    async def job():
        if periodic.current_run().run_id == 1:
            raise ValueError("boom")

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(periodic.Periodic(run=job, every=1, name="cleanup").serve)
            await trio.sleep(2.5)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    """
)


def run_unconfigured(how: str | None = None) -> subprocess.CompletedProcess[str]:
    script = NOTHING_CONFIGURED_SCRIPT
    if how is not None:
        script = script.replace("sys.argv[1:]", repr([how]))
    return run_python(script)


def test_a_failing_job_is_seen_when_the_application_configures_no_logging() -> None:
    done = run_unconfigured()
    assert done.returncode == 0
    assert done.stdout == ""
    # Python's last-resort handler: the message, then the traceback; runs that went
    # well (INFO) stay silent.
    assert done.stderr.startswith(
        "job 'cleanup' run 1 finished error in 0.000s: ValueError('boom')\nTraceback"
    )
    assert done.stderr.endswith("ValueError: boom\n")
    assert done.stderr.count("boom") == 2  # the message and the exception: once
    assert "run 2" not in done.stderr


def test_a_configured_handler_takes_over_from_the_last_resort() -> None:
    done = run_unconfigured("basic-config")
    assert done.returncode == 0
    assert done.stderr.startswith(
        "ERROR periodic: job 'cleanup' run 1 finished error in 0.000s: ValueError('boom')\n"
    )
    assert done.stderr.count("finished error") == 1  # not once more by the last resort
    done = run_unconfigured("child-handler")
    assert done.stdout.count("finished error") == 1
    assert done.stderr == ""


def test_the_last_resort_can_be_silenced_as_usual() -> None:
    done = run_unconfigured("last-resort-off")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


# -- the example on the docs page ------------------------------------------------------


def docs_block(name: str) -> str:
    """The fenced block after the ``% example: <name>`` comment in docs/telemetry.md."""
    page = (ROOT / "docs" / "telemetry.md").read_text()
    found = re.search(rf"^% example: {name}\n```[^\n]*\n(.*?)^```$", page, re.M | re.S)
    assert found, f"no example {name!r} in docs/telemetry.md"
    return found.group(1)


DOCS_DRIVER = textwrap.dedent(
    """
    import trio, trio.testing
    import periodic

    async def cleanup():
        await trio.sleep(0.25)
        if periodic.current_run().run_id == 2:
            raise OSError("disk full")

    async def main():
        job = periodic.Periodic(run=cleanup, every=60, timeout=30, name="cleanup")
        async with trio.open_nursery() as nursery:
            await nursery.start(job.serve)
            await trio.sleep(150)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    """
)


def test_the_one_line_set_up_shows_every_run() -> None:
    done = run_python(docs_block("basic-config") + DOCS_DRIVER)
    assert done.returncode == 0, done.stderr
    shown = [line for line in done.stderr.splitlines() if line.startswith("INFO:periodic:")]
    assert shown[:2] == [
        "INFO:periodic:job 'cleanup' run 1 started, 0.000s after it was due",
        "INFO:periodic:job 'cleanup' run 1 finished ok in 0.250s",
    ]
    assert "ERROR:periodic:job 'cleanup' run 2 finished error in 0.250s" in done.stderr


def test_the_logging_example_prints_what_the_docs_show() -> None:
    done = run_python(docs_block("logging-config") + DOCS_DRIVER)
    assert done.returncode == 0, done.stderr
    # The docs show the records without the traceback that follows the error.
    shown = [line for line in done.stderr.splitlines() if re.match(r"[A-Z]+ +periodic: ", line)]
    assert shown == docs_block("logging-output").splitlines()
    assert done.stderr.endswith("OSError: disk full\n")


async def test_the_json_formatter_example_writes_the_fields(
    autojump_clock: trio.testing.MockClock,
) -> None:
    namespace: dict[str, Any] = {}
    exec(docs_block("json-formatter"), namespace)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(namespace["JSONFormatter"]())
    logger = logging.getLogger("periodic")
    logger.addHandler(handler)
    try:

        async def job() -> None:
            raise OSError("disk full")

        await serve_for(Periodic(run=job, every=1, name=JOB), 1.5)
    finally:
        logger.removeHandler(handler)
    started, finished = (json.loads(line) for line in stream.getvalue().splitlines())
    assert started == {
        "level": "INFO",
        "logger": "periodic",
        "message": "job 'cleanup' run 1 started, 0.000s after it was due",
        "periodic_event": "Started",
        "periodic_job": JOB,
        "periodic_run_id": 1,
        "periodic_scheduled_at": 1.0,
        "periodic_started_at": 1.0,
        "periodic_fence": None,
    }
    assert finished.pop("traceback").endswith("OSError: disk full")
    assert finished == {
        "level": "ERROR",
        "logger": "periodic",
        "message": "job 'cleanup' run 1 finished error in 0.000s: OSError('disk full')",
        "periodic_event": "Finished",
        "periodic_job": JOB,
        "periodic_run_id": 1,
        "periodic_outcome": "error",
        "periodic_duration": 0.0,
        "periodic_cancel_reason": None,
    }


async def test_the_configure_logging_example_ends_in_the_default(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    exec(docs_block("configure-logging"), {"periodic": periodic})
    await stop_previous_once()
    assert len(records(caplog)) == 5
