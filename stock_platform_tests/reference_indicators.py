"""An independent, straightforward pandas implementation of the indicators: a per-ticker loop.

It is the test oracle for `lib/indicators.py` (same definitions, other code) and the baseline the
features benchmark compares the polars pass with. Finite-window EMAs use pandas' weighted rolling
mean with scipy's exponential window (tau = -1/ln(1 - alpha)), the same weights as the polars code.
The adjustment factor is a plain loop over the rows (the forward recursion of `lib/corporate_actions.py`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from stock_platform.lib.indicators import EMA_SPANS, MODEL_FEATURES, PRICE_LEVEL, RETURN_HORIZONS, SMA_WINDOWS, YEAR, window_length


def _ema(s: pd.Series, alpha: float) -> pd.Series:
    n = window_length(alpha)
    tau = -1.0 / math.log(1 - alpha)
    return s.rolling(n, min_periods=n, win_type="exponential").mean(tau=tau, center=n - 1, sym=False)


def _div(num: pd.Series, den: pd.Series, when_zero: float) -> pd.Series:
    out = num / den
    return out.where(den != 0, when_zero).where(num.notna() & den.notna())


def _factor(g: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """F(t) = F(t-1) * step(t), step(t) = close(t-1) / (close(t-1) / split(t) - dividend(t)), F = 1 on the
    first row; returns (F, step)."""
    close, div = g["close"].to_numpy(), g["dividends"].to_numpy()
    split = g["splits"].where(g["splits"] > 0, 1.0).to_numpy()
    out, steps = np.ones(len(g)), np.ones(len(g))
    for t in range(1, len(g)):
        ref = close[t - 1] / split[t] - div[t]
        steps[t] = close[t - 1] / ref if ref > 0 else split[t]
        out[t] = out[t - 1] * steps[t]
    return pd.Series(out, index=g.index), pd.Series(steps, index=g.index)


def _one_ticker(g: pd.DataFrame) -> pd.DataFrame:
    f, step = _factor(g)
    high, low = g[["high", "open", "close"]].max(axis=1), g[["low", "open", "close"]].min(axis=1)
    h, lo = high * f, low * f
    c = g["close"] * f
    v = g["volume"].astype(float) / g["splits"].where(g["splits"] > 0, 1.0).cumprod()
    r = pd.DataFrame({"ticker": g["ticker"].values, "date": g["date"].values}, index=g.index)
    for k in RETURN_HORIZONS:
        r[f"ret_{k}d"] = c / c.shift(k) - 1
        r[f"logret_{k}d"] = np.log(c / c.shift(k))
    for n in SMA_WINDOWS:
        r[f"sma_{n}"] = c.rolling(n, min_periods=n).mean()
        r[f"dist_sma_{n}"] = c / r[f"sma_{n}"] - 1
    for n in EMA_SPANS:
        r[f"ema_{n}"] = _ema(c, 2 / (n + 1))
        r[f"dist_ema_{n}"] = c / r[f"ema_{n}"] - 1
    prev = c.shift(1)
    gain, loss = (c - prev).clip(lower=0), (prev - c).clip(lower=0)
    avg_gain, avg_loss = _ema(gain, 1 / 14), _ema(loss, 1 / 14)
    r["rsi_14"] = _div(100 * avg_gain, avg_gain + avg_loss, 50.0)
    r["macd"] = _ema(c, 2 / 13) - _ema(c, 2 / 27)
    r["macd_signal"] = _ema(r["macd"], 2 / 10)
    r["macd_hist"] = r["macd"] - r["macd_signal"]
    r["macd_hist_pct"] = r["macd_hist"] / c
    std20 = c.rolling(20, min_periods=20).std(ddof=0)
    r["bb_mid"] = r["sma_20"]
    r["bb_upper"], r["bb_lower"] = r["bb_mid"] + 2 * std20, r["bb_mid"] - 2 * std20
    r["bb_pctb"] = _div(c - r["bb_lower"], r["bb_upper"] - r["bb_lower"], 0.5)
    r["bb_width"] = (r["bb_upper"] - r["bb_lower"]) / r["bb_mid"]
    # true range and directional movement: today's bar against yesterday's, in yesterday's share basis
    hs, ls, yc, yf = high * step, low * step, g["close"].shift(1), f.shift(1)
    tr = pd.concat([hs - ls, (hs - yc).abs(), (ls - yc).abs()], axis=1).max(axis=1) * yf
    tr.iloc[0] = (high.iloc[0] - low.iloc[0]) * f.iloc[0]
    r["atr_14"] = _ema(tr, 1 / 14)
    r["atr_pct"] = r["atr_14"] / c
    up, down = hs - high.shift(1), low.shift(1) - ls
    pdm = pd.Series(np.where((up > down) & (up > 0), up * yf, 0.0), index=g.index)
    mdm = pd.Series(np.where((down > up) & (down > 0), down * yf, 0.0), index=g.index)
    r["plus_di_14"] = _div(100 * _ema(pdm, 1 / 14), r["atr_14"], 0.0)
    r["minus_di_14"] = _div(100 * _ema(mdm, 1 / 14), r["atr_14"], 0.0)
    dx = _div(100 * (r["plus_di_14"] - r["minus_di_14"]).abs(), r["plus_di_14"] + r["minus_di_14"], 0.0)
    r["adx_14"] = _ema(dx, 1 / 14)
    hh, ll = h.rolling(14, min_periods=14).max(), lo.rolling(14, min_periods=14).min()
    r["stoch_k_14"] = _div(100 * (c - ll), hh - ll, 50.0)
    r["stoch_d_3"] = r["stoch_k_14"].rolling(3, min_periods=3).mean()
    flow = pd.Series(np.select([c > prev, c < prev], [v, -v], 0.0), index=g.index)
    r["obv_ratio_20"] = _div(flow.rolling(20, min_periods=20).sum(), v.rolling(20, min_periods=20).sum(), 0.0)
    r["rvol_20"] = r["logret_1d"].rolling(20, min_periods=20).std() * math.sqrt(252)
    logv = np.log(g["volume"].clip(lower=1).astype(float) / g["splits"].where(g["splits"] > 0, 1.0).cumprod())
    r["volume_z_20"] = _div(logv - logv.rolling(20, min_periods=20).mean(), logv.rolling(20, min_periods=20).std(), 0.0)
    r["dist_52w_high"] = c / h.rolling(YEAR, min_periods=YEAR).max() - 1
    r["dist_52w_low"] = c / lo.rolling(YEAR, min_periods=YEAR).min() - 1
    r["day_of_week"] = pd.to_datetime(g["date"]).dt.dayofweek + 1
    for col in PRICE_LEVEL:  # in the share basis of the row's own day
        r[col] = r[col] / f
    return r


def reference_features(prices: pd.DataFrame) -> pd.DataFrame:
    """Indicators for every row of a pandas prices frame, one ticker at a time."""
    parts = [_one_ticker(g) for _, g in prices.sort_values(["ticker", "date"]).groupby("ticker", sort=True)]
    out = pd.concat(parts, ignore_index=True)
    out["warm"] = out[list(MODEL_FEATURES)].notna().all(axis=1)
    return out
