"""The :class:`Peer` interface, and the leadership state every backend shares."""

from __future__ import annotations

import abc
import logging
import math
import os
import secrets
import socket

import trio

from .._events import LeadershipChanged, emit

_log = logging.getLogger("periodic")


def default_node() -> str:
    """``host:pid:random`` — unique per process, even for processes sharing a host name."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Peer(abc.ABC):
    """Decides whether this process is the leader of its cluster.

    A ``Periodic(peer=...)`` asks :meth:`is_leader` at each tick and starts no run when the
    answer is no. One peer can guard many jobs. Serve it with
    ``await nursery.start(peer.serve)``; a peer that is not being served is never leader.

    Subclass :class:`PeerBase` rather than this class: it keeps the state, the waiting
    and the events, so a backend only decides *when* leadership changes. See the
    "Writing a peer" page of the docs.
    """

    @property
    @abc.abstractmethod
    def node(self) -> str:
        """This process's identity in the election."""

    @property
    @abc.abstractmethod
    def fence(self) -> int | None:
        """The lease epoch (fencing token) while leader, else ``None``."""

    @abc.abstractmethod
    def is_leader(self) -> bool:
        """Whether this process leads now. Cached: never blocks, never raises."""

    @abc.abstractmethod
    def leader(self) -> str | None:
        """The last known holder of the lease (maybe this node), or ``None``."""

    @abc.abstractmethod
    async def wait_change(self) -> None:
        """Wait until leadership changes: gained, lost, or held under a new fence."""

    async def wait_lease_change(self) -> None:
        """Wait until leadership changes or :meth:`lease_deadline` moves (a renewal).

        The default waits for :meth:`wait_change`, right for peers whose lease does not
        expire by itself.
        """
        await self.wait_change()

    def lease_deadline(self) -> float:
        """Until when, on Trio's clock, this node may believe it leads without news.

        ``math.inf`` while leading for peers whose leadership does not expire by itself
        (the default), ``-math.inf`` when not leading. A lease peer returns the local end
        of its lease; the scheduler uses it as a deadline for the runs it started under
        the lease, so a run never outlives it, even across a freeze of the process.
        """
        return math.inf if self.is_leader() else -math.inf

    def run_began(self, fence: int) -> None:  # noqa: B027 (a hook, empty by design)
        """A scheduler started a run under this peer's leadership, holding ``fence``.

        Called from the run's task as it begins, once per run that holds a fence; every
        call is followed by one :meth:`run_ended` with the same fence when the run is
        over. The default does nothing; :class:`PeerBase` counts these runs, so that a
        lease peer can let them finish before it hands its lease over. Must not block;
        should not raise (an exception fails the run).
        """

    def run_ended(self, fence: int) -> None:  # noqa: B027 (a hook, empty by design)
        """A run announced by :meth:`run_began` is over (whatever its outcome).

        The default does nothing. Must not block; should not raise (an exception is
        logged and ignored).
        """

    @abc.abstractmethod
    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Take part in the election until cancelled; on the way out, hand leadership over.

        Raises:
            RuntimeError: The peer is already being served.
        """


class PeerBase(Peer):
    """The state, waiting and events of a peer; backends call :meth:`_set_leader` and
    :meth:`_set_follower`, and :meth:`_begin_serving` / :meth:`_end_serving` around their
    election.

    Args:
        name: The election's name: peers with the same name elect one leader.
        node: This process's identity; default ``host:pid:random``.

    Both are stored in databases and sent in notifications: each must be valid UTF-8,
    without NUL characters, and at most :attr:`MAX_NAME_BYTES` bytes long in UTF-8.

    Raises:
        TypeError, ValueError: ``name`` or ``node`` is not a non-empty str of that kind.
    """

    #: The longest ``name`` or ``node``, in bytes of UTF-8: well within what a
    #: PostgreSQL index entry and a ``NOTIFY`` payload (8000 bytes) can hold.
    MAX_NAME_BYTES = 1024

    def __init__(self, *, name: str, node: str | None = None) -> None:
        for option, value in (("name", name), ("node", node)):
            if value is None and option == "node":
                continue
            _check_name(option, value, self.MAX_NAME_BYTES)
        self._name = name
        self._node = node if node is not None else default_node()
        self._is_leader = False
        self._leader: str | None = None
        # The other node last logged as leader, so a follower says who leads only on news.
        self._logged_leader: str | None = None
        self._fence: int | None = None
        self._changed = trio.Event()
        self._lease_moved = trio.Event()
        self._served = False
        self._ever_served = False
        self._warned_unserved = False
        # Runs started under this peer's leadership and not finished yet.
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()

    # -- Peer -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The election's name."""
        return self._name

    @property
    def node(self) -> str:
        return self._node

    @property
    def fence(self) -> int | None:
        return self._fence if self.is_leader() else None

    def is_leader(self) -> bool:
        if not self._served:
            # Once served, a stopped peer is asked as its jobs shut down: that is no
            # mistake of the application's, unlike a peer that was never started.
            if not self._warned_unserved and not self._ever_served:
                self._warned_unserved = True
                _log.warning(
                    "peer %r (election %r) is asked for leadership but is not being served: "
                    "it is never leader until started with nursery.start(peer.serve)",
                    self._node,
                    self._name,
                )
            return False
        return self._is_leader

    def leader(self) -> str | None:
        return self._leader

    async def wait_change(self) -> None:
        await self._changed.wait()

    def __repr__(self) -> str:
        state = "leader" if self._is_leader else "follower"
        return f"<{type(self).__name__} {self._name!r} node={self._node!r} {state}>"

    # -- for backends ---------------------------------------------------------------------

    def _changed_now(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        self._lease_moved_now()

    def _lease_moved_now(self) -> None:
        """Wake :meth:`wait_lease_change`: call it when a renewal moved the deadline."""
        self._lease_moved.set()
        self._lease_moved = trio.Event()

    async def wait_lease_change(self) -> None:
        await self._lease_moved.wait()

    def _set_leader(self, fence: int, reason: str) -> None:
        """This node leads under ``fence``; emits an event if that is news."""
        if self._is_leader and self._fence == fence:
            return
        self._is_leader = True
        self._leader = self._node
        self._logged_leader = None  # once it follows again, say whom, whoever it is
        self._fence = fence
        emit(
            LeadershipChanged(
                name=self._name,
                node=self._node,
                gained=True,
                fence=fence,
                leader=self._node,
                reason=reason,
            )
        )
        self._changed_now()

    def _set_follower(self, leader: str | None, reason: str) -> None:
        """This node does not lead; ``leader`` is who does, if known."""
        self._leader = leader
        if leader is not None and leader != self._node and leader != self._logged_leader:
            self._logged_leader = leader
            _log.info(
                "peer %r follows %r in election %r",
                self._node,
                leader,
                self._name,
                extra={"periodic_peer": self._name, "periodic_leader": leader},
            )
        if not self._is_leader:
            return
        fence = self._fence
        self._is_leader = False
        self._fence = None
        emit(
            LeadershipChanged(
                name=self._name,
                node=self._node,
                gained=False,
                fence=fence,
                leader=leader,
                reason=reason,
            )
        )
        self._changed_now()

    def run_began(self, fence: int) -> None:
        self._in_flight += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def run_ended(self, fence: int) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            self._idle.set()

    async def _wait_idle(self) -> None:
        """Wait until no run started under this peer's leadership is going on."""
        await self._idle.wait()

    def _begin_serving(self) -> None:
        if self._served:
            raise RuntimeError(f"{self!r} is already being served")
        self._served = True
        self._ever_served = True
        self._warned_unserved = False

    def _end_serving(self, reason: str = "stopped") -> None:
        self._set_follower(None if self._leader == self._node else self._leader, reason)
        self._served = False


def _check_name(option: str, value: object, max_bytes: int) -> None:
    accepts = f"a non-empty str of valid UTF-8 without NUL, at most {max_bytes} bytes"
    if not isinstance(value, str):
        raise TypeError(f"{option} must be {accepts}, got {value!r}")
    if not value.strip() or "\0" in value:
        raise ValueError(f"{option} must be {accepts}, got {value!r}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates, as os.fsdecode makes of bad bytes
        raise ValueError(f"{option} must be {accepts}, got {value!r}") from None
    if size > max_bytes:
        raise ValueError(f"{option} must be {accepts}, got {size} bytes")


class LocalPeer(PeerBase):
    """An in-process peer whose leadership is set by hand: the peer for tests.

    It leads (once served) unless made with ``leader=False``; :meth:`set_leader` changes
    that at any time. Each time it gains leadership its fence grows by one.

    Args:
        leader: Whether it leads when served.
        name: The election's name (only for events and logs).
        node: This process's identity.
    """

    def __init__(self, *, leader: bool = True, name: str = "local", node: str | None = None):
        super().__init__(name=name, node=node)
        if not isinstance(leader, bool):
            raise TypeError(f"leader must be a bool, got {leader!r}")
        self._wants_lead = leader
        self._epoch = 0

    def set_leader(self, leader: bool, *, reason: str = "set by hand") -> None:
        """Gain or lose leadership now (takes effect once served).

        Raises:
            TypeError: ``leader`` is not a bool.
        """
        if not isinstance(leader, bool):
            raise TypeError(f"leader must be a bool, got {leader!r}")
        self._wants_lead = leader
        if self._served:
            self._apply(reason)

    def _apply(self, reason: str) -> None:
        if self._wants_lead and not self._is_leader:
            self._epoch += 1
            self._set_leader(self._epoch, reason)
        elif not self._wants_lead:
            self._set_follower(None, reason)

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._begin_serving()
        try:
            self._apply("served")
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._end_serving()
