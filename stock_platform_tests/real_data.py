"""Real daily OHLCV that PyPI packages ship (test dependencies pinned in pyproject.toml), as the files they are.

| ticker | package, file | span | what makes it real-world |
|---|---|---|---|
| GOOG | backtesting 0.6.6, `backtesting/test/GOOG.csv` | 2004-08-19 .. 2013-03-01 | as traded; a pandas index written without a header |
| GSPC | arch 8.0.0, `arch/data/sp500/sp500.csv.gz` | 1999-01-04 .. 2018-12-31 | a Yahoo export of the S&P 500 (^GSPC): US `1/4/1999` dates, `Adj Close` |
| IXIC | arch 8.0.0, `arch/data/nasdaq/nasdaq.csv.gz` | 1999-01-04 .. 2018-12-31 | as GSPC for the Nasdaq Composite (^IXIC); the dot-com crash, two zero-volume days |
| MSFT | pmdarima 2.1.1, `pmdarima/datasets/data/msft.tar.gz` | 1986-03-13 .. 2017-11-10 | back-adjusted by its vendor and rounded to 4-5 significant digits (0.0672 in 1986): flat bars, ties |

The indices are named without Yahoo's `^` (the platform's tickers start with a letter or digit). The packages
are located without importing them (`find_spec`): only their data files are read.
"""

from __future__ import annotations

import datetime as dt
import gzip
import importlib.util
import tarfile
from pathlib import Path

import pandas as pd
import polars as pl

REAL_TICKERS = ("GOOG", "GSPC", "IXIC", "MSFT")
# the span every series covers: 8.5 years
COMMON_START, COMMON_END = dt.date(2004, 8, 19), dt.date(2013, 3, 1)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the test dependency {name!r} is not installed (pip install -e '.[test]')")
    return Path(spec.submodule_search_locations[0])


def shipped_bytes(ticker: str) -> bytes:
    """The CSV of `ticker` exactly as its package ships it (decompressed)."""
    if ticker == "GOOG":
        return (_package_dir("backtesting") / "test" / "GOOG.csv").read_bytes()
    if ticker in ("GSPC", "IXIC"):
        name = {"GSPC": "sp500", "IXIC": "nasdaq"}[ticker]
        return gzip.decompress((_package_dir("arch") / "data" / name / f"{name}.csv.gz").read_bytes())
    if ticker == "MSFT":
        with tarfile.open(_package_dir("pmdarima") / "datasets" / "data" / "msft.tar.gz") as archive:
            return archive.extractfile("msft.csv").read()
    raise KeyError(ticker)


def write_files(directory: Path, tickers=REAL_TICKERS) -> Path:
    """One `<ticker>.csv` per ticker in `directory`, as shipped: what a user points the `files` source at."""
    directory.mkdir(parents=True, exist_ok=True)
    for ticker in tickers:
        (directory / f"{ticker}.csv").write_bytes(shipped_bytes(ticker))
    return directory


def ohlcv(ticker: str) -> pd.DataFrame:
    """The ticker's bars as a pandas frame indexed by date: Open, High, Low, Close, Volume (floats)."""
    import io

    raw = pd.read_csv(io.BytesIO(shipped_bytes(ticker)))
    date_col = raw.columns[0]
    fmt = "%m/%d/%Y" if "/" in str(raw[date_col].iloc[0]) else "%Y-%m-%d"
    frame = raw.set_index(pd.to_datetime(raw[date_col], format=fmt))[["Open", "High", "Low", "Close", "Volume"]]
    return frame.astype(float).rename_axis("date")


def as_prices(ticker: str) -> pl.DataFrame:
    """The ticker's bars in the prices columns compute_features reads (as traded; no corporate actions)."""
    frame = ohlcv(ticker)
    return pl.DataFrame({
        "ticker": ticker, "date": pl.Series(frame.index.values).cast(pl.Date),
        **{c.lower(): frame[c].to_numpy() for c in ("Open", "High", "Low", "Close")},
        "volume": frame["Volume"].to_numpy().astype("int64"), "dividends": 0.0, "splits": 0.0,
    })
