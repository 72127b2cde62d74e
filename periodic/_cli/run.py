"""``periodic run MODULE:ATTR``: import an application's jobs and serve them, with their
stores and peers, until SIGTERM or SIGINT."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import signal
import sys
from typing import Any, Protocol

import trio

from .._db import DatabaseConfigError
from .._scheduler import Periodic
from ..reminders import Reminders
from ..stores import Store
from .target import Target
from .text import CommandError, one_line

_log = logging.getLogger("periodic")

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_SERVABLE = "a Periodic, a Reminders, a list or tuple of them, or a function returning one"


class _Servable(Protocol):
    async def serve(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...


def configure(level: str) -> None:
    """Log the ``periodic`` logger's records of ``level`` and above to stderr, unless the
    application configured logging itself (a handler on the root logger) as it was
    imported: then its handlers get them (once), at that level."""
    logger = logging.getLogger("periodic")
    logger.setLevel(level)
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    logger.addHandler(handler)


def load(spec: str) -> object:
    """The object ``MODULE:ATTR`` names (``ATTR`` may be dotted). The current directory
    comes first on ``sys.path``, as it does for ``python -m``.

    Raises:
        CommandError: ``spec`` is malformed, the module does not import, or it has no
            such attribute.
    """
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise CommandError(f"expected MODULE:ATTR (such as app.jobs:cleanup), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        value: object = importlib.import_module(module_name)
    except Exception as exc:
        _log.debug("importing %r failed", module_name, exc_info=True)
        raise CommandError(
            f"cannot import {module_name!r}: {one_line(f'{type(exc).__name__}: {exc}')}"
        ) from None
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise CommandError(f"module {module_name!r} has no attribute {attr!r}") from None
    return value


def _things(value: object, spec: str) -> list[Periodic | Reminders] | None:
    """What ``value`` holds to serve, or ``None`` if it is not something to serve."""
    if isinstance(value, (Periodic, Reminders)):
        return [value]
    if isinstance(value, (list, tuple)):
        for item in value:
            if not isinstance(item, (Periodic, Reminders)):
                raise CommandError(
                    f"{spec} holds {item!r}, which is neither a Periodic nor a Reminders"
                )
        if not value:
            raise CommandError(f"{spec} is empty: there is nothing to serve")
        return list(value)
    return None


def _store_parameter(fn: Any, spec: str) -> inspect.Parameter | None:
    """The ``store`` parameter of the function ``fn``, which must need no other argument.

    Raises:
        CommandError: ``fn`` needs other arguments.
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read: call it as it is
        return None
    required = [
        name
        for name, p in params.items()
        if p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and (name != "store" or p.kind is p.POSITIONAL_ONLY)
    ]
    if required:
        raise CommandError(
            f"{spec} must take no arguments but an optional store; it needs " + ", ".join(required)
        )
    return params.get("store")


async def _make(value: object, spec: str, store: Store | None) -> list[Periodic | Reminders]:
    """What ``value`` holds to serve: itself, or what it returns when called (awaited if
    it is a coroutine), with ``store=store`` if ``--store`` was given.

    Raises:
        CommandError: ``value`` is not something to serve, nor a function making one; the
            function needs a store that was not given, or takes none that was; it raised.
    """
    things = _things(value, spec)
    if things is not None:
        if store is not None:
            raise CommandError(f"--store is for a function that takes a store; {spec} is not one")
        return things
    if not callable(value):
        raise CommandError(f"{spec} is {value!r}, not {_SERVABLE}")
    parameter = _store_parameter(value, spec)
    if store is not None and parameter is None:
        raise CommandError(f"--store is for a function that takes a store; {spec} takes none")
    if store is None and parameter is not None and parameter.default is parameter.empty:
        raise CommandError(f"{spec} takes a store: give one with --store STORE")
    try:
        made = value() if store is None else value(store=store)
        if inspect.isawaitable(made):
            made = await made
    except Exception as exc:
        _log.debug("calling %s failed", spec, exc_info=True)
        raise CommandError(f"{spec} failed: {one_line(f'{type(exc).__name__}: {exc}')}") from None
    things = _things(made, spec + "()")
    if things is None:
        raise CommandError(f"{spec} returned {made!r}, not {_SERVABLE}")
    return things


def _distinct(items: list[Any]) -> list[Any]:
    seen: set[int] = set()
    found = []
    for item in items:
        if item is not None and id(item) not in seen:
            seen.add(id(item))
            found.append(item)
    return found


class Service:
    """Serves stores, then peers, then jobs, each level in a nursery inside the one before;
    stops them in the opposite order on the first SIGTERM or SIGINT, so that running jobs
    get their ``job_shutdown``, a peer hands its leadership over only after them, and a
    store closes last."""

    def __init__(self, levels: list[list[_Servable]]) -> None:
        self._levels = levels
        self._scope: trio.CancelScope | None = None
        self.stopping = False
        #: What failed to start, and how.
        self.failure: tuple[_Servable, Exception] | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_signals)
            await self._level(0)
            nursery.cancel_scope.cancel()

    async def _watch_signals(self) -> None:
        # After the first signal the default handlers are back: a second one stops at once.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                _log.info(
                    "%s: stopping; running jobs get their job_shutdown to finish",
                    signal.Signals(signum).name,
                )
                self.stop()
                return

    def stop(self) -> None:
        self.stopping = True
        if self._scope is not None:
            self._scope.cancel()

    async def _level(self, level: int) -> None:
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            if self.stopping:
                return
            for thing in self._levels[level]:
                try:
                    await nursery.start(thing.serve)
                except Exception as exc:
                    self.failure = (thing, exc)
                    self.stop()
                    return
            if level + 1 < len(self._levels):
                await self._level(level + 1)
                self._scope = nursery.cancel_scope
                nursery.cancel_scope.cancel()
            else:
                _log.info("serving %s", _names(self._levels[level]))


def _names(things: list[_Servable]) -> str:
    return ", ".join(
        repr(thing.name) for thing in things if isinstance(thing, (Periodic, Reminders))
    )


def run(spec: str, *, store: Target | None, log_level: str) -> int:
    """``periodic run``; its exit status.

    Raises:
        CommandError: The jobs cannot be imported or made (exit status 2).
    """
    logging.getLogger("periodic").setLevel(log_level)  # (for what importing logs)
    value = load(spec)
    configure(log_level)
    service: Service | None = None

    async def main() -> None:
        nonlocal service
        made_store = None if store is None else store.store(create_tables=True)
        things = await _make(value, spec, made_store)
        stores = _distinct([made_store, *(thing.store for thing in things)])
        peers = _distinct([thing.peer for thing in things])
        service = Service([level for level in (stores, peers, _distinct(things)) if level])
        await service.run()

    try:
        trio.run(main)
    except CommandError:
        raise
    except Exception:
        _log.critical("periodic run: serving failed", exc_info=True)
        return 1
    assert service is not None
    if service.failure is not None:
        thing, exc = service.failure
        _log.debug("starting %r failed", thing, exc_info=exc)
        text = one_line(f"{type(exc).__name__}: {exc}")
        if store is not None:
            text = store.hide(text)
        print(f"periodic run: {thing!r} did not start: {text}", file=sys.stderr)
        return 2 if isinstance(exc, DatabaseConfigError) else 1
    return 0
