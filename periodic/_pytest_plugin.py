"""pytest fixtures for testing periodic jobs, registered through the ``pytest11`` entry point.

The async fixture needs pytest-trio (``pip install 'trio-periodic[pytest]'``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio

from ._scheduler import Periodic
from ._testing import CapturedEvents, capture_events, manual


@pytest.fixture
def periodic_events() -> Iterator[CapturedEvents]:
    """Every event any scheduler emits during the test, as a
    :class:`periodic.testing.CapturedEvents`."""
    with capture_events() as captured:
        yield captured


ServeManual = Callable[..., Awaitable[Periodic]]


@pytest.fixture
async def periodic_manual(nursery: trio.Nursery) -> ServeManual:
    """Serve manual-mode copies of jobs in the test's nursery.

    ``job = await periodic_manual(app_job, when=None)`` makes a manual-mode copy of
    ``app_job`` (with any options changed), starts serving it in pytest-trio's
    ``nursery`` fixture, and returns it, ready for ``tick``/``sync_tick``. The scheduler
    is shut down when the test ends.
    """

    async def serve(job: Periodic, **changes: Any) -> Periodic:
        copy = manual(job, **changes)
        await nursery.start(copy.serve)
        return copy

    return serve
