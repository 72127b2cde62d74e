"""A peer elected by an exclusive lock on a file: the example of the "Writing a peer" page.

Whoever holds ``flock(LOCK_EX)`` on the file leads. The kernel drops the lock the moment
the process that holds it exits, even on SIGKILL, so a follower takes over at its next
poll; nothing expires, so there is no lease to renew. The file keeps the fence and the
leader's node: every new leader gets a bigger fence, and followers know who leads.

Local file systems only: ``flock`` over NFS is not a lock you can trust.
"""

from __future__ import annotations

import fcntl
import os

import trio

from periodic.peers import PeerBase


class FileLockPeer(PeerBase):
    """Leads while it holds an exclusive ``flock`` on ``path``.

    Args:
        path: The lock file (made if missing). Give every process the same path.
        name: The election's name, for events and logs.
        node: This process's identity; default ``host:pid:random``.
        poll: Seconds between a follower's attempts to take the lock.

    Raises:
        TypeError, ValueError: An option is invalid.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str = "filelock",
        node: str | None = None,
        poll: float = 0.5,
    ) -> None:
        super().__init__(name=name, node=node)
        if isinstance(poll, bool) or not isinstance(poll, (int, float)):
            raise TypeError(f"poll must be a number of seconds, got {poll!r}")
        if not 0 < poll < float("inf"):
            raise ValueError(f"poll must be a positive number of seconds, got {poll!r}")
        self._path = os.fspath(path)
        self._poll = float(poll)

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._begin_serving()  # RuntimeError if it is served already
        # Each open() is a lock of its own, so two peers in one process compete too.
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            task_status.started()
            while not _try_lock(fd):
                holder = await trio.to_thread.run_sync(_read, fd)
                self._set_follower(holder[1] if holder else None, "the file is locked")
                await trio.sleep(self._poll)
            fence = await trio.to_thread.run_sync(_claim, fd, self._node)
            self._set_leader(fence, "locked the file")
            await trio.sleep_forever()  # the kernel holds the lock for us
        finally:
            # Step down (and say so) first, then let go of the lock.
            self._end_serving("stopped")
            os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read(fd: int) -> tuple[int, str] | None:
    """The ``(fence, node)`` of the last leader, or ``None`` for a new file."""
    text = os.pread(fd, 4096, 0).decode(errors="replace")
    fence, _, node = text.strip().partition(" ")
    return (int(fence), node) if fence.isdigit() and node else None


def _claim(fd: int, node: str) -> int:
    """Write the next fence and our node; called with the lock held."""
    last = _read(fd)
    fence = 1 if last is None else last[0] + 1
    data = f"{fence} {node}\n".encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
    os.fsync(fd)  # the fence must survive a crash, or it could go backwards
    return fence
