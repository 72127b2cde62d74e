"""Fixed-time schedules: crontab specs, time zones, DST, and duration strings.

Needs the ``trio-periodic[cron]`` extra (``cronsim``) for cron specs; :func:`parse_duration`
works without it.
"""

from ._cron import CronSchedule as CronSchedule
from ._cron import next_fire_times as next_fire_times
from ._cron import parse_duration as parse_duration
from ._cron import parse_schedule as parse_schedule

__all__ = ["CronSchedule", "next_fire_times", "parse_duration", "parse_schedule"]
