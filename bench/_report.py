"""Medians, tables (text and Markdown), the targets (issues 7 and 10), and the drift plot."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._contenders import CONTENDERS
from ._plan import SCENARIOS

Summary = dict[str, dict[str, dict[str, Any]]]  # scenario -> contender -> medians

_LABELS = {
    ("s5", "raw_spawn"): "floor: spawn + Event.wait",
    ("s6", "periodic"): "periodic.Periodic, no SDK",
    ("s6", "periodic+otel"): "periodic.Periodic, SDK + no-op exporter",
    ("s8", "periodic+memory"): "MemoryStore",
    ("s8", "periodic+sqlite"): "SQLiteStore",
    ("s8", "periodic+postgres"): "PostgresStore",
    ("s9", "periodic+sqlite"): "SQLiteStore",
    ("s9", "periodic+postgres"): "PostgresStore",
}


def label(scenario: str, contender: str) -> str:
    return _LABELS.get((scenario, contender)) or CONTENDERS[contender].label


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every number over the runs that worked; errors are kept."""
    ok = [r for r in runs if "error" not in r]
    out: dict[str, Any] = {"samples": len(ok), "failed": len(runs) - len(ok)}
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        out["error"] = errors[0]
    if not ok:
        return out
    for key, value in ok[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in ok)
    if "drift_ms" in ok[0]:
        # The drift curve of the run whose final drift is the median one.
        middle = sorted(ok, key=lambda r: r["final_drift_ms"])[(len(ok) - 1) // 2]
        out["drift_ms"] = middle["drift_ms"]
    return out


# -- tables ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Summary, str, str], float | None]
    fmt: str


def _metric(key: str) -> Callable[[Summary, str, str], float | None]:
    def get(summary: Summary, scenario: str, contender: str) -> float | None:
        value = summary.get(scenario, {}).get(contender, {}).get(key)
        return None if value is None else float(value)

    return get


def _ratio(key: str, floor: str) -> Callable[[Summary, str, str], float | None]:
    def get(summary: Summary, scenario: str, contender: str) -> float | None:
        value = _metric(key)(summary, scenario, contender)
        base = _metric(key)(summary, scenario, floor)
        return None if value is None or not base else value / base

    return get


_MANY = [
    Column("CPU/run µs", _metric("cpu_per_run_us"), "{:.1f}"),
    Column("x raw spawn", _ratio("cpu_per_run_us", "raw_spawn"), "{:.2f}"),
    Column("x grid", _ratio("cpu_per_run_us", "grid"), "{:.2f}"),
    Column("CPU % of a core", _metric("cpu_share_pct"), "{:.1f}"),
    Column("on time %", _metric("on_time_pct"), "{:.3f}"),
    Column("≤ 100 ms %", _metric("within_100ms_pct"), "{:.2f}"),
    Column("RSS KB/sched.", _metric("rss_per_scheduler_kb"), "{:.2f}"),
    Column("startup s", _metric("startup_s"), "{:.2f}"),
]
COLUMNS: dict[str, list[Column]] = {
    "s1": [
        Column("final drift ms", _metric("final_drift_ms"), "{:+.3f}"),
        Column("p99 jitter ms", _metric("p99_jitter_ms"), "{:.3f}"),
        Column("CPU/tick µs", _metric("cpu_per_tick_us"), "{:.1f}"),
        Column("x grid", _ratio("cpu_per_tick_us", "grid"), "{:.2f}"),
    ],
    "s2": _MANY,
    "s3": _MANY,
    "s7": _MANY,
    "s4": [
        Column("wall s", _metric("wall_s"), "{:.2f}"),
        Column("CPU s", _metric("cpu_s"), "{:.2f}"),
        Column("runs", _metric("runs"), "{:.0f}"),
    ],
    "s5": [
        Column("median µs", _metric("median_us"), "{:.1f}"),
        Column("p99 µs", _metric("p99_us"), "{:.1f}"),
    ],
    "s8": [
        Column("claim median ms", _metric("claim_median_ms"), "{:.3f}"),
        Column("claim p99 ms", _metric("claim_p99_ms"), "{:.3f}"),
        Column("CPU/run µs", _metric("cpu_per_run_us"), "{:.1f}"),
        Column("≤ 100 ms %", _metric("within_100ms_pct"), "{:.2f}"),
        Column("p99 lateness ms", _metric("p99_lateness_ms"), "{:.1f}"),
        Column("startup s", _metric("startup_s"), "{:.2f}"),
    ],
    "s9": [
        Column("remind median ms", _metric("remind_median_ms"), "{:.3f}"),
        Column("remind p99 ms", _metric("remind_p99_ms"), "{:.3f}"),
        Column("fill s", _metric("fill_s"), "{:.1f}"),
        Column("delivered", _metric("delivered"), "{:.0f}"),
        Column("median lateness ms", _metric("median_lateness_ms"), "{:.1f}"),
        Column("last delivered s", _metric("last_delivered_s"), "{:.3f}"),
    ],
    "s6": [
        Column("CPU/run µs", _metric("cpu_per_run_us"), "{:.1f}"),
        Column("x no SDK", _ratio("cpu_per_run_us", "periodic"), "{:.2f}"),
        Column("CPU % of a core", _metric("cpu_share_pct"), "{:.1f}"),
        Column("RSS KB/sched.", _metric("rss_per_scheduler_kb"), "{:.2f}"),
    ],
}


def rows(summary: Summary, scenario: str) -> tuple[list[str], list[list[str]]]:
    columns = COLUMNS[scenario]
    headers = ["contender", *(c.header for c in columns)]
    body = []
    for contender, medians in summary.get(scenario, {}).items():
        if "samples" in medians and not medians["samples"]:
            cells = [medians.get("error", "not measured")] + [""] * (len(columns) - 1)
        else:
            cells = []
            for column in columns:
                value = column.value(summary, scenario, contender)
                cells.append("-" if value is None else column.fmt.format(value))
        name = label(scenario, contender)
        if medians.get("failed") and medians.get("samples"):
            runs = medians["failed"] + medians["samples"]
            name += f" ({medians['failed']} of {runs} runs overloaded)"
        body.append([name, *cells])
    return headers, body


def text_table(summary: Summary, scenario: str) -> str:
    headers, body = rows(summary, scenario)
    if not body:
        return ""
    widths = [max(len(r[i]) for r in [headers, *body]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def markdown_table(summary: Summary, scenario: str) -> str:
    headers, body = rows(summary, scenario)
    if not body:
        return ""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


# -- targets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    scenario: str
    text: str
    measured: str
    met: bool | None  # None: not measured, or no target (a ratio to report)


def targets(summary: Summary) -> list[Target]:
    def get(scenario: str, contender: str, key: str) -> float | None:
        return _metric(key)(summary, scenario, contender)

    def check(scenario: str, text: str, value: float | None, fmt: str, ok: bool | None) -> None:
        measured = "not measured" if value is None else fmt.format(value)
        found.append(Target(scenario, text, measured, None if value is None else ok))

    found: list[Target] = []
    drift = get("s1", "periodic", "final_drift_ms")
    check(
        "s1",
        "final drift within ±2 ms",
        drift,
        "{:+.3f} ms",
        drift is not None and abs(drift) <= 2,
    )
    ratio = _ratio("cpu_per_tick_us", "grid")(summary, "s1", "periodic")
    check("s1", "CPU per run ≤ 1.1x the bare grid loop", ratio, "{:.2f}x", (ratio or 0) <= 1.1)
    jitter = get("s1", "periodic", "p99_jitter_ms")
    floor = get("s1", "grid", "p99_jitter_ms")
    check(
        "s1",
        "p99 gap jitter ≤ the bare grid loop's + 0.1 ms",
        jitter,
        "{:.3f} ms" + ("" if floor is None else f" (grid {floor:.3f} ms)"),
        floor is None or (jitter or 0) <= floor + 0.1,
    )
    ratio = _ratio("cpu_per_run_us", "raw_spawn")(summary, "s2", "periodic")
    check("s2", "CPU per run ≤ 1.5x the raw-spawn floor", ratio, "{:.2f}x", (ratio or 0) <= 1.5)
    for key in ("s3", "s7"):
        medians = summary.get(key, {}).get("periodic", {})
        if medians.get("failed"):
            runs = medians["failed"] + medians["samples"]
            found.append(
                Target(
                    key,
                    "keeps up (medians below are of the other runs)",
                    f"{medians['failed']} of {runs} runs: {medians['error']}",
                    False,
                )
            )
    if get("s3", "periodic", "on_time_pct") is not None:
        ratio = _ratio("cpu_per_run_us", "raw_spawn")(summary, "s3", "periodic")
        check("s3", "CPU per run ≤ 2x the raw-spawn floor", ratio, "{:.2f}x", (ratio or 0) <= 2)
        rss = get("s3", "periodic", "rss_per_scheduler_kb")
        check("s3", "≤ 2 KB of memory per scheduler", rss, "{:.2f} KB", (rss or 0) <= 2)
        startup = get("s3", "periodic", "startup_s")
        check(
            "s3", "starts 10 000 schedulers in ≤ 0.5 s", startup, "{:.2f} s", (startup or 0) <= 0.5
        )
    if get("s7", "periodic", "on_time_pct") is not None:
        prompt = get("s7", "periodic", "within_100ms_pct")
        check("s7", "≥ 99 % of runs within 100 ms of due", prompt, "{:.2f} %", (prompt or 0) >= 99)
        rss = get("s7", "periodic", "rss_per_scheduler_kb")
        check("s7", "≤ 2 KB of memory per scheduler", rss, "{:.2f} KB", (rss or 0) <= 2)
    ratio = _ratio("wall_s", "grid")(summary, "s4", "periodic")
    check("s4", "one simulated day ≤ 1.0x the bare grid loop", ratio, "{:.2f}x", (ratio or 0) <= 1)
    median = get("s5", "periodic", "median_us")
    check("s5", "sync_tick median ≤ 25 µs", median, "{:.1f} µs", (median or 0) <= 25)
    prompt = get("s8", "periodic+postgres", "within_100ms_pct")
    check(
        "s8",
        "1 000 jobs on one PostgresStore: ≥ 99 % of runs within 100 ms",
        prompt,
        "{:.2f} %",
        (prompt or 0) >= 99,
    )
    for contender, store in (
        ("periodic+postgres", "PostgresStore"),
        ("periodic+sqlite", "SQLiteStore"),
    ):
        last = get("s9", contender, "last_delivered_s")
        check(
            "s9",
            f"{store}: every reminder due in the same second delivered within 2 s",
            last,
            "{:.3f} s",
            last is not None and last <= 2.0,
        )
    ratio = _ratio("cpu_per_run_us", "periodic")(summary, "s6", "periodic+otel")
    check("s6", "CPU per run with the SDK / without (reported)", ratio, "{:.2f}x", None)
    return found


def _verdict(t: Target) -> str:
    if t.met is None:
        return "reported" if t.measured != "not measured" else "not measured"
    return "met" if t.met else "NOT met"


def targets_text(found: list[Target]) -> str:
    return "\n".join(f"  [{_verdict(t):>12}]  {t.scenario}: {t.text}: {t.measured}" for t in found)


def targets_markdown(found: list[Target]) -> str:
    lines = ["| scenario | target | periodic | verdict |", "|---|---|---|---|"]
    lines += [f"| {t.scenario} | {t.text} | {t.measured} | {_verdict(t)} |" for t in found]
    return "\n".join(lines)


def markdown(summary: Summary, found: list[Target], heading: str, smoke: bool) -> str:
    parts = [heading]
    for scenario in SCENARIOS:
        table = markdown_table(summary, scenario.key)
        if table:
            parts += [f"### {scenario.title(smoke)}", table]
    parts += ["### Targets", targets_markdown(found)]
    return "\n\n".join(parts) + "\n"


# -- the drift plot ----------------------------------------------------------------------


def plot_drift(summary: Summary, path: Path, every_ms: float, subtitle: str) -> bool:
    """Draw scenario 1's cumulative drift per contender; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {
        label("s1", c): m["drift_ms"] for c, m in summary.get("s1", {}).items() if "drift_ms" in m
    }
    if not curves:
        return False
    fig, (whole, zoom) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True)
    for name, drift in curves.items():
        whole.plot(range(len(drift)), drift, label=name, linewidth=1.2)
        zoom.plot(range(len(drift)), drift, label=name, linewidth=0.9)
    whole.set_title(f"Cumulative drift of tick k from t0 + k * {every_ms:g} ms\n{subtitle}")
    whole.set_ylabel("drift (ms)")
    whole.legend(loc="upper left", fontsize="small")
    zoom.axhspan(-2, 2, color="tab:green", alpha=0.08, label="target: |drift| ≤ 2 ms")
    zoom.set_ylim(-3, 3)
    zoom.set_ylabel("drift (ms), zoomed")
    zoom.set_xlabel("tick k")
    zoom.legend(loc="upper left", fontsize="small")
    for ax in (whole, zoom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
