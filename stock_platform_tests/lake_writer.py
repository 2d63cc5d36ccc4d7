"""A writer in its own process, for the concurrency and crash tests: upserts demo bars into a snapshot table.

    python -m stock_platform_tests.lake_writer --uri URI [--endpoint URL] --start D --end D
        [--tickers N] [--hours-later H] [--close-bump X] [--dates-per-commit N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

import polars as pl

from stock_platform.assets.lake import PRECOMBINE, SNAPSHOT_KEYS, SNAPSHOT_TABLE, ensure_snapshot_table
from stock_platform.lib.demo_market import generate
from stock_platform.resources.lake import LakeResource


def batch(tickers: int, start: dt.date, end: dt.date, hours_later: float = 0, close_bump: float = 0) -> pl.DataFrame:
    names = [f"T{i:03d}" for i in range(tickers)]
    return generate(names, start, end).with_columns(
        _is_deleted=pl.lit(False),
        ingested_at=pl.col("ingested_at") + pl.duration(seconds=int(hours_later * 3600)),
        close=pl.col("close") + close_bump,
        high=pl.col("high") + close_bump,
    )


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
    a = p.parse_args()
    lake = LakeResource(uri=a.uri, aws_endpoint_url=a.endpoint, dates_per_commit=a.dates_per_commit)
    ensure_snapshot_table(lake)
    rows = batch(a.tickers, a.start, a.end, a.hours_later, a.close_bump)
    print("merging", flush=True)
    result = lake.upsert(SNAPSHOT_TABLE, rows, keys=SNAPSHOT_KEYS, order_by=PRECOMBINE, prune=("date", a.start, a.end))
    print(json.dumps({"version": result.version, **result.counts.as_dict()}), flush=True)


if __name__ == "__main__":
    main()
