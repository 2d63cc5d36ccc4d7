"""Corporate actions, point in time: the platform's own price adjustment (no Dagster).

Stored prices are *as traded*: each row's open/high/low/close, dividend per share and volume in the share
basis of its own day, and `splits` the ratio of a split that takes effect that day (4.0 for 4:1, 0.5 for
a 1:2 reverse split, 0 for none). Sources that deliver another basis convert at ingestion
(`unadjust_splits`: Yahoo re-bases every earlier row on each split). Nothing stored ever changes when a
later action arrives.

Adjustment is a cumulative factor built forward from those rows, as CRSP's cumulative factors or LEAN's
factor files, but forward so that it never uses information after its date:

    ref(t)  = close(t-1) / s(t) - D(t)        the ex-day reference price (s = split ratio, D = dividend)
    R(t)    = close(t) / ref(t)               the total return of day t
    F(t)    = F(t-1) * close(t-1) / ref(t)    F = 1 on a ticker's first row; close * F is a total-return index

So `close(t) * F(t)` moves exactly by each day's total return. Relative to a day d, `close(t) * F(t) / F(d)`
is the history expressed in d's share basis (what a chart adjusted on d shows), and it uses only actions up
to d. Vendor `adj_close` is kept as received for reference; it plays no part here (vendors re-base it on
every action, so rows ingested on different days disagree).
"""

from __future__ import annotations

import polars as pl

KEYS = ("ticker", "date")


def split_ratio(splits: pl.Expr = pl.col("splits")) -> pl.Expr:
    """The share multiplier of a row's split (1 when there is none)."""
    return pl.when(splits > 0).then(splits).otherwise(1.0)


def daily_factor(by: str = "ticker") -> pl.Expr:
    """F(t) / F(t-1) on a frame sorted by ticker and date: close(t-1) / ref(t), 1 on a ticker's first row.

    A dividend at or above the reference price cannot be right (it would leave a non-positive price):
    such a dividend is not applied, the split still is.
    """
    s = split_ratio()
    prev = pl.col("close").shift(1).over(by)
    ref = prev / s - pl.col("dividends")
    step = pl.when(ref > 0).then(prev / ref).otherwise(s)
    return pl.when(prev.is_null()).then(1.0).otherwise(step)


def with_factor(prices: pl.DataFrame, by: str = "ticker") -> pl.DataFrame:
    """`prices` sorted by (ticker, date) with `factor` F (1 on each ticker's first row of the frame)."""
    return (prices.sort(KEYS).with_columns(_step=daily_factor(by))
            .with_columns(factor=pl.col("_step").cum_prod().over(by)).drop("_step"))


def total_returns(prices: pl.DataFrame) -> pl.DataFrame:
    """`ticker, date, prev_date, total_return`: each row's total return since the ticker's previous row."""
    frame = prices.sort(KEYS)
    return frame.select(
        "ticker", "date",
        prev_date=pl.col("date").shift(1).over("ticker"),
        total_return=pl.col("close") * daily_factor() / pl.col("close").shift(1).over("ticker") - 1,
    ).filter(pl.col("prev_date").is_not_null())


def unadjust_splits(frame: pl.DataFrame) -> pl.DataFrame:
    """Undo a vendor's split adjustment: rows whose prices, dividends and volume were re-based on the splits
    after them (Yahoo's `Close`, `Dividends`, `Volume`) back to the share basis of their own day.

    `frame` (ticker, date, open, high, low, close, [adj_close,] dividends, splits, volume) is one answer of the
    vendor reaching to the day it was fetched, so its split rows are every split the vendor applied. A row is
    multiplied by the product of the split ratios strictly after its date (its volume divided by it); the
    split day itself is already in its new basis.
    """
    actions = frame.filter(pl.col("splits") > 0).select("ticker", "date", "splits")
    if actions.is_empty():
        return frame
    # the product of the ratios strictly after each row: a reverse cumulative product over the split dates
    after = (actions.sort(KEYS)
             .select("ticker", _until="date", _after=pl.col("splits").cum_prod(reverse=True).over("ticker")))
    joined = (frame.sort(KEYS)
              .join_asof(after, left_on="date", right_on="_until", by="ticker", strategy="forward",
                         allow_exact_matches=False, check_sortedness=False)  # both sorted by (ticker, date)
              .with_columns(_m=pl.col("_after").fill_null(1.0)))
    prices = [c for c in ("open", "high", "low", "close", "adj_close", "dividends") if c in frame.columns]
    return joined.with_columns(
        *[pl.col(c) * pl.col("_m") for c in prices],
        volume=(pl.col("volume").cast(pl.Float64) / pl.col("_m")).round(0).cast(frame.schema["volume"]),
    ).select(frame.columns)
