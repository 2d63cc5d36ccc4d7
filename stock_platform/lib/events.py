"""Quote events from the landing zone (no Dagster): parse a file, and turn events into daily bars.

One event (the README's landing format): `ticker, ts (UTC), open, high, low, close, volume, event_id, op`, `op` in
{upsert, delete}: the shape of a DynamoDB-stream / Firehose CDC record, flattened. Files are JSON lines
(`.jsonl`, `.json`), `.csv` or `.parquet`. A file that cannot be read, or lacks a column, or has an
unknown `op` or an unreadable timestamp, is refused as a whole (`EventFileError`, quarantined with the
reason); row-level problems (a bad ticker, a non-trading day, high < low, ...) are judged later by the
prices contract like any other bar.
"""

from __future__ import annotations

import io

import polars as pl

from stock_platform.lib.calendar import EXCHANGE_TIMEZONE, session_close_utc

EVENT_COLUMNS = ("ticker", "ts", "open", "high", "low", "close", "volume", "event_id", "op")
OPS = ("upsert", "delete")
FORMATS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet"}
EVENT_SCHEMA = {"ticker": pl.String, "ts": pl.Datetime("us", "UTC"), "open": pl.Float64, "high": pl.Float64,
                "low": pl.Float64, "close": pl.Float64, "volume": pl.Float64, "event_id": pl.String, "op": pl.String}


class EventFileError(ValueError):
    """A landing file that cannot be used as a whole; the message is its quarantine reason."""


def file_format(key: str) -> str:
    for suffix, fmt in FORMATS.items():
        if key.lower().endswith(suffix):
            return fmt
    raise EventFileError(f"{key}: unknown file type (expected one of {', '.join(FORMATS)})")


def read_events(key: str, data: bytes) -> pl.DataFrame:
    """The events of one landing file, typed as EVENT_SCHEMA (raises EventFileError)."""
    fmt = file_format(key)
    if not data.strip():
        raise EventFileError(f"{key}: empty file (no events)")
    try:
        if fmt == "json":
            raw = pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
        elif fmt == "csv":
            raw = pl.read_csv(io.BytesIO(data), infer_schema_length=0)  # all text: cast below, strictly
        else:
            raw = pl.read_parquet(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - any parser error means the file is unreadable
        raise EventFileError(f"{key}: unreadable {fmt}: {str(exc).splitlines()[0][:200]}") from None
    missing = [c for c in EVENT_COLUMNS if c not in raw.columns]
    if missing:
        raise EventFileError(f"{key}: missing column(s) {', '.join(missing)} (has: {', '.join(raw.columns)})")
    if raw.is_empty():
        return pl.DataFrame(schema=EVENT_SCHEMA)
    ts = pl.col("ts")
    if raw.schema["ts"] == pl.String:
        ts = ts.str.to_datetime(time_zone="UTC", strict=False, time_unit="us")
    elif isinstance(raw.schema["ts"], pl.Datetime):
        tz = raw.schema["ts"].time_zone
        ts = ts.dt.replace_time_zone("UTC") if tz is None else ts.dt.convert_time_zone("UTC")
    else:
        raise EventFileError(f"{key}: column ts is {raw.schema['ts']}, expected an ISO timestamp (UTC)")
    events = raw.select(
        pl.col("ticker").cast(pl.String),
        ts.cast(pl.Datetime("us", "UTC")).alias("ts"),
        *(pl.col(c).cast(pl.Float64, strict=False) for c in ("open", "high", "low", "close", "volume")),
        pl.col("event_id").cast(pl.String),
        pl.col("op").cast(pl.String).str.to_lowercase(),
    )
    bad_ts = events.filter(pl.col("ts").is_null()).height
    if bad_ts:
        raise EventFileError(f"{key}: {bad_ts} event(s) with a missing or unreadable ts")
    bad_ops = sorted(set(events["op"].drop_nulls().to_list()) - set(OPS)) + (["<null>"] * bool(events["op"].null_count()))
    if bad_ops:
        raise EventFileError(f"{key}: unknown op(s) {bad_ops} (expected upsert or delete)")
    # the same event twice is a replay; a ticker's event_id with other values is a conflict nobody can resolve
    distinct = events.unique()
    conflicting = (distinct.filter(pl.struct("ticker", "event_id").is_duplicated())
                   .select(pl.format("{}/{}", "ticker", "event_id")).to_series().unique().sort().to_list())
    if conflicting:
        raise EventFileError(f"{key}: event(s) {conflicting[:5]} appear with different values")
    return distinct.sort("ts", "event_id", maintain_order=True) if distinct.height < events.height else events


def event_days(events: pl.DataFrame) -> pl.Series:
    """The exchange's calendar day of each event (its session, for a bar stamped during or after it)."""
    return events["ts"].dt.convert_time_zone(EXCHANGE_TIMEZONE).dt.date()


def latest_per_key(events: pl.DataFrame) -> pl.DataFrame:
    """The newest event per (ticker, day): a later quote of the same session replaces an earlier one,
    a replayed file changes nothing (the same event wins again). Ties on ts go to the larger event_id."""
    return (
        events.with_columns(date=event_days(events))
        .sort("ts", "event_id")
        .unique(subset=["ticker", "date"], keep="last", maintain_order=True)
        .sort("ticker", "date")
    )


def events_to_bars(events: pl.DataFrame, source: str = "landing") -> pl.DataFrame:
    """Upsert events as raw price rows (the prices columns; `adj_close` left for the caller, who knows the
    ticker's adjustment factor; no dividends or splits known intraday)."""
    up = latest_per_key(events).filter(pl.col("op") == "upsert")
    return up.select(
        "ticker", "date", "open", "high", "low", "close",
        adj_close=pl.lit(None, pl.Float64),
        # a share count: a fractional or absurd volume becomes null, which the prices contract rejects
        volume=pl.when((pl.col("volume") == pl.col("volume").round()) & (pl.col("volume").abs() < 2**62))
        .then(pl.col("volume").cast(pl.Int64)),
        dividends=pl.lit(0.0), splits=pl.lit(0.0), source=pl.lit(source),
        ingested_at=pl.col("ts"),
    )


def deletes(events: pl.DataFrame) -> pl.DataFrame:
    """`ticker, date, ts` of the keys whose newest event is a delete."""
    return latest_per_key(events).filter(pl.col("op") == "delete").select("ticker", "date", "ts")


def with_adj_close(bars: pl.DataFrame, history: pl.DataFrame) -> pl.DataFrame:
    """Fill `adj_close` of landed bars with the ticker's latest known adjustment factor (adj_close / close on
    or before the bar's day, from `history`: ticker, date, close, adj_close); 1 without history."""
    factors = (history.select("ticker", "date", factor=pl.col("adj_close") / pl.col("close"))
               .sort("ticker", "date"))
    return (
        bars.sort("ticker", "date")
        .join_asof(factors, on="date", by="ticker", strategy="backward", check_sortedness=False)  # both sorted
        .with_columns(adj_close=pl.col("close") * pl.col("factor").fill_null(1.0))
        .drop("factor")
    )


def apply_events(current: pl.DataFrame, incoming: pl.DataFrame, gone: pl.DataFrame) -> pl.DataFrame:
    """Stored price rows updated by landed bars and deletes: per (ticker, date) the newest `ingested_at`
    wins (a replayed or older event changes nothing), and a delete removes a row that arrived before it. A
    landed bar keeps the stored row's dividend and split (quotes carry none)."""
    from stock_platform.lib.snapshots import precombine

    # a quote knows no corporate action: a bar replacing a stored row keeps that day's split and dividend
    actions = current.select("ticker", "date", _div="dividends", _split="splits")
    incoming = (incoming.join(actions, on=["ticker", "date"], how="left")
                .with_columns(dividends=pl.coalesce("_div", "dividends"), splits=pl.coalesce("_split", "splits"))
                .drop("_div", "_split"))
    merged = precombine(pl.concat([current, incoming.select(current.columns)], how="vertical_relaxed"),
                        ["ticker", "date"], "ingested_at")
    if gone.is_empty():
        return merged.sort("ticker", "date")
    return (merged.join(gone, on=["ticker", "date"], how="left")
            .filter(pl.col("ts").is_null() | (pl.col("ts") < pl.col("ingested_at")))
            .drop("ts").sort("ticker", "date"))


def bars_to_events(bars: pl.DataFrame, source: str) -> pl.DataFrame:
    """Daily bars as upsert events stamped at their session's close (what `stock-platform replay` lands).

    The event id names ticker, day and source, so a replay of the same bars carries the same ids."""
    return bars.select(
        "ticker",
        ts=session_close_utc(pl.col("date")),
        open="open", high="high", low="low", close="close", volume=pl.col("volume").cast(pl.Float64),
        event_id=pl.format("{}-{}-{}", "ticker", "date", pl.lit(source)),
        op=pl.lit("upsert"),
    )


def encode(events: pl.DataFrame, fmt: str) -> bytes:
    """Events as a landing file's bytes (`jsonl`, `csv` or `parquet`)."""
    buf = io.BytesIO()
    if fmt == "jsonl":
        events.with_columns(pl.col("ts").dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ")).write_ndjson(buf)
    elif fmt == "csv":
        events.with_columns(pl.col("ts").dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ")).write_csv(buf)
    elif fmt == "parquet":
        events.write_parquet(buf)
    else:
        raise ValueError(f"unknown landing format {fmt!r} (jsonl, csv or parquet)")
    return buf.getvalue()
