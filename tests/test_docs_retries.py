"""The examples of docs/retries-and-jitter.md do what the page says."""

from __future__ import annotations

import trio
import trio.testing
from example_support import load_example

from periodic.events import Event, Finished, Retrying, Started


async def test_the_flaky_fetch_succeeds_at_its_third_try(
    autojump_clock: trio.testing.MockClock, events: list[Event], capsys: object
) -> None:
    example = load_example("flaky_fetch")
    await example.main(70)
    assert capsys.readouterr().out.splitlines() == [  # type: ignore[attr-defined]
        "run 1, try 1",
        "run 1, try 2",
        "run 1, try 3",
    ]
    mine = [e for e in events if getattr(e, "job", None) == "fetch-rates"]
    summary = [
        (type(e).__name__, getattr(e, "attempt", None), round(getattr(e, "started_at", 0), 3))
        for e in mine
        if isinstance(e, (Started, Retrying))
    ]
    # Tries at 60, 60.1 + 2 and 62.2 + 4 (each request takes 0.1 s).
    assert summary == [("Started", None, 60.0), ("Retrying", 2, 62.1), ("Retrying", 3, 66.2)]
    last = [e for e in mine if isinstance(e, Finished)][-1]
    assert (last.outcome, last.attempt, last.result) == ("ok", 3, {"eur_usd": 1.08})


async def test_the_polls_are_spread_over_five_seconds_each_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    example = load_example("spread_polls")
    start = trio.current_time()
    await example.main(25)
    first = [t - start for n, t in example.polls if t - start < 20]
    second = [t - start for n, t in example.polls if t - start >= 20]
    assert len(first) == len(second) == 500
    assert all(10 <= t < 15 for t in first)
    assert all(20 <= t < 25 for t in second)
    # Spread, not bunched: every second of the window gets a fair share.
    per_second = [sum(1 for t in first if 10 + s <= t < 11 + s) for s in range(5)]
    assert min(per_second) > 60
