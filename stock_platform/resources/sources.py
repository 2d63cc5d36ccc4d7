"""Price source adapters: `demo` (offline synthetic market), `yfinance`, `alphavantage` (its REST API), `files`,
`sql` (a table or query in any SQLAlchemy database).

Every source returns `FetchResult`: rows conformed to the prices schema, plus rows that could not be
read (with a reason) and notes such as tickers with no data. Validation against the pandera contract
happens in the `prices` asset, the same way for every source.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from stock_platform.lib.calendar import EXCHANGE_TIMEZONE
from stock_platform.settings import ALPHAVANTAGE_FUNCTIONS, SOURCES, validate_ticker

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


def with_retries(call, *, what: str, retries: int, backoff: float):
    """`call()`, retrying outages `retries` times after backoff * 2^attempt seconds (x 1-1.5 jitter). An outage is a
    `SourceError` marked transient or an HTTP client's network error; anything else fails at once. `what` names the
    source and the request in the message of the last failure."""
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - sources and their HTTP clients raise many types
            transient = exc.transient if isinstance(exc, SourceError) else _is_transient(exc)
            if isinstance(exc, SourceError) and not transient:
                raise
            if not transient or attempt == retries:
                detail = str(exc) if isinstance(exc, SourceError) else f"{type(exc).__name__}: {str(exc)[:300]}"
                raise SourceError(f"{what} failed after {attempt + 1} attempt(s): {detail}",
                                  transient=transient) from exc
            delay = backoff_seconds(backoff, attempt)
            log.warning("%s: %s; retrying in %.2f s", what, str(exc)[:200] if isinstance(exc, SourceError)
                        else type(exc).__name__, delay)
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

    answer = with_retries(lambda: download(tickers), what=f"yfinance: download {','.join(tickers)}", retries=retries,
                          backoff=backoff)
    raw = yfinance_to_polars(answer, tickers)
    got = set(raw["ticker"].unique()) if "ticker" in raw.columns else set()
    frames = [raw] if got else []
    missing = []
    for ticker in (t for t in tickers if t not in got):
        # A ticker missing from the batch answer (`download` never raises: a failed ticker is an empty column
        # and a logged error): ask for it alone, where an outage raises and is retried.
        try:
            with _exceptions_raised():
                hist = with_retries(
                    lambda t=ticker: yf.Ticker(t).history(start=start.isoformat(), end=end_exclusive,
                                                          auto_adjust=False, actions=True),
                    what=f"yfinance: history {ticker}", retries=retries, backoff=backoff)
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


# ------------------------------------------------------------------------------------- alphavantage
ALPHAVANTAGE_URL = "https://www.alphavantage.co/query"
# ALPHAVANTAGE_FUNCTIONS (settings): TIME_SERIES_DAILY_ADJUSTED (a premium function since 2023) adds the adjusted
# close, the dividend and the split coefficient to TIME_SERIES_DAILY's as-traded bars; without them a split looks
# like a crash to the features.
# a day's fields ("1. open", ..., "8. split coefficient") without their numbers -> the prices columns
_AV_FIELDS = {"open": "open", "high": "high", "low": "low", "close": "close", "adjusted close": "adj_close",
              "volume": "volume", "dividend amount": "dividends", "split coefficient": "splits"}
_AV_COMPACT_SESSIONS = 100  # outputsize=compact answers the latest 100 sessions; full: 20+ years (premium)


class AlphaVantageThrottle:
    """Spaces calls evenly, `per_minute` a minute: the free tier allows 5 a minute and refuses bursts (more than one
    a second). One per key in a process (`throttle_for`): a run's requests share it; runs in other processes do
    not (a "Note" answer is then retried)."""

    def __init__(self, per_minute: float, *, clock=time.monotonic, sleep=time.sleep):
        self.interval = 60.0 / per_minute
        self._clock, self._sleep = clock, sleep
        self._next: float | None = None
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Sleep until the next call may go; return the seconds slept."""
        with self._lock:
            now = self._clock()
            delay = 0.0 if self._next is None else max(0.0, self._next - now)
            if delay:
                self._sleep(delay)
            self._next = now + delay + self.interval
            return delay


_throttles: dict[tuple[str, float], AlphaVantageThrottle] = {}


def throttle_for(api_key: str, per_minute: float) -> AlphaVantageThrottle:
    import hashlib

    key = (hashlib.sha256(api_key.encode()).hexdigest(), per_minute)
    return _throttles.setdefault(key, AlphaVantageThrottle(per_minute))


def _redact(text: str, api_key: str) -> str:
    """AV quotes the key in some answers ("We have detected your API key as ..."): never pass it on."""
    return text.replace(api_key, "***") if api_key else text


def alphavantage_refusal(answer: dict, function: str) -> SourceError | None:
    """The error an answer without a time series stands for, judged by AV's words (it answers HTTP 200 with a
    "Note", "Information" or "Error Message" body): a throttle is an outage (transient: retried), the daily quota, a
    premium-only function and a bad key are not. None: an unknown symbol (the answer's "Error Message" for a valid
    call), which is a missing ticker, not an error."""
    if "Error Message" in answer:
        text = str(answer["Error Message"])
        if "apikey" in text.replace(" ", "").lower():
            return SourceError(f"alphavantage: the API key is invalid or missing (ALPHAVANTAGE_API_KEY): {text}")
        return None
    text = str(answer.get("Note") or answer.get("Information") or "")
    lower = text.lower()
    if not text:
        return SourceError(f"alphavantage: {function}: an answer without a time series (keys: "
                           f"{', '.join(list(answer)[:5]) or 'none'})", transient=True)
    if "sparingly" in lower or "per second" in lower or "burst" in lower:  # these also name the plans and the quota
        return SourceError(f"alphavantage: throttled: {text}", transient=True)
    if "outputsize" in lower and "premium" in lower:
        return SourceError(f"alphavantage: a range reaching back more than the latest {_AV_COMPACT_SESSIONS} sessions "
                           f"(outputsize=full) needs a premium key: {text}")
    if "this is a premium endpoint" in lower or "premium feature" in lower:
        return SourceError(f"alphavantage: {function} is not on this API key's plan (STOCK_PLATFORM_ALPHAVANTAGE_"
                           f"FUNCTION=TIME_SERIES_DAILY is the free one): {text}")
    if "demo" in lower and "api key" in lower:
        return SourceError(f"alphavantage: the demo API key serves demo symbols only (ALPHAVANTAGE_API_KEY): {text}")
    if "per minute" in lower:
        return SourceError(f"alphavantage: throttled: {text}", transient=True)
    if "per day" in lower or "daily" in lower:
        return SourceError(f"alphavantage: the API key's daily quota is used up: retry after midnight US/Eastern "
                           f"or use a premium key: {text}")
    return SourceError(f"alphavantage: {text}", transient=True)


def alphavantage_to_polars(answer: dict, ticker: str) -> pl.DataFrame:
    """One symbol's answer as raw string columns named like the prices schema's; a split coefficient of 1 (no
    split) becomes the schema's 0."""
    series = next((v for k, v in answer.items() if k.startswith("Time Series")), None)
    if not isinstance(series, dict):
        raise SourceError(f"alphavantage: {ticker}: no time series in the answer")
    rows = [{"date": day, **{_AV_FIELDS.get(name.partition(". ")[2], name): value for name, value in fields.items()}}
            for day, fields in series.items() if isinstance(fields, dict)]
    frame = pl.DataFrame(rows, schema={c: pl.Utf8 for c in ("date", *dict.fromkeys(
        c for r in rows for c in r if c != "date"))}) if rows else pl.DataFrame(schema={"date": pl.Utf8})
    if "splits" in frame.columns:
        frame = frame.with_columns(splits=pl.when(pl.col("splits").cast(pl.Float64, strict=False) == 1.0)
                                   .then(pl.lit("0")).otherwise(pl.col("splits")))
    return frame.with_columns(ticker=pl.lit(ticker))


def _alphavantage_get(url: str, params: dict[str, str], api_key: str, timeout: float) -> dict:
    """One GET of AV's query endpoint as JSON; failures as SourceErrors with the key redacted (and no exception
    chain: urllib's errors carry the URL, key included)."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    request = urllib.request.Request(f"{url}?{urllib.parse.urlencode(params | {'apikey': api_key})}",
                                     headers={"User-Agent": "stock-platform"})
    what = f"alphavantage: {params['function']} {params['symbol']}"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) URL, validated
            body = response.read()
    except urllib.error.HTTPError as exc:
        transient = exc.code == 429 or exc.code >= 500
        raise SourceError(f"{what}: HTTP {exc.code} {exc.reason}", transient=transient) from None
    except (urllib.error.URLError, OSError) as exc:  # refused, reset, DNS, timeout
        reason = getattr(exc, "reason", None) or exc
        raise SourceError(_redact(f"{what}: {type(exc).__name__}: {reason}", api_key), transient=True) from None
    try:
        answer = json.loads(body)
    except ValueError:  # an HTML error page from a proxy or an outage
        raise SourceError(f"{what}: not JSON ({body[:80]!r})", transient=True) from None
    if not isinstance(answer, dict):
        raise SourceError(f"{what}: unexpected answer ({type(answer).__name__})", transient=True)
    return answer


def fetch_alphavantage(tickers: list[str], start: dt.date, end: dt.date, *, api_key: str,
                       function: str = ALPHAVANTAGE_FUNCTIONS[0], url: str = ALPHAVANTAGE_URL,
                       calls_per_minute: float = 5, retries: int = 4, backoff: float = 1.0, timeout: float = 30.0,
                       now: dt.datetime | None = None, throttle: AlphaVantageThrottle | None = None) -> FetchResult:
    """Bars for [start, end], one request per ticker (AV has no batch daily call) within the key's rate: the latest
    100 sessions (outputsize=compact) when the range lies in them, else the full history. The bars are as traded;
    TIME_SERIES_DAILY_ADJUSTED's split coefficient and dividend become the schema's splits and dividends. A throttle
    answer or an outage is retried after backoff (at least the throttle's interval) * 2^attempt."""
    from stock_platform.lib.calendar import exchange_date, trading_days

    if not api_key:
        raise SourceError("alphavantage source: ALPHAVANTAGE_API_KEY is not set")
    now = now or dt.datetime.now(dt.UTC)
    throttle = throttle or throttle_for(api_key, calls_per_minute)
    recent = len(trading_days(start, exchange_date(now))) <= _AV_COMPACT_SESSIONS
    frames, missing = [], []
    for ticker in tickers:
        params = {"function": function, "symbol": ticker, "outputsize": "compact" if recent else "full",
                  "datatype": "json"}

        def call(params=params) -> dict | None:
            throttle.wait()
            answer = _alphavantage_get(url, params, api_key, timeout)
            if any(k.startswith("Time Series") for k in answer):
                return answer
            refusal = alphavantage_refusal(answer, function)
            if refusal is not None:
                raise SourceError(_redact(str(refusal), api_key), transient=refusal.transient)
            return None

        answer = with_retries(call, what=f"alphavantage: {function} {ticker}", retries=retries,
                              backoff=max(backoff, throttle.interval))
        if answer is None:
            log.warning("alphavantage: no such symbol: %s", ticker)
            missing.append(ticker)
        else:
            frames.append((alphavantage_to_polars(answer, ticker), "alphavantage", f"alphavantage {function}", now))
    if not frames:
        raise SourceError(f"alphavantage returned no data for {', '.join(tickers)} (unknown symbols)")
    good, bad = _conform_all(frames)
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
          query: str | None = None, api_key: str | None = None, function: str | None = None,
          calls_per_minute: float = 5) -> FetchResult:
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
    if source == "alphavantage":
        return fetch_alphavantage(tickers, start, end, api_key=api_key or "", function=function or
                                  ALPHAVANTAGE_FUNCTIONS[0], url=url or ALPHAVANTAGE_URL,
                                  calls_per_minute=calls_per_minute, retries=retries, backoff=backoff)
    raise SourceError(f"unknown source {source!r} (choose from {', '.join(SOURCES)})")
