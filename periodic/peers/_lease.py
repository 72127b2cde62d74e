"""Lease elections in a database: the loop shared by the SQLite and PostgreSQL peers.

A backend (:class:`LeaseBackend`) runs the statements; :class:`LeasePeer` runs the
election around it, in Trio: renewals, retries with backoff and jitter, the local
expiry of the lease on the monotonic clock, and the hand-over on the way out.
"""

from __future__ import annotations

import abc
import datetime
import logging
import math
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import attrs
import trio

from .. import _telemetry
from .._db import DatabaseConfigError, FailureStreak, Fault, table_name
from ._base import PeerBase

_log = logging.getLogger("periodic")

T = TypeVar("T")


class LeaseBackend(abc.ABC):
    """The statements of a lease election, run by :class:`LeasePeer` in a worker thread.

    Calls come one at a time (the peer holds a capacity limiter of one), but a call may
    be abandoned by the peer when it takes too long and still be running when the next
    one starts waiting; a backend keeps its own connection and reconnects after errors.
    Every method may raise any :class:`Exception`: the peer treats it as "not leader"
    and retries with backoff, or stops at once when :meth:`fault` calls it fatal.

    Rules every backend keeps:

    * one row per election ``name``: holder node, epoch, expiry;
    * ``acquire`` is one atomic step: insert the row, or take it over when it has
      expired, or renew it when ``node`` holds it. The epoch grows by one whenever the
      holder changes and never otherwise (also not when a row is released);
    * expiry is computed and compared on the database's clock, never the node's.

    A backend that keeps members (:attr:`membership`) also keeps one row per member of
    an election, with its own expiry, and implements :meth:`elect`, :meth:`members` and
    :meth:`leave`: that is what a peer's ``quorum`` needs.
    """

    #: Whether :meth:`wait_released` can wake a follower early.
    notifies: bool = False
    #: Whether the backend keeps members (:meth:`elect`, :meth:`members`, :meth:`leave`);
    #: a :class:`LeasePeer` takes a ``quorum`` above 1 only then.
    membership: bool = False

    @abc.abstractmethod
    def acquire(self, name: str, node: str, ttl: float) -> tuple[str, int] | None:
        """Acquire or renew the lease for ``ttl`` seconds, in one statement.

        Returns:
            The holder and epoch of the row afterwards (the holder is ``node`` when this
            node leads), or ``None`` when that is not known (a concurrent insert).
        """

    @abc.abstractmethod
    def release(self, name: str, node: str) -> None:
        """Expire the lease now if ``node`` holds it, keeping the epoch, and tell others."""

    def elect(
        self, name: str, node: str, ttl: float, *, member: str, quorum: int
    ) -> tuple[tuple[str, int] | None, int | None]:
        """One round of the election, with its membership, in one transaction.

        Keeps the row of ``member`` (the node's name, without the token of ``node``)
        alive for ``ttl`` seconds on the database's clock, counts the live members of
        the election, itself included, and only when there are at least ``quorum`` does
        what :meth:`acquire` does. The peer calls this, not :meth:`acquire`; the default
        (a backend without :attr:`membership`) acquires and counts nobody.

        Returns:
            The holder and epoch of the lease row afterwards (as :meth:`acquire` says
            them; read, not taken, below the quorum), and the number of live members,
            or ``None`` when the backend does not know it (then the peer leads only
            with ``quorum=1``).
        """
        return self.acquire(name, node, ttl), None

    def members(self, name: str) -> list[str]:
        """The live members of the election ``name``, by node name, sorted.

        Raises:
            NotImplementedError: The backend keeps no members (the default).
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no members")

    def leave(self, name: str, member: str) -> None:
        """Delete the row of ``member`` in the election ``name``: it stops now.

        The default does nothing.
        """
        return

    def set_call_timeout(self, seconds: float) -> None:
        """Learn how long the peer lets one call take, to bound waits of the backend's
        own (connecting, locks, statements) below it. Called once, by the peer."""
        return  # by default a backend has no waits of its own to bound

    def fault(self, exc: Exception) -> Fault:
        """How lasting ``exc``, raised by a call of this backend, is.

        :attr:`Fault.FATAL` before any call has succeeded makes the peer's ``serve``
        fail with :class:`DatabaseConfigError`; :attr:`Fault.PERSISTENT` is logged at
        ERROR, again at growing intervals while it lasts; :attr:`Fault.TRANSIENT` at
        WARNING. The default: fatal for a :class:`DatabaseConfigError`, else transient.
        """
        return Fault.FATAL if isinstance(exc, DatabaseConfigError) else Fault.TRANSIENT

    def wait_released(self, name: str, timeout: float) -> bool:
        """Block for at most ``timeout`` seconds for news that the lease was released.

        Returns:
            ``True`` when a release was announced (the follower retries at once).
        """
        return False

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connections. Called once, when the peer stops."""


class LeasePeer(PeerBase):
    """A peer elected through a lease row in a database; see :class:`LeaseBackend`.

    The leader renews every ``ttl / 2``; the others retry every ``ttl / 2`` with jitter.
    After a renewal is *sent* at monotonic time ``t``, the leader believes it leads
    until ``t + ttl - margin`` unless a later renewal succeeds: since the database
    computes the expiry from a time after ``t``, a partitioned leader steps down before
    anyone else can take over. Any error means "not leader" at once, and a retry with
    backoff, and never ends the election by itself, but for a configuration that cannot
    work (:meth:`LeaseBackend.fault`): then ``serve`` fails at once, if no call has
    succeeded since it started.

    A call abandoned at ``call_timeout`` runs on in its thread; if it wins the lease after
    all, the peer releases the row at once (and logs it), so that a slow peer never holds
    a lease nobody renews.

    Args:
        backend: Runs the statements.
        name: The election's name.
        ttl: Lease length in seconds, from 1 to 86 400 (a day).
        node: This process's identity; default ``host:pid:random``.
        margin: Seconds the local belief ends before the lease; default ``ttl / 10``.
            0 <= margin < ttl / 2.
        call_timeout: Seconds one database call may take before it counts as failed;
            default ``ttl / 4``; less than ``ttl - margin``.
        quorum: How many members of the election, this one included, must be alive
            for it to lead (an int >= 1; default 1). Above 1 it needs a backend that
            keeps members (:attr:`LeaseBackend.membership`). Below the quorum the
            peer neither takes nor renews the lease: a leader steps down at its next
            renewal, with the reason ``"quorum_lost"``.

    Raises:
        TypeError, ValueError: An option is out of range.
    """

    #: The range of ``ttl``: below a second, renewals would crowd the database and
    #: never leave room for a call; above a day, a dead leader would block its job
    #: for longer than any use of a lease.
    MIN_TTL = 1.0
    MAX_TTL = 86400.0

    def __init__(
        self,
        backend: LeaseBackend,
        *,
        name: str,
        ttl: float = 30.0,
        node: str | None = None,
        margin: float | None = None,
        call_timeout: float | None = None,
        quorum: int = 1,
    ) -> None:
        super().__init__(name=name, node=node)
        self._quorum = _quorum(quorum)
        if self._quorum > 1 and not backend.membership:
            raise ValueError(
                f"quorum must be 1 with {type(backend).__name__}: it keeps no members "
                f"(LeaseBackend.membership), got {quorum!r}"
            )
        self._ttl = _seconds("ttl", ttl)
        if not self.MIN_TTL <= self._ttl <= self.MAX_TTL:
            raise ValueError(
                f"ttl must be from {self.MIN_TTL:g} to {self.MAX_TTL:g} seconds, got {ttl!r}"
            )
        self._margin = self._ttl / 10 if margin is None else _seconds("margin", margin)
        if not 0 <= self._margin < self._ttl / 2:
            raise ValueError(f"margin must be >= 0 and < ttl / 2, got {margin!r}")
        self._call_timeout = (
            self._ttl / 4 if call_timeout is None else _positive("call_timeout", call_timeout)
        )
        if self._call_timeout >= self._ttl - self._margin:
            raise ValueError(
                f"call_timeout must be shorter than ttl - margin "
                f"({self._ttl - self._margin:g} s), got {call_timeout!r}"
            )
        self._backend = backend
        backend.set_call_timeout(self._call_timeout)
        self._limiter = trio.CapacityLimiter(1)
        self._lease_until = -math.inf
        self._renewed = trio.Event()
        self._failures = FailureStreak()
        # Whether a call has succeeded since serve began: until then, a fatal fault ends it.
        self._succeeded = False
        # Whether the row may still name this node: set by a won election, cleared only
        # when the database names another holder (not by errors or a local expiry).
        self._held = False
        # What the row names as holder: the node plus a token drawn at each serve, so
        # processes that share a node name (a fork, a copied config) never share a lease.
        self._claim = self._node
        # The lease's local end again, on a clock that also runs while the machine is
        # suspended (Trio's monotonic clock stops then).
        self._boot_until = -math.inf
        self._draining = False
        # Whether the last round counted fewer live members than the quorum.
        self._short: bool | None = None

    @property
    def ttl(self) -> float:
        """The lease length in seconds."""
        return self._ttl

    @property
    def quorum(self) -> int:
        """How many live members of the election it takes for this peer to lead."""
        return self._quorum

    async def members(self) -> list[str]:
        """The nodes of the live members of this peer's election, sorted.

        A member is a peer serving the election (this one too, while it is served)
        whose membership row has not expired, on the database's clock: each round of
        the election renews it for ``ttl``; a clean stop deletes it; a process that
        dies leaves it until it expires.

        Raises:
            NotImplementedError: The backend keeps no members.
            trio.TooSlowError: The call took longer than ``call_timeout``.
            Exception: What the database driver raised (the database is unreachable,
                the members table is missing and ``create_table=False``, …).
        """
        if not self._backend.membership:
            raise NotImplementedError(f"{type(self._backend).__name__} keeps no members")
        if self._served:
            return await self._call(self._backend.members, self._name)
        return await self._call(self._members_unserved)

    def _members_unserved(self) -> list[str]:
        # Not served: nobody else closes the connection this call opens.
        try:
            return self._backend.members(self._name)
        finally:
            self._backend.close()

    def lease_deadline(self) -> float:
        return self._lease_until if self.is_leader() else -math.inf

    def is_leader(self) -> bool:
        if not super().is_leader() or self._draining:
            return False
        return self._lease_valid()

    def _lease_valid(self) -> bool:
        try:
            now = trio.current_time()
        except RuntimeError:  # asked outside trio.run: no clock, no claim
            return False
        return now < self._lease_until and _boot_clock() < self._boot_until

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Take part in the election until cancelled; on the way out, hand leadership over.

        Raises:
            RuntimeError: The peer is already being served.
            DatabaseConfigError: A call failed, before any had succeeded, with an error the
                backend calls fatal: a configuration that can never work.
        """
        self._begin_serving()
        self._claim = f"{self._node}/{secrets.token_hex(4)}"
        self._draining = False
        self._succeeded = False
        self._failures = FailureStreak()
        self._short = None
        fatal: DatabaseConfigError | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watchdog)
                task_status.started()
                try:
                    await self._elect_forever()
                except DatabaseConfigError as exc:
                    fatal = exc
                    nursery.cancel_scope.cancel()
        finally:
            await self._stop()
        if fatal is not None:
            raise fatal  # by itself, not in the group of the nursery above

    # -- the election ---------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread, one at a time; abandoned when cancelled."""
        return await trio.to_thread.run_sync(
            fn, *args, limiter=self._limiter, abandon_on_cancel=True
        )

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        with trio.fail_after(self._call_timeout):
            return await self._in_thread(fn, *args)

    async def _acquire(self) -> tuple[tuple[str, int] | None, int | None]:
        """One round: the lease row afterwards, and the live members counted."""
        attempt = _Attempt(
            self._backend, self._name, self._claim, self._ttl, self._node, self._quorum
        )
        try:
            return await self._call(attempt.run), attempt.alive
        except BaseException as exc:
            finished, row = attempt.abandon()
            if not finished:
                raise  # the thread, if any, releases what it may still win
            # It finished as it was abandoned: in time, only just. Take the answer.
            if row is not None and row[0] == self._claim:
                self._held = True
            if isinstance(exc, trio.TooSlowError):
                return row, attempt.alive
            raise

    async def _elect_forever(self) -> None:
        half = self._ttl / 2
        while True:
            sent = trio.current_time()
            boot_sent = _boot_clock()
            try:
                row, alive = await self._acquire()
            except Exception as exc:
                _telemetry.record_election(self._name, "error")
                await self._failed(exc)
                continue
            self._succeeded = True
            if self._failures.attempts:
                _log.info(
                    "peer %r: election %r reachable again after %d failed attempt(s)",
                    self._node,
                    self._name,
                    self._failures.succeeded(),
                )
            # A backend that does not count members leads only a quorum of one.
            short = (1 if alive is None else alive) < self._quorum
            self._note_quorum(short, alive)
            mine = row is not None and row[0] == self._claim
            # Below the quorum the lease was only read, not renewed: a row that names
            # this node is no lease of it.
            leading = mine and not short
            _telemetry.record_election(
                self._name, "leader" if leading else "no_quorum" if short else "follower"
            )
            self._held = mine
            if (
                row is not None
                and leading
                and trio.current_time() < sent + self._ttl - self._margin
            ):
                # (A reply that came after the local lease would already have ended
                # claims nothing: the next renewal decides.)
                self._lease_until = sent + self._ttl - self._margin
                self._boot_until = boot_sent + self._ttl - self._margin
                if self._is_leader and self._fence == row[1]:
                    self._lease_moved_now()
                else:
                    self._set_leader(row[1], "elected")
                self._renewed.set()
                self._renewed = trio.Event()
                await trio.sleep_until(sent + half)
            else:
                holder = None if row is None else node_of(row[0])
                self._lease_until = -math.inf
                if short:
                    self._set_follower(None if mine else holder, "quorum_lost")
                else:
                    self._set_follower(holder, f"{holder!r} holds the lease" if holder else "lost")
                await self._wait_retry(half * random.uniform(0.75, 1.0))

    def _note_quorum(self, short: bool, alive: int | None) -> None:
        """Log when the election falls below its quorum, and when it is back."""
        was, self._short = self._short, short
        if short == was or (not short and was is None):
            return
        extra = {
            "periodic_peer": self._name,
            "periodic_node": self._node,
            "periodic_members": alive,
            "periodic_quorum": self._quorum,
        }
        if short:
            _log.info(
                "peer %r: election %r has %s of the %d live members it needs: "
                "nobody leads it until more serve it",
                self._node,
                self._name,
                alive,
                self._quorum,
                extra=extra,
            )
        else:
            _log.info(
                "peer %r: election %r has its quorum: %s of %d live members",
                self._node,
                self._name,
                alive,
                self._quorum,
                extra=extra,
            )

    def _fault(self, exc: Exception) -> Fault:
        try:
            fault = self._backend.fault(exc)
        except Exception:  # a backend's judgement must not end the election
            return Fault.TRANSIENT
        return fault if isinstance(fault, Fault) else Fault.TRANSIENT

    async def _failed(self, exc: Exception) -> None:
        fault = self._fault(exc)
        if fault is Fault.FATAL and not self._succeeded:
            _log.error(
                "peer %r: election %r cannot work as configured, serve stops: %s",
                self._node,
                self._name,
                exc,
                extra={"periodic_peer": self._name, "periodic_node": self._node},
            )
            if isinstance(exc, DatabaseConfigError):
                raise exc
            raise DatabaseConfigError(
                f"election {self._name!r} cannot work as configured ({type(exc).__name__}): {exc}"
            ) from exc
        self._lease_until = -math.inf
        self._set_follower(None, f"error: {exc!r}")
        streak = self._failures
        now = trio.current_time()
        if streak.failed(now, fault):
            so_far = (
                ""
                if streak.attempts == 1
                else f"; {streak.attempts} attempts in {now - streak.began:.0f} s"
            )
            _log.log(
                logging.WARNING if fault is Fault.TRANSIENT else logging.ERROR,
                "peer %r: election %r failed (%s%s), not leader until it succeeds again: %r",
                self._node,
                self._name,
                _FAULT_TEXT[fault],
                so_far,
                exc,
                extra={
                    "periodic_peer": self._name,
                    "periodic_node": self._node,
                    "periodic_fault": fault.value,
                    "periodic_attempts": streak.attempts,
                },
            )
        else:
            _log.debug("peer %r: election %r failed again: %r", self._node, self._name, exc)
        # 0.25 s, 0.5 s, 1 s, … capped at ttl / 2, each with jitter.
        delay = min(self._ttl / 2, 0.25 * 2 ** min(streak.attempts - 1, 16))
        await trio.sleep(delay * random.uniform(0.5, 1.0))

    async def _wait_retry(self, delay: float) -> None:
        if not self._backend.notifies:
            await trio.sleep(delay)
            return
        deadline = trio.current_time() + delay
        while (left := deadline - trio.current_time()) > 0:
            try:
                # Well inside call_timeout, so the wait is never cut off (and a
                # notification lost) by the timeout meant for a hung call.
                released = await self._call(
                    self._backend.wait_released,
                    self._name,
                    min(left, 0.5, self._call_timeout / 2),
                )
            except Exception:
                await trio.sleep_until(deadline)  # the retry will report the error
                return
            if released:
                return

    async def _watchdog(self) -> None:
        """Step down when the lease runs out locally without a renewal.

        Wakes at the lease's end on Trio's clock, and also every ``margin / 2`` to look at
        the suspend-proof clock: after a suspend, Trio's clock has not moved, this one has.
        """
        check_every = max(self._margin / 2, 0.05)
        while True:
            renewed = self._renewed
            if self._is_leader:
                wake = min(self._lease_until, trio.current_time() + check_every)
                with trio.move_on_at(wake):
                    await renewed.wait()
                    continue
                if self._is_leader and not self._lease_valid():
                    self._set_follower(None, "lease expired: no renewal in time")
            else:
                await renewed.wait()

    async def _stop(self) -> None:
        with trio.CancelScope(shield=True):
            drained = await self._drain()
            # Also when it stepped down a moment ago (a failed renewal): the row may
            # still be ours, and releasing it lets a follower take over at once. Not while
            # a run of this lease is still going: then the lease must run out instead.
            may_hold = self._held and drained
            self._lease_until = -math.inf
            self._boot_until = -math.inf
            self._end_serving("stopped")
            try:
                # Leave first: a follower woken by the release must not count this
                # node as alive, and take a lease its quorum no longer allows.
                if self._backend.membership:
                    try:
                        await self._call(self._backend.leave, self._name, self._node)
                    except Exception as exc:
                        _log.warning(
                            "peer %r: could not leave the members of %r on the way out "
                            "(its row expires by itself): %r",
                            self._node,
                            self._name,
                            exc,
                        )
                if may_hold:
                    try:  # bounded by call_timeout, like every call
                        await self._call(self._backend.release, self._name, self._claim)
                    except Exception as exc:
                        _log.warning(
                            "peer %r: could not release %r on the way out (it expires by "
                            "itself): %r",
                            self._node,
                            self._name,
                            exc,
                        )
            finally:
                try:
                    await self._call(self._backend.close)
                except Exception as exc:
                    _log.warning("peer %r: closing the backend failed: %r", self._node, exc)

    async def _drain(self) -> bool:
        """Let the runs started under this lease finish before handing it over.

        No new run starts meanwhile (:meth:`is_leader` says no), and the wait ends with
        the lease at the latest, when the scheduler cancels those runs anyway.

        Returns:
            Whether no run of this lease is left.
        """
        if not self._in_flight:
            return True
        if not self._is_leader:
            return False
        self._draining = True
        with trio.move_on_at(self._lease_until):
            await self._wait_idle()
        return not self._in_flight


_FAULT_TEXT = {
    Fault.TRANSIENT: "retrying",
    Fault.PERSISTENT: "this needs a fix: a grant, a table, a file's permissions; retrying",
    Fault.FATAL: "this configuration worked before; retrying",
}


class _Attempt:
    """One acquire in a worker thread, and what becomes of it when the peer stops waiting.

    The peer abandons a call at ``call_timeout`` (or when it is cancelled), but the
    thread runs on, and its statement may still win the lease: a row that names this
    node, that nobody renews, and that keeps every other node out until it expires. The
    thread releases such a win itself, before the peer's next call can start (calls hold
    the peer's one thread slot until they return).
    """

    def __init__(
        self, backend: LeaseBackend, name: str, claim: str, ttl: float, node: str, quorum: int
    ):
        self._backend = backend
        self._name = name
        self._claim = claim
        self._ttl = ttl
        self._node = node
        self._quorum = quorum
        self._lock = threading.Lock()
        self._abandoned = False
        self._finished = False
        self._row: tuple[str, int] | None = None
        #: The live members the round counted, once it has (``None``: not known).
        self.alive: int | None = None

    def run(self) -> tuple[str, int] | None:
        """In the worker thread: one round, then release a win nobody waits for."""
        row, alive = self._backend.elect(
            self._name, self._claim, self._ttl, member=self._node, quorum=self._quorum
        )
        won = row is not None and row[0] == self._claim
        won = won and (1 if alive is None else alive) >= self._quorum
        with self._lock:
            if not self._abandoned:
                self._finished, self._row, self.alive = True, row, alive
                return row
        if won:
            try:
                self._backend.release(self._name, self._claim)
            except Exception as exc:
                _log.warning(
                    "peer %r: an abandoned call won the lease of %r after all, and releasing "
                    "it failed (it expires by itself): %r",
                    self._node,
                    self._name,
                    exc,
                )
            else:
                _log.warning(
                    "peer %r: an abandoned call won the lease of %r after all (slower than "
                    "call_timeout); released it",
                    self._node,
                    self._name,
                )
        return row

    def abandon(self) -> tuple[bool, tuple[str, int] | None]:
        """In Trio, when the call ends without its answer: whether the thread had
        finished all the same, and its answer."""
        with self._lock:
            self._abandoned = True
            return self._finished, self._row


@attrs.frozen
class Election:
    """An election as its database holds it, read by ``read_elections`` of
    :mod:`periodic.peers.sqlite` or :mod:`periodic.peers.postgres`.

    Attributes:
        name: The election's name (the peers' ``name``).
        leader: The node that holds the lease, or ``None`` when nobody does (it has
            expired, or was released).
        fence: The lease's epoch: the fence of the leader, or of the last one when
            nobody leads now; ``None`` when the election has no lease row yet.
        expires_at: When the lease ends (or ended), an aware datetime in UTC; ``None``
            when the election has no lease row yet.
        members: The nodes of its live members, sorted; empty when none are alive or
            the members table does not exist.
    """

    name: str
    leader: str | None
    fence: int | None
    expires_at: datetime.datetime | None
    members: tuple[str, ...] = ()


def gather_elections(
    leases: Iterable[tuple[str, str, int, datetime.datetime, bool]],
    alive: Iterable[tuple[str, str]],
) -> list[Election]:
    """The elections, by name, from the rows of a leases table ``(name, holder, epoch,
    expires_at, held now)`` and of its members table ``(election, node)`` (live ones)."""
    nodes: dict[str, list[str]] = {}
    for election, node in alive:
        nodes.setdefault(election, []).append(node)
    found = {
        name: Election(
            name=name,
            leader=node_of(holder) if held else None,
            fence=epoch,
            expires_at=expires_at.astimezone(datetime.timezone.utc),
            members=tuple(sorted(nodes.get(name, ()))),
        )
        for name, holder, epoch, expires_at, held in leases
    }
    for election, members in nodes.items():
        if election not in found:  # members below their quorum, and no lease yet
            found[election] = Election(
                name=election,
                leader=None,
                fence=None,
                expires_at=None,
                members=tuple(sorted(members)),
            )
    return [found[name] for name in sorted(found)]


def members_table(table: str) -> str | None:
    """The name of the members table beside the leases table ``table`` (``schema.`` kept):
    ``<table>_members``, or ``None`` when that is too long to be an identifier."""
    schema, dot, name = table.rpartition(".")
    try:
        members = table_name(f"{name}_members", qualified=False).name
    except ValueError:
        return None
    return f"{schema}{dot}{members}"


def node_of(claim: str) -> str:
    """The node name in a holder's claim ``node/token``."""
    return claim.rpartition("/")[0] or claim


def _boot_clock() -> float:
    return time.clock_gettime(_BOOT_CLOCK)


# CLOCK_BOOTTIME runs on during a suspend (Linux); elsewhere, the monotonic clock.
_BOOT_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def _quorum(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"quorum must be an int >= 1 (members alive to lead), got {value!r}")
    if value < 1:
        raise ValueError(f"quorum must be an int >= 1 (members alive to lead), got {value!r}")
    return value


def _seconds(option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{option} must be a number of seconds, got {value!r}")
    return float(value)


def _positive(option: str, value: Any) -> float:
    seconds = _seconds(option, value)
    if not 0 < seconds < math.inf:
        raise ValueError(f"{option} must be a positive, finite number of seconds, got {value!r}")
    return seconds
