from __future__ import annotations

from collections.abc import Iterator

import pytest

import periodic
from periodic.events import Event


@pytest.fixture
def events() -> Iterator[list[Event]]:
    """Every event emitted during the test, in order."""
    seen: list[Event] = []
    with periodic.subscribe(seen.append):
        yield seen


pytest_plugins = ["pytester"]
