"""Daily bars in the `prices` schema: canonical column types, and conforming raw source frames to them.

`conform` turns whatever a source produced (strings from a CSV, pandas-derived floats, tz-aware or
naive timestamps) into the canonical types. Values that cannot be read are not guessed: their rows are
returned as rejects with a reason naming the column and the value, ready for the quarantine.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from stock_platform.lib.calendar import EXCHANGE_TIMEZONE
from stock_platform.lib.contracts import PRICES, SNAPSHOTS, polars_schema

PRICE_COLUMNS = ("open", "high", "low", "close", "adj_close")
PRICES_SCHEMA: dict[str, pl.DataType] = polars_schema(PRICES)  # the columns' meanings and rules: lib/contracts.py
SNAPSHOT_SCHEMA: dict[str, pl.DataType] = polars_schema(SNAPSHOTS)  # plus the soft-delete flag (lib/snapshots.py)
REQUIRED_COLUMNS = ("ticker", "date", "open", "high", "low", "close", "volume")
# Rejected rows, before the quarantine adds where and when it caught them.
REJECT_SCHEMA: dict[str, pl.DataType] = {
    "ticker": pl.Utf8(),
    "date": pl.Date(),
    "reason": pl.Utf8(),
    "record": pl.Utf8(),
}
_INT64_MAX = float(2**63 - 1)


class PriceDataError(ValueError):
    """A source frame is unusable as a whole (missing columns, wrong shape); the message says why."""


def empty_prices() -> pl.DataFrame:
    return pl.DataFrame(schema=PRICES_SCHEMA)


def empty_rejects() -> pl.DataFrame:
    return pl.DataFrame(schema=REJECT_SCHEMA)


def _to_date(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Trading date of a date-like column: tz-aware instants are read in New York time."""
    if dtype == pl.Date:
        return col
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:
            col = col.dt.convert_time_zone(EXCHANGE_TIMEZONE)
        return col.dt.date()
    if dtype == pl.Utf8:
        text = col.str.strip_chars()
        plain = text.str.to_date("%Y-%m-%d", strict=False)
        # ISO timestamps with an offset ("2024-01-02T00:00:00-05:00", "...Z") mark an instant.
        instant = (
            text.str.replace(r"Z$", "+00:00")
            .str.to_datetime("%Y-%m-%dT%H:%M:%S%:z", strict=False, time_zone="UTC")
            .dt.convert_time_zone(EXCHANGE_TIMEZONE)
            .dt.date()
        )
        naive = text.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False).dt.date()
        return pl.coalesce(plain, instant, naive, _slashed_date(text))
    return pl.lit(None, dtype=pl.Date)


def _slashed_date(text: pl.Expr) -> pl.Expr:
    """`1/4/1999`-style dates of a whole column: month first (US exports) or day first, whichever the column's
    values prove (a first part above 12 is a day, a second part above 12 a month). A column that proves
    neither, or both, is ambiguous: its slashed dates stay unread (and their rows are rejected as such)."""
    parts = text.str.extract_groups(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")
    first, second = parts.struct.field("1").cast(pl.Int32), parts.struct.field("2").cast(pl.Int32)
    day_first, month_first = (first > 12).any(), (second > 12).any()
    us = text.str.to_date("%m/%d/%Y", strict=False)
    eu = text.str.to_date("%d/%m/%Y", strict=False)
    return pl.when(month_first & ~day_first).then(us).when(day_first & ~month_first).then(eu)


def conform(raw: pl.DataFrame, *, source: str, origin: str, ingested_at: dt.datetime | None = None
            ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Cast a source frame to PRICES_SCHEMA; return (typed rows, rejected rows with reasons).

    `origin` names where the frame came from (a file, "yfinance", ...) for error messages. Exact
    duplicate rows are collapsed (a repeated record is not bad data); everything else is kept for the
    schema to judge.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise PriceDataError(f"{origin}: missing column(s) {', '.join(missing)} (has: {', '.join(raw.columns)})")
    if raw.is_empty():
        return empty_prices(), empty_rejects()
    now = ingested_at or dt.datetime.now(dt.UTC)

    parsed: dict[str, pl.Expr] = {
        "ticker": pl.col("ticker").cast(pl.Utf8).str.strip_chars(),
        "date": _to_date(pl.col("date"), raw.schema["date"]),
    }
    numeric = [c for c in (*PRICE_COLUMNS, "volume", "dividends", "splits") if c in raw.columns]
    for c in numeric:
        parsed[c] = pl.col(c).cast(pl.Float64, strict=False)

    # A value that was present but could not be read is a reason to reject its row.
    problems = [
        pl.when(pl.col(c).is_not_null() & parsed[c].is_null()).then(
            pl.format(f"{c}='{{}}' is not {'a date' if c == 'date' else 'a number'}", pl.col(c).cast(pl.Utf8))
        )
        for c in ("date", *numeric)
    ]
    if raw.schema["date"] == pl.Utf8:  # say why a d/m or m/d date could not be read
        slashed = pl.col("date").str.strip_chars().str.contains(r"^\d{1,2}/\d{1,2}/\d{4}$")
        problems[0] = pl.when(slashed & parsed["date"].is_null()).then(pl.format(
            "date='{}' is ambiguous: no date of the file shows whether the day or the month comes first",
            pl.col("date"))).otherwise(problems[0])
    vol = parsed["volume"]
    problems += [
        pl.when(vol.is_nan() | vol.is_infinite()).then(pl.format("volume={} is not finite", vol)),
        pl.when(vol.is_finite() & (vol.abs() > _INT64_MAX)).then(pl.format("volume={} overflows int64", vol)),
        pl.when(vol.is_finite() & (vol != vol.round(0))).then(pl.format("volume={} is not a whole number", vol)),
    ]
    reason = pl.concat_str(problems, separator="; ", ignore_nulls=True)

    if "adj_close" not in raw.columns:
        parsed["adj_close"] = parsed["close"]  # no adjustment information: the close is all we know
    parsed.setdefault("dividends", pl.lit(0.0))
    parsed.setdefault("splits", pl.lit(0.0))
    parsed["volume"] = pl.when(vol.is_finite() & (vol.abs() <= _INT64_MAX)).then(vol).cast(pl.Int64)
    parsed["source"] = pl.col("source").cast(pl.Utf8) if "source" in raw.columns else pl.lit(source)
    if "ingested_at" in raw.columns and isinstance(raw.schema["ingested_at"], pl.Datetime):
        tz = raw.schema["ingested_at"].time_zone
        ing = pl.col("ingested_at").cast(pl.Datetime("us", tz))
        parsed["ingested_at"] = ing.dt.convert_time_zone("UTC") if tz else ing.dt.replace_time_zone("UTC")
    else:
        parsed["ingested_at"] = pl.lit(now)

    frame = raw.with_columns(_reason=pl.when(reason != "").then(reason))
    rejects = frame.filter(pl.col("_reason").is_not_null()).select(
        ticker=parsed["ticker"],
        date=parsed["date"],
        reason=pl.col("_reason"),
        record=pl.struct(pl.exclude("_reason").cast(pl.Utf8)).struct.json_encode(),
    ).cast(REJECT_SCHEMA)
    good = frame.filter(pl.col("_reason").is_null()).select(**parsed).select(list(PRICES_SCHEMA)).cast(PRICES_SCHEMA)
    return good.unique(maintain_order=True), rejects


def keep_accepted(valid: pl.DataFrame, rejects: pl.DataFrame, stored: pl.DataFrame,
                  missing_tickers: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`valid` plus the stored rows that a bad update must not displace: those whose (ticker, date) was rejected
    this time, or whose ticker the source did not deliver at all (an outage is not a deletion). Returns the rows
    to store for the range and the stored rows kept (deliberate deletes come as landed `delete` events)."""
    keys = ["ticker", "date"]
    displaced = pl.concat([rejects.select(keys).drop_nulls(),
                           stored.filter(pl.col("ticker").is_in(missing_tickers)).select(keys)])
    kept = stored.join(displaced.unique(), on=keys, how="semi").join(valid, on=keys, how="anti")
    return pl.concat([valid, kept.select(valid.columns)], how="vertical_relaxed"), kept
