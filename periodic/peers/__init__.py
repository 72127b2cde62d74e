"""Leadership guards: run a job on one process of a cluster.

``Periodic(peer=...)`` starts a run only while its peer leads its election. Backends:
:class:`LocalPeer` (in-process, set by hand: for tests), :class:`SQLitePeer` (processes on
one host) and :class:`PostgresPeer` (many hosts; needs ``trio-periodic[postgres]``).
A database peer whose configuration cannot work fails its ``serve`` with
:class:`DatabaseConfigError`; :class:`Fault` is how a :class:`LeaseBackend` says how
lasting an error is. An :class:`Election` is what ``read_elections`` of
:mod:`periodic.peers.sqlite` and :mod:`periodic.peers.postgres` find in a database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._db import DatabaseConfigError as DatabaseConfigError
from .._db import Fault as Fault
from ._base import LocalPeer as LocalPeer
from ._base import Peer as Peer
from ._base import PeerBase as PeerBase
from ._lease import Election as Election
from ._lease import LeaseBackend as LeaseBackend
from ._lease import LeasePeer as LeasePeer

if TYPE_CHECKING:
    from .postgres import PostgresPeer as PostgresPeer
    from .sqlite import SQLitePeer as SQLitePeer

__all__ = [
    "DatabaseConfigError",
    "Election",
    "Fault",
    "LeaseBackend",
    "LeasePeer",
    "LocalPeer",
    "Peer",
    "PeerBase",
    "PostgresPeer",
    "SQLitePeer",
]


def __getattr__(name: str) -> Any:
    # Each backend imports its driver; load it only when asked for.
    if name == "PostgresPeer":
        from .postgres import PostgresPeer

        return PostgresPeer
    if name == "SQLitePeer":
        from .sqlite import SQLitePeer

        return SQLitePeer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
