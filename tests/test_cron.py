"""Fixed-time schedules: specs, zones, Debian cron's DST rules, duration strings."""

from __future__ import annotations

import datetime as dt
import doctest
import re
from itertools import islice
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim
from hypothesis import given, settings
from hypothesis import strategies as st

from periodic.cron import CronSchedule, next_fire_times, parse_duration, parse_schedule

UTC = dt.timezone.utc


def fires(spec: str, tz: str | None, start: str, n: int) -> list[str]:
    """The first n fire times after the wall time ``start`` in tz, as ISO strings."""
    zone = ZoneInfo(tz) if tz else UTC
    begin = dt.datetime.fromisoformat(start).replace(tzinfo=zone)
    return [d.isoformat() for d in islice(next_fire_times(spec, tz=tz, start=begin), n)]


# -- durations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("1h30m", 5400.0),
        ("1h2m3s", 3723.0),
        ("1d", 86400.0),
        ("2d3h", 183600.0),
        ("250ms", 0.25),
        ("1m500ms", 60.5),
        ("0h1s", 1.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "0s", "0h0m", "90", "1.5h", "1m1h", "1h1h", "1 h", " 90s", "90S", "-5s", "h"]
)
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match=rf"bad duration '{text}'.*units d, h, m, s, ms"):
        parse_duration(text)


def test_duration_must_be_a_str() -> None:
    with pytest.raises(TypeError, match="duration must be a str"):
        parse_duration(90)  # type: ignore[arg-type]


# -- specs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("@yearly", ["2025-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00"]),
        ("@annually", ["2025-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00"]),
        ("@monthly", ["2024-06-01T00:00:00+00:00", "2024-07-01T00:00:00+00:00"]),
        ("@weekly", ["2024-05-19T00:00:00+00:00", "2024-05-26T00:00:00+00:00"]),
        ("@daily", ["2024-05-16T00:00:00+00:00", "2024-05-17T00:00:00+00:00"]),
        ("@midnight", ["2024-05-16T00:00:00+00:00", "2024-05-17T00:00:00+00:00"]),
        ("@hourly", ["2024-05-15T13:00:00+00:00", "2024-05-15T14:00:00+00:00"]),
        ("@HOURLY", ["2024-05-15T13:00:00+00:00", "2024-05-15T14:00:00+00:00"]),
        ("@every 90s", ["2024-05-15T12:31:30+00:00", "2024-05-15T12:33:00+00:00"]),
        ("@every 1h2m3s", ["2024-05-15T13:32:03+00:00", "2024-05-15T14:34:06+00:00"]),
        ("0 2 * * *", ["2024-05-16T02:00:00+00:00", "2024-05-17T02:00:00+00:00"]),
        ("*/20 * * * *", ["2024-05-15T12:40:00+00:00", "2024-05-15T13:00:00+00:00"]),
        ("0 9-17/4 * * MON-FRI", ["2024-05-15T13:00:00+00:00", "2024-05-15T17:00:00+00:00"]),
        ("0 0 1,15 * *", ["2024-06-01T00:00:00+00:00", "2024-06-15T00:00:00+00:00"]),
        ("0 0 L * *", ["2024-05-31T00:00:00+00:00", "2024-06-30T00:00:00+00:00"]),
        ("0 0 LW * *", ["2024-05-31T00:00:00+00:00", "2024-06-28T00:00:00+00:00"]),
        ("0 0 * * FRI#2", ["2024-06-14T00:00:00+00:00", "2024-07-12T00:00:00+00:00"]),
        ("0 0 * * 5L", ["2024-05-31T00:00:00+00:00", "2024-06-28T00:00:00+00:00"]),
        ("0 0 29 feb *", ["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]),
        ("15,45 * * * * *", ["2024-05-15T12:30:15+00:00", "2024-05-15T12:30:45+00:00"]),
        ("0 0 3 * * *", ["2024-05-16T03:00:00+00:00", "2024-05-17T03:00:00+00:00"]),
        ("  0   2 * * *  ", ["2024-05-16T02:00:00+00:00", "2024-05-17T02:00:00+00:00"]),
    ],
)
def test_every_form(spec: str, expected: list[str]) -> None:
    # 2024-05-15 is a Wednesday.
    assert fires(spec, None, "2024-05-15T12:30:00", 2) == expected


def test_parse_schedule() -> None:
    schedule = parse_schedule("@daily", "Europe/Berlin")
    assert schedule == CronSchedule("@daily", "0 0 * * *", ZoneInfo("Europe/Berlin"), True)
    assert repr(schedule) == "CronSchedule('@daily', tz=Europe/Berlin)"
    assert parse_schedule("@every 1h30m") == 5400.0
    assert parse_schedule("0 2 * * *").tz is UTC  # type: ignore[union-attr]
    assert parse_schedule("0 2 * * *", "UTC").tz == ZoneInfo("UTC")  # type: ignore[union-attr]
    zone = dt.timezone(dt.timedelta(hours=5, minutes=30))
    assert parse_schedule("0 2 * * *", zone).tz is zone  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("spec", "fixed"),
    [
        ("0 2 * * *", True),
        ("@daily", True),
        ("0,30 1-3 * * *", True),
        ("*/5 30 2 * * *", True),
        ("@hourly", False),
        ("* 2 * * *", False),
        ("*/15 2 * * *", False),
        ("0 */2 * * *", False),
        ("0 0 * * * *", False),
    ],
)
def test_fixed_time(spec: str, fixed: bool) -> None:
    assert parse_schedule(spec).fixed_time is fixed  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("spec", "what"),
    [
        ("", "0 fields; expected 5 fields"),
        ("* * * *", "4 fields; expected 5 fields"),
        ("* * * * * * *", "7 fields; expected 5 fields"),
        ("60 * * * *", "bad minute field; expected 5 fields"),
        ("* 24 * * *", "bad hour field; expected 5 fields"),
        ("* * 32 * *", "bad day-of-month field; expected 5 fields"),
        ("0 0 30 2 *", "bad day-of-month field; expected 5 fields"),
        ("* * * 13 *", "bad month field; expected 5 fields"),
        ("* * * * 8", "bad day-of-week field; expected 5 fields"),
        ("* * * * MON#6", "bad day-of-week field; expected 5 fields"),
        ("*/0 * * * *", "bad minute field; expected 5 fields"),
        ("5-1 * * * *", "bad minute field; expected 5 fields"),
        ("61 * * * * *", "bad second field; expected 5 fields"),
        ("@reboot", "expected 5 fields"),
        ("@daily 3", "expected 5 fields"),
        ("@every", "'@every' takes one duration"),
        ("@every 1h 2m", "'@every' takes one duration"),
        ("@every 0s", "bad duration '0s'"),
        ("@every soon", "bad duration 'soon'"),
    ],
)
def test_bad_specs(spec: str, what: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"bad cron spec {spec!r}: {what}")) as info:
        parse_schedule(spec)
    assert info.value.__cause__ is None


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../etc/passwd", "CEST"])
def test_unknown_zone(zone: str) -> None:
    with pytest.raises(
        ValueError, match=f"unknown time zone '{zone}' for cron spec '0 2 \\* \\* \\*'"
    ):
        parse_schedule("0 2 * * *", zone)
    with pytest.raises(ValueError, match="unknown time zone"):
        next_fire_times("@every 1h", tz=zone)


def test_wrong_types() -> None:
    with pytest.raises(TypeError, match="cron spec must be a str"):
        parse_schedule(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tz for cron spec '@daily' must be"):
        parse_schedule("@daily", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="start must be a timezone-aware datetime"):
        next_fire_times("@daily", start=dt.date(2024, 1, 1))  # type: ignore[arg-type]


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="start must be a timezone-aware datetime"):
        next_fire_times("@daily", start=dt.datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="wall must be a timezone-aware datetime"):
        parse_schedule("@daily").next_after(dt.datetime(2024, 1, 1))  # type: ignore[union-attr]


def test_default_start_is_now() -> None:
    before = dt.datetime.now(UTC)
    first = next(next_fire_times("* * * * * *", tz="Europe/Berlin"))
    assert first.tzinfo == ZoneInfo("Europe/Berlin")
    assert before < first <= before + dt.timedelta(seconds=2)


def test_strictly_after_and_any_input_zone() -> None:
    schedule = parse_schedule("0 2 * * *", "Asia/Kolkata")
    assert isinstance(schedule, CronSchedule)
    at = dt.datetime(2024, 5, 15, 2, 0, tzinfo=ZoneInfo("Asia/Kolkata"))
    assert schedule.next_after(at).isoformat() == "2024-05-16T02:00:00+05:30"
    just_before = at - dt.timedelta(microseconds=1)
    assert schedule.next_after(just_before) == at
    in_utc = at.astimezone(UTC) - dt.timedelta(seconds=1)
    assert schedule.next_after(in_utc).isoformat() == "2024-05-15T02:00:00+05:30"


# -- DST ------------------------------------------------------------------------------
# Berlin: 2024-03-31 02:00 CET -> 03:00 CEST; 2024-10-27 03:00 CEST -> 02:00 CET.
# New York: 2024-03-10 02:00 EST -> 03:00 EDT; 2024-11-03 02:00 EDT -> 01:00 EST.
# Sydney: 2024-04-07 03:00 AEDT -> 02:00 AEST; 2024-10-06 02:00 AEST -> 03:00 AEDT.
# Kolkata: 1945-10-15 00:00 +0630 -> 1945-10-14 23:00 +0530 (its last change).
# Lord Howe: 2024-10-06 02:00 -> 02:30 (+1030 -> +11), a half-hour jump.

DST_CASES = [
    # A skipped fixed time fires at the jump, once.
    ("30 2 * * *", "Europe/Berlin", "2024-03-30T12:00",
     ["2024-03-31T03:00:00+02:00", "2024-04-01T02:30:00+02:00"]),
    ("0 30 2 * * *", "Europe/Berlin", "2024-03-30T12:00",
     ["2024-03-31T03:00:00+02:00", "2024-04-01T02:30:00+02:00"]),
    ("0,30 2 * * *", "Europe/Berlin", "2024-03-31T01:00",
     ["2024-03-31T03:00:00+02:00", "2024-04-01T02:00:00+02:00"]),
    ("0 2,3 * * *", "Europe/Berlin", "2024-03-31T01:00",
     ["2024-03-31T03:00:00+02:00", "2024-04-01T02:00:00+02:00"]),
    ("15 2 * * *", "America/New_York", "2024-03-09T12:00",
     ["2024-03-10T03:00:00-04:00", "2024-03-11T02:15:00-04:00"]),
    ("30 2 * * *", "Australia/Sydney", "2024-10-05T12:00",
     ["2024-10-06T03:00:00+11:00", "2024-10-07T02:30:00+11:00"]),
    ("15 2 * * *", "Australia/Lord_Howe", "2024-10-05T12:00",
     ["2024-10-06T02:30:00+11:00", "2024-10-07T02:15:00+11:00"]),
    # A repeated fixed time fires the first time only.
    ("30 2 * * *", "Europe/Berlin", "2024-10-26T12:00",
     ["2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"]),
    ("0 30 2 * * *", "Europe/Berlin", "2024-10-26T12:00",
     ["2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"]),
    ("30 1 * * *", "America/New_York", "2024-11-02T12:00",
     ["2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"]),
    ("30 2 * * *", "Australia/Sydney", "2024-04-06T12:00",
     ["2024-04-07T02:30:00+11:00", "2024-04-08T02:30:00+10:00"]),
    ("30 23 * * *", "Asia/Kolkata", "1945-10-14T12:00",
     ["1945-10-14T23:30:00+06:30", "1945-10-15T23:30:00+05:30"]),
    # Wildcard specs follow the wall clock: skipped times are skipped...
    ("0 * * * *", "Europe/Berlin", "2024-03-31T00:30",
     ["2024-03-31T01:00:00+01:00", "2024-03-31T03:00:00+02:00"]),
    ("*/30 2 * * *", "America/New_York", "2024-03-10T00:00",
     ["2024-03-11T02:00:00-04:00", "2024-03-11T02:30:00-04:00"]),
    # ...and repeated times repeat.
    ("0 * * * *", "Europe/Berlin", "2024-10-27T01:30",
     ["2024-10-27T02:00:00+02:00", "2024-10-27T02:00:00+01:00", "2024-10-27T03:00:00+01:00"]),
    ("*/30 1 * * *", "America/New_York", "2024-11-03T00:00",
     ["2024-11-03T01:00:00-04:00", "2024-11-03T01:30:00-04:00",
      "2024-11-03T01:00:00-05:00", "2024-11-03T01:30:00-05:00",
      "2024-11-04T01:00:00-05:00"]),
    ("@hourly", "Australia/Sydney", "2024-04-07T01:30",
     ["2024-04-07T02:00:00+11:00", "2024-04-07T02:00:00+10:00", "2024-04-07T03:00:00+10:00"]),
    # Half-hour zone, no DST.
    ("0 9 * * *", "Asia/Kolkata", "2024-05-15T12:00",
     ["2024-05-16T09:00:00+05:30", "2024-05-17T09:00:00+05:30"]),
    # Durations are real time, whatever the wall clock does.
    ("@every 1h", "Europe/Berlin", "2024-03-31T01:30",
     ["2024-03-31T03:30:00+02:00", "2024-03-31T04:30:00+02:00"]),
    ("@every 1h", "Europe/Berlin", "2024-10-27T01:30",
     ["2024-10-27T02:30:00+02:00", "2024-10-27T02:30:00+01:00"]),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "tz", "start", "expected"), DST_CASES)
def test_dst(spec: str, tz: str, start: str, expected: list[str]) -> None:
    assert fires(spec, tz, start, len(expected)) == expected


def test_second_pass_of_a_repeated_time_is_not_a_fire_time() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    schedule = parse_schedule("30 2 * * *", berlin)
    assert isinstance(schedule, CronSchedule)
    second_pass = dt.datetime(2024, 10, 27, 2, 10, fold=1, tzinfo=berlin)
    first = schedule.next_after(second_pass)
    assert first.isoformat() == "2024-10-28T02:30:00+01:00"
    # The repeated second pass is labelled fold=1.
    hourly = parse_schedule("20 * * * *", berlin)
    assert isinstance(hourly, CronSchedule)
    again = hourly.next_after(second_pass)
    assert (again.isoformat(), again.fold) == ("2024-10-27T02:20:00+01:00", 1)


def test_skipped_input_time_is_read_as_the_instant_it_names() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    schedule = parse_schedule("45 2 * * *", berlin)
    assert isinstance(schedule, CronSchedule)
    # 02:30 does not exist that day; fold=0 reads it with the old offset: 01:30 UTC.
    skipped = dt.datetime(2024, 3, 31, 2, 30, tzinfo=berlin)
    assert schedule.next_after(skipped).isoformat() == "2024-04-01T02:45:00+02:00"


# -- properties -----------------------------------------------------------------------


def _field(low: int, high: int) -> st.SearchStrategy[str]:
    number = st.integers(low, high)
    pair = st.tuples(number, number).map(sorted)
    return st.one_of(
        st.just("*"),
        number.map(str),
        pair.map(lambda p: f"{p[0]}-{p[1]}"),
        st.tuples(pair, st.integers(1, high)).map(lambda t: f"{t[0][0]}-{t[0][1]}/{t[1]}"),
        st.integers(1, high).map(lambda s: f"*/{s}"),
        st.lists(number, min_size=2, max_size=4).map(lambda ns: ",".join(map(str, ns))),
    )


_DAY_FORMS = st.one_of(
    st.tuples(_field(1, 28), _field(0, 7)),
    st.tuples(st.sampled_from(["L", "LW", "15"]), st.just("*")),
    st.tuples(st.just("*"), st.sampled_from(["MON#2", "5L", "SUN", "1-5"])),
)


@st.composite
def specs(draw: st.DrawFn, seconds: bool = True) -> str:
    dom, dow = draw(_DAY_FORMS)
    fields = [draw(_field(0, 59)), draw(_field(0, 23)), dom, draw(_field(1, 12)), dow]
    if seconds and draw(st.booleans()):
        fields.insert(0, draw(_field(0, 59)))
    return " ".join(fields)


@settings(max_examples=200, deadline=None)
@given(
    spec=specs(),
    start=st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2040, 1, 1), timezones=st.just(UTC)),
)
def test_same_as_cronsim_in_utc(spec: str, start: dt.datetime) -> None:
    ours = [d.isoformat() for d in islice(next_fire_times(spec, start=start), 8)]
    theirs = [d.isoformat() for d in islice(CronSim(spec, start), 8)]
    assert ours == theirs


TRANSITIONS = [
    ("Europe/Berlin", dt.datetime(2024, 3, 30)),
    ("Europe/Berlin", dt.datetime(2024, 10, 26)),
    ("America/New_York", dt.datetime(2024, 3, 9)),
    ("America/New_York", dt.datetime(2024, 11, 2)),
    ("Australia/Sydney", dt.datetime(2024, 4, 6)),
    ("Australia/Sydney", dt.datetime(2024, 10, 5)),
]


@settings(max_examples=200, deadline=None)
@given(
    spec=specs(seconds=False),
    where=st.sampled_from(TRANSITIONS),
    hours=st.integers(0, 23),
)
def test_five_field_specs_match_cronsims_debian_mode_across_dst(
    spec: str, where: tuple[str, dt.datetime], hours: int
) -> None:
    # cronsim applies Debian's DST rules itself to 5-field fixed-time specs, and reads
    # the others on the real clock; starting the day before a change, we must agree.
    tz, day = where
    start = (day + dt.timedelta(hours=hours)).replace(tzinfo=ZoneInfo(tz))
    ours = [(d.isoformat(), d.fold) for d in islice(next_fire_times(spec, tz=tz, start=start), 8)]
    theirs = [(d.isoformat(), d.fold) for d in islice(CronSim(spec, start), 8)]
    assert ours == theirs


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789*/,-LW#@ MONFRIjanevyh", max_size=20))
def test_any_text_parses_or_fails_with_value_error(spec: str) -> None:
    try:
        parse_schedule(spec)
    except ValueError as exc:
        message = str(exc)
    else:
        return
    assert repr(spec) in message


def test_docs_examples_run() -> None:
    page = Path(__file__).resolve().parent.parent / "docs" / "cron.md"
    result = doctest.testfile(str(page), module_relative=False, report=False)
    assert result.attempted > 0
    assert result.failed == 0
