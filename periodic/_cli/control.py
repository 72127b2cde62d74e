"""``periodic pause``, ``resume`` and ``trigger``: tell every process serving a job,
through the store."""

from __future__ import annotations

from ..stores import Store


async def pause(store: Store, name: str, note: str | None) -> str:
    """Pause the job; the line to print.

    Raises:
        LookupError: The job is not in the store.
    """
    await store.pause(name, note=note)
    return f"paused {name}" + ("" if note is None else f": {note}")


async def resume(store: Store, name: str) -> str:
    """Resume the job; the line to print.

    Raises:
        LookupError: The job is not in the store.
    """
    await store.resume(name)
    return f"resumed {name}"


async def trigger(store: Store, name: str) -> str:
    """Ask for one run of the job now; the line to print.

    Raises:
        LookupError: The job is not in the store.
    """
    await store.trigger(name)
    return f"triggered {name}: a process serving it starts one run"
