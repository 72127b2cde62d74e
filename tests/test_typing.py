"""Type checkers see the public API: good calls pass, the classic mistakes do not."""

from __future__ import annotations

from pathlib import Path

import pytest

SNIPPET = """
from periodic import Periodic
from periodic.testing import capture_events


async def cleanup() -> None: ...


good = Periodic(run=cleanup, every=60, on_overlap="ignore", timeout=None)
nightly = Periodic(run=cleanup, cron="0 2 * * *", tz="Europe/Berlin")
with capture_events() as events:
    duration: float = events.of("finished")[0].duration

Periodic(run=cleanup(), every=60)  # E: a coroutine object, not the function
Periodic(run=cleanup, every=[1])  # E: not a number of seconds
Periodic(run=cleanup, every=1, on_overlap="skip")  # E: not a policy
"""


def test_mypy_accepts_good_calls_and_flags_the_mistakes(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    source = tmp_path / "user_code.py"
    source.write_text(SNIPPET)
    out, err, _ = api.run(["--strict", "--no-incremental", str(source)])
    flagged = {int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line}
    expected = {n for n, line in enumerate(SNIPPET.splitlines(), 1) if "# E:" in line}
    assert flagged == expected, out + err
