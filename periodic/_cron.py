"""Fixed-time schedules: crontab specs, duration strings, and their DST rules.

Everything here is pure and clock-free: the scheduler reads the wall clock and asks
:meth:`CronSchedule.next_after` when to fire next. Specs are parsed by ``cronsim`` (the
``trio-periodic[cron]`` extra), imported only when a cron spec is parsed, so that
:func:`parse_duration` works without it.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Iterator
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from types import ModuleType

    from cronsim import CronSim

UTC = dt.timezone.utc

_DURATION = re.compile(
    r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m(?!s))?(?:([0-9]+)s)?(?:([0-9]+)ms)?"
)
_UNIT_SECONDS = (86400, 3600, 60, 1, 0.001)
_DURATION_ACCEPTS = (
    "a positive duration made of whole numbers with the units d, h, m, s, ms, largest "
    "first and each at most once, e.g. '90s', '1h30m', '1h2m3s', '1d', '250ms'"
)

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_SPEC_ACCEPTS = (
    "5 fields 'min hour dom month dow', 6 fields with seconds first, "
    f"one of {', '.join(MACROS)}, or '@every <duration>' (e.g. '@every 1h30m')"
)


def parse_duration(text: str) -> float:
    """Parse a duration string such as ``"90s"`` or ``"1h30m"`` into seconds.

    A duration is one or more whole numbers, each followed by its unit: ``d`` (days of
    86400 s), ``h``, ``m``, ``s`` or ``ms``, largest unit first, each unit at most once,
    with no spaces: ``"1d12h"``, ``"1h2m3s"``, ``"250ms"``.

    Args:
        text: The duration string.

    Returns:
        The duration in seconds, > 0.

    Raises:
        TypeError: ``text`` is not a ``str``.
        ValueError: ``text`` is not such a duration, or is zero.
    """
    if not isinstance(text, str):
        raise TypeError(f"a duration must be a str such as '1h30m', got {text!r}")
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"bad duration {text!r}: expected {_DURATION_ACCEPTS}")
    seconds = sum(
        int(number) * unit
        for number, unit in zip(match.groups(), _UNIT_SECONDS, strict=True)
        if number is not None
    )
    if seconds <= 0:
        raise ValueError(f"bad duration {text!r}: must be > 0, expected {_DURATION_ACCEPTS}")
    return float(seconds)


def _cronsim() -> ModuleType:
    try:
        import cronsim
    except ImportError:
        raise ImportError(
            "cron specs need the cronsim package: pip install 'trio-periodic[cron]'"
        ) from None
    return cronsim


def _zone(tz: str | dt.tzinfo | None, spec: str) -> dt.tzinfo:
    if tz is None:
        return UTC
    if isinstance(tz, dt.tzinfo):
        return tz
    if not isinstance(tz, str):
        raise TypeError(
            f"tz for cron spec {spec!r} must be None, an IANA zone name or a tzinfo, got {tz!r}"
        )
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {tz!r} for cron spec {spec!r}: expected an IANA zone "
            "name such as 'Europe/Berlin' or 'UTC', or a tzinfo"
        ) from None


def _aware(wall: dt.datetime, what: str) -> dt.datetime:
    if not isinstance(wall, dt.datetime):
        raise TypeError(f"{what} must be a timezone-aware datetime, got {wall!r}")
    if wall.utcoffset() is None:
        raise ValueError(
            f"{what} must be a timezone-aware datetime, got the naive {wall!r}; "
            "e.g. datetime(..., tzinfo=ZoneInfo('Europe/Berlin'))"
        )
    return wall


def _utc(moment: dt.datetime) -> dt.datetime:
    # Aware datetimes sharing a tzinfo compare by wall time, ignoring fold; compare in UTC.
    return moment.astimezone(UTC)


def _exists(local: dt.datetime) -> bool:
    """Whether the wall time ``local`` occurs in its zone (is not skipped by a jump)."""
    return _utc(local).astimezone(local.tzinfo).replace(tzinfo=None) == local.replace(tzinfo=None)


def _end_of_gap(skipped: dt.datetime) -> dt.datetime:
    """The instant the clock jumped over the skipped wall time ``skipped``."""
    # With fold=1 a skipped time maps to an instant before the jump, with fold=0 after.
    low = int(_utc(skipped.replace(fold=1)).timestamp())
    high = int(_utc(skipped.replace(fold=0)).timestamp())
    naive = skipped.replace(tzinfo=None)
    while low + 1 < high:  # invariant: wall(low) is before the gap, wall(high) after
        mid = (low + high) // 2
        wall = dt.datetime.fromtimestamp(mid, skipped.tzinfo).replace(tzinfo=None)
        if wall > naive:
            high = mid
        else:
            low = mid
    return dt.datetime.fromtimestamp(high, skipped.tzinfo)


@attrs.frozen(repr=False)
class CronSchedule:
    """A parsed crontab spec in a time zone; make one with :func:`parse_schedule`.

    Attributes:
        spec: The spec as given, e.g. ``"0 2 * * *"`` or ``"@daily"``.
        expression: The cron expression it stands for (a macro expanded).
        tz: The zone whose wall clock the spec is read on.
        fixed_time: Whether both the minute and the hour field are fixed (neither starts
            with ``*``): only such jobs get Debian cron's DST treatment; the others follow
            the wall clock as it is.
    """

    spec: str
    expression: str
    tz: dt.tzinfo
    fixed_time: bool

    def __repr__(self) -> str:
        return f"CronSchedule({self.spec!r}, tz={self.tz!s})"

    def next_after(self, wall: dt.datetime) -> dt.datetime:
        """Return the first fire time strictly after the instant ``wall``.

        Fixed-time specs are matched on the wall clock of :attr:`tz`, then: a wall time
        skipped by a forward jump fires at the jump, once; a wall time repeated by a
        backward jump fires the first time only. Other specs fire at every instant whose
        wall time matches, so they skip skipped times and repeat repeated ones.

        Args:
            wall: A timezone-aware datetime (in any zone).

        Returns:
            An aware datetime in :attr:`tz` (``fold=1`` on the second pass of a repeated
            wall time).

        Raises:
            TypeError: ``wall`` is not a datetime.
            ValueError: ``wall`` is naive, or the spec never matches in the 50 years
                after it.
        """
        after = _utc(_aware(wall, "wall"))
        local = after.astimezone(self.tz)
        cron_sim: type[CronSim] = _cronsim().CronSim
        # cronsim's iterators end after 50 years without a match.
        if self.fixed_time:
            for naive in cron_sim(self.expression, local.replace(tzinfo=None)):
                moment = naive.replace(tzinfo=self.tz)  # fold=0: the first pass
                if not _exists(moment):
                    moment = _end_of_gap(moment)
                if _utc(moment) > after:
                    return moment
        else:
            for moment in cron_sim(self.expression, local):
                if _utc(moment) > after and _exists(moment):
                    return moment
        raise ValueError(f"cron spec {self.spec!r} does not match in the 50 years after {wall}")


@attrs.frozen
class IntervalGrid:
    """Wall-clock slots ``anchor + k * every`` (k = 0, 1, ...), for interval jobs with a
    store: the same on every process and across restarts. Computed in whole
    microseconds, so that every process finds exactly the same slots."""

    anchor: dt.datetime
    every_us: int
    tz: dt.tzinfo = UTC

    @classmethod
    def of(cls, anchor: dt.datetime, every: float) -> IntervalGrid:
        return cls(_utc(anchor), max(1, round(every * 1_000_000)))

    def next_after(self, wall: dt.datetime) -> dt.datetime:
        """The first slot strictly after the instant ``wall``."""
        if wall < self.anchor:
            return self.anchor
        elapsed = (_utc(wall) - self.anchor) // dt.timedelta(microseconds=1)
        k = elapsed // self.every_us + 1
        return self.anchor + dt.timedelta(microseconds=k * self.every_us)

    def slots(self, after: dt.datetime, until: dt.datetime) -> int:
        """How many slots are in ``(after, until]``."""
        first = self.next_after(after)
        if first > until:
            return 0
        return (_utc(until) - first) // dt.timedelta(microseconds=self.every_us) + 1


def utc_now() -> dt.datetime:
    """The wall clock now, in UTC."""
    return dt.datetime.now(UTC)


def latest_fire(
    schedule: CronSchedule | IntervalGrid, fire: dt.datetime, wall: dt.datetime
) -> dt.datetime:
    """The last fire time of ``schedule`` at or before ``wall``, given ``fire`` at or
    before it (both aware), found by bisection: for a gap of millions of fire times."""
    low, high = fire, wall
    while high - low > dt.timedelta(milliseconds=1):
        middle = low + (high - low) / 2
        if _utc(schedule.next_after(middle)) <= wall:
            low = middle
        else:
            high = middle
    later = _utc(schedule.next_after(low))
    return later if later <= wall else fire


def parse_schedule(spec: str, tz: str | dt.tzinfo | None = None) -> CronSchedule | float:
    """Parse a crontab spec, as the ``cron=`` option takes it.

    Accepted specs: 5 fields ``min hour dom month dow``; 6 fields with seconds first;
    the macros ``@yearly @annually @monthly @weekly @daily @midnight @hourly``; and
    ``@every <duration>`` (see :func:`parse_duration`). Fields are read by ``cronsim``
    (Debian cron syntax, including ``L``, ``W``, ``#`` and names such as ``MON``/``JAN``).

    Args:
        spec: The spec.
        tz: An IANA zone name (``"Europe/Berlin"``), a :class:`~datetime.tzinfo`
            (e.g. :class:`zoneinfo.ZoneInfo`), or ``None`` for UTC.

    Returns:
        A :class:`CronSchedule`, or for ``@every`` the interval in seconds.

    Raises:
        TypeError: ``spec`` is not a ``str`` or ``tz`` is of the wrong type.
        ValueError: The spec is malformed or ``tz`` names no known zone (the message
            quotes the spec and says what is wrong).
        ImportError: ``cronsim`` is not installed.
    """
    if not isinstance(spec, str):
        raise TypeError(f"a cron spec must be a str such as '0 2 * * *', got {spec!r}")
    zone = _zone(tz, spec)
    words = spec.split()
    if words and words[0].startswith("@"):
        macro = words[0].lower()
        if macro == "@every":
            if len(words) != 2:
                raise ValueError(f"bad cron spec {spec!r}: '@every' takes one duration")
            try:
                return parse_duration(words[1])
            except ValueError as exc:
                raise ValueError(f"bad cron spec {spec!r}: {exc}") from None
        if macro not in MACROS or len(words) != 1:
            raise ValueError(f"bad cron spec {spec!r}: expected {_SPEC_ACCEPTS}")
        expression = MACROS[macro]
    elif len(words) in (5, 6):
        expression = " ".join(words)
    else:
        found = f"{len(words)} field{'' if len(words) == 1 else 's'}"
        raise ValueError(f"bad cron spec {spec!r}: {found}; expected {_SPEC_ACCEPTS}")
    cronsim = _cronsim()
    try:
        cronsim.CronSim(expression, dt.datetime(2000, 1, 1))
    except cronsim.CronSimError as exc:
        field = str(exc).removeprefix("Bad ")  # cronsim says e.g. "Bad day-of-month"
        raise ValueError(
            f"bad cron spec {spec!r}: bad {field} field; expected {_SPEC_ACCEPTS}"
        ) from None
    fields = expression.split()
    minute, hour = fields[-5], fields[-4]
    fixed_time = not minute.startswith("*") and not hour.startswith("*")
    return CronSchedule(spec, expression, zone, fixed_time)


def next_fire_times(
    spec: str, *, tz: str | dt.tzinfo | None = None, start: dt.datetime | None = None
) -> Iterator[dt.datetime]:
    """Preview a schedule: its fire times after ``start``, as the scheduler follows it.

    Args:
        spec: A spec as :func:`parse_schedule` takes it.
        tz: The zone, as :func:`parse_schedule` takes it; default UTC.
        start: A timezone-aware datetime; default now. For ``@every``, the fire times
            are ``start + k * interval`` for k = 1, 2, …

    Returns:
        An endless iterator of aware datetimes in ``tz``.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: The spec or zone is bad, or ``start`` is naive.
        ImportError: ``cronsim`` is not installed.
    """
    schedule = parse_schedule(spec, tz)
    zone = _zone(tz, spec)
    begin = dt.datetime.now(zone) if start is None else _aware(start, "start")
    if isinstance(schedule, float):
        return _every(schedule, _utc(begin), zone)
    return _fire_times(schedule, begin)


def _every(interval: float, begin: dt.datetime, zone: dt.tzinfo) -> Iterator[dt.datetime]:
    k = 1
    while True:
        yield (begin + dt.timedelta(seconds=k * interval)).astimezone(zone)
        k += 1


def _fire_times(schedule: CronSchedule, begin: dt.datetime) -> Iterator[dt.datetime]:
    moment = begin
    while True:
        moment = schedule.next_after(moment)
        yield moment
