"""Elections among several peers: in one process, and in separate OS processes.

The processes run ``peer_worker.py`` and report on stdout in JSON lines. SQLite always
runs; PostgreSQL runs when the test server is reachable (required when
``PERIODIC_REQUIRE_POSTGRES=1``). Failover times are printed (``pytest -s``) and written
to ``/tmp/periodic-failover.json``.

Every wait is bounded and every child process is killed in a ``finally``.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from example_support import load_example
from pg_support import query, require_postgres, unique_table

import periodic
from periodic.events import Event, Skipped, Started
from periodic.peers import Peer
from periodic.peers.sqlite import SQLitePeer

WORKER = Path(__file__).resolve().parent / "peer_worker.py"
REPORT = Path("/tmp/periodic-failover.json")
# Scheduling delays on a loaded machine, on top of what the election's timing allows.
SLACK = 0.75

_measured: list[dict[str, Any]] = []


@pytest.fixture(scope="module", autouse=True)
def failover_report() -> Iterator[None]:
    yield
    if _measured:
        REPORT.write_text(json.dumps(_measured, indent=2) + "\n")


def report(backend: str, kind: str, ttl: float, seconds: list[float], **extra: Any) -> None:
    entry = {
        "backend": backend,
        "kind": kind,
        "ttl": ttl,
        "seconds": [round(s, 3) for s in seconds],
        **extra,
    }
    _measured.append(entry)
    print(f"\n[failover] {json.dumps(entry)}")


# -- where the elections live -------------------------------------------------------------


@attrs.define
class Store:
    """One election's database, as the in-process tests and the workers reach it."""

    backend: str
    target: str  # an SQLite path or a DSN
    table: str

    def peer(self, node: str, ttl: float, name: str = "cluster") -> Peer:
        if self.backend == "sqlite":
            return SQLitePeer(self.target, name=name, ttl=ttl, node=node, table=self.table)
        from periodic.peers.postgres import PostgresPeer

        return PostgresPeer(self.target, name=name, ttl=ttl, node=node, table=self.table)

    def execute(self, statement: str, params: tuple[Any, ...] = ()) -> tuple[int, list[Any]]:
        """Run one statement in autocommit: the rows it changed, and those it returned.

        Written with ``?`` placeholders; PostgreSQL gets ``%s``.
        """
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.target, isolation_level=None, timeout=5.0)
            try:
                cursor = conn.execute(statement, params)
                return cursor.rowcount, cursor.fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.target, autocommit=True, connect_timeout=3) as pg:
            cur = pg.execute(statement.replace("?", "%s"), params)
            return cur.rowcount, cur.fetchall() if cur.description else []


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        yield Store("sqlite", str(tmp_path / "cluster.db"), "periodic_peers")
        return
    dsn = require_postgres()
    made = Store("postgres", dsn, unique_table())
    try:
        yield made
    finally:
        for table in (made.table, f"{made.table}_fenced", f"{made.table}_members"):
            try:
                query(dsn, f"DROP TABLE IF EXISTS {table}")
            except Exception as exc:  # a server restarted by another test: harmless
                print(f"could not drop {table}: {exc!r}")


# -- in one process -----------------------------------------------------------------------


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
        return
    pytest.fail(f"waited {timeout} s for {what}")


async def test_exactly_one_of_three_peers_in_one_process_leads(store: Store) -> None:
    ttl = 2.0
    peers = [store.peer(f"p{i}", ttl) for i in range(3)]

    def leaders() -> list[Peer]:
        return [p for p in peers if p.is_leader()]

    async with trio.open_nursery() as nursery:
        for peer in peers:
            nursery.start_soon(peer.serve)
        await wait_for(lambda: len(leaders()) == 1, 3 * ttl, "a leader")
        (leader,) = leaders()
        fence = leader.fence
        await wait_for(
            lambda: all(p.leader() == leader.node for p in peers), 2 * ttl, "followers to know"
        )
        # Steady state for more than a lease: the same leader, the same fence, alone.
        deadline = trio.current_time() + 1.2 * ttl
        while trio.current_time() < deadline:
            assert leaders() == [leader]
            assert leader.fence == fence
            await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


async def test_fences_strictly_increase_and_stale_writes_are_rejected(store: Store) -> None:
    ttl = 1.0
    fenced = f"{store.table}_fenced"
    store.execute(f"CREATE TABLE {fenced} (id INTEGER PRIMARY KEY, fence BIGINT, value TEXT)")
    store.execute(f"INSERT INTO {fenced} VALUES (1, 0, 'nobody')")

    def write(fence: int, value: str) -> bool:
        # The pattern from docs/cluster.md: a write carries its fence and loses to a newer one.
        changed, _ = store.execute(
            f"UPDATE {fenced} SET fence = ?, value = ? WHERE id = 1 AND fence <= ?",
            (fence, value, fence),
        )
        return changed == 1

    peers = {f"p{i}": store.peer(f"p{i}", ttl) for i in range(3)}
    scopes: dict[str, trio.CancelScope] = {}
    done: dict[str, trio.Event] = {}

    async def serve(node: str, task_status: trio.TaskStatus[None]) -> None:
        done[node] = trio.Event()
        try:
            with trio.CancelScope() as scopes[node]:
                await peers[node].serve(task_status=task_status)
        finally:
            done[node].set()

    def leader() -> str | None:
        found = [n for n, p in peers.items() if not done[n].is_set() and p.is_leader()]
        assert len(found) <= 1, found
        return found[0] if found else None

    leaderships: list[tuple[str, int]] = []
    async with trio.open_nursery() as nursery:
        for name in peers:
            await nursery.start(serve, name)
        stopped = None
        for _ in range(4):
            await wait_for(lambda: leader() is not None, 3 * ttl, "the next leader")
            node = leader()
            assert node is not None
            fence = peers[node].fence
            assert fence is not None
            assert write(fence, node)
            leaderships.append((node, fence))
            if stopped is not None:  # back, as a follower
                await nursery.start(serve, stopped)
            # Stop the leader: another takes over.
            scopes[node].cancel()
            with trio.fail_after(5):
                await done[node].wait()
            assert not peers[node].is_leader()
            stopped = node
        nursery.cancel_scope.cancel()

    fences = [fence for _, fence in leaderships]
    assert fences == sorted(set(fences)), leaderships
    # Every earlier leader's late write is turned away, and the newest value stays.
    for node, fence in leaderships[:-1]:
        assert not write(fence, f"late {node}")
    _, rows = store.execute(f"SELECT fence, value FROM {fenced}")
    assert [tuple(row) for row in rows] == [leaderships[-1][::-1]]


async def test_the_docs_rollup_runs_on_one_process_and_turns_away_a_stale_fence(
    tmp_path: Path,
) -> None:
    example = load_example("cluster_rollup")
    path = str(tmp_path / "app.db")
    example.create_tables(path)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executemany("INSERT INTO orders VALUES (?)", [(5,), (7,)])

    def rollup() -> tuple[int, int]:
        with closing(sqlite3.connect(path)) as conn:
            total, fence = conn.execute("SELECT total, fence FROM rollup").fetchone()
        return total, fence

    seen: list[Event] = []
    with periodic.subscribe(seen.append):
        async with trio.open_nursery() as nursery:
            for _ in range(2):  # two "processes" of the application
                nursery.start_soon(functools.partial(example.main, path, ttl=1.0, every=0.05))
            await wait_for(lambda: rollup() == (12, 1), 5, "the rollup")
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()

    started = [e for e in seen if isinstance(e, Started)]
    assert started
    assert {e.fence for e in started} == {1}
    assert any(isinstance(e, Skipped) and e.reason == "not_leader" for e in seen)
    with pytest.raises(example.StaleFence):
        example.save_rollup(path, 0)
    assert rollup() == (12, 1)


# -- in separate processes ----------------------------------------------------------------


@attrs.define(eq=False)
class Worker:
    slot: int
    node: str
    process: trio.Process
    log: Path
    lines: list[dict[str, Any]] = attrs.Factory(list)
    stopped: bool = False  # SIGSTOPped
    exited: bool = False

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["e"] == kind]

    @property
    def leading(self) -> bool:
        """Whether its last word was that it leads (stale while it is stopped)."""
        changes = self.of("change")
        return bool(changes) and changes[-1]["gained"] and not self.exited

    @property
    def status(self) -> dict[str, Any] | None:
        statuses = self.of("status")
        return statuses[-1] if statuses else None

    def signal(self, signum: int) -> None:
        if not self.exited:
            self.process.send_signal(signum)


@attrs.define(eq=False)
class Cluster:
    """Worker processes, their reports, and a way to wait for what they say."""

    store: Store
    ttl: float
    nursery: trio.Nursery
    tmp_path: Path
    worker_options: list[str] = attrs.Factory(list)
    workers: list[Worker] = attrs.Factory(list)
    _news: trio.Event = attrs.Factory(trio.Event)

    async def start(self, slot: int, generation: int = 0) -> Worker:
        node = f"w{slot}.{generation}"
        log = self.tmp_path / f"{node}.log"
        command = [
            sys.executable,
            str(WORKER),
            f"--backend={self.store.backend}",
            f"--target={self.store.target}",
            f"--table={self.store.table}",
            f"--node={node}",
            f"--ttl={self.ttl}",
            *self.worker_options,
        ]
        with log.open("wb") as stderr:
            process = await trio.lowlevel.open_process(
                command, stdout=subprocess.PIPE, stderr=stderr
            )
        worker = Worker(slot, node, process, log)
        self.workers.append(worker)
        self.nursery.start_soon(self._read, worker)
        return worker

    async def _read(self, worker: Worker) -> None:
        stream = worker.process.stdout
        assert stream is not None
        pending = b""
        async for chunk in stream:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                worker.lines.append(json.loads(raw))
            self._notify()
        await worker.process.wait()
        worker.exited = True
        self._notify()

    def _notify(self) -> None:
        self._news.set()
        self._news = trio.Event()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        with trio.move_on_after(timeout):
            while not (result := predicate()):
                await self._news.wait()
            return result
        pytest.fail(f"waited {timeout} s for {what}; {self.describe()}")

    def live(self) -> list[Worker]:
        return [w for w in self.workers if not w.exited]

    def leaders(self) -> list[Worker]:
        return [w for w in self.live() if w.leading and not w.stopped]

    def gained(self) -> list[tuple[float, str, int]]:
        """Every leadership gained, as ``(time, node, fence)``, in time order."""
        return sorted(
            (line["t"], w.node, line["fence"])
            for w in self.workers
            for line in w.of("change")
            if line["gained"]
        )

    def describe(self) -> str:
        parts = []
        for w in self.workers:
            state = "exited" if w.exited else "stopped" if w.stopped else "live"
            changes = [(c["gained"], c["fence"], c["reason"]) for c in w.of("change")]
            log = w.log.read_text(errors="replace").splitlines()[-3:] if w.log.exists() else []
            parts.append(
                f"\n  {w.node} ({state}): changes {changes}, status {w.status}, log {log}"
            )
        return "".join(parts)

    async def stop_all(self, timeout: float) -> None:
        """SIGTERM every live worker and wait for them to leave; SIGKILL stragglers."""
        for w in self.live():
            if w.stopped:
                w.signal(signal.SIGCONT)
                w.stopped = False
            w.signal(signal.SIGTERM)
        with trio.move_on_after(timeout):
            for w in self.workers:
                await w.process.wait()

    def kill_all(self) -> None:
        for w in self.workers:
            if w.process.returncode is None:
                w.process.kill()


@pytest.fixture
async def cluster_factory(store: Store, tmp_path: Path) -> AsyncIterator[Callable[..., Cluster]]:
    clusters: list[Cluster] = []
    async with trio.open_nursery() as nursery:

        def make(ttl: float, *options: str) -> Cluster:
            cluster = Cluster(store, ttl, nursery, tmp_path, list(options))
            clusters.append(cluster)
            return cluster

        try:
            yield make
        finally:
            for cluster in clusters:
                cluster.kill_all()
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                for cluster in clusters:
                    for w in cluster.workers:
                        await w.process.wait()
            nursery.cancel_scope.cancel()


async def elected(cluster: Cluster, count: int) -> Worker:
    """Wait until ``count`` workers run and one leads that all the others know of."""

    def settled() -> Worker | None:
        live = cluster.live()
        leaders = cluster.leaders()
        if len(live) != count or len(leaders) != 1:
            return None
        node = leaders[0].node
        statuses = [w.status for w in live]
        if all(s is not None and s["leader"] == node for s in statuses):
            return leaders[0]
        return None

    worker: Worker = await cluster.wait_for(
        settled, 3 * cluster.ttl + 5, f"one leader known to all {count}"
    )
    return worker


async def test_exactly_one_of_three_processes_leads(
    store: Store, cluster_factory: Callable[..., Cluster]
) -> None:
    ttl = 2.0
    cluster = cluster_factory(ttl)
    for slot in range(3):
        await cluster.start(slot)
    leader = await elected(cluster, 3)

    # Steady state for more than a lease: nobody else ever claims it, nobody loses it.
    await trio.sleep(1.2 * ttl)

    changes = [(w.node, c["gained"]) for w in cluster.workers for c in w.of("change")]
    assert changes == [(leader.node, True)]
    for w in cluster.workers:
        assert w.status is not None
        assert w.status["leader"] == leader.node
        assert w.status["leading"] is (w is leader)


async def test_a_killed_leader_is_replaced_within_ttl_and_one_retry(
    store: Store, cluster_factory: Callable[..., Cluster]
) -> None:
    ttl = 1.5
    retry = ttl / 2
    cluster = cluster_factory(ttl)
    for slot in range(3):
        await cluster.start(slot)
    leader = await elected(cluster, 3)
    fences: list[int] = [leader.of("change")[-1]["fence"]]
    takeovers = []

    for survivors in (2, 1):
        await trio.sleep(random.uniform(0, retry))  # any point of the renewal cycle
        killed_at = time.time()
        leader.process.kill()
        await cluster.wait_for(lambda: leader.exited, 5, "the kill")  # noqa: B023
        leader = await elected(cluster, survivors)
        gained = leader.of("change")[-1]
        takeovers.append(gained["t"] - killed_at)
        fences.append(gained["fence"])

    report(store.backend, "sigkill", ttl, takeovers, bound=ttl + retry)
    assert all(0 < t < ttl + retry + SLACK for t in takeovers), takeovers
    assert fences == sorted(set(fences)), fences


async def test_a_stopping_leader_hands_over(
    store: Store, cluster_factory: Callable[..., Cluster]
) -> None:
    ttl = 1.5
    cluster = cluster_factory(ttl)
    for slot in range(3):
        await cluster.start(slot)
    leader = await elected(cluster, 3)
    handovers = []

    for survivors in (2, 1):
        await trio.sleep(random.uniform(0, ttl / 2))
        stopped_at = time.time()
        leader.signal(signal.SIGTERM)
        await cluster.wait_for(lambda: leader.exited, 5, "the graceful stop")  # noqa: B023
        assert leader.of("bye")
        assert leader.of("change")[-1]["reason"] == "stopped"
        leader = await elected(cluster, survivors)
        handovers.append(leader.of("change")[-1]["t"] - stopped_at)

    # A follower polls every ttl / 2 at most; PostgreSQL's NOTIFY wakes it at once.
    report(store.backend, "graceful", ttl, handovers)
    bound = 0.5 if store.backend == "postgres" else ttl / 2 + SLACK
    assert all(0 < t < bound for t in handovers), handovers


async def test_with_a_quorum_of_two_a_lone_survivor_stops_leading_until_one_returns(
    store: Store, cluster_factory: Callable[..., Cluster]
) -> None:
    ttl = 1.0
    cluster = cluster_factory(ttl, "--quorum=2")
    for slot in range(3):
        await cluster.start(slot)
    leader = await elected(cluster, 3)
    others = [w for w in cluster.live() if w is not leader]

    await trio.sleep(random.uniform(0, ttl / 2))  # any point of the renewal cycle
    killed_at = time.time()
    for w in others:
        w.process.kill()
    await cluster.wait_for(lambda: all(w.exited for w in others), 5, "the kills")
    # The dead members' rows expire at most ttl after their last round, which was at
    # most ttl / 2 before the kill; the leader sees it at its next round, ttl / 2 later.
    bound = ttl + ttl / 2
    lost = await cluster.wait_for(
        lambda: [c for c in leader.of("change") if not c["gained"]],
        bound + 5,
        "the survivor to step down",
    )
    assert lost[0]["reason"] == "quorum_lost"
    stepped_down = lost[0]["t"] - killed_at
    # Alone, it takes no lease, however long it waits.
    await trio.sleep(ttl)
    assert not leader.leading
    assert leader.status is not None
    assert leader.status["leader"] is None

    restarted_at = time.time()
    await cluster.start(others[0].slot, 1)
    again = await elected(cluster, 2)
    regained = again.of("change")[-1]
    assert regained["gained"]
    back = regained["t"] - restarted_at

    report(store.backend, "quorum", ttl, [stepped_down, back], bound=bound)
    assert 0 < stepped_down < bound + SLACK, stepped_down
    gains = [c for c in leader.of("change") if c["gained"] and c["t"] < restarted_at]
    assert len(gains) == 1  # only the first, before the kills


# -- chaos --------------------------------------------------------------------------------

CHAOS_SECONDS = 7.0


def overlaps(runs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of runs of different nodes whose [start, end] intersect."""
    found = []
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            if a["node"] != b["node"] and a["start"] < b["end"] and b["start"] < a["end"]:
                found.append((a, b))
    return found


async def test_chaos_kills_and_freezes_never_give_two_nodes_the_job_at_once(
    store: Store, cluster_factory: Callable[..., Cluster]
) -> None:
    """However often the leader is killed or frozen, no two nodes run the job at once.

    Three processes; again and again the leader is killed (SIGKILL, then replaced) or
    frozen (SIGSTOP for longer than its lease, then SIGCONT), while each process runs a
    leader-guarded job that records ``(node, fence, start, end)`` in wall-clock time.

    What the peers promise, and so what is asserted: a node believes it leads only
    inside its lease (it steps down locally before the lease ends), and leases of
    different nodes never overlap. A run is *confirmed* when, just after reading its end
    time, its peer still led under the fence the run started with: then the whole run
    lay inside one lease. So confirmed runs of different nodes never overlap, and their
    fences never go back in time.

    A frozen leader's run can't be confirmed: its process wakes after its lease has
    ended and finishes the run's current step before it notices (no lease can stop a
    process that is not running; a fenced write can, see docs/cluster.md). Those runs
    are counted in the report, not asserted on.
    """
    ttl = 1.5
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    print(f"\n[chaos] {store.backend}: seed {seed}")
    # A run every 0.1 s that takes 0.08 s: a leader is running the job most of the time.
    cluster = cluster_factory(ttl, "--job-every=0.1", "--job-work=0.08")
    generations = [0, 0, 0]
    for slot in range(3):
        await cluster.start(slot)
    await elected(cluster, 3)

    actions: list[str] = []
    deadline = trio.current_time() + CHAOS_SECONDS
    while trio.current_time() < deadline:
        leader: Worker = (
            await cluster.wait_for(cluster.leaders, 3 * ttl + 5, "a leader to upset")
        )[0]
        await trio.sleep(rng.uniform(0.3, 0.8))  # let it run the job a few times
        if rng.random() < 0.5:
            leader.process.kill()
            actions.append(f"kill {leader.node}")
            await cluster.wait_for(lambda: leader.exited, 5, "the kill")  # noqa: B023
            generations[leader.slot] += 1
            await cluster.start(leader.slot, generations[leader.slot])
        else:
            # Frozen for longer than the lease: the others may take over meanwhile.
            frozen = rng.uniform(ttl + 0.3, 2 * ttl)
            leader.signal(signal.SIGSTOP)
            leader.stopped = True
            actions.append(f"freeze {leader.node} {frozen:.2f}s")
            await trio.sleep(frozen)
            seen = len(leader.lines)
            leader.signal(signal.SIGCONT)
            leader.stopped = False
            # Its lease ran out while it was frozen: it must say it stepped down.
            await cluster.wait_for(
                lambda: any(
                    line["e"] == "change" and not line["gained"]
                    for line in leader.lines[seen:]  # noqa: B023
                ),
                3 * ttl,
                "the thawed leader to step down",
            )
    # One more leader, then everybody leaves gracefully and says what it did.
    await cluster.wait_for(lambda: cluster.leaders(), 3 * ttl + 5, "a last leader")
    await trio.sleep(0.5)
    await cluster.stop_all(timeout=5)

    runs = sorted(
        ({"node": w.node, **line} for w in cluster.workers for line in w.of("run")),
        key=lambda r: r["start"],
    )
    confirmed = [r for r in runs if r["confirmed"]]
    cancelled = [
        line
        for w in cluster.workers
        for line in w.of("finished")
        if line["cancel_reason"] == "leadership_lost"
    ]
    gained = cluster.gained()
    unconfirmed = [r for r in runs if not r["confirmed"]]
    # Runs that a thawed process finished before it noticed its lease was gone: the
    # reason a job fences its writes. Not counted as clashes.
    outlived = [u for u in unconfirmed if any(overlaps([u, r]) for r in confirmed)]
    gaps = [
        b["start"] - a["end"] for a, b in itertools.pairwise(confirmed) if a["node"] != b["node"]
    ]
    _measured.append(
        {
            "backend": store.backend,
            "kind": "chaos",
            "ttl": ttl,
            "seed": seed,
            "actions": actions,
            "confirmed_runs": len(confirmed),
            "fences": sorted({r["fence"] for r in confirmed}),
            "unconfirmed_runs": len(unconfirmed),
            "unconfirmed_overlapping_another_node": len(outlived),
            "cancelled_on_leadership_loss": len(cancelled),
            "leaderships_gained": len(gained),
            "gains_with_an_older_fence": [
                g for i, g in enumerate(gained) if any(h[2] > g[2] for h in gained[:i])
            ],
            "shortest_gap_between_nodes": round(min(gaps, default=math.nan), 3),
        }
    )
    print(f"[chaos] {json.dumps(_measured[-1])}")

    # Something happened: several leaderships, each doing work.
    assert actions
    assert len({r["fence"] for r in confirmed}) >= 3, cluster.describe()
    # No two nodes ran the job at the same time.
    clashes = overlaps(confirmed)
    assert not clashes, clashes[:5]
    # Fences never go back in time, and each belongs to one node.
    fences = [r["fence"] for r in confirmed]
    assert fences == sorted(fences)
    owners: dict[int, set[str]] = {}
    for r in confirmed:
        owners.setdefault(r["fence"], set()).add(r["node"])
    assert all(len(nodes) == 1 for nodes in owners.values()), owners
