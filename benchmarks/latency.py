"""Benchmark: latency from a quote file landing to the forecast for that ticker/day being visible.

    python benchmarks/latency.py [--events 20] [--launcher both|warm|default] [--coordinator queued|default]

For each run launcher, side by side in one invocation: starts a real `dagster-daemon` (sensor daemon + queued
run coordinator, 1 s dequeue; or `--coordinator default`: runs launched by the sensor daemon directly) on a
temporary SQLite instance with the code location loaded from `stock_platform.definitions`, prepares a year of
history and a promoted model, then lands one file per new session (3 tickers' bars as quote events), one at a
time, each a random 0-5 s after the previous forecast showed (quotes do not arrive in step with the sensor
daemon's 5 s loop), and measures landed -> `price_snapshots` rows visible -> `predictions` rows visible.

Launchers: `default` is Dagster's DefaultRunLauncher (the code server spawns a fresh process per run);
`warm` is production's stock_platform.launcher.WarmProcessRunLauncher (runs go to pre-started, pre-imported
workers). The first `--warmup` events after each daemon start are reported apart (the warm launcher's first
run is cold); the p50/p95 (goal: p95 of landed -> prediction < 10 s) are over the `--events` after them.
From the runs' events it prints what dominates.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAUNCHERS = {"default": "DefaultRunLauncher", "warm": "WarmProcessRunLauncher"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


RUN_TIMINGS = """
import json, sys
import dagster as dg
skip = int(sys.argv[1])
out = {"created -> started": [], "started -> ended": [], "steps": {}}
with dg.DagsterInstance.get() as instance:
    records = instance.get_run_records(dg.RunsFilter(tags={"stock_platform/trigger": "landing_zone_sensor"}))
    for record in sorted(records, key=lambda r: r.create_timestamp)[skip:]:
        stats = instance.get_run_stats(record.dagster_run.run_id)
        out["created -> started"].append(stats.start_time - record.create_timestamp.timestamp())
        out["started -> ended"].append(stats.end_time - stats.start_time)
        for s in instance.get_run_step_stats(record.dagster_run.run_id):
            out["steps"].setdefault(s.step_key, []).append(s.end_time - s.start_time)
print(json.dumps(out))
"""


def measure(launcher: str, coordinator: str, events: int, warmup: int) -> dict:
    """One pass: a fresh stack, `warmup + events` landed files; the latencies and the runs' timings."""
    import json

    import polars as pl

    from stock_platform.lib.calendar import trading_days
    from stock_platform.lib.demo_market import generate
    from stock_platform.lib.events import bars_to_events, encode
    from stock_platform.resources.landing import LandingResource
    from stock_platform_tests.live_stack import HISTORY, TICKERS, Daemon, prepare, rows_for, stack_env, wait_for

    home = Path(tempfile.mkdtemp(prefix=f"bench_latency_{launcher}_"))
    env = stack_env(home)
    started = time.perf_counter()
    prepare(home, env, queued=coordinator == "queued", warm_launcher=launcher == "warm")
    print(f"[{LAUNCHERS[launcher]}] prepared {HISTORY[0]}..{HISTORY[1]} and a model in "
          f"{time.perf_counter() - started:.0f} s ({home})", flush=True)
    days = trading_days(HISTORY[1] + dt.timedelta(days=1), HISTORY[1] + dt.timedelta(days=90))[:warmup + events]
    bars = generate(list(TICKERS), days[0], days[-1])
    landing = LandingResource(uri=str(home / "landing"))
    daemon = Daemon(home, env)
    to_snapshot, to_prediction = [], []
    try:
        time.sleep(5)  # let the daemon load the code location before the first file
        pause = random.Random(7)
        for i, day in enumerate(days):
            time.sleep(pause.uniform(0, 5))
            landed = time.perf_counter()
            landing.write(f"quotes/{day}/bars.jsonl", encode(bars_to_events(bars.filter(pl.col("date") == day),
                                                                             "demo"), "jsonl"))
            _, t_snap = wait_for(lambda d=day: rows_for(home / "lake", "price_snapshots", d), timeout=120, every=0.1)
            _, t_pred = wait_for(lambda d=day: rows_for(home / "lake", "predictions", d), timeout=120, every=0.1)
            to_snapshot.append(t_snap)
            to_prediction.append(time.perf_counter() - landed)
            label = "warm-up" if i < warmup else "event"
            print(f"  {label} {day}: snapshot {to_snapshot[-1]:5.1f} s, prediction {to_prediction[-1]:5.1f} s",
                  flush=True)
    finally:
        daemon.stop()
    timings = subprocess.run([sys.executable, "-W", "ignore", "-c", RUN_TIMINGS, str(warmup)], env=env,
                             capture_output=True, text=True, check=True).stdout
    return {"landed -> snapshot visible": to_snapshot[warmup:],
            "landed -> prediction visible": to_prediction[warmup:],
            "after the daemon started": to_prediction[:warmup], **json.loads(timings)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2, help="events after each daemon start, reported apart")
    ap.add_argument("--launcher", choices=("both", *LAUNCHERS), default="both")
    ap.add_argument("--coordinator", choices=("queued", "default"), default="queued",
                    help="queued: QueuedRunCoordinator, 1 s dequeue (the production setting); default: the sensor "
                    "daemon launches each run itself")
    args = ap.parse_args()
    os.environ.setdefault("STOCK_PLATFORM_HOME", tempfile.mkdtemp(prefix="bench_latency_settings_"))

    launchers = list(LAUNCHERS) if args.launcher == "both" else [args.launcher]
    results = {name: measure(name, args.coordinator, args.events, args.warmup) for name in launchers}

    def cells(values: list[float]) -> str:
        return f"{statistics.median(values):6.2f} {percentile(values, .95):6.2f}" if values else f"{'-':>13}"

    first = launchers[0]
    rows = [("landed -> snapshot visible", lambda r: r["landed -> snapshot visible"]),
            ("landed -> prediction visible", lambda r: r["landed -> prediction visible"]),
            ("  run created -> run process started", lambda r: r["created -> started"]),
            ("  run process start -> end", lambda r: r["started -> ended"])]
    for step in sorted(results[first]["steps"], key=lambda s: -statistics.median(results[first]["steps"][s])):
        rows.append((f"    step {step}", lambda r, s=step: r["steps"].get(s, [])))
    print()
    print(f"{'seconds: p50 p95':56}" + "".join(f"{LAUNCHERS[n]:>26}" for n in launchers)
          + ("   p50 warm/default" if len(launchers) == 2 else ""))
    for label, values in rows:
        series = [values(results[n]) for n in launchers]
        line = f"{label:56}" + "".join(f"{cells(v):>26}" for v in series)
        if len(series) == 2 and all(series):
            line += f"   {statistics.median(series[1]) / statistics.median(series[0]):6.2f}"
        print(line + ("   goal: p95 < 10 s" if label == "landed -> prediction visible" else ""))
    print(f"{'events measured':56}" + "".join(f"{args.events:>26}" for _ in launchers))
    for name in launchers:
        first_events = ", ".join(f"{v:.1f}" for v in results[name]["after the daemon started"])
        print(f"{LAUNCHERS[name]}: landed -> prediction of the first {args.warmup} events after the daemon "
              f"started (not in the figures above): {first_events} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
