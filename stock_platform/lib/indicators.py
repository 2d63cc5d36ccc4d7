"""Technical indicators as polars expressions, for all tickers in one vectorised pass, free of look-ahead.

Every indicator at date d is a function of the ticker's rows up to and including d, and of at most
`LOOKBACK` (252) of them. That makes a daily run that reads a lookback window give exactly the values a
10-year backfill gives. Exponential averages are therefore *finite-window* EMAs: the usual weights
(1 - alpha)^k, truncated once they fall below 1e-4 of the newest (or at LOOKBACK rows) and
renormalised. Wilder's smoothing (RSI, ATR, ADX) is the same with alpha = 1/n.

Prices are split/dividend adjusted throughout: open/high/low/close scaled by adj_close / close.
Volume is split-adjusted forward (divided by the running product of split ratios), which needs no
future information; only scale-free volume features are produced.

A row is `warm` when every indicator is defined (the ticker has LOOKBACK rows of history); before that
the undefined indicators are null, never zero.
"""

from __future__ import annotations

import math

import polars as pl

LOOKBACK = 252
_TRUNCATE_BELOW = 1e-4
KEYS = ("ticker", "date")


def _window(alpha: float) -> int:
    return min(LOOKBACK, math.ceil(math.log(_TRUNCATE_BELOW) / math.log(1 - alpha)) + 1)


def ema_weights(alpha: float) -> list[float]:
    """Oldest-first weights of the finite-window EMA with smoothing `alpha`."""
    n = _window(alpha)
    return [(1 - alpha) ** k for k in range(n - 1, -1, -1)]


def ema(expr: pl.Expr, *, span: int | None = None, alpha: float | None = None, dense: bool = False) -> pl.Expr:
    """Finite-window exponential moving average (alpha = 2/(span+1) unless given); null until the window fills.

    O(n) rather than O(n x window). With d = 1 - alpha, the recursive average y(t) = d y(t-1) + alpha x(t),
    y(0) = x(0) (polars' ewm_mean, adjust=False) satisfies y(t) - d^n y(t-n) = alpha * sum_{k<n} d^k x(t-k)
    (taking y(-1) = x(0)), so the n-row window's weighted mean is (y(t) - d^n y(t-n)) / (1 - d^n).
    Use inside `.over(ticker)`. `dense=True` promises `expr` has no nulls: the window is then complete
    from the n-th row on, which is cheaper to know than counting nulls in every window.
    """
    a = alpha if alpha is not None else 2.0 / (span + 1)
    d = 1.0 - a
    n = len(ema_weights(a))
    x = expr.fill_null(0.0)
    y = x.ewm_mean(alpha=a, adjust=False)
    window = (y - d**n * y.shift(n, fill_value=x.first())) / (1.0 - d**n)
    if dense:
        complete = pl.int_range(pl.len()) >= n - 1
    else:
        complete = expr.is_not_null().cast(pl.Int32).rolling_sum(n, min_samples=n) == n
    return pl.when(complete).then(window)


def wilder(expr: pl.Expr, n: int, *, dense: bool = False) -> pl.Expr:
    """Wilder's smoothing of period n (an EMA with alpha = 1/n)."""
    return ema(expr, alpha=1.0 / n, dense=dense)


def _safe_div(num: pl.Expr, den: pl.Expr, *, when_zero: float) -> pl.Expr:
    return pl.when(den.is_null() | num.is_null()).then(None).when(den == 0).then(when_zero).otherwise(num / den)


SMA_WINDOWS = (10, 20, 50, 200)
EMA_SPANS = (10, 20, 50, 200)
RETURN_HORIZONS = (1, 5, 20)


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


def compute_features(prices: pl.DataFrame) -> pl.DataFrame:
    """Indicators for every (ticker, date) of `prices` (the prices/snapshot columns); one polars pass."""
    by = "ticker"
    required = ["ticker", "date", "open", "high", "low", "close", "adj_close", "volume", "splits"]
    nulls = {c: n for c, n in prices.select(pl.col(required).null_count()).row(0, named=True).items() if n}
    if nulls:
        raise ValueError(f"compute_features: prices have nulls ({nulls}); validate them first")
    f = pl.col("adj_close") / pl.col("close")
    base = prices.sort(KEYS).with_columns(
        # close * f (not adj_close itself): the same rounding as high/low keeps low <= close <= high exact
        o=pl.col("open") * f, h=pl.col("high") * f, l=pl.col("low") * f, c=pl.col("close") * f,
        v=pl.col("volume").cast(pl.Float64)
        / pl.when(pl.col("splits") > 0).then(pl.col("splits")).otherwise(1.0).cum_prod().over(by),
    )
    c, h, lo, v = pl.col("c"), pl.col("h"), pl.col("l"), pl.col("v")
    prev_c = c.shift(1)  # every use below sits inside an .over(by)

    # --- step 1: returns, moving averages, true range, directional movement, gains/losses
    step1 = {}
    for k in RETURN_HORIZONS:
        step1[f"ret_{k}d"] = (c / c.shift(k) - 1).over(by)
        step1[f"logret_{k}d"] = (c / c.shift(k)).log().over(by)
    for n in SMA_WINDOWS:
        step1[f"sma_{n}"] = c.rolling_mean(n, min_samples=n).over(by)
    for n in EMA_SPANS:
        step1[f"ema_{n}"] = ema(c, span=n, dense=True).over(by)
    up, down = h - h.shift(1), lo.shift(1) - lo
    step1 |= {
        "_tr": pl.max_horizontal(h - lo, (h - prev_c).abs(), (lo - prev_c).abs()).over(by),
        "_pdm": pl.when((up > down) & (up > 0)).then(up).otherwise(0.0).over(by),
        "_mdm": pl.when((down > up) & (down > 0)).then(down).otherwise(0.0).over(by),
        "_gain": (c - c.shift(1)).clip(lower_bound=0).over(by),
        "_loss": (c.shift(1) - c).clip(lower_bound=0).over(by),
        "_ema12": ema(c, span=12, dense=True).over(by),
        "_ema26": ema(c, span=26, dense=True).over(by),
        "_std20": c.rolling_std(20, min_samples=20, ddof=0).over(by),
        "_hh14": h.rolling_max(14, min_samples=14).over(by),
        "_ll14": lo.rolling_min(14, min_samples=14).over(by),
        "_obv_flow": (pl.when(c > prev_c).then(v).when(c < prev_c).then(-v).otherwise(0.0)).over(by),
        "_logv": (v + 1).log(),  # +1: a zero-volume day stays finite
        "dist_52w_high": (c / h.rolling_max(LOOKBACK, min_samples=LOOKBACK) - 1).over(by),
        "dist_52w_low": (c / lo.rolling_min(LOOKBACK, min_samples=LOOKBACK) - 1).over(by),
        "day_of_week": pl.col("date").dt.weekday().cast(pl.Int8),
    }
    df = base.with_columns(**step1)

    # --- step 2: indicators of the step-1 series
    df = df.with_columns(
        **{f"dist_sma_{n}": c / pl.col(f"sma_{n}") - 1 for n in SMA_WINDOWS},
        **{f"dist_ema_{n}": c / pl.col(f"ema_{n}") - 1 for n in EMA_SPANS},
        macd=pl.col("_ema12") - pl.col("_ema26"),
        _avg_gain=wilder(pl.col("_gain"), 14).over(by),
        _avg_loss=wilder(pl.col("_loss"), 14).over(by),
        # true range and directional movement are defined from the first row on (no nulls)
        atr_14=wilder(pl.col("_tr"), 14, dense=True).over(by),
        _pdm14=wilder(pl.col("_pdm"), 14, dense=True).over(by),
        _mdm14=wilder(pl.col("_mdm"), 14, dense=True).over(by),
        bb_mid=pl.col("sma_20"),
        bb_upper=pl.col("sma_20") + 2 * pl.col("_std20"),
        bb_lower=pl.col("sma_20") - 2 * pl.col("_std20"),
        stoch_k_14=100 * _safe_div(c - pl.col("_ll14"), pl.col("_hh14") - pl.col("_ll14"), when_zero=0.5),
        obv_ratio_20=_safe_div(pl.col("_obv_flow").rolling_sum(20, min_samples=20),
                               v.rolling_sum(20, min_samples=20), when_zero=0.0).over(by),
        rvol_20=(pl.col("logret_1d").rolling_std(20, min_samples=20) * math.sqrt(252)).over(by),
        volume_z_20=_safe_div(pl.col("_logv") - pl.col("_logv").rolling_mean(20, min_samples=20),
                              pl.col("_logv").rolling_std(20, min_samples=20), when_zero=0.0).over(by),
    )

    # --- step 3: indicators of the step-2 series
    df = df.with_columns(
        # 100 * (x / y), not (100 * x) / y: x <= y then guarantees <= 100 exactly in floating point
        rsi_14=100 * _safe_div(pl.col("_avg_gain"), pl.col("_avg_gain") + pl.col("_avg_loss"), when_zero=0.5),
        macd_signal=ema(pl.col("macd"), span=9).over(by),
        bb_pctb=_safe_div(c - pl.col("bb_lower"), pl.col("bb_upper") - pl.col("bb_lower"), when_zero=0.5),
        bb_width=(pl.col("bb_upper") - pl.col("bb_lower")) / pl.col("bb_mid"),
        atr_pct=pl.col("atr_14") / c,
        plus_di_14=100 * _safe_div(pl.col("_pdm14"), pl.col("atr_14"), when_zero=0.0),
        minus_di_14=100 * _safe_div(pl.col("_mdm14"), pl.col("atr_14"), when_zero=0.0),
        stoch_d_3=pl.col("stoch_k_14").rolling_mean(3, min_samples=3).over(by),
    )
    df = df.with_columns(
        macd_hist=pl.col("macd") - pl.col("macd_signal"),
        _dx=100 * _safe_div((pl.col("plus_di_14") - pl.col("minus_di_14")).abs(),
                            pl.col("plus_di_14") + pl.col("minus_di_14"), when_zero=0.0),
    )
    df = df.with_columns(
        macd_hist_pct=pl.col("macd_hist") / c,
        adx_14=wilder(pl.col("_dx"), 14).over(by),
    )
    cols = feature_columns()
    out = df.select(*KEYS, *cols)
    # NaN can only come from log/ratio of invalid inputs: treat it as undefined, like warm-up.
    out = out.with_columns([pl.col(x).fill_nan(None) for x in cols if out.schema[x].is_float()])
    return out.with_columns(warm=pl.all_horizontal(pl.col(cols).is_not_null()))
