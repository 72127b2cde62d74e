"""The ``periodic`` command's arguments, and what each subcommand does with them."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Awaitable, Callable, Sequence

import trio

from .._version import __version__
from ..stores import Store
from . import control, history, run, status
from .target import Target, with_store
from .text import UTC, CommandError

_DESCRIPTION = """\
Look at and steer the jobs of a periodic store, or serve an application's jobs.
STORE is an SQLite file or a PostgreSQL DSN (postgresql://user@host/db); the
commands that read it never create its tables. Exit status: 0 done; 1 problems
found (check) or no such job; 2 bad arguments, or the store could not be opened.
"""


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def _store_arguments(parser: argparse.ArgumentParser, *, job: bool = False) -> None:
    parser.add_argument("store", metavar="STORE", help="an SQLite file or a postgresql:// DSN")
    if job:
        parser.add_argument("name", metavar="NAME", help="the job's name")
    parser.add_argument(
        "--table-prefix",
        default="periodic_",
        metavar="P",
        help="the store's table_prefix (default: periodic_)",
    )


def parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    top = argparse.ArgumentParser(
        prog="periodic",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub = commands.add_parser("status", help="every job of the store, and the elections")
    _store_arguments(sub)
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(handler=_status)

    sub = commands.add_parser(
        "check", help="exit 1 if a job is overdue or keeps failing (for probes)"
    )
    _store_arguments(sub)
    sub.add_argument(
        "--max-failures",
        type=_count,
        default=3,
        metavar="N",
        help="a job that failed N times in a row is a problem (default: 3)",
    )
    sub.set_defaults(handler=_check)

    sub = commands.add_parser("history", help="a job's latest runs, newest first")
    _store_arguments(sub, job=True)
    sub.add_argument(
        "--limit", type=_count, default=20, metavar="N", help="runs shown (default: 20)"
    )
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(handler=_history)

    sub = commands.add_parser("pause", help="pause a job on every process")
    _store_arguments(sub, job=True)
    sub.add_argument("--note", metavar="TEXT", help="why, for whoever looks next")
    sub.set_defaults(handler=_pause)

    sub = commands.add_parser("resume", help="resume a paused job")
    _store_arguments(sub, job=True)
    sub.set_defaults(handler=_resume)

    sub = commands.add_parser("trigger", help="run a job once, now")
    _store_arguments(sub, job=True)
    sub.set_defaults(handler=_trigger)

    sub = commands.add_parser("run", help="serve an application's jobs until SIGTERM/SIGINT")
    sub.add_argument(
        "target",
        metavar="MODULE:ATTR",
        help="a Periodic, a Reminders, a list of them, or a function returning one",
    )
    sub.add_argument(
        "--store",
        metavar="STORE",
        help="make this store (its tables too) and pass it to ATTR, a function, as store=",
    )
    sub.add_argument(
        "--table-prefix",
        default="periodic_",
        metavar="P",
        help="the table_prefix of --store (default: periodic_)",
    )
    sub.add_argument(
        "--log-level",
        type=str.upper,
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="log the periodic logger's records from this level to stderr (default: INFO)",
    )
    sub.set_defaults(handler=_run)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``periodic`` command; its exit status.

    Raises:
        SystemExit: Bad arguments (status 2), or ``--help``/``--version`` (status 0).
    """
    args = parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CommandError as exc:
        print(f"periodic {args.command}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130


def _now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def _target(args: argparse.Namespace) -> Target:
    return Target(args.store, table_prefix=args.table_prefix)


def _print(lines: list[str]) -> None:
    for line in lines:
        print(line)


def _unknown(target: Target, name: str) -> CommandError:
    return CommandError(f"no job {name!r} in {target.where}", status=1)


def _status(args: argparse.Namespace) -> int:
    target = _target(args)

    async def read(store: Store) -> int:
        now = _now()
        jobs = [status.job_status(state, now) for state in await store.jobs()]
        elections = await target.elections()
        if args.json:
            print(json.dumps(status.status_json(jobs, elections), indent=2))
        else:
            _print(status.render_status(jobs, elections, where=target.where, now=now))
        return 0

    return trio.run(with_store, target, read)


def _check(args: argparse.Namespace) -> int:
    target = _target(args)

    async def read(store: Store) -> int:
        now = _now()
        jobs = [status.job_status(state, now) for state in await store.jobs()]
        found = status.problems(jobs, max_failures=args.max_failures, now=now)
        if found:
            _print(found)
            return 1
        paused = sum(job.paused for job in jobs)
        print(f"ok: {len(jobs)} job{'' if len(jobs) == 1 else 's'}", end="")
        print(f" ({paused} paused)" if paused else "")
        return 0

    return trio.run(with_store, target, read)


def _history(args: argparse.Namespace) -> int:
    target = _target(args)

    async def read(store: Store) -> int:
        if await store.job(args.name) is None:
            raise _unknown(target, args.name)
        runs = await store.runs(args.name, limit=args.limit)
        if args.json:
            print(json.dumps(history.history_json(args.name, runs), indent=2))
        else:
            _print(history.render_history(args.name, runs, now=_now()))
        return 0

    return trio.run(with_store, target, read)


def _control(args: argparse.Namespace, action: Callable[[Store], Awaitable[str]]) -> int:
    target = _target(args)

    async def act(store: Store) -> int:
        try:
            line = await action(store)
        except LookupError:
            raise _unknown(target, args.name) from None
        print(line)
        return 0

    return trio.run(with_store, target, act)


def _pause(args: argparse.Namespace) -> int:
    return _control(args, lambda store: control.pause(store, args.name, args.note))


def _resume(args: argparse.Namespace) -> int:
    return _control(args, lambda store: control.resume(store, args.name))


def _trigger(args: argparse.Namespace) -> int:
    return _control(args, lambda store: control.trigger(store, args.name))


def _run(args: argparse.Namespace) -> int:
    store = None if args.store is None else Target(args.store, table_prefix=args.table_prefix)
    return run.run(args.target, store=store, log_level=args.log_level)
