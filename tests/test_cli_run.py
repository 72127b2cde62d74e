"""``periodic run MODULE:ATTR`` in a subprocess: it serves an application's jobs with their
stores and peers, and stops gracefully on SIGTERM and SIGINT (the running job finishes
within its ``job_shutdown``, its end is recorded, the peer hands its lease over), exit
status 0; what cannot be imported or served exits 2 with one line.

The application is a module written to the test's directory (``APP``); its job notes
``started`` and, 1.5 s later, ``done`` in a file. Real time, every wait bounded.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from cli_support import TIMEOUT, Backend, backend, cli, env, serve_store

from periodic.reminders import Reminders
from periodic.stores import Store

__all__ = ["backend"]  # the fixture, imported for pytest to find

APP = """
import os

import trio

from periodic import Periodic
from periodic.reminders import Reminders

STORE = os.environ["CLI_TEST_STORE"]
PREFIX = os.environ["CLI_TEST_PREFIX"]
OUT = os.environ["CLI_TEST_OUT"]


def make_store(target=STORE):
    if target.startswith("postgresql://"):
        from periodic.stores.postgres import PostgresStore

        return PostgresStore(target, table_prefix=PREFIX)
    from periodic.stores.sqlite import SQLiteStore

    return SQLiteStore(target, table_prefix=PREFIX)


def make_peer():
    table = PREFIX + "peers"
    if STORE.startswith("postgresql://"):
        from periodic.peers.postgres import PostgresPeer

        return PostgresPeer(STORE, name="cli", table=table, ttl=30)
    from periodic.peers.sqlite import SQLitePeer

    return SQLitePeer(STORE, name="cli", table=table, ttl=30)


def note(text):
    with open(OUT, "a") as f:
        f.write(text + "\\n")


async def work():
    note("started")
    await trio.sleep(1.5)
    note("done")


def working(store, peer=None):
    return Periodic(
        run=work, every=1, on_overlap="ignore", name="work", store=store, peer=peer,
        job_shutdown=30,
    )


async def remembered(reminder):
    note(f"reminded {reminder.key}")


store = make_store()
job = working(store)
led = working(store, make_peer())


def with_store(store):
    return working(store)


async def job_and_reminders():
    return (job, Reminders(store, remembered, name="cli"))


NUMBER = 42
empty = []


def needs_args(x, store=None):
    return job


def junk():
    return "junk"


def fails():
    raise ValueError("nope")


unconfigured = Periodic(
    run=work, every=1, name="x", store=make_store("/nonexistent-dir/periodic.db")
)
"""


class App:
    """``periodic run`` of the application module, in the test's directory."""

    def __init__(self, backend: Backend, tmp_path: Path) -> None:
        (tmp_path / "app.py").write_text(APP)
        self.dir = tmp_path
        self.out = tmp_path / "out.txt"
        self.err = tmp_path / "stderr.txt"
        self.env = {
            **env(),
            "CLI_TEST_STORE": backend.target,
            "CLI_TEST_PREFIX": backend.prefix,
            "CLI_TEST_OUT": str(self.out),
        }

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        with self.err.open("wb") as stderr:
            return subprocess.Popen(
                [sys.executable, "-m", "periodic", "run", *args],
                cwd=self.dir,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "periodic", "run", *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    def notes(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    def wait_for(self, process: subprocess.Popen[bytes], note: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while note not in self.notes():
            assert process.poll() is None, self.err.read_text()
            assert time.monotonic() < deadline, self.err.read_text()
            time.sleep(0.02)

    def stop(self, process: subprocess.Popen[bytes], signum: int) -> str:
        """Send ``signum``, wait for the exit; stderr. Asserts exit status 0."""
        process.send_signal(signum)
        try:
            status = process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        stderr = self.err.read_text()
        assert status == 0, stderr
        return stderr


@pytest.fixture
def app(backend: Backend, tmp_path: Path) -> App:
    return App(backend, tmp_path)


def last_run(backend: Backend) -> dict[str, object]:
    done = cli("history", *backend.args, "work", "--limit", "1", "--json")
    assert done.returncode == 0, done.stderr
    runs: list[dict[str, object]] = json.loads(done.stdout)["runs"]
    return runs[0]


def test_sigterm_lets_the_running_job_finish_and_exits_0(app: App, backend: Backend) -> None:
    process = app.start("app:job")
    app.wait_for(process, "started")
    stderr = app.stop(process, signal.SIGTERM)
    # Cancelled at once, the run would not have noted "done".
    assert app.notes() == ["started", "done"]
    assert "INFO periodic: SIGTERM: stopping; running jobs get their job_shutdown" in stderr
    assert "job 'work' run 1 finished ok" in stderr
    assert last_run(backend)["outcome"] == "ok"  # recorded before the store closed


def test_sigint_stops_the_jobs_before_the_peer_hands_its_lease_over(
    app: App, backend: Backend
) -> None:
    process = app.start("app:led")
    app.wait_for(process, "started")
    stderr = app.stop(process, signal.SIGINT)
    assert app.notes() == ["started", "done"]
    finished = stderr.index("job 'work' run 1 finished ok")
    assert "INFO periodic: SIGINT: stopping" in stderr
    assert stderr.index("lost the leadership of 'cli' (fence 1): stopped") > finished
    assert last_run(backend)["outcome"] == "ok"

    async def lead_at_once() -> None:
        # The lease was released: no waiting out its ttl of 30 s.
        peer = backend.peer("cli", ttl=30)
        async with trio.open_nursery() as nursery:
            with trio.fail_after(10):
                await nursery.start(peer.serve)
                while not peer.is_leader():
                    await peer.wait_change()
            nursery.cancel_scope.cancel()

    trio.run(lead_at_once)


def test_store_is_made_and_given_to_a_function(app: App, backend: Backend) -> None:
    process = app.start(
        "app:with_store", "--store", backend.target, "--table-prefix", backend.prefix
    )
    app.wait_for(process, "started")
    app.stop(process, signal.SIGTERM)
    assert app.notes() == ["started", "done"]
    assert last_run(backend)["outcome"] == "ok"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_async_function_may_return_jobs_and_reminders_sharing_a_store(
    app: App, backend: Backend
) -> None:
    async def remind(store: Store) -> None:
        reminders = Reminders(store, lambda r: None, name="cli")
        await reminders.remind("k", at=datetime.datetime.now(datetime.timezone.utc))

    serve_store(backend, remind)
    process = app.start("app:job_and_reminders")
    app.wait_for(process, "reminded k")
    app.wait_for(process, "started")
    app.stop(process, signal.SIGTERM)
    assert sorted(app.notes()) == ["done", "reminded k", "started"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["nosuch_module:job"],
            "cannot import 'nosuch_module': ModuleNotFoundError: No module named 'nosuch_module'",
        ),
        (["broken:job"], "cannot import 'broken': RuntimeError: no configuration"),
        (["app:nope"], "module 'app' has no attribute 'nope'"),
        (["app"], "expected MODULE:ATTR (such as app.jobs:cleanup), got 'app'"),
        (
            ["app:NUMBER"],
            "app:NUMBER is 42, not a Periodic, a Reminders, a list or tuple of "
            "them, or a function returning one",
        ),
        (["app:empty"], "app:empty is empty: there is nothing to serve"),
        (
            ["app:junk"],
            "app:junk returned 'junk', not a Periodic, a Reminders, a list or "
            "tuple of them, or a function returning one",
        ),
        (["app:fails"], "app:fails failed: ValueError: nope"),
        (
            ["app:needs_args"],
            "app:needs_args must take no arguments but an optional store; it needs x",
        ),
        (["app:with_store"], "app:with_store takes a store: give one with --store STORE"),
        (
            ["app:job", "--store", "x.db"],
            "--store is for a function that takes a store; app:job is not one",
        ),
        (
            ["app:junk", "--store", "x.db"],
            "--store is for a function that takes a store; app:junk takes none",
        ),
    ],
)
def test_what_cannot_be_imported_or_served_exits_2_with_one_line(
    app: App, args: list[str], message: str
) -> None:
    (app.dir / "broken.py").write_text("raise RuntimeError('no configuration')\n")
    done = app.run(*args)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"periodic run: {message}\n")
    assert not (app.dir / "x.db").exists()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_store_that_cannot_work_exits_2(app: App) -> None:
    done = app.run("app:unconfigured")
    assert done.returncode == 2
    last = done.stderr.splitlines()[-1]
    assert last.startswith(
        "periodic run: <SQLiteStore path='/nonexistent-dir/periodic.db' table_prefix='periodic_'> "
        "did not start: DatabaseConfigError: "
    ), done.stderr
    assert app.notes() == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_current_directory_is_importable_from_the_console_script(
    app: App, tmp_path: Path
) -> None:
    # The console script's sys.path[0] is its bin directory, not the current one.
    script = Path(sys.executable).with_name("periodic")
    if not script.exists():
        pytest.skip("the console script is not installed in this environment")
    done = subprocess.run(
        [str(script), "run", "app:NUMBER"],
        cwd=tmp_path,
        env={**app.env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 2
    assert "app:NUMBER is 42" in done.stderr


def test_an_application_that_configures_logging_gets_each_record_once(
    app: App, backend: Backend
) -> None:
    # The application sets up logging as it is imported: its handler gets the records,
    # and the command adds none of its own (each record shows once).
    (app.dir / "logged.py").write_text(
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stderr, format='APP %(levelname)s %(message)s')\n"
        "from app import job\n"
    )
    process = app.start("logged:job")
    app.wait_for(process, "started")
    stderr = app.stop(process, signal.SIGTERM)
    finished = [line for line in stderr.splitlines() if "job 'work' run 1 finished ok" in line]
    assert len(finished) == 1, stderr
    assert finished[0].startswith("APP INFO ")
