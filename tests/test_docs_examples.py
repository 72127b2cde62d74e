"""The examples in README.md and docs/examples/ run, and do what the docs say they do."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import trio
from example_support import EXAMPLES, load_example

import periodic
from periodic import Periodic
from periodic.events import Finished, Outcome, Started

ROOT = Path(__file__).resolve().parent.parent


async def test_demo_prints_its_ticks_on_the_half_second_grid(autojump_clock, events, capsys):
    demo = load_example("demo")
    start = trio.current_time()

    await demo.main(6)

    assert capsys.readouterr().out.splitlines() == [
        "tick 1 at 0.500s",
        "tick 2 at 1.000s",
        "tick 3 at 1.500s",
        "tick 4 at 2.000s",
        "tick 5 at 2.500s",
        "tick 6 at 3.000s",
    ]
    assert trio.current_time() == start + 3.0
    started = [e for e in events if isinstance(e, Started)]
    assert [e.started_at - start for e in started] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    finished = [e for e in events if isinstance(e, Finished)]
    assert [e.outcome for e in finished] == [Outcome.OK] * 6


async def test_demo_stops_after_the_ticks_asked_for(autojump_clock, capsys):
    demo = load_example("demo")
    start = trio.current_time()

    await demo.main(2)

    assert capsys.readouterr().out.splitlines() == ["tick 1 at 0.500s", "tick 2 at 1.000s"]
    assert trio.current_time() == start + 1.0


async def test_quickstart_runs_its_job_every_hour(autojump_clock, events, capsys):
    quickstart = load_example("quickstart")
    start = trio.current_time()

    with trio.move_on_after(3 * 3600 + 1):
        await quickstart.main()

    assert capsys.readouterr().out.splitlines() == ["cleaning up"] * 3
    started = [e for e in events if isinstance(e, Started)]
    assert [e.job for e in started] == ["cleanup"] * 3
    assert [e.started_at - start for e in started] == [3600.0, 7200.0, 10800.0]
    assert trio.current_time() == start + 3 * 3600 + 1


async def test_events_and_statistics_of_a_job_that_fails_once(autojump_clock):
    async def flaky() -> str:
        if periodic.current_run().run_id == 2:
            raise ValueError("boom")
        return "done"

    job = Periodic(run=flaky, every=10, name="flaky")
    seen: list[periodic.events.Event] = []
    with periodic.subscribe(seen.append, job=job):
        async with trio.open_nursery() as nursery:
            await nursery.start(job.serve)
            await trio.sleep(35)
            stats = job.statistics()
            nursery.cancel_scope.cancel()

    assert [type(e).__name__ for e in seen] == ["Started", "Finished"] * 3
    assert [e.started_at for e in seen if isinstance(e, Started)] == [10.0, 20.0, 30.0]
    first, second, third = (e for e in seen if isinstance(e, Finished))
    assert (first.outcome, first.result, first.error) == ("ok", "done", None)
    assert second.outcome == "error"
    assert isinstance(second.error, ValueError)
    assert third.outcome == "ok"
    assert stats.runs_started == 3
    assert stats.running == 0
    assert stats.finished == {"ok": 2, "error": 1, "timeout": 0, "cancelled": 0}
    assert stats.next_tick_at == 40.0


async def test_a_sync_job_that_checks_for_cancellation_stops_early(autojump_clock, events):
    batches_done = 0

    def export_all() -> None:
        nonlocal batches_done
        for _batch in range(1000):
            trio.from_thread.check_cancelled()  # ends the run here if it was stopped
            time.sleep(0.001)  # stands for blocking work on one batch
            batches_done += 1

    job = Periodic(run=export_all, every=60, timeout=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(job.serve)
        await trio.sleep(70)
        nursery.cancel_scope.cancel()

    (finished,) = (e for e in events if isinstance(e, Finished))
    assert (finished.outcome, finished.result, finished.error) == ("timeout", None, None)
    assert batches_done < 1000


def test_readme_example_is_the_quickstart_file():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert blocks, "README.md has no python code block"
    assert blocks[0] == (EXAMPLES / "quickstart.py").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["demo", "quickstart"])
def test_examples_do_nothing_on_import(name, capsys):
    module = load_example(name)
    assert callable(module.main)
    assert capsys.readouterr().out == ""
