"""Which features exist, the price columns each one reads and the rows of history each one needs: names and
numbers only (no polars, no numpy), so the Dagster definitions can declare the features' column lineage without
loading the libraries that compute them (`lib/indicators.py`).
"""

from __future__ import annotations

import math

TRUNCATION = 1e-5
SMA_WINDOWS = (10, 20, 50, 200)
EMA_SPANS = (10, 20, 50, 200)
RETURN_HORIZONS = (1, 5, 20)
WILDER = 14  # RSI, ATR, ±DI, ADX
MACD_SPANS = (12, 26, 9)
BANDS, STOCH, STOCH_D, FLOW = 20, 14, 3, 20  # Bollinger, stochastic %K and %D, OBV ratio / volume z
YEAR = 252  # 52-week high/low


def window_length(alpha: float) -> int:
    """Rows of an exponential average with smoothing `alpha` whose left-out weight (1 - alpha)^n < TRUNCATION."""
    return math.ceil(math.log(TRUNCATION) / math.log1p(-alpha))


def span_alpha(span: int) -> float:
    return 2.0 / (span + 1)


def _warm_up() -> dict[str, int]:
    """Per feature: the row (0 = a ticker's first) from which it is defined."""
    w = window_length(1.0 / WILDER) - 1  # a Wilder average of a series defined from row 0
    fast, slow, signal = (window_length(span_alpha(s)) - 1 for s in MACD_SPANS)
    rows = {f"{kind}_{h}d": h for h in RETURN_HORIZONS for kind in ("ret", "logret")}
    for n in SMA_WINDOWS:
        rows[f"sma_{n}"] = rows[f"dist_sma_{n}"] = n - 1
    for n in EMA_SPANS:
        rows[f"ema_{n}"] = rows[f"dist_ema_{n}"] = window_length(span_alpha(n)) - 1
    rows["rsi_14"] = w + 1  # gains start on the second row
    rows["macd"] = max(fast, slow)
    rows["macd_signal"] = rows["macd_hist"] = rows["macd_hist_pct"] = max(fast, slow) + signal
    rows |= dict.fromkeys(("bb_mid", "bb_upper", "bb_lower", "bb_pctb", "bb_width"), BANDS - 1)
    rows |= dict.fromkeys(("atr_14", "atr_pct", "plus_di_14", "minus_di_14"), w)
    rows["adx_14"] = 2 * w
    rows["stoch_k_14"], rows["stoch_d_3"] = STOCH - 1, STOCH - 1 + STOCH_D - 1
    rows["obv_ratio_20"] = rows["volume_z_20"] = FLOW - 1
    rows["rvol_20"] = FLOW  # log returns start on the second row
    rows["dist_52w_high"] = rows["dist_52w_low"] = YEAR - 1
    rows["day_of_week"] = 0
    return rows


WARM_UP = _warm_up()
# Columns in price units (of their own day): shown to people, never model inputs.
PRICE_LEVEL = tuple(f"sma_{n}" for n in SMA_WINDOWS) + tuple(f"ema_{n}" for n in EMA_SPANS) + (
    "macd", "macd_signal", "macd_hist", "bb_mid", "bb_upper", "bb_lower", "atr_14")


def feature_columns() -> list[str]:
    cols = [f"{kind}_{h}d" for h in RETURN_HORIZONS for kind in ("ret", "logret")]
    for n in SMA_WINDOWS:
        cols += [f"sma_{n}", f"dist_sma_{n}"]
    for n in EMA_SPANS:
        cols += [f"ema_{n}", f"dist_ema_{n}"]
    cols += ["rsi_14", "macd", "macd_signal", "macd_hist", "macd_hist_pct",
             "bb_mid", "bb_upper", "bb_lower", "bb_pctb", "bb_width",
             "atr_14", "atr_pct", "plus_di_14", "minus_di_14", "adx_14",
             "stoch_k_14", "stoch_d_3", "obv_ratio_20", "rvol_20", "volume_z_20",
             "dist_52w_high", "dist_52w_low", "day_of_week"]
    return cols


def feature_inputs() -> dict[str, tuple[str, ...]]:
    """Each feature's price columns (of `price_snapshots`): the column lineage the Dagster UI shows. Every price
    series is adjusted by the point-in-time factor, itself made of the close, dividends and splits; a bar's range
    includes its open and close."""
    adjusted = ("close", "dividends", "splits")
    bar = ("open", "high", "low", *adjusted)
    inputs = dict.fromkeys(feature_columns(), adjusted)
    inputs |= dict.fromkeys(("atr_14", "atr_pct", "plus_di_14", "minus_di_14", "adx_14", "stoch_k_14", "stoch_d_3",
                             "dist_52w_high", "dist_52w_low"), bar)
    inputs |= {"obv_ratio_20": (*adjusted, "volume"), "volume_z_20": ("volume", "splits"), "day_of_week": ("date",)}
    inputs["warm"] = tuple(dict.fromkeys(c for name in MODEL_FEATURES for c in inputs[name]))
    return inputs


# Model inputs: distances, ratios, returns, oscillators and z-scores, so a model never learns a price level.
# dist_ema_200 is left out: its window (~4.6 years) would delay every model row by as much; dist_sma_200
# carries the same information.
MODEL_FEATURES = tuple(c for c in feature_columns() if c not in PRICE_LEVEL and c != "dist_ema_200")
WARM_ROWS = max(WARM_UP[c] for c in MODEL_FEATURES) + 1  # rows of history before a row is warm
LOOKBACK = max(WARM_UP.values()) + 1  # rows of history any value at d depends on (d included)
