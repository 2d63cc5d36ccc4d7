"""Frames in the exact shapes yfinance 1.x returns (read from its parsing code).

`yf.download([...], auto_adjust=False, actions=True)`: MultiIndex columns named ['Price', 'Ticker'] with
the price level sorted ('Adj Close', 'Close', 'Dividends', 'High', 'Low', 'Open', 'Stock Splits',
'Volume'); `group_by='ticker'` swaps the levels; index 'Date', tz-naive datetime64[s]; tickers padded to
the union of dates with NaN. `Ticker.history()`: flat columns, tz-aware America/New_York index.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FIELDS = ["Adj Close", "Close", "Dividends", "High", "Low", "Open", "Stock Splits", "Volume"]


def _bars(ticker: str, dates: pd.DatetimeIndex, base: float) -> pd.DataFrame:
    n = len(dates)
    close = base + np.arange(n, dtype=float)
    return pd.DataFrame(
        {
            "Open": close - 0.5, "High": close + 1.0, "Low": close - 1.0, "Close": close,
            "Adj Close": close * 0.98, "Volume": np.full(n, 1_000_000 + len(ticker), dtype="int64"),
            "Dividends": np.zeros(n), "Stock Splits": np.zeros(n),
        },
        index=dates,
    )


def download_frame(tickers: list[str], dates: list[str], *, group_by: str = "column",
                   missing: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """What yf.download(tickers, auto_adjust=False, actions=True, group_by=...) returns."""
    index = pd.DatetimeIndex(pd.to_datetime(dates)).astype("datetime64[s]")
    index.name = "Date"
    frames = {}
    for i, t in enumerate(tickers):
        bars = _bars(t, index, 100.0 * (i + 1))
        for day in (missing or {}).get(t, []):
            bars.loc[pd.Timestamp(day)] = np.nan  # yfinance pads absent days with NaN
        frames[t] = bars
    wide = pd.concat(frames, axis=1)  # columns (Ticker, Price)
    wide.columns.names = ["Ticker", "Price"]
    if group_by == "ticker":
        return wide
    wide = wide.swaplevel(0, 1, axis=1).sort_index(axis=1, level=0, sort_remaining=False)
    wide = wide[[(f, t) for f in FIELDS for t in tickers]]
    wide.columns = pd.MultiIndex.from_tuples(wide.columns, names=["Price", "Ticker"])
    return wide


def failed_download_frame(tickers: list[str]) -> pd.DataFrame:
    """What yf.download(tickers, auto_adjust=False, actions=True) returns when every ticker's request failed
    (yfinance 1.7, read from a real run against an unreachable proxy): it does not raise; it logs "N Failed
    download(s)" and returns no rows under the usual (Price, Ticker) columns."""
    fields = ["Adj Close", "Close", "Dividends", "High", "Low", "Open", "Stock Splits", "Volume"]
    columns = pd.MultiIndex.from_product([fields, sorted(tickers)], names=["Price", "Ticker"])
    index = pd.DatetimeIndex([], name="Date").astype("datetime64[s]")
    return pd.DataFrame(index=index, columns=columns, dtype="float64")


def history_frame(ticker: str, dates: list[str]) -> pd.DataFrame:
    """What yf.Ticker(t).history(auto_adjust=False, actions=True) returns."""
    index = pd.DatetimeIndex(pd.to_datetime(dates)).tz_localize("America/New_York")
    index.name = "Date"
    bars = _bars(ticker, index, 50.0)
    return bars[["Open", "High", "Low", "Close", "Adj Close", "Volume", "Dividends", "Stock Splits"]]


def yahoo_answer(truth: pd.DataFrame, ticker: str, start, end_exclusive, as_of) -> pd.DataFrame:
    """What yf.download([ticker], start, end, auto_adjust=False, actions=True) returns on day `as_of` for a
    ticker whose as-traded history is `truth` (index: dates; Open, High, Low, Close, Volume, Dividends,
    Stock Splits as of each day), as Yahoo builds it:

    - Open/High/Low/Close and Dividends are divided, and Volume multiplied, by every split after the row up to
      `as_of` (Yahoo re-bases history on each split);
    - Adj Close is Close times Yahoo's dividend factor: the product over dividends after the row up to `as_of`
      of (1 - dividend / previous close), in one basis (so it is re-based on every dividend too);
    - rows after `as_of` do not exist yet; the columns are the ['Price', 'Ticker'] MultiIndex.
    """
    known = truth[truth.index <= pd.Timestamp(as_of)]
    splits = known["Stock Splits"].where(known["Stock Splits"] > 0, 1.0)
    later_splits = splits[::-1].cumprod()[::-1].shift(-1, fill_value=1.0)  # product of splits after each row
    out = known.copy()
    for col in ("Open", "High", "Low", "Close", "Dividends"):
        out[col] = known[col] / later_splits
    out["Volume"] = (known["Volume"] * later_splits).round().astype("int64")
    prev_close = out["Close"].shift(1)
    step = (1 - out["Dividends"] / prev_close).where(out["Dividends"] > 0, 1.0)
    later_dividends = step[::-1].cumprod()[::-1].shift(-1, fill_value=1.0)
    out["Adj Close"] = out["Close"] * later_dividends
    window = out[(out.index >= pd.Timestamp(start)) & (out.index < pd.Timestamp(end_exclusive))]
    window.index = pd.DatetimeIndex(window.index).astype("datetime64[s]")
    window.index.name = "Date"
    frame = window[FIELDS]
    frame.columns = pd.MultiIndex.from_tuples([(f, ticker) for f in FIELDS], names=["Price", "Ticker"])
    return frame
