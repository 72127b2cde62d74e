"""The ``periodic`` command's subcommands that look at and steer a store (status, check,
history, pause, resume, trigger), each run as ``python -m periodic`` in a subprocess,
against an SQLite file and against PostgreSQL. The state they read is made in this process
through the store's own API, with times of its choosing; what the command prints is
checked line by line (``<ago>``, ``<in>`` and ``<time>`` stand for what depends on the
moment the command ran), its JSON exactly.

``periodic run`` is in test_cli_run.py; the formatting, in virtual time, in
test_cli_format.py.
"""

from __future__ import annotations

import datetime
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from cli_support import ROOT, Backend, backend, cli, env, match_lines, serve_store

from periodic.cron import next_fire_times
from periodic.stores import Store

__all__ = ["backend"]  # the fixture, imported for pytest to find

UTC = datetime.timezone.utc

# Whole hours, a month ago: every time the tests store is in the past, and "ago" spans
# are days long (one width).
T0 = datetime.datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - datetime.timedelta(
    days=30
)
DAY = datetime.timedelta(days=1)
ERROR = "ValueError: boom\nTraceback (most recent call last):\n  ..."


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def shown(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") + "Z"


def iso(moment: datetime.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


async def make_jobs(store: Store) -> None:
    """cleanup: one ok run; nightly: three errors in a row; poll: shifted, never run;
    sync: its latest run unfinished."""
    await store.register("cleanup", schedule="every 60s", anchor=T0)
    run = await store.claim("cleanup", slot=at(60), node="web-1", fence=7, started_at=at(60))
    assert run is not None
    await store.finish(
        "cleanup", run, outcome="ok", finished_at=at(61.5), duration=1.5, error=None
    )
    await store.register("nightly", schedule="cron 0 2 * * * Europe/Berlin", anchor=T0)
    for day in (1, 2, 3):
        slot = T0 + day * DAY
        run = await store.claim("nightly", slot=slot, node="web-2", fence=None, started_at=slot)
        assert run is not None
        finished = slot + datetime.timedelta(seconds=2)
        await store.finish(
            "nightly", run, outcome="error", finished_at=finished, duration=2.0, error=ERROR
        )
    await store.register("poll", schedule="every 5s shifted", anchor=T0)
    await store.register("sync", schedule="every 3600s", anchor=T0)
    await store.claim("sync", slot=at(3600), node="web-1", fence=8, started_at=at(3600.25))


@pytest.fixture
def jobs(backend: Backend) -> Backend:
    """The backend, with the jobs of :func:`make_jobs` in its store."""
    serve_store(backend, make_jobs)
    return backend


def grid_after(anchor: datetime.datetime, every: float, now: datetime.datetime) -> str | None:
    k = math.floor((now - anchor).total_seconds() / every) + 1
    return iso(anchor + datetime.timedelta(seconds=k * every))


def cron_after(now: datetime.datetime) -> str | None:
    first = next(next_fire_times("0 2 * * *", tz="Europe/Berlin", start=now))
    return iso(first.astimezone(UTC))


def job_json(name: str, schedule: str, **fields: Any) -> dict[str, Any]:
    found = {
        "name": name,
        "schedule": schedule,
        "paused": False,
        "paused_at": None,
        "pause_note": None,
        "triggered_at": None,
        "last_slot": None,
        "last_outcome": None,
        "last_node": None,
        "last_fence": None,
        "last_started_at": None,
        "last_finished_at": None,
        "last_ok_at": None,
        "consecutive_failures": 0,
        "overdue": False,
        "overdue_after": None,
        "registered_at": None,
        "resumed_at": None,
        "anchor": iso(T0),
        "next_slot": None,
    }
    assert set(fields) <= set(found)
    return {**found, **fields}


def status_json(backend: Backend) -> dict[str, Any]:
    done = cli("status", *backend.args, "--json")
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    # The store's clock at the first registration: not this test's to choose.
    for job in result["jobs"]:
        registered = job.pop("registered_at")
        assert registered is not None
        assert abs(datetime.datetime.fromisoformat(registered) - datetime.datetime.now(UTC)) < (
            datetime.timedelta(minutes=5)
        )
    return result


# -- status ----------------------------------------------------------------------------------


def test_status_json_is_what_the_store_knows_with_the_next_slots(jobs: Backend) -> None:
    before = datetime.datetime.now(UTC)
    result = status_json(jobs)
    after = datetime.datetime.now(UTC)
    found = {job["name"]: job for job in result["jobs"]}
    assert list(found) == ["cleanup", "nightly", "poll", "sync"]
    assert result["elections"] == []
    next_slots = {name: found[name].pop("next_slot") for name in found}
    assert next_slots["cleanup"] in {grid_after(T0, 60, before), grid_after(T0, 60, after)}
    assert next_slots["nightly"] in {cron_after(before), cron_after(after)}
    assert next_slots["poll"] is None  # shifted: its slots follow its runs
    assert next_slots["sync"] in {grid_after(T0, 3600, before), grid_after(T0, 3600, after)}
    expected = [
        job_json(
            "cleanup",
            "every 60s",
            last_slot=iso(at(60)),
            last_outcome="ok",
            last_node="web-1",
            last_fence=7,
            last_started_at=iso(at(60)),
            last_finished_at=iso(at(61.5)),
            last_ok_at=iso(at(61.5)),
        ),
        job_json(
            "nightly",
            "cron 0 2 * * * Europe/Berlin",
            last_slot=iso(T0 + 3 * DAY),
            last_outcome="error",
            last_node="web-2",
            last_started_at=iso(T0 + 3 * DAY),
            last_finished_at=iso(T0 + 3 * DAY + datetime.timedelta(seconds=2)),
            consecutive_failures=3,
        ),
        job_json("poll", "every 5s shifted"),
        job_json(
            "sync",
            "every 3600s",
            last_slot=iso(at(3600)),
            last_node="web-1",
            last_fence=8,
            last_started_at=iso(at(3600.25)),
        ),
    ]
    for job in expected:
        del job["next_slot"], job["registered_at"]
    assert result["jobs"] == expected


def test_status_shows_a_block_per_job(jobs: Backend) -> None:
    done = cli("status", *jobs.args)
    assert (done.returncode, done.stderr) == (0, "")
    match_lines(
        done.stdout,
        [
            f"4 jobs in {jobs.where}",
            "",
            "cleanup (every 60s): ok",
            f"  last slot  {shown(at(60))}, ok, finished <ago>",
            "  ran on     web-1, fence 7",
            "  next slot  <time>, <in>",
            "",
            "nightly (cron 0 2 * * * Europe/Berlin): 3 failures in a row",
            f"  last slot  {shown(T0 + 3 * DAY)}, error, finished <ago>",
            "  ran on     web-2, no fence",
            "  next slot  <time>, <in>",
            "",
            "poll (every 5s shifted): ok",
            "  last slot  none yet",
            "  next slot  -",
            "",
            "sync (every 3600s): ok",
            f"  last slot  {shown(at(3600))}, started <ago>, not finished",
            "  ran on     web-1, fence 8",
            "  next slot  <time>, <in>",
        ],
    )


def test_status_of_an_empty_store(backend: Backend) -> None:
    serve_store(backend, lambda store: trio.lowlevel.checkpoint())  # makes the tables
    done = cli("status", *backend.args)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"no jobs in {backend.where}\n", "")
    done = cli("status", *backend.args, "--json")
    assert (done.returncode, json.loads(done.stdout)) == (0, {"jobs": [], "elections": []})


def test_status_without_cronsim_shows_a_cron_jobs_next_slot_as_unknown(
    jobs: Backend, tmp_path: Path
) -> None:
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "cronsim.py").write_text("raise ImportError('cronsim is not installed')\n")
    done = cli("status", *jobs.args, paths=(hide,))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[
        lines.index("nightly (cron 0 2 * * * Europe/Berlin): 3 failures in a row") + 3
    ] == ("  next slot  ?")
    done = cli("status", *jobs.args, "--json", paths=(hide,))
    nightly = json.loads(done.stdout)["jobs"][1]
    assert (nightly["name"], nightly["next_slot"]) == ("nightly", None)


def test_status_shows_the_elections_of_the_same_database(jobs: Backend) -> None:
    async def main() -> tuple[Any, int | None]:
        peer = jobs.peer("app", node="node-a", ttl=30)
        async with trio.open_nursery() as nursery:
            with trio.fail_after(30):
                await nursery.start(peer.serve)
                while not peer.is_leader():
                    await peer.wait_change()
            results = []
            for extra in (["--json"], []):
                results.append(
                    await trio.run_process(
                        [sys.executable, "-m", "periodic", "status", *jobs.args, *extra],
                        capture_stdout=True,
                        capture_stderr=True,
                        env=env(),
                    )
                )
            fence = peer.fence
            nursery.cancel_scope.cancel()
        return results, fence

    (as_json, as_text), fence = trio.run(main)
    elections = json.loads(as_json.stdout)["elections"]
    expires = elections[0].pop("expires_at")
    lease_end = datetime.datetime.fromisoformat(expires) - datetime.datetime.now(UTC)
    assert datetime.timedelta(0) < lease_end <= datetime.timedelta(seconds=30)
    assert elections == [
        {"name": "app", "leader": "node-a", "fence": fence, "members": ["node-a"]}
    ]
    lines = as_text.stdout.decode().splitlines()
    match_lines(
        "\n".join(lines[-2:]),
        [f"election app: leader node-a, fence {fence}, lease ends <in>", "  members  node-a"],
    )
    assert lines[-3] == ""


# -- check -----------------------------------------------------------------------------------


def test_check_reports_a_job_that_failed_too_often(jobs: Backend) -> None:
    done = cli("check", *jobs.args)
    assert (done.returncode, done.stderr) == (1, "")
    match_lines(
        done.stdout,
        ["nightly: failed 3 times in a row (--max-failures 3); last: error, <ago>"],
    )


def test_check_is_quiet_when_every_job_is_healthy(jobs: Backend) -> None:
    done = cli("check", *jobs.args, "--max-failures", "4")
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok: 4 jobs\n", "")


# -- history ---------------------------------------------------------------------------------


def test_history_is_a_table_of_the_latest_runs(jobs: Backend) -> None:
    done = cli("history", *jobs.args, "nightly")
    assert (done.returncode, done.stderr) == (0, "")
    # Every run ended about four weeks ago: "2Xd..h ago" is 10 characters.
    match_lines(
        done.stdout,
        [
            "SLOT                  OUTCOME  TOOK   ENDED       NODE   FENCE",
            f"{shown(T0 + 3 * DAY)}  error    2.00s  <ago>  web-2  -",
            "  ValueError: boom",
            f"{shown(T0 + 2 * DAY)}  error    2.00s  <ago>  web-2  -",
            "  ValueError: boom",
            f"{shown(T0 + 1 * DAY)}  error    2.00s  <ago>  web-2  -",
            "  ValueError: boom",
        ],
    )
    done = cli("history", *jobs.args, "sync")
    match_lines(
        done.stdout,
        [
            "SLOT                  OUTCOME     TOOK  ENDED  NODE   FENCE",
            f"{shown(at(3600))}  unfinished  -     -      web-1  8",
        ],
    )
    done = cli("history", *jobs.args, "poll")
    assert (done.returncode, done.stdout) == (0, "no runs of poll yet\n")


def test_history_json_with_a_limit(jobs: Backend) -> None:
    done = cli("history", *jobs.args, "nightly", "--limit", "2", "--json")
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout) == {
        "job": "nightly",
        "runs": [
            {
                "slot": iso(T0 + day * DAY),
                "node": "web-2",
                "fence": None,
                "started_at": iso(T0 + day * DAY),
                "finished_at": iso(T0 + day * DAY + datetime.timedelta(seconds=2)),
                "outcome": "error",
                "duration": 2.0,
                "error": ERROR,
                "triggered": False,
            }
            for day in (3, 2)
        ],
    }


def test_history_of_an_unknown_job_exits_1(jobs: Backend) -> None:
    done = cli("history", *jobs.args, "nope")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"periodic history: no job 'nope' in {jobs.where}\n"


# -- pause, resume, trigger ------------------------------------------------------------------


def test_pause_and_resume(jobs: Backend) -> None:
    done = cli("pause", *jobs.args, "nightly", "--note", "disk full")
    assert (done.returncode, done.stdout, done.stderr) == (0, "paused nightly: disk full\n", "")
    nightly = status_json(jobs)["jobs"][1]
    assert (nightly["name"], nightly["paused"], nightly["pause_note"]) == (
        "nightly",
        True,
        "disk full",
    )
    assert nightly["paused_at"] is not None

    lines = cli("status", *jobs.args).stdout.splitlines()
    head = lines.index("nightly (cron 0 2 * * * Europe/Berlin): paused, 3 failures in a row")
    match_lines(lines[head + 4], ["  paused     since <time> (<ago>): disk full"])
    # Someone is on it: a paused job is no problem for a probe.
    done = cli("check", *jobs.args)
    assert (done.returncode, done.stdout) == (0, "ok: 4 jobs (1 paused)\n")

    done = cli("resume", *jobs.args, "nightly")
    assert (done.returncode, done.stdout, done.stderr) == (0, "resumed nightly\n", "")
    nightly = status_json(jobs)["jobs"][1]
    assert (nightly["paused"], nightly["pause_note"]) == (False, None)
    assert nightly["resumed_at"] is not None
    assert cli("check", *jobs.args).returncode == 1


def test_trigger_is_pending_until_taken(jobs: Backend) -> None:
    done = cli("trigger", *jobs.args, "cleanup")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "triggered cleanup: a process serving it starts one run\n"
    assert status_json(jobs)["jobs"][0]["triggered_at"] is not None
    lines = cli("status", *jobs.args).stdout.splitlines()
    head = lines.index("cleanup (every 60s): trigger pending")
    match_lines(lines[head + 4], ["  trigger    requested <time> (<ago>), not taken yet"])


@pytest.mark.parametrize("command", ["pause", "resume", "trigger"])
def test_steering_an_unknown_job_exits_1(jobs: Backend, command: str) -> None:
    done = cli(command, *jobs.args, "nope")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"periodic {command}: no job 'nope' in {jobs.where}\n"


def test_a_job_no_process_ran_ok_for_overdue_after_is_overdue(backend: Backend) -> None:
    async def register(store: Store) -> None:
        await store.register("late", schedule="every 60s", anchor=T0, overdue_after=1.0)

    serve_store(backend, register)
    time.sleep(1.5)  # on the store's clock, which this test does not hold
    done = cli("check", *backend.args)
    assert done.returncode == 1, done.stderr
    match_lines(done.stdout, ["late: overdue: no ok run for <span> (overdue after 1s)"])
    late = status_json(backend)["jobs"][0]
    assert (late["overdue"], late["overdue_after"]) == (True, 1.0)
    lines = cli("status", *backend.args).stdout.splitlines()
    assert lines[2] == "late (every 60s): overdue"
    match_lines(lines[5], ["  overdue    no ok run for <span> (overdue after 1s)"])


# -- what goes wrong -------------------------------------------------------------------------


def test_a_missing_sqlite_file_is_named_and_not_made(tmp_path: Path) -> None:
    path = tmp_path / "nope.db"
    done = cli("status", str(path))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"periodic status: no SQLite database at {path}\n"
    assert not path.exists()


def test_missing_tables_are_named(backend: Backend) -> None:
    serve_store(backend, lambda store: trio.lowlevel.checkpoint())
    other = "other_" if backend.kind == "sqlite" else backend.prefix + "x_"
    done = cli("check", backend.target, "--table-prefix", other)
    assert (done.returncode, done.stdout) == (2, "")
    where = f"{backend.target} (table prefix {other})"
    assert done.stderr.startswith(f"periodic check: cannot open the store {where}: "), done.stderr
    assert f"{other}jobs" in done.stderr
    assert done.stderr.count("\n") == 1


def test_an_unreachable_server_is_named_without_its_password() -> None:
    pytest.importorskip("psycopg")
    done = cli("status", "postgresql://app:s3cr%40t-pw@127.0.0.1:1/app")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(
        "periodic status: cannot open the store postgresql://app:***@127.0.0.1:1/app: "
    ), done.stderr
    assert "s3cr" not in done.stderr
    assert done.stderr.count("\n") == 1


def test_a_malformed_dsn_is_refused_without_its_password() -> None:
    pytest.importorskip("psycopg")
    done = cli("history", "postgres://app:s3cr3t@db/app?bogus=1", "job")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(
        "periodic history: postgres://app:***@db/app?bogus=1: dsn is not a valid connection "
        'string: invalid URI query parameter: "bogus"'
    )
    assert "s3cr3t" not in done.stderr
    assert done.stderr.count("\n") == 1


def test_a_bad_table_prefix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.touch()
    done = cli("status", str(path), "--table-prefix", "1x")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"periodic status: {path} (table prefix 1x): table_prefix ")


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["status"], "the following arguments are required: STORE"),
        (["history", "x.db"], "the following arguments are required: NAME"),
        (["history", "x.db", "job", "--limit", "0"], "argument --limit: expected an int >= 1"),
        (["check", "x.db", "--max-failures", "x"], "argument --max-failures: expected an int"),
        (["status", "x.db", "--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["run", "app:jobs", "--log-level", "LOUD"], "argument --log-level: invalid choice"),
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], complaint: str) -> None:
    done = cli(*args)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("usage: periodic")
    assert complaint in done.stderr


# -- the package -----------------------------------------------------------------------------


def test_the_console_script_is_the_commands_main(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"periodic": "periodic._cli:main"}
    from periodic._cli import main

    assert main(["status", str(tmp_path / "nope.db")]) == 2
    assert (
        capsys.readouterr().err == f"periodic status: no SQLite database at {tmp_path}/nope.db\n"
    )


def test_the_command_imports_no_driver_and_runs_nothing_on_import() -> None:
    code = (
        "import sys, periodic.__main__, periodic._cli.main, periodic._cli.run, "
        "periodic._cli.status, periodic._cli.history, periodic._cli.control, "
        "periodic._cli.target; "
        "assert 'psycopg' not in sys.modules, 'psycopg'; print('fine')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=60
    )
    assert (done.returncode, done.stdout) == (0, "fine\n"), done.stderr
