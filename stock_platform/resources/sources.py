"""Price source adapters: `demo` (offline synthetic market), `yfinance`, `files`, `sql` (a table or query in any
SQLAlchemy database).

Every source returns `FetchResult`: rows conformed to the prices schema, plus rows that could not be
read (with a reason) and notes such as tickers with no data. Validation against the pandera contract
happens in the `prices` asset, the same way for every source.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from stock_platform.lib.calendar import EXCHANGE_TIMEZONE
from stock_platform.settings import SOURCES, validate_ticker

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# Column names as exported by common tools (Yahoo, brokers, pandas-datareader), lowercased.
_COLUMN_ALIASES = {
    "date": "date", "datetime": "date", "timestamp": "date",
    "open": "open", "high": "high", "low": "low", "close": "close",
    "adj close": "adj_close", "adj_close": "adj_close", "adjclose": "adj_close", "adjusted_close": "adj_close",
    "volume": "volume", "dividends": "dividends", "stock splits": "splits", "splits": "splits",
    "ticker": "ticker", "symbol": "ticker",
}


class SourceError(RuntimeError):
    """A source could not deliver (unknown ticker, empty answer, unreadable file, network failure).
    `transient`: an outage (network, rate limit) that outlasted the adapter's own retries; a later attempt
    may succeed, so the `prices` asset asks Dagster to retry the step."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass
class FetchResult:
    prices: pl.DataFrame
    rejects: pl.DataFrame
    missing_tickers: list[str] = field(default_factory=list)


def _rename_columns(frame: pl.DataFrame, origin: str) -> pl.DataFrame:
    mapping: dict[str, str] = {}
    for col in frame.columns:
        target = _COLUMN_ALIASES.get(col.strip().lower())
        if target is None:
            continue
        if target in mapping.values():
            raise SourceError(f"{origin}: more than one column maps to {target!r} ({', '.join(frame.columns)})")
        mapping[col] = target
    return frame.select([pl.col(c).alias(t) for c, t in mapping.items()])


def _conform_all(frames: list[tuple[pl.DataFrame, str, str, dt.datetime | None]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    from stock_platform.lib.prices import conform, empty_prices, empty_rejects

    goods, bads = [empty_prices()], [empty_rejects()]
    for frame, source, origin, ingested_at in frames:
        good, bad = conform(frame, source=source, origin=origin, ingested_at=ingested_at)
        goods.append(good)
        bads.append(bad)
    return pl.concat(goods), pl.concat(bads)


def _in_range(good: pl.DataFrame, bad: pl.DataFrame, start: dt.date, end: dt.date,
              missing: list[str]) -> FetchResult:
    """The rows of [start, end]; rejects whose date could not be read stay (they may belong to the range)."""
    in_range = pl.col("date").is_between(start, end)
    return FetchResult(good.filter(in_range), bad.filter(in_range | pl.col("date").is_null()), missing)


# --------------------------------------------------------------------------------------------- demo
def fetch_demo(tickers: list[str], start: dt.date, end: dt.date, seed: int) -> FetchResult:
    from stock_platform.lib.demo_market import generate

    good, bad = _conform_all([(generate(tickers, start, end, seed=seed), "demo", "demo", None)])
    return FetchResult(good, bad)


# -------------------------------------------------------------------------------------------- files
def find_ticker_file(files_dir: Path, ticker: str) -> Path | None:
    """The CSV or Parquet file for `ticker` in `files_dir` (name matched case-insensitively)."""
    validate_ticker(ticker)
    wanted = {f"{ticker}.csv".lower(), f"{ticker}.parquet".lower()}
    matches = sorted(p for p in files_dir.iterdir() if p.is_file() and p.name.lower() in wanted)
    if len(matches) > 1:
        raise SourceError(f"files source: both {matches[0].name} and {matches[1].name} exist for ticker {ticker!r}")
    return matches[0] if matches else None


def read_ticker_file(path: Path, ticker: str) -> pl.DataFrame:
    """One ticker's file as raw columns (strings for CSV), renamed to the prices names, with `ticker`."""
    try:
        if path.suffix.lower() == ".parquet":
            frame = pl.read_parquet(path)
        else:
            frame = pl.read_csv(path, infer_schema=False, null_values=["", "null", "NULL", "None"])
    except Exception as exc:  # noqa: BLE001 - polars raises several types for unreadable files
        raise SourceError(f"files source: cannot read {path}: {exc}") from None
    first = frame.columns[0] if frame.columns else None
    if first is not None and (first == "" or first.startswith("Unnamed:")) and not any(
            _COLUMN_ALIASES.get(c.strip().lower()) == "date" for c in frame.columns):
        frame = frame.rename({first: "date"})  # a pandas index written without a name: the dates
    frame = _rename_columns(frame, str(path))
    if "ticker" in frame.columns:
        frame = frame.drop("ticker")  # the file name is authoritative
    return frame.with_columns(ticker=pl.lit(ticker))


def fetch_files(files_dir: Path, tickers: list[str], start: dt.date, end: dt.date) -> FetchResult:
    if not files_dir.is_dir():
        raise SourceError(f"files source: {files_dir} is not a directory")
    frames, missing = [], []
    for ticker in tickers:
        path = find_ticker_file(files_dir, ticker)
        if path is None:
            missing.append(ticker)
            continue
        mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
        frames.append((read_ticker_file(path, ticker), "files", str(path), mtime))
    if not frames:
        raise SourceError(f"files source: no CSV or Parquet file for any of {', '.join(tickers)} in {files_dir}")
    good, bad = _conform_all(frames)
    return _in_range(good, bad, start, end, missing)


def files_last_common_date(files_dir: Path, tickers: list[str]) -> dt.date:
    """The last day that every ticker's file (of those present) has a readable row for: where a range over
    the files naturally ends."""
    rows = fetch_files(files_dir, tickers, dt.date.min, dt.date.max).prices
    if rows.is_empty():
        raise SourceError(f"files source: no readable rows for {', '.join(tickers)} in {files_dir}")
    return rows.group_by("ticker").agg(pl.col("date").max())["date"].min()


# ----------------------------------------------------------------------------------------- yfinance
_YF_FIELDS = {"Open": "open", "High": "high", "Low": "low", "Close": "close", "Adj Close": "adj_close",
              "Volume": "volume", "Dividends": "dividends", "Stock Splits": "splits"}


def yfinance_to_polars(frame: pd.DataFrame, tickers: list[str]) -> pl.DataFrame:
    """Reshape yfinance output (yf.download or Ticker.history) into long rows of raw columns.

    Handles MultiIndex columns in either level order (['Price', 'Ticker'] or, with group_by='ticker',
    ['Ticker', 'Price']), flat columns for a single ticker, and tz-naive or tz-aware indexes.
    Rows where every price is missing are dropped: yf.download pads tickers to a common index.
    """
    import pandas as pd

    if frame is None or frame.empty:
        return pl.DataFrame(schema={"ticker": pl.Utf8, "date": pl.Datetime("us")})
    index = frame.index
    if isinstance(index, pd.DatetimeIndex) and index.tz is not None:
        # Daily bars are stamped at midnight exchange time; keep the calendar date of that instant.
        index = index.tz_convert(EXCHANGE_TIMEZONE).tz_localize(None)
    # yfinance 1.x indexes are datetime64[s], which polars does not take: hand it microseconds.
    dates = pd.DatetimeIndex(index).normalize().to_numpy().astype("datetime64[us]")

    if isinstance(frame.columns, pd.MultiIndex):
        names = list(frame.columns.names)
        price_level = names.index("Price") if "Price" in names else (0 if set(frame.columns.get_level_values(0)) & set(_YF_FIELDS) else 1)
        ticker_level = 1 - price_level
        per_ticker = {t: frame.xs(t, axis=1, level=ticker_level) for t in frame.columns.get_level_values(ticker_level).unique()}
    else:
        if len(tickers) != 1:
            raise SourceError(f"yfinance: flat columns but {len(tickers)} tickers requested")
        per_ticker = {tickers[0]: frame}

    parts = []
    for ticker, sub in per_ticker.items():
        cols = {_YF_FIELDS[c]: sub[c].to_numpy() for c in sub.columns if c in _YF_FIELDS}
        part = pl.DataFrame({"date": dates, **cols}).with_columns(ticker=pl.lit(str(ticker)))
        prices = [c for c in ("open", "high", "low", "close") if c in part.columns]
        part = part.filter(~pl.all_horizontal(pl.col(prices).is_null() | pl.col(prices).is_nan()))
        parts.append(part)
    return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()


_YF_NO_DATA = {"YFTickerMissingError", "YFPricesMissingError", "YFTzMissingError"}


# An outage rather than an answer, by class name anywhere in the exception's MRO: yfinance's rate limit, and the
# network errors of curl_cffi (yfinance 1.x's HTTP client: DNSError and ProxyError are its ConnectionError),
# requests and the standard library.
_TRANSIENT = {"YFRateLimitError", "ConnectionError", "Timeout", "TimeoutError", "ChunkedEncodingError", "HTTPError"}


def _is_transient(exc: BaseException) -> bool:
    return any(cls.__name__ in _TRANSIENT for cls in type(exc).__mro__)


def backoff_seconds(base: float, attempt: int) -> float:
    """Exponential backoff with jitter: base * 2^attempt, times 1-1.5 (retries of many clients spread out)."""
    return base * 2**attempt * (1 + random.random() / 2)


def _with_retries(call, *, what: str, retries: int, backoff: float):
    """`call()`, retrying outages `retries` times after backoff * 2^attempt seconds (x 1-1.5 jitter)."""
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - yfinance and its HTTP clients raise many types
            transient = _is_transient(exc)
            if not transient or attempt == retries:
                raise SourceError(f"yfinance: {what} failed after {attempt + 1} attempt(s): {type(exc).__name__}: "
                                  f"{str(exc)[:300]}", transient=transient) from exc
            delay = backoff_seconds(backoff, attempt)
            log.warning("yfinance: %s: %s; retrying in %.2f s", what, type(exc).__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


@contextmanager
def _exceptions_raised():
    """yfinance hides a failed request behind "possibly delisted; no timezone found" unless told otherwise
    (its `raise_errors` is deprecated): show them, so an outage is told apart from a ticker without data."""
    import yfinance as yf

    hidden = yf.config.debug.hide_exceptions
    yf.config.debug.hide_exceptions = False
    try:
        yield
    finally:
        yf.config.debug.hide_exceptions = hidden


def fetch_yfinance(tickers: list[str], start: dt.date, end: dt.date, *, retries: int = 4, backoff: float = 1.0,
                   now: dt.datetime | None = None) -> FetchResult:
    """Bars for [start, end], as traded. Yahoo re-bases every earlier price, dividend and volume on each split
    (its `Close` is split-adjusted as of the download), so the answer is asked up to today, where it holds every
    split Yahoo applied, and `unadjust_splits` puts each row back in its own day's share basis."""
    import yfinance as yf

    from stock_platform.lib.calendar import exchange_date
    from stock_platform.lib.corporate_actions import unadjust_splits

    now = now or dt.datetime.now(dt.UTC)
    ingested_at = now
    end_exclusive = (max(end, exchange_date(now)) + dt.timedelta(days=1)).isoformat()

    def download(symbols: list[str]):
        return yf.download(symbols, start=start.isoformat(), end=end_exclusive, auto_adjust=False, actions=True,
                           progress=False, threads=False, group_by="column")

    raw = yfinance_to_polars(_with_retries(lambda: download(tickers), what=f"download {','.join(tickers)}",
                                           retries=retries, backoff=backoff), tickers)
    got = set(raw["ticker"].unique()) if "ticker" in raw.columns else set()
    frames = [raw] if got else []
    missing = []
    for ticker in (t for t in tickers if t not in got):
        # A ticker missing from the batch answer (`download` never raises: a failed ticker is an empty column
        # and a logged error): ask for it alone, where an outage raises and is retried.
        try:
            with _exceptions_raised():
                hist = _with_retries(
                    lambda t=ticker: yf.Ticker(t).history(start=start.isoformat(), end=end_exclusive,
                                                          auto_adjust=False, actions=True),
                    what=f"history {ticker}", retries=retries, backoff=backoff)
        except SourceError as exc:
            if type(exc.__cause__).__name__ not in _YF_NO_DATA:
                raise
            log.warning("yfinance: no data for %s: %s", ticker, exc.__cause__)
            hist = None
        one = yfinance_to_polars(hist, [ticker])
        if one.is_empty():
            missing.append(ticker)
        else:
            frames.append(one)
    if not frames:
        raise SourceError(f"yfinance returned no data for {', '.join(tickers)} between {start} and {end} "
                          "(unknown or delisted tickers, or no trading in the range)")
    raw = pl.concat(frames, how="diagonal_relaxed")
    if "splits" in raw.columns:
        raw = unadjust_splits(raw.with_columns(pl.col("splits").fill_null(0.0).fill_nan(0.0)))
    good, bad = _conform_all([(raw, "yfinance", "yfinance", ingested_at)])
    return _in_range(good, bad, start, end, missing)


# ---------------------------------------------------------------------------------------------- sql
def _sql_column(name: str, values: list) -> pl.Series:
    """One result column as polars takes it: numbers as floats (Decimal included), dates and timestamps as they
    are, and a column of mixed types (SQLite keeps 'n/a' in a REAL column) as text, for `conform` to judge."""
    from decimal import Decimal

    kinds = {type(v) for v in values if v is not None}
    if kinds and kinds <= {int, float, Decimal}:
        return pl.Series(name, [None if v is None else float(v) for v in values], dtype=pl.Float64)
    if len(kinds) <= 1:
        try:
            return pl.Series(name, values, strict=True)
        except (TypeError, ValueError, pl.exceptions.PolarsError):
            pass
    return pl.Series(name, [None if v is None else str(v) for v in values], dtype=pl.Utf8)


def fetch_sql(url: str, tickers: list[str], start: dt.date, end: dt.date, *, table: str | None = None,
              query: str | None = None, now: dt.datetime | None = None) -> FetchResult:
    """Bars for [start, end] from a SQL database: `table` (columns named like the files source's, any case) read with
    the range and the tickers in the WHERE clause, or `query`, a SELECT given the range as :start and :end (its rows
    then limited to the tickers). No message names the URL whole (it may hold a password): the database is named by
    its URL with the password masked."""
    import sqlalchemy as sa
    from sqlalchemy.exc import DBAPIError, NoSuchTableError, SQLAlchemyError

    engine = sa.create_engine(url)
    where = f"sql source {engine.url.render_as_string(hide_password=True)}"
    try:
        with engine.connect() as conn:
            if table is not None:
                schema, _, name = table.rpartition(".")
                try:
                    found = sa.Table(name, sa.MetaData(), schema=schema or None, autoload_with=conn)
                except NoSuchTableError:
                    raise SourceError(f"{where}: no table {table!r}") from None
                by_name = {}
                for column in found.columns:
                    target = _COLUMN_ALIASES.get(column.name.strip().lower())
                    if target in by_name:
                        raise SourceError(f"{where}: table {table}: more than one column maps to {target!r}")
                    by_name[target] = column
                if "date" not in by_name or "ticker" not in by_name:
                    raise SourceError(f"{where}: table {table} needs a date and a ticker (or symbol) column (has: "
                                      f"{', '.join(c.name for c in found.columns)})")
                day, ticker = by_name["date"], by_name["ticker"]
                if isinstance(day.type, sa.Date) and not isinstance(day.type, sa.DateTime):
                    in_range = day.between(start, end)
                else:  # timestamps (read as New York dates below) or ISO text: a day more on each side
                    low, high = start - dt.timedelta(days=1), end + dt.timedelta(days=2)
                    if isinstance(day.type, sa.String):
                        low, high = low.isoformat(), high.isoformat()
                    in_range = sa.and_(day >= low, day < high)
                result = conn.execute(sa.select(found).where(in_range, ticker.in_(tickers)))
            else:
                result = conn.execute(sa.text(query), {"start": start, "end": end})
            names, rows = list(result.keys()), result.fetchall()
    except SourceError:
        raise
    except DBAPIError as exc:  # the driver's words (a refused connection is an outage: the step is retried)
        reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
        raise SourceError(f"{where}: {type(exc.orig).__name__}: {reason}",
                          transient=exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError)) from None
    except SQLAlchemyError as exc:
        raise SourceError(f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    finally:
        engine.dispose()
    raw = _rename_columns(pl.DataFrame([_sql_column(n, [row[i] for row in rows]) for i, n in enumerate(names)]),
                          where)
    if "ticker" not in raw.columns:
        raise SourceError(f"{where}: the query returns no ticker (or symbol) column (has: {', '.join(names)})")
    symbol = raw["ticker"].cast(pl.Utf8).str.strip_chars()
    raw = raw.filter(symbol.is_in(tickers))
    got = set(symbol.filter(symbol.is_in(tickers)))
    good, bad = _conform_all([(raw, "sql", where, now or dt.datetime.now(dt.UTC))])
    return _in_range(good, bad, start, end, [t for t in tickers if t not in got])


def fetch(source: str, tickers: list[str], start: dt.date, end: dt.date, *, files_dir: str | None = None,
          seed: int = 7, retries: int = 4, backoff: float = 1.0, url: str | None = None, table: str | None = None,
          query: str | None = None) -> FetchResult:
    """Daily bars for `tickers` in [start, end] from `source`."""
    tickers = [validate_ticker(t) for t in tickers]
    if source == "sql":
        if not url or (table is None) == (query is None):
            raise SourceError("sql source: needs a URL and one of a table or a query (STOCK_PLATFORM_SOURCE_URL, "
                              "STOCK_PLATFORM_SOURCE_TABLE / STOCK_PLATFORM_SOURCE_QUERY)")
        return fetch_sql(url, tickers, start, end, table=table, query=query)
    if source == "demo":
        return fetch_demo(tickers, start, end, seed)
    if source == "files":
        if not files_dir:
            raise SourceError("files source: files_dir is not set (STOCK_PLATFORM_FILES_DIR)")
        return fetch_files(Path(files_dir), tickers, start, end)
    if source == "yfinance":
        return fetch_yfinance(tickers, start, end, retries=retries, backoff=backoff)
    raise SourceError(f"unknown source {source!r} (choose from {', '.join(SOURCES)})")
