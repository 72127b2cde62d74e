"""The retry policy of a job's runs: :class:`Retry`."""

from __future__ import annotations

import math
from typing import Any

import attrs


def _number(option: str, accepts: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Retry: {option} must be {accepts}, got {value!r}")
    return float(value)


def _attempts(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Retry: attempts must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"Retry: attempts must be an int >= 1 (1: no retry), got {value!r}")
    return value


def _at_least(option: str, low: float, accepts: str, *, finite: bool) -> Any:
    def check(_: object, attribute: object, value: float) -> None:
        if math.isnan(value) or value < low or (finite and value == math.inf):
            raise ValueError(f"Retry: {option} must be {accepts}, got {value!r}")

    return check


_DELAY = "a finite number of seconds >= 0"
_BACKOFF = "a finite number >= 1 (1: the same delay every time)"
_MAX_DELAY = "a number of seconds >= 0, or math.inf for no cap"


def _delay(value: Any) -> float:
    return _number("delay", _DELAY, value)


def _backoff(value: Any) -> float:
    return _number("backoff", _BACKOFF, value)


def _max_delay(value: Any) -> float:
    return _number("max_delay", _MAX_DELAY, value)


@attrs.frozen(kw_only=True)
class Retry:
    """How a run whose job raised is tried again, within the same tick.

    A try that raises an :class:`Exception` (outcome ``error``) is followed, after a
    wait, by another try of the same run (same ``run_id``, fence and slot), until
    ``attempts`` tries have been made. A timeout or a cancellation is never retried,
    nor is a try whose retry would start at or after the job's next tick is due.

    The wait before try *k* + 1 is ``min(delay * backoff ** (k - 1), max_delay)``
    seconds on Trio's clock: with the defaults, 1 s then 2 s.

    Attributes:
        attempts: Tries in all, the first included (3: at most 2 retries); >= 1.
        delay: Seconds before the first retry; >= 0.
        backoff: Factor by which each wait grows over the one before; >= 1.
        max_delay: Cap on a single wait, in seconds; >= 0, ``math.inf`` for none.

    Raises:
        TypeError: A value is not a number (``attempts``: not an ``int``).
        ValueError: A value is out of its range.
    """

    attempts: int = attrs.field(default=3, converter=_attempts)
    delay: float = attrs.field(
        default=1.0,
        converter=_delay,
        validator=_at_least("delay", 0, _DELAY, finite=True),
    )
    backoff: float = attrs.field(
        default=2.0,
        converter=_backoff,
        validator=_at_least("backoff", 1, _BACKOFF, finite=True),
    )
    max_delay: float = attrs.field(
        default=60.0,
        converter=_max_delay,
        validator=_at_least("max_delay", 0, _MAX_DELAY, finite=False),
    )

    def wait_after(self, attempt: int) -> float:
        """Seconds to wait after try ``attempt`` (counting from 1) failed."""
        try:
            grown = self.delay * self.backoff ** (attempt - 1)
        except OverflowError:
            grown = math.inf
        return min(grown, self.max_delay)


def check_retry(value: Retry | None) -> Retry | None:
    if value is not None and not isinstance(value, Retry):
        raise TypeError(
            "retry must be None or a periodic.Retry, e.g. Retry(attempts=3, delay=1.0), "
            f"got {value!r}"
        )
    return value
