"""Benchmark: the lake's layout, the code before issue 19 (one partition per date) side by side with today's (one per
year, rows sorted by date, `maintain`), in one run, through the product's own paths (`LakeResource`):

  backfill: the 10-year `price_snapshots` upsert and `prices` replace, as a single-run backfill writes them;
  reads of `price_snapshots`: the full snapshot, the daily features lookback window, one ticker's history;
  `--daily` simulated daily runs (a new day's 500-row upsert and prices replace each); the reads again;
  then for the year layout `maintain` (compact, checkpoint, vacuum) and the reads once more; files per table.

The earlier layout's code is the `LakeResource` of git revision `--baseline` (the commit before the change), loaded
from git: what a lake built before the upgrade looks like and costs.

    python benchmarks/lake_layout.py [--tickers 500] [--years 10] [--daily 250] [--repeats 3] [--baseline d675146]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def median_time(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def baseline_lake(rev: str):
    """The `LakeResource` class of git revision `rev`."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:stock_platform/resources/lake.py"],
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType("baseline_lake")
    sys.modules[module.__name__] = module  # pydantic resolves the resource's annotations through its module
    exec(compile(source, f"{rev}:stock_platform/resources/lake.py", "exec"), module.__dict__)  # noqa: S102
    return module.LakeResource


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tickers", type=int, default=500)
    ap.add_argument("--years", type=int, default=10)
    ap.add_argument("--daily", type=int, default=250, help="simulated daily runs after the backfill")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", default="d675146", help="git revision of the per-date layout's code")
    args = ap.parse_args()
    import warnings

    warnings.simplefilter("ignore")  # Dagster's beta/preview notices on importing the asset modules

    import polars as pl

    from stock_platform.assets.lake import ensure_snapshot_table
    from stock_platform.assets.ml import LOOKBACK_MARGIN
    from stock_platform.lib.calendar import trading_days
    from stock_platform.lib.demo_market import generate
    from stock_platform.lib.feature_set import LOOKBACK
    from stock_platform.lib.prices import SNAPSHOT_SCHEMA
    from stock_platform.lib.tables import PRECOMBINE, PRICES_TABLE, SNAPSHOT_KEYS, SNAPSHOT_TABLE
    from stock_platform.resources.lake import LakeResource

    end = dt.date(2024, 12, 31)
    start = dt.date(end.year - args.years + 1, 1, 2)
    days = trading_days(start, end)
    later = trading_days(end + dt.timedelta(days=1), end + dt.timedelta(days=args.daily * 2 + 30))
    extra, after = later[:args.daily], later[args.daily:args.daily + args.repeats]  # after: days after maintenance
    tickers = [f"T{i:03d}" for i in range(args.tickers)]
    bars = generate(tickers, start, after[-1])
    history = bars.filter(pl.col("date") <= end)
    window = days[-(LOOKBACK + LOOKBACK_MARGIN):]
    work = Path(tempfile.mkdtemp(prefix="bench_lake_layout_"))
    print(f"{args.tickers} tickers x {len(days)} sessions ({history.height:,} rows), then {args.daily} daily runs; "
          f"lookback window {len(window)} sessions; baseline {args.baseline}; {work}", flush=True)

    Baseline = baseline_lake(args.baseline)
    layouts = {"per date (before)": Baseline(uri=str(work / "date")), "per year (now)": LakeResource(uri=str(work / "year"))}
    results: dict[str, dict[str, float]] = {name: {} for name in [*layouts, "per year + maintain"]}

    def upsert(lake, rows: pl.DataFrame):
        return lake.upsert(SNAPSHOT_TABLE, rows.with_columns(_is_deleted=pl.lit(False)), keys=SNAPSHOT_KEYS,
                           order_by=PRECOMBINE, prune=("date", rows["date"].min(), rows["date"].max()))

    def files(lake, name: str) -> int:
        return lake.table(name).get_add_actions(flatten=True).num_rows

    def reads(lake, r: dict, tag: str) -> None:
        r[f"full snapshot read{tag}"] = median_time(args.repeats, lambda: lake.snapshot(SNAPSHOT_TABLE))
        r[f"lookback read{tag}"] = median_time(args.repeats, lambda: lake.snapshot(
            SNAPSHOT_TABLE, start=window[0], end=window[-1]))
        r[f"one ticker{tag}"] = median_time(args.repeats, lambda: lake.snapshot(SNAPSHOT_TABLE, tickers=[tickers[7]]))

    for name, lake in layouts.items():
        r = results[name]
        if name.startswith("per date"):  # the code before created the table partitioned by date
            lake.ensure_table(SNAPSHOT_TABLE, SNAPSHOT_SCHEMA, partition_by=["date"], change_data_feed=True)
        else:
            ensure_snapshot_table(lake)
        started = time.perf_counter()
        upsert(lake, history)
        r["backfill: snapshot upsert (s)"] = time.perf_counter() - started
        started = time.perf_counter()
        lake.replace_dates(PRICES_TABLE, history, start, end)
        r["backfill: prices replace (s)"] = time.perf_counter() - started
        r["files after backfill"] = files(lake, SNAPSHOT_TABLE)
        reads(lake, r, "")
        upserts, replaces = [], []
        for day in extra:
            rows = bars.filter(pl.col("date") == day)
            started = time.perf_counter()
            upsert(lake, rows)
            upserts.append(time.perf_counter() - started)
            started = time.perf_counter()
            lake.replace_dates(PRICES_TABLE, rows, day, day)
            replaces.append(time.perf_counter() - started)
        r["daily upsert (median)"] = statistics.median(upserts)
        r["daily prices replace (median)"] = statistics.median(replaces)
        r["files after daily runs"] = files(lake, SNAPSHOT_TABLE)
        reads(lake, r, " after daily runs")
        print(f"  {name}: done", flush=True)

    year, maintained = layouts["per year (now)"], results["per year + maintain"]
    started = time.perf_counter()
    for table in (SNAPSHOT_TABLE, PRICES_TABLE):
        year.maintain(table)
    maintained["maintain both tables (s)"] = time.perf_counter() - started
    maintained["files after maintain"] = files(year, SNAPSHOT_TABLE)
    reads(year, maintained, " after daily runs")
    upserts = []
    for day in after:
        started = time.perf_counter()
        upsert(year, bars.filter(pl.col("date") == day))
        upserts.append(time.perf_counter() - started)
    maintained["daily upsert (median)"] = statistics.median(upserts)

    names = list(results)
    rows = list(dict.fromkeys(k for r in results.values() for k in r))
    print(f"\n{'seconds (median of ' + str(args.repeats) + ') / files':40}" + "".join(f"{n:>22}" for n in names)
          + f"{'before/now':>12}")
    for row in rows:
        values = [results[n].get(row) for n in names]
        cells = "".join(f"{'-':>22}" if v is None else (f"{v:>22,.0f}" if row.startswith("files") else f"{v:>22.3f}")
                        for v in values)
        before, now = values[0], values[2] if values[2] is not None else values[1]
        ratio = f"{before / now:>12.1f}" if before and now and not row.startswith("files") else f"{'':>12}"
        print(f"{row:40}{cells}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
