"""Test your periodic jobs: manual ticks, event capture, and virtual-time serving.

See the "Testing your periodic jobs" page of the docs. The pytest fixtures
``periodic_events`` and ``periodic_manual`` come with the package (pytest plugin).
"""

from ._testing import CapturedEvents as CapturedEvents
from ._testing import capture_events as capture_events
from ._testing import manual as manual
from ._testing import serve_for as serve_for
from ._testing import sync_tick as sync_tick
from ._testing import tick as tick
from .peers._base import LocalPeer as LocalPeer
from .stores.memory import MemoryStore as MemoryStore

__all__ = [
    "CapturedEvents",
    "LocalPeer",
    "MemoryStore",
    "capture_events",
    "manual",
    "serve_for",
    "sync_tick",
    "tick",
]
