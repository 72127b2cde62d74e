"""``python -m bench``: run every scenario in fresh processes, print tables, write JSON."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import _report
from ._contenders import CONTENDERS
from ._plan import SCENARIOS, Scenario

ROOT = Path(__file__).resolve().parent.parent


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark periodic against the alternatives (issue 7).",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="run every scenario tiny, once, and only check that it works",
    )
    parser.add_argument("--runs", type=int, help="runs per contender (default 3; smoke 1)")
    parser.add_argument("--only", help="comma-separated scenarios, e.g. s1,s3")
    parser.add_argument("--contenders", help="comma-separated contenders, e.g. periodic,grid")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results",
        help="where the JSON, the Markdown tables and the plot go (default bench/results)",
    )
    parser.add_argument("--plot", type=Path, help="the drift plot (default OUT/drift.png)")
    return parser.parse_args(argv)


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("periodic", "trio", "trio-util", "apscheduler", "anyio", "opentelemetry-sdk"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def _run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench._worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return {"error": f"worker failed: {tail[0]}", "stderr": proc.stderr[-4000:]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _jobs(args: argparse.Namespace) -> list[tuple[Scenario, str]]:
    only = set(args.only.split(",")) if args.only else None
    wanted = set(args.contenders.split(",")) if args.contenders else None
    jobs = []
    for scenario in SCENARIOS:
        if only and scenario.key not in only:
            continue
        for contender in scenario.contenders:
            if wanted and contender.split("+")[0] not in wanted:
                continue
            jobs.append((scenario, contender))
    return jobs


def _measure(
    jobs: list[tuple[Scenario, str]], skipped: list[str], runs: int, smoke: bool
) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], list[tuple[str, str, dict[str, Any]]]]:
    """Run every job ``runs`` times, each in a fresh worker; return results and failures."""
    timeout = 60.0 if smoke else 240.0
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for scenario, contender in jobs:
        results.setdefault(scenario.key, {})[contender] = []
    failures = []
    done: dict[tuple[str, int], dict[str, Any]] = {}
    # Run 1 of every contender, then run 2 of every one...: a disturbance of the machine
    # then spreads over all contenders rather than falling on one.
    for run in range(runs):
        for scenario, contender in jobs:
            if f"{scenario.key}/{contender}" in skipped:
                continue
            spec = {
                "scenario": scenario.func,
                "contender": contender.split("+")[0],
                "params": {
                    **scenario.params(smoke),
                    **scenario.variants.get(contender, {}).get("params", {}),
                },
                "otel": scenario.variants.get(contender, {}).get("otel", False),
            }
            # Scenario 6 without the SDK is scenario 2's periodic run: measured once.
            key = (json.dumps(spec, sort_keys=True), run)
            t = time.perf_counter()
            reused = key in done
            result = done[key] if reused else _run_worker(spec, timeout)
            done[key] = result
            took = time.perf_counter() - t
            status = result.get("error", "ok") + (" (reused)" if reused else "")
            print(
                f"[{scenario.key} {contender:<14} run {run + 1}/{runs}] {took:5.1f} s  {status}",
                file=sys.stderr,
                flush=True,
            )
            if "error" in result and not reused:
                failures.append((scenario.key, contender, result))
            results[scenario.key][contender].append(result)
    return results, failures


def _unavailable(jobs: list[tuple[Scenario, str]]) -> list[str]:
    missing = []
    for scenario, contender in jobs:
        variant = scenario.variants.get(contender, {})
        if not CONTENDERS[contender.split("+")[0]].available() or (
            "requires" in variant and importlib.util.find_spec(variant["requires"]) is None
        ):
            missing.append(f"{scenario.key}/{contender}")
    return missing


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    runs = args.runs or (1 if args.smoke else 3)
    mode = "smoke" if args.smoke else "full"
    jobs = _jobs(args)
    skipped = _unavailable(jobs)

    load_before = os.getloadavg()
    began = time.perf_counter()
    results, failures = _measure(jobs, skipped, runs, args.smoke)
    elapsed = time.perf_counter() - began
    load_after = os.getloadavg()

    summary: _report.Summary = {
        key: {c: _report.summarize(r) for c, r in per.items() if r} for key, per in results.items()
    }
    for name in skipped:
        key, contender = name.split("/")
        summary[key][contender] = {"samples": 0, "error": "not installed"}
    found = _report.targets(summary)

    date = datetime.date.today().isoformat()
    heading = (
        f"{mode} run of {date}: {runs} run(s) per contender, medians; {os.cpu_count()} CPUs; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        f"took {elapsed:.0f} s"
    )
    print(f"\n{heading}")
    for scenario in SCENARIOS:
        table = _report.text_table(summary, scenario.key)
        if table:
            print(f"\n{scenario.title(args.smoke)}\n{table}")
    if args.smoke:
        print("\n(smoke sizes: these numbers only show that every scenario works)")
    else:
        print(f"\ntargets of issues 7 and 10 for periodic:\n{_report.targets_text(found)}")
    if skipped:
        print(f"\nnot installed (pip install -e '.[bench]'): {', '.join(skipped)}")

    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "mode": mode,
        "date": date,
        "runs": runs,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "versions": _versions(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "elapsed_s": elapsed,
        "params": {s.key: s.params(args.smoke) for s in SCENARIOS},
        "summary": summary,
        "targets": [t.__dict__ for t in found],
        "raw": results,
    }
    json_path = args.out / f"{mode}.json"
    json_path.write_text(json.dumps(record, indent=1))
    (args.out / f"{mode}.md").write_text(
        _report.markdown(summary, found, f"_{heading}_", args.smoke)
    )
    print(f"\nwrote {json_path} and {json_path.with_suffix('.md')}")
    # The smoke run draws its plot too, so that the plotting code is checked as well.
    plot = args.plot or args.out / ("drift.png" if not args.smoke else "drift-smoke.png")
    every_ms = SCENARIOS[0].params(args.smoke)["every"] * 1000
    subtitle = f"{date}, median of {runs} runs, {os.cpu_count()}-core machine"
    if _report.plot_drift(summary, plot, every_ms, subtitle):
        print(f"wrote {plot}")

    if failures:
        print(f"\n{len(failures)} run(s) failed:", file=sys.stderr)
        for key, contender, result in failures:
            print(f"  {key}/{contender}: {result['error']}", file=sys.stderr)
            if "stderr" in result:
                print(result["stderr"], file=sys.stderr)
        # In a full run an overloaded contender is a result; a crash never is.
        crashed = [f for f in failures if not f[2]["error"].startswith("overloaded")]
        if args.smoke or crashed:
            return 1
    if args.smoke:
        print(f"smoke: {sum(len(r) for p in results.values() for r in p.values())} runs ok")
    return 0
