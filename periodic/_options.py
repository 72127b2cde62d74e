"""Option enums and the converters that check every option of :class:`~periodic.Periodic`."""

from __future__ import annotations

import datetime
import enum
import functools
import inspect
import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from .peers._base import Peer
    from .stores._base import Store


class DelayMode(str, enum.Enum):
    """How the next tick is placed."""

    #: Tick *k* is due at ``start + initial_delay + k * every``; lateness never accumulates.
    REGULAR = "regular"
    #: The next tick is due ``every`` after the previous run has finished.
    SHIFTED = "shifted"

    def __str__(self) -> str:
        return self.value


class Overlap(str, enum.Enum):
    """What a tick does while an earlier run is still going."""

    #: Start another instance.
    RUN = "run"
    #: Start none; emit ``Skipped(reason="overlap")``.
    IGNORE = "ignore"
    #: Cancel the running instances, wait until they have unwound, then start.
    STOP_PREVIOUS = "stop_previous"

    def __str__(self) -> str:
        return self.value


class Mode(str, enum.Enum):
    """Whether the scheduler ticks by itself."""

    #: Ticks come from the clock.
    AUTO = "auto"
    #: Ticks come only from :func:`periodic.testing.tick` and friends.
    MANUAL = "manual"

    def __str__(self) -> str:
        return self.value


E = TypeVar("E", bound=enum.Enum)


def enum_converter(option: str, cls: type[E]) -> Callable[[Any], E]:
    accepted = ", ".join(repr(m.value) for m in cls)

    def convert(value: Any) -> E:
        if isinstance(value, cls):
            return value
        if not isinstance(value, str) or isinstance(value, enum.Enum):
            raise TypeError(
                f"{option} must be one of {accepted} or a {cls.__name__}, got {value!r}"
            )
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"{option} must be one of {accepted}, got {value!r}") from None

    return convert


_delay_mode = enum_converter("delay_mode", DelayMode)
_on_overlap = enum_converter("on_overlap", Overlap)
_mode = enum_converter("mode", Mode)


def delay_mode(value: DelayMode | Literal["regular", "shifted"] | None) -> DelayMode | None:
    return None if value is None else _delay_mode(value)


def on_overlap(value: Overlap | Literal["run", "ignore", "stop_previous"]) -> Overlap:
    return _on_overlap(value)


def mode(value: Mode | Literal["auto", "manual"]) -> Mode:
    return _mode(value)


def _seconds(option: str, value: Any, *, accepts: str) -> float:
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{option} must be {accepts}, got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:
        raise ValueError(f"{option} must be {accepts}, got an integer too large") from None
    if math.isnan(seconds):
        raise ValueError(f"{option} must be {accepts}, got NaN")
    return seconds


def _duration(option: str, value: Any, *, accepts: str, zero: bool = False) -> float:
    """Seconds from a number, a ``timedelta`` or a duration string such as ``"90s"``:
    finite, and > 0 (>= 0 with ``zero``)."""
    if isinstance(value, str):
        from ._cron import parse_duration

        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ValueError(f"{option}: {exc}") from None
    seconds = _seconds(option, value, accepts=accepts)
    if not (seconds >= 0 if zero else seconds > 0) or seconds == math.inf:
        raise ValueError(f"{option} must be {accepts}, got {value!r}")
    return seconds


def every(value: float | datetime.timedelta | str | None) -> float | None:
    if value is None:
        return None
    accepts = (
        "a positive, finite number of seconds, a timedelta, or a duration string such as "
        "'90s' or '1h30m'"
    )
    return _duration("every", value, accepts=accepts)


def initial_delay(value: float | datetime.timedelta | None) -> float | None:
    if value is None:
        return None
    accepts = "a finite number of seconds >= 0 or a timedelta (default: every)"
    seconds = _seconds("initial_delay", value, accepts=accepts)
    if not 0 <= seconds < math.inf:
        raise ValueError(f"initial_delay must be {accepts}, got {value!r}")
    return seconds


def timeout(value: float | datetime.timedelta | None) -> float:
    """``None`` and ``math.inf`` both become ``math.inf``: no limit."""
    if value is None:
        return math.inf
    accepts = "None, math.inf, or a number of seconds > 0 or a timedelta"
    seconds = _seconds("timeout", value, accepts=accepts)
    if not seconds > 0:
        raise ValueError(f"timeout must be {accepts}, got {value!r}")
    return seconds


def job_shutdown(value: float | datetime.timedelta) -> float:
    accepts = "a number of seconds >= 0, math.inf, or a timedelta"
    seconds = _seconds("job_shutdown", value, accepts=accepts)
    if not seconds >= 0:
        raise ValueError(f"job_shutdown must be {accepts}, got {value!r}")
    return seconds


def unwrap_partial(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def is_async_callable(fn: Any) -> bool:
    target = unwrap_partial(fn)
    # inspect.unwrap: a functools.wraps decorator around an async function.
    if inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(inspect.unwrap(target)):
        return True
    call = getattr(type(target), "__call__", None)  # noqa: B004 - callable instances
    return not inspect.isfunction(target) and inspect.iscoroutinefunction(call)


def check_run(value: Callable[[], object]) -> Callable[[], object]:
    if value is None:
        raise TypeError("run is required: pass the job function, e.g. Periodic(run=cleanup)")
    if inspect.iscoroutine(value) or inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()  # keeps Python from warning that it was never awaited
        raise TypeError(
            f"run must be the job function itself, not an awaitable: pass run=f, not run=f() "
            f"(got {value!r})"
        )
    if not callable(value):
        raise TypeError(f"run must be a callable taking no arguments, got {value!r}")
    if inspect.isasyncgenfunction(unwrap_partial(value)):
        raise TypeError(
            f"run must be an async or sync function, not an async generator function "
            f"(got {value!r}): its body would never run"
        )
    try:
        sig = inspect.signature(value)
    except (TypeError, ValueError):
        return value  # some builtins have no signature; trust the caller
    try:
        sig.bind()
    except TypeError:
        raise TypeError(
            f"run must be callable with no arguments, but {value!r} has signature {sig}; "
            "bind its arguments with functools.partial"
        ) from None
    return value


def check_when(value: Callable[[], object] | None) -> Callable[[], object] | None:
    if value is not None and not callable(value):
        raise TypeError(
            f"when must be None or a callable returning a bool (sync or async), got {value!r}"
        )
    return value


def check_name(value: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"name must be a non-empty str, got {value!r}")
    if not value.strip():
        raise ValueError(f"name must be a non-empty str, got {value!r}")
    return value


def default_name(run: Any) -> str:
    target = unwrap_partial(run)
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    if not isinstance(name, str):
        name = type(target).__qualname__
    return name


def check_peer(value: Peer | None) -> Peer | None:
    from .peers._base import Peer

    if value is not None and not isinstance(value, Peer):
        raise TypeError(
            f"peer must be None or a periodic.peers.Peer (LocalPeer, SQLitePeer, "
            f"PostgresPeer, or your own subclass), got {value!r}"
        )
    return value


def check_cancel_on_leadership_loss(value: bool) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"cancel_on_leadership_loss must be a bool, got {value!r}")
    return value


def check_cron(value: str | None) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"cron must be a crontab spec (str) such as '0 2 * * *', got {value!r}")
    return value


def check_tz(value: str | datetime.tzinfo | None) -> str | datetime.tzinfo | None:
    if value is not None and not isinstance(value, (str, datetime.tzinfo)):
        raise TypeError(
            f"tz must be an IANA zone name such as 'Europe/Berlin', a tzinfo, or None, "
            f"got {value!r}"
        )
    return value


def check_wall_clock(
    value: Callable[[], datetime.datetime] | None,
) -> Callable[[], datetime.datetime] | None:
    if value is not None and not callable(value):
        raise TypeError(
            f"wall_clock must be None or a callable returning an aware datetime, got {value!r}"
        )
    return value


def jitter(value: float | datetime.timedelta | str | None) -> float:
    """``None`` and ``0`` both mean no jitter."""
    if value is None:
        return 0.0
    accepts = "a finite number of seconds >= 0, a timedelta, or a duration string such as '5s'"
    return _duration("jitter", value, accepts=accepts, zero=True)


def check_jitter_rng(value: random.Random | None) -> random.Random | None:
    if value is not None and not isinstance(value, random.Random):
        raise TypeError(
            f"jitter_rng must be None or a random.Random (e.g. random.Random(42) in tests), "
            f"got {value!r}"
        )
    return value


class CatchUp(str, enum.Enum):
    """What a job with a store does with the slots that fell due while no process ran it."""

    #: Run the latest missed slot at once; report the others as missed.
    LATEST = "latest"
    #: Run none of them; the next run is the next slot.
    NONE = "none"
    #: Run every missed slot within ``catch_up_window``, oldest first, one after another.
    ALL = "all"

    def __str__(self) -> str:
        return self.value


_catch_up = enum_converter("catch_up", CatchUp)


def catch_up(value: CatchUp | Literal["latest", "none", "all"]) -> CatchUp:
    return _catch_up(value)


def catch_up_window(value: float | datetime.timedelta | str | None) -> float | None:
    if value is None:
        return None
    accepts = (
        "None, or a positive, finite number of seconds, a timedelta, or a duration string "
        "such as '1h'"
    )
    return _duration("catch_up_window", value, accepts=accepts)


def check_store(value: Store | None) -> Store | None:
    from .stores._base import Store

    if value is not None and not isinstance(value, Store):
        raise TypeError(
            "store must be None or a periodic.stores.Store (MemoryStore, SQLiteStore, "
            f"PostgresStore, or your own subclass), got {value!r}"
        )
    return value


def overdue_after(value: float | datetime.timedelta | str | None) -> float | None:
    if value is None:
        return None
    accepts = (
        "None, or a positive, finite number of seconds, a timedelta, or a duration string "
        "such as '2h'"
    )
    return _duration("overdue_after", value, accepts=accepts)
