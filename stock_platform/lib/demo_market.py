"""An offline synthetic stock market, deterministic for a seed.

Each ticker's history is simulated from a fixed origin (`DEMO_ORIGIN`) on the NYSE calendar, with its
own random stream derived from (seed, ticker), so any subset of tickers or dates is a slice of the same
market: fetching one day gives exactly the rows a 10-year fetch gives for that day.

The model, per ticker i and trading day t (log total returns r):

    r[i,t] = mu + m[i,t] + beta[i] * f[t] + sigma[i,t] * z[i,t]
    m[i,t] = -REVERSAL * (r[i,t-1] + ... + r[i,t-5])          # the known predictable component
    sigma^2[i,t] = min(w[i] + a * (sigma[i,t-1] z[i,t-1])^2 + b * sigma^2[i,t-1], (4 vol[i])^2)  # GARCH(1,1)

with f a market factor (GARCH too) and z Student-t(5) innovations scaled to unit variance and clipped at 8 (fat tails,
volatility clustering). `m` is a weak five-day reversal: its information coefficient against the next
return is about REVERSAL * sqrt(5) ~ 0.09. It is observable at t-1's close from adjusted closes, see
`true_signal`, so later stages can prove they learn it (and nothing more).

Corporate actions: a ticker pays a quarterly dividend (if it is a payer) and splits 2:1 (4:1 when far
above its threshold) occasionally once its price is high. OHLC are raw traded prices; `adj_close` is a
total-return index anchored at the origin (adj_close[t] / adj_close[t-1] = exp(r[t]) exactly), so it
never changes once published. Volume rises with |return| and scales with splits.
"""

from __future__ import annotations

import datetime as dt
import zlib

import numpy as np
import polars as pl

from stock_platform.lib.calendar import session_close_utc, trading_days

DEMO_ORIGIN = dt.date(2000, 1, 3)
DEFAULT_SEED = 7
REVERSAL = 0.04
REVERSAL_DAYS = 5
_MU = 0.0003
_GARCH_A, _GARCH_B = 0.08, 0.90
_T_DOF = 5.0
_VOL_CAP = 4.0


def _student_t(rng: np.random.Generator, n: int) -> np.ndarray:
    # clipped at 8 sd: fat tails without the odd 20-sigma day that makes no sense for a large cap
    return np.clip(rng.standard_t(_T_DOF, n) / np.sqrt(_T_DOF / (_T_DOF - 2.0)), -8.0, 8.0)


def generate(
    tickers: list[str] | tuple[str, ...], start: dt.date, end: dt.date, seed: int = DEFAULT_SEED
) -> pl.DataFrame:
    """Daily bars for `tickers` on NYSE trading days in [start, end], in the prices schema."""
    if start < DEMO_ORIGIN:
        raise ValueError(f"demo market starts on {DEMO_ORIGIN}; cannot generate from {start}")
    sessions = trading_days(DEMO_ORIGIN, end)
    n, k = len(sessions), len(tickers)
    if k == 0 or n == 0 or end < start:
        return _frame([], [], {})

    # Per-ticker parameters and innovations from the ticker's own stream.
    draws = {name: np.empty((k, n)) for name in ("z", "gap", "hi", "lo", "vol", "split")}
    beta, base_vol, p0, volume0, div_yield, split_at = (np.empty(k) for _ in range(6))
    for i, ticker in enumerate(tickers):
        # One stream per quantity, so a longer history only appends draws (slices stay identical).
        streams = [np.random.default_rng([seed, zlib.crc32(ticker.encode()), j]) for j in range(7)]
        params = streams[0]
        beta[i] = params.uniform(0.6, 1.4)
        base_vol[i] = params.uniform(0.010, 0.025)
        p0[i] = np.exp(params.uniform(np.log(8.0), np.log(250.0)))
        volume0[i] = np.exp(params.uniform(np.log(3e5), np.log(3e7)))
        div_yield[i] = params.choice([0.0, 0.0025, 0.005, 0.008])  # quarterly cash yield
        split_at[i] = params.uniform(300.0, 900.0)
        draws["z"][i] = _student_t(streams[1], n)
        draws["gap"][i] = streams[2].standard_normal(n)
        draws["hi"][i] = np.abs(streams[3].standard_normal(n))
        draws["lo"][i] = np.abs(streams[4].standard_normal(n))
        draws["vol"][i] = streams[5].standard_normal(n)
        draws["split"][i] = streams[6].uniform(size=n)

    market_rng = np.random.default_rng([seed, 0])
    f_z = _student_t(market_rng, n)

    # Quarterly ex-dividend days: the first session of Feb/May/Aug/Nov.
    months = np.array([d.month for d in sessions])
    first_of_month = np.r_[True, months[1:] != months[:-1]]
    ex_div_day = first_of_month & np.isin(months, (2, 5, 8, 11))

    w = base_vol**2 * (1 - _GARCH_A - _GARCH_B)
    var = base_vol**2
    f_var, f_w = 0.01**2, 0.01**2 * (1 - _GARCH_A - _GARCH_B)
    recent = np.zeros((k, REVERSAL_DAYS))  # last five log returns, a ring buffer

    shape = (k, n)
    # The loop carries only what is recursive (variances, returns, the share basis); open, high, low and
    # volume follow from each day's values and draws, all days at once after it.
    closes, adj, divs, splits, refs, sigmas, rets, shares = (np.empty(shape) for _ in range(8))
    prev_close = p0.copy()
    prev_adj = p0.copy()
    shares_factor = np.ones(k)
    prev_eps, prev_f_eps = np.zeros(k), 0.0
    no_dividend = np.zeros(k)

    for t in range(n):
        # conditional variance capped at 4x the ticker's base volatility (no runaway GARCH episodes)
        var = np.minimum(w + _GARCH_A * prev_eps**2 + _GARCH_B * var, (_VOL_CAP * base_vol) ** 2)
        f_var = min(f_w + _GARCH_A * prev_f_eps**2 + _GARCH_B * f_var, (_VOL_CAP * 0.01) ** 2)
        sigma = np.sqrt(var)
        f_eps = np.sqrt(f_var) * f_z[t]
        eps = sigma * draws["z"][:, t]
        r = _MU - REVERSAL * recent.sum(axis=1) + beta * f_eps + eps
        recent[:, t % REVERSAL_DAYS] = r
        growth = np.exp(r)

        grown = prev_close * growth
        split = np.where((grown > split_at) & (draws["split"][:, t] < 0.02), np.where(grown > 3 * split_at, 4.0, 2.0), 1.0)
        dividend = np.round(prev_close / split * div_yield, 2) if ex_div_day[t] else no_dividend
        reference = prev_close / split - dividend  # the ex-day reference price
        close = reference * growth
        shares_factor = shares_factor * split
        adj_close = prev_adj * growth
        closes[:, t], adj[:, t], divs[:, t], splits[:, t] = close, adj_close, dividend, np.where(split > 1, split, 0.0)
        refs[:, t], sigmas[:, t], rets[:, t], shares[:, t] = reference, sigma, r, shares_factor
        prev_close, prev_adj, prev_eps, prev_f_eps = close, adj_close, eps, f_eps

    opens = refs * np.exp(0.4 * rets + 0.25 * sigmas * draws["gap"])
    highs = np.maximum(opens, closes) * np.exp(0.5 * sigmas * draws["hi"])
    lows = np.minimum(opens, closes) * np.exp(-0.5 * sigmas * draws["lo"])
    vols = volume0[:, None] * shares * np.exp(0.35 * draws["vol"] + 8.0 * np.abs(rets))

    first = int(np.searchsorted(np.array(sessions, dtype="datetime64[D]"), np.datetime64(start)))
    cols = {
        "open": opens, "high": highs, "low": lows, "close": closes, "adj_close": adj,
        "volume": vols, "dividends": divs, "splits": splits,
    }
    return _frame(list(tickers), sessions[first:], {c: v[:, first:] for c, v in cols.items()})


def _frame(tickers: list[str], dates: list[dt.date], cols: dict[str, np.ndarray]) -> pl.DataFrame:
    n = len(dates)
    price = {c: pl.Series(c, np.round(cols[c].ravel(), 4) if n else [], dtype=pl.Float64)
             for c in ("open", "high", "low", "close", "adj_close")}
    df = pl.DataFrame(
        {
            "ticker": pl.Series(np.repeat(tickers, n) if n else [], dtype=pl.Utf8),
            "date": pl.Series(dates * len(tickers), dtype=pl.Date),
            **price,
            "volume": pl.Series(np.round(cols["volume"]).ravel() if n else [], dtype=pl.Float64).cast(pl.Int64),
            "dividends": pl.Series(cols["dividends"].ravel() if n else [], dtype=pl.Float64),
            "splits": pl.Series(cols["splits"].ravel() if n else [], dtype=pl.Float64),
        }
    )
    # Rounding to cents can break OHLC ordering by a hair; restore it.
    df = df.with_columns(
        high=pl.max_horizontal("open", "high", "low", "close"),
        low=pl.min_horizontal("open", "high", "low", "close"),
    )
    return df.with_columns(
        source=pl.lit("demo"),
        # A demo bar is published at its session's close (deterministic, so reruns are identical).
        ingested_at=session_close_utc(pl.col("date")),
    )


def true_signal(prices: pl.DataFrame) -> pl.DataFrame:
    """The demo market's predictable part of the *next* day's log return, known at each date's close.

    Returns `ticker, date, true_signal` where true_signal at d = E[r(d+1) | data up to d] - mu - beta*E[f]
    = -REVERSAL * log(adj_close[d] / adj_close[d-5]).
    """
    return (
        prices.sort("ticker", "date")
        .with_columns(
            true_signal=-REVERSAL
            * (pl.col("adj_close").log() - pl.col("adj_close").log().shift(REVERSAL_DAYS)).over("ticker")
        )
        .select("ticker", "date", "true_signal")
    )
