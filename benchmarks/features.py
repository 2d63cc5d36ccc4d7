"""Benchmark: technical indicators for 500 tickers x 10 years (~1.26M rows), measured side by side.

Prints, in one run on this machine:
  1. our polars pass vs a straightforward pandas per-ticker loop computing the same indicators
     (stock_platform_tests/reference_indicators.py; the two are also checked to agree)      goal >= 20x
  2. the end-to-end single-run backfill prices -> price_snapshots -> features through Dagster  goal < 60 s
  3. vs the projected cost of per-partition runs (5 measured, extrapolated)                    goal >= 100x
  4. peak RSS of the process running the backfill                                             goal < 3 GB
  5. one day's run of the whole daily job (forecasts included, as the close schedule runs it)  goal < 5 s
     and its features window side by side: 272 sessions (before the EMA-200 fix) vs today's lookback

    python benchmarks/features.py [--tickers 500] [--years 10] [--instance sqlite|postgres]

`--instance postgres` runs Dagster on a fresh database of the Postgres at 127.0.0.1:5432 (the production
storage) with event batching (DAGSTER_EVENT_BATCH_SIZE); `sqlite` is the embedded instance the demo uses.
The data set is built with the demo source.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test oracle lives in stock_platform_tests


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def postgres_instance_yaml(db: str) -> str:
    return f"""telemetry:
  enabled: false
storage:
  postgres:
    postgres_db:
      hostname: 127.0.0.1
      port: 5432
      username: postgres
      db_name: {db}
      scheme: postgresql+psycopg2
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tickers", type=int, default=500)
    ap.add_argument("--years", type=int, default=10)
    ap.add_argument("--instance", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--skip-pandas", action="store_true")
    ap.add_argument("--dagster-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if not args.dagster_only:
        return parent(args)

    work = Path(tempfile.mkdtemp(prefix="bench_features_"))
    end = dt.date(2024, 12, 31)
    start = dt.date(end.year - args.years + 1, 1, 2)
    os.environ.update(STOCK_PLATFORM_HOME=str(work), STOCK_PLATFORM_START=start.isoformat(),
                      STOCK_PLATFORM_TICKERS=",".join(f"T{i:03d}" for i in range(args.tickers)))
    os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")
    return dagster_part(args, work, start, end)


def parent(args) -> int:
    """Steps 1 and 4 here; steps 2-3 in a child process, whose peak RSS is then its own."""
    import json
    import subprocess

    import numpy as np

    from stock_platform.lib.demo_market import generate
    from stock_platform.lib.indicators import compute_features, feature_columns

    end = dt.date(2024, 12, 31)
    start = dt.date(end.year - args.years + 1, 1, 2)
    tickers = [f"T{i:03d}" for i in range(args.tickers)]
    t, prices = timed(lambda: generate(tickers, start, end))
    print(f"data set: {len(tickers)} tickers, {start}..{end}, {prices.height:,} rows (demo market, {t:.1f} s)")

    # --- 1. polars vs pandas
    polars_times = [timed(lambda: compute_features(prices))[0] for _ in range(3)]
    t_polars = statistics.median(polars_times)
    print(f"polars pass: {t_polars:.2f} s (median of 3)", flush=True)
    if not args.skip_pandas:
        from stock_platform_tests.reference_indicators import reference_features

        pdf = prices.to_pandas()
        t_pandas, ref = timed(lambda: reference_features(pdf))
        ours = compute_features(prices).sort("ticker", "date")
        worst = 0.0
        for col in feature_columns():
            a, b = ours[col].to_numpy().astype(float), ref[col].to_numpy().astype(float)
            ok = ~np.isnan(a)
            worst = max(worst, float(np.max(np.abs(a[ok] - b[ok]) / np.maximum(1.0, np.abs(b[ok])))))
        print(f"pandas per-ticker loop: {t_pandas:.1f} s; results agree to {worst:.1e} (max rel. diff)", flush=True)

    # --- 2-4. end to end through Dagster, in a child process
    child = subprocess.run([sys.executable, "-W", "ignore", __file__, "--dagster-only", "--tickers", str(args.tickers),
                            "--years", str(args.years), "--instance", args.instance],
                           capture_output=True, text=True)
    if child.returncode != 0:
        print(child.stdout[-3000:], child.stderr[-3000:])
        return 1
    res = json.loads(child.stdout.strip().splitlines()[-1])
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    t_backfill, t_one, n = res["backfill"], res["one_run"], res["partitions"]
    projected = t_one * n
    print(f"single-run backfill of {n} partitions x 3 assets ({args.instance} instance): {t_backfill:.1f} s  "
          + " | ".join(f"{k} {v:.1f} s" for k, v in res["steps"].items()))
    print()
    print(f"{'measure':62} {'value':>12}   goal")
    if not args.skip_pandas:
        print(f"{'pandas loop / polars pass':62} {t_pandas / t_polars:11.1f}x   >= 20x")
    print(f"{'end-to-end single-run backfill (s)':62} {t_backfill:12.1f}   < 60 s")
    print(f"{'one per-partition run, mean of 5 (s)':62} {t_one:12.2f}")
    print(f"{f'projected per-partition backfill: {n} runs (s)':62} {projected:12.0f}")
    print(f"{'projected per-partition / single-run':62} {projected / t_backfill:11.0f}x   >= 100x")
    print(f"{'peak RSS of the Dagster backfill process (GB)':62} {rss:12.2f}   < 3 GB")
    print(f"{'daily run (one partition, all daily assets), mean of 5 (s)':62} {res['daily_run']:12.2f}   < 5 s")
    print("  steps (median): " + " | ".join(f"{k} {v:.2f} s" for k, v in res["daily_steps"].items()))
    (old_name, old), (new_name, new) = res["lookback"].items()
    print(f"{'features window read + indicators, ' + old_name + ' (s)':62} {old['median_s']:12.2f}   "
          f"{old['rows']:,} rows")
    print(f"{'features window read + indicators, ' + new_name + ' (s)':62} {new['median_s']:12.2f}   "
          f"{new['rows']:,} rows")
    print(f"{'  the longer lookback costs':62} {new['median_s'] / old['median_s']:11.1f}x")
    print(f"{'features rows':62} {res['features_rows']:12,}")
    return 0


def dagster_part(args, work: Path, start: dt.date, end: dt.date) -> int:
    import json

    import dagster as dg
    import polars as pl

    home = work / "dagster"
    home.mkdir()
    if args.instance == "postgres":
        from sqlalchemy import create_engine, text

        db = f"bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{db}"'))
        (home / "dagster.yaml").write_text(postgres_instance_yaml(db))
        os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")
    else:
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)

    from stock_platform.definitions import defs
    from stock_platform.partitions import trading_days

    keys = trading_days.get_partition_keys_in_range(dg.PartitionKeyRange(start.isoformat(), end.isoformat()))
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    job = defs.resolve_job_def("daily_assets")

    def run(first: str, last: str, assets=None):
        return job.execute_in_process(instance=instance, raise_on_error=False, run_config=quiet, asset_selection=assets,
                                      tags={"dagster/asset_partition_range_start": first,
                                            "dagster/asset_partition_range_end": last})

    with dg.DagsterInstance.get() as instance:
        # the backfill of the three daily data assets (as the demo's first stage); the daily runs below are the
        # whole daily job, forecasts included, as the close schedule runs it
        data_assets = [dg.AssetKey(a) for a in ("prices", "price_snapshots", "features")]
        t_backfill, result = timed(lambda: run(keys[0], keys[-1], data_assets))
        assert result.success, "backfill failed"
        steps = {s.step_key: s.end_time - s.start_time for s in instance.get_run_step_stats(result.run_id)}
        print(f"single-run backfill of {len(keys)} partitions x 3 assets ({args.instance} instance): {t_backfill:.1f} s  "
              + " | ".join(f"{k} {v:.1f} s" for k, v in steps.items()), flush=True)

        # --- 3. per-partition runs of the same assets, as a partition-per-run backfill does them; and the whole
        # daily job for one day, as the close schedule runs it
        sample = [keys[len(keys) // 6 * i + 3] for i in range(5)]
        per_run, daily_run, daily_steps = [], [], {}
        for key in sample:
            t, r = timed(lambda key=key: run(key, key, data_assets))
            assert r.success
            per_run.append(t)
            t, r = timed(lambda key=key: run(key, key))
            assert r.success
            daily_run.append(t)
            for s in instance.get_run_step_stats(r.run_id):
                daily_steps.setdefault(s.step_key, []).append(s.end_time - s.start_time)
        lookback = lookback_cost(defs.resources["lake"], sample)
    print(json.dumps({"backfill": t_backfill, "steps": steps, "one_run": statistics.mean(per_run),
                      "daily_run": statistics.mean(daily_run),
                      "partitions": len(keys), "daily_steps": {k: statistics.median(v) for k, v in daily_steps.items()},
                      "lookback": lookback,
                      "features_rows": pl.read_delta(str(work / "lake" / "features")).height}))
    return 0


def lookback_cost(lake, days: list[str]) -> dict:
    """What the daily `features` step pays for its window, side by side on the same lake and days: the window
    before the EMA-200 fix (272 sessions: 252 rows + 20) against today's (LOOKBACK + LOOKBACK_MARGIN), each the
    snapshot read plus the indicator pass, alternated so drift on this noisy machine hits both alike."""
    import datetime as dt

    from stock_platform.lib.tables import SNAPSHOT_TABLE
    from stock_platform.lib.calendar import trading_days
    from stock_platform.lib.feature_set import LOOKBACK
    from stock_platform.lib.indicators import compute_features
    from stock_platform.assets.ml import LOOKBACK_MARGIN

    def step(day: dt.date, sessions: int) -> tuple[float, int]:
        start = trading_days(day - dt.timedelta(days=2 * sessions), day)[-(sessions + 1)]
        t0 = time.perf_counter()
        history = lake.snapshot(SNAPSHOT_TABLE, start=start, end=day)
        compute_features(history, since=day)  # as the daily run does
        return time.perf_counter() - t0, history.height

    windows = {"272 sessions (before)": 272, f"{LOOKBACK + LOOKBACK_MARGIN} sessions (now)": LOOKBACK + LOOKBACK_MARGIN}
    times = {name: [] for name in windows}
    rows = {}
    for day in (dt.date.fromisoformat(d) for d in days):
        for name, sessions in windows.items():
            t, rows[name] = step(day, sessions)
            times[name].append(t)
    return {name: {"median_s": statistics.median(ts), "rows": rows[name]} for name, ts in times.items()}


if __name__ == "__main__":
    sys.exit(main())
