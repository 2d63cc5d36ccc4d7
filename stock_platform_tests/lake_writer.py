"""A writer in its own process, for the concurrency and crash tests: upserts demo bars into a snapshot table.

    python -m stock_platform_tests.lake_writer --uri URI [--endpoint URL] --start D --end D
        [--tickers N] [--hours-later H] [--close-bump X] [--dates-per-commit N]
        [--for-seconds S [--predictions]]

`--for-seconds S` commits again and again for S seconds, commit k (from 1) marking every row it writes: the
snapshot rows' close is the demo close + k (an upsert of every row), or with `--predictions` the predictions
table is replaced with forecasts of model_version k. A reader that sees two marks in one answer saw a torn read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

import polars as pl

from stock_platform.assets.lake import ensure_snapshot_table

from stock_platform.lib.demo_market import generate
from stock_platform.lib.tables import PRECOMBINE, SNAPSHOT_KEYS, SNAPSHOT_TABLE
from stock_platform.resources.lake import LakeResource


def batch(tickers: int, start: dt.date, end: dt.date, hours_later: float = 0, close_bump: float = 0) -> pl.DataFrame:
    names = [f"T{i:03d}" for i in range(tickers)]
    return generate(names, start, end).with_columns(
        _is_deleted=pl.lit(False),
        ingested_at=pl.col("ingested_at") + pl.duration(seconds=int(hours_later * 3600)),
        close=pl.col("close") + close_bump,
        high=pl.col("high") + close_bump,
    )


def predictions(bars: pl.DataFrame, k: int) -> pl.DataFrame:
    """Forecasts of every bar's next session, all of model version `k`, in the predictions table's shape."""
    import datetime as dt

    return (bars.sort("ticker", "date")
            .with_columns(target_date=pl.col("date").shift(-1).over("ticker"))
            .drop_nulls("target_date")
            .select("ticker", "date", "target_date", pred_return=pl.lit(0.001),
                    pred_close=pl.col("close") * 1.001, model_name=pl.lit("load"),
                    model_version=pl.lit(k, pl.Int32),
                    created_at=pl.lit(dt.datetime.now(dt.UTC)).cast(pl.Datetime("us", "UTC"))))


def commit_for(lake: LakeResource, a: argparse.Namespace) -> None:
    """Commit marked versions until `a.for_seconds` have passed; print the number of commits."""
    import time

    from stock_platform.lib.tables import PREDICTIONS_TABLE

    deadline, k = time.monotonic() + a.for_seconds, 0
    while time.monotonic() < deadline:
        k += 1
        if a.predictions:
            lake.replace_dates(PREDICTIONS_TABLE, predictions(batch(a.tickers, a.start, a.end), k), a.start, a.end,
                               change_data_feed=True)
        else:
            lake.upsert(SNAPSHOT_TABLE, batch(a.tickers, a.start, a.end, hours_later=k, close_bump=k),
                        keys=SNAPSHOT_KEYS, order_by=PRECOMBINE, prune=("date", a.start, a.end))
    print(json.dumps({"commits": k}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--uri", required=True)
    p.add_argument("--endpoint")
    p.add_argument("--start", required=True, type=dt.date.fromisoformat)
    p.add_argument("--end", required=True, type=dt.date.fromisoformat)
    p.add_argument("--tickers", type=int, default=5)
    p.add_argument("--hours-later", type=float, default=0)
    p.add_argument("--close-bump", type=float, default=0)
    p.add_argument("--dates-per-commit", type=int, default=126)
    p.add_argument("--for-seconds", type=float)
    p.add_argument("--predictions", action="store_true")
    a = p.parse_args()
    lake = LakeResource(uri=a.uri, aws_endpoint_url=a.endpoint, dates_per_commit=a.dates_per_commit)
    ensure_snapshot_table(lake)
    if a.for_seconds:
        commit_for(lake, a)
        return
    rows = batch(a.tickers, a.start, a.end, a.hours_later, a.close_bump)
    print("merging", flush=True)
    result = lake.upsert(SNAPSHOT_TABLE, rows, keys=SNAPSHOT_KEYS, order_by=PRECOMBINE, prune=("date", a.start, a.end))
    print(json.dumps({"version": result.version, **result.counts.as_dict()}), flush=True)


if __name__ == "__main__":
    main()
