"""Benchmark: latency from a quote file landing to the forecast for that ticker/day being visible.

    python benchmarks/latency.py [--events 20]

Starts a real `dagster-daemon` (sensor daemon + queued run coordinator, 1 s dequeue; or `--coordinator default`:
runs launched by the sensor daemon directly) on a temporary SQLite
instance with the code location loaded from `stock_platform.definitions`, prepares a year of history and a
promoted model, then lands one file per new session (3 tickers' bars as quote events), one at a time, each a
random 0-5 s after the previous forecast showed (quotes do not arrive in step with the sensor daemon's 5 s loop),
and measures landed -> `price_snapshots` rows visible -> `predictions` rows visible. Prints p50/p95 (goal: p95 of
landed -> prediction < 10 s) and, from the runs' step timings, what dominates.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20)
    ap.add_argument("--coordinator", choices=("queued", "default"), default="queued",
                    help="queued: QueuedRunCoordinator, 1 s dequeue (the production setting); default: the sensor "
                    "daemon launches each run itself")
    args = ap.parse_args()

    from stock_platform.lib.calendar import trading_days
    from stock_platform.lib.demo_market import generate
    from stock_platform.lib.events import bars_to_events, encode
    from stock_platform.resources.landing import LandingResource
    from stock_platform_tests.live_stack import HISTORY, TICKERS, Daemon, prepare, rows_for, stack_env, wait_for

    home = Path(tempfile.mkdtemp(prefix="bench_latency_"))
    env = stack_env(home)
    started = time.perf_counter()
    prepare(home, env, queued=args.coordinator == "queued")
    print(f"prepared {HISTORY[0]}..{HISTORY[1]} history and a model in {time.perf_counter() - started:.0f} s")
    days = trading_days(HISTORY[1] + dt.timedelta(days=1), HISTORY[1] + dt.timedelta(days=60))[:args.events]
    bars = generate(list(TICKERS), days[0], days[-1])
    landing = LandingResource(uri=str(home / "landing"))
    daemon = Daemon(home, env)
    to_snapshot, to_prediction = [], []
    try:
        time.sleep(5)  # let the daemon load the code location before the first file
        import polars as pl

        pause = random.Random(7)
        for day in days:
            time.sleep(pause.uniform(0, 5))
            landed = time.perf_counter()
            landing.write(f"quotes/{day}/bars.jsonl", encode(bars_to_events(bars.filter(pl.col("date") == day),
                                                                             "demo"), "jsonl"))
            _, t_snap = wait_for(lambda d=day: rows_for(home / "lake", "price_snapshots", d), timeout=120, every=0.1)
            _, t_pred = wait_for(lambda d=day: rows_for(home / "lake", "predictions", d), timeout=120, every=0.1)
            to_snapshot.append(t_snap)
            to_prediction.append(time.perf_counter() - landed)
            print(f"  {day}: snapshot {to_snapshot[-1]:5.1f} s, prediction {to_prediction[-1]:5.1f} s", flush=True)
    finally:
        daemon.stop()

    import dagster as dg

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    with dg.DagsterInstance.get() as instance:
        runs = [r for r in instance.get_runs() if r.tags.get("stock_platform/trigger") == "landing_zone_sensor"]
        steps: dict[str, list[float]] = {}
        queued, launch = [], []
        for run in runs:
            stats = instance.get_run_stats(run.run_id)
            record = instance.get_run_record_by_id(run.run_id)
            if stats.start_time and record:
                queued.append(stats.start_time - record.create_timestamp.timestamp())
            if stats.start_time and stats.end_time:
                launch.append(stats.end_time - stats.start_time)
            for s in instance.get_run_step_stats(run.run_id):
                if s.end_time and s.start_time:
                    steps.setdefault(s.step_key, []).append(s.end_time - s.start_time)
    print()
    print(f"{'measure (seconds)':52} {'p50':>6} {'p95':>6}   goal")
    print(f"{'landed -> snapshot visible':52} {statistics.median(to_snapshot):6.1f} {percentile(to_snapshot, .95):6.1f}")
    print(f"{'landed -> prediction visible':52} {statistics.median(to_prediction):6.1f} "
          f"{percentile(to_prediction, .95):6.1f}   p95 < 10 s")
    if queued:
        print(f"{'  run created -> run process started':52} {statistics.median(queued):6.1f} {percentile(queued, .95):6.1f}")
        print(f"{'  run process start -> end':52} {statistics.median(launch):6.1f} {percentile(launch, .95):6.1f}")
    for step, values in sorted(steps.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"{'    step ' + step:52} {statistics.median(values):6.2f} {percentile(values, .95):6.2f}")
    print(f"{'events':52} {len(to_prediction):6d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
