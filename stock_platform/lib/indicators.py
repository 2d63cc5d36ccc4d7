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


def ewm_state(expr: pl.Expr, alpha: float) -> pl.Expr:
    """The recursion y(t) = (1 - alpha) y(t-1) + alpha x(t), y(0) = x(0) behind `ema` (nulls count as 0)."""
    return expr.fill_null(0.0).ewm_mean(alpha=alpha, adjust=False)


def ema(expr: pl.Expr, *, span: int | None = None, alpha: float | None = None, dense: bool = False,
        state: pl.Expr | None = None, row: pl.Expr | None = None) -> pl.Expr:
    """Finite-window exponential moving average (alpha = 2/(span+1) unless given); null until the window fills.

    O(n) rather than O(n x window). With d = 1 - alpha, the recursive average y = `ewm_state` satisfies
    y(t) - d^n y(t-n) = alpha * sum_{k<n} d^k x(t-k) (taking y(-1) = x(0)), so the n-row window's weighted
    mean is (y(t) - d^n y(t-n)) / (1 - d^n).

    On a frame sorted by ticker, pass the per-ticker `state` (a column computed in an earlier step: polars
    would evaluate it twice here) and `row`, each row's position in its ticker's series: a row's window is
    complete once `row` reaches n - 1. `dense=True` promises `expr` has no nulls; otherwise a window holding
    a null is incomplete.
    """
    a = alpha if alpha is not None else 2.0 / (span + 1)
    d = 1.0 - a
    n = len(ema_weights(a))
    row = pl.int_range(pl.len()) if row is None else row
    y = ewm_state(expr, a) if state is None else state
    y_before = pl.when(row == n - 1).then(expr.fill_null(0.0).shift(n - 1)).otherwise(y.shift(n))  # y(-1) = x(0)
    complete = row >= n - 1
    if not dense:  # integer counts: a whole-column rolling sum is exact
        complete = complete & (expr.is_not_null().cast(pl.Int32).rolling_sum(n) == n)
    return pl.when(complete).then((y - d**n * y_before) / (1.0 - d**n))


def wilder(expr: pl.Expr, n: int, **kw) -> pl.Expr:
    """Wilder's smoothing of period n (an EMA with alpha = 1/n)."""
    return ema(expr, alpha=1.0 / n, **kw)


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
    """Indicators for every (ticker, date) of `prices` (the prices/snapshot columns); one polars pass.

    The frame is sorted by ticker and date. Only what carries state from row to row (rolling sums, the
    EMA recursion) runs per ticker (`.over`), so no bit of a ticker's values depends on another ticker;
    shifts, rolling max/min and arithmetic run over the whole column, and `_row` (a row's position in its
    ticker's history) nulls each value whose window would reach into the previous ticker.
    """
    required = ["ticker", "date", "open", "high", "low", "close", "adj_close", "volume", "splits"]
    nulls = {c: n for c, n in prices.select(pl.col(required).null_count()).row(0, named=True).items() if n}
    if nulls:
        raise ValueError(f"compute_features: prices have nulls ({nulls}); validate them first")
    by = "ticker"
    f = pl.col("adj_close") / pl.col("close")
    df = prices.sort(KEYS).with_columns(
        # close * f (not adj_close itself): the same rounding as high/low keeps low <= close <= high exact
        o=pl.col("open") * f, h=pl.col("high") * f, l=pl.col("low") * f, c=pl.col("close") * f,
        v=pl.col("volume").cast(pl.Float64)
        / pl.when(pl.col("splits") > 0).then(pl.col("splits")).otherwise(1.0).cum_prod().over(by),
        _row=pl.int_range(pl.len()).over(by),
    )
    row, col = pl.col("_row"), pl.col

    def after(k: int, expr: pl.Expr) -> pl.Expr:
        """`expr` where the ticker has at least k earlier rows (its window stays inside the ticker)."""
        return pl.when(row >= k).then(expr)

    def rolling(expr: pl.Expr, n: int, fn: str, **kw) -> pl.Expr:
        window = getattr(expr, f"rolling_{fn}")(n, **kw)
        return after(n - 1, window if fn in ("max", "min") else window.over(by))

    # EMAs take two steps: the per-ticker recursion as a column `_y_<source>_<alpha>`, then the window.
    def state(source: str, alpha: float) -> dict[str, pl.Expr]:
        return {f"_y_{source}_{alpha}": ewm_state(col(source), alpha).over(by)}

    def smooth(source: str, alpha: float, *, dense: bool = False) -> pl.Expr:
        return ema(col(source), alpha=alpha, dense=dense, state=col(f"_y_{source}_{alpha}"), row=row)

    span = {n: 2.0 / (n + 1) for n in (*EMA_SPANS, 12, 26, 9)}
    w14 = 1.0 / 14  # Wilder's smoothing (RSI, ATR, ADX)
    c, h, lo, v, logv = col("c"), col("h"), col("l"), col("v"), col("_logv")
    prev_c, prev_h, prev_l = after(1, c.shift(1)), after(1, h.shift(1)), after(1, lo.shift(1))
    up, down = h - prev_h, prev_l - lo  # null on a ticker's first row: no movement yet

    # --- step 1: returns, moving averages, true range, directional movement, gains/losses
    df = df.with_columns(
        **{f"ret_{k}d": after(k, c / c.shift(k) - 1) for k in RETURN_HORIZONS},
        **{f"logret_{k}d": after(k, (c / c.shift(k)).log()) for k in RETURN_HORIZONS},
        **{f"sma_{n}": rolling(c, n, "mean") for n in SMA_WINDOWS},
        **{k: e for n in (*EMA_SPANS, 12, 26) for k, e in state("c", span[n]).items()},
        _tr=pl.max_horizontal(h - lo, (h - prev_c).abs(), (lo - prev_c).abs()),  # h - lo on the first row
        _pdm=pl.when((up > down) & (up > 0)).then(up).otherwise(0.0),
        _mdm=pl.when((down > up) & (down > 0)).then(down).otherwise(0.0),
        _gain=(c - prev_c).clip(lower_bound=0),
        _loss=(prev_c - c).clip(lower_bound=0),
        _std20=rolling(c, 20, "std", ddof=0),
        _hh14=rolling(h, 14, "max"),
        _ll14=rolling(lo, 14, "min"),
        _obv_flow=pl.when(c > prev_c).then(v).when(c < prev_c).then(-v).otherwise(0.0),
        _logv=(v + 1).log(),  # +1: a zero-volume day stays finite
        dist_52w_high=c / rolling(h, LOOKBACK, "max") - 1,
        dist_52w_low=c / rolling(lo, LOOKBACK, "min") - 1,
        day_of_week=col("date").dt.weekday().cast(pl.Int8),
    )
    # --- step 2: EMAs of the close, recursions of the step-1 series, rolling sums
    df = df.with_columns(
        **{f"ema_{n}": smooth("c", span[n], dense=True) for n in EMA_SPANS},
        macd=smooth("c", span[12], dense=True) - smooth("c", span[26], dense=True),
        **{k: e for s in ("_gain", "_loss", "_tr", "_pdm", "_mdm") for k, e in state(s, w14).items()},
        **{f"dist_sma_{n}": c / col(f"sma_{n}") - 1 for n in SMA_WINDOWS},
        bb_mid=col("sma_20"),
        bb_upper=col("sma_20") + 2 * col("_std20"),
        bb_lower=col("sma_20") - 2 * col("_std20"),
        stoch_k_14=100 * _safe_div(c - col("_ll14"), col("_hh14") - col("_ll14"), when_zero=0.5),
        _obv20=rolling(col("_obv_flow"), 20, "sum"),
        _v20=rolling(v, 20, "sum"),
        # logret_1d is null on the first row: its 20-row windows are complete from row 20 on
        rvol_20=after(20, col("logret_1d").rolling_std(20).over(by) * math.sqrt(252)),
        _logv_dev=logv - rolling(logv, 20, "mean"),
        _logv_std=rolling(logv, 20, "std"),
    )
    # --- step 3: Wilder averages, distances, ratios
    df = df.with_columns(
        **{f"dist_ema_{n}": c / col(f"ema_{n}") - 1 for n in EMA_SPANS},
        **state("macd", span[9]),
        _avg_gain=smooth("_gain", w14),
        _avg_loss=smooth("_loss", w14),
        # true range and directional movement are defined from the first row on (no nulls)
        atr_14=smooth("_tr", w14, dense=True),
        _pdm14=smooth("_pdm", w14, dense=True),
        _mdm14=smooth("_mdm", w14, dense=True),
        bb_pctb=_safe_div(c - col("bb_lower"), col("bb_upper") - col("bb_lower"), when_zero=0.5),
        bb_width=(col("bb_upper") - col("bb_lower")) / col("bb_mid"),
        stoch_d_3=rolling(col("stoch_k_14"), 3, "mean"),
        obv_ratio_20=_safe_div(col("_obv20"), col("_v20"), when_zero=0.0),
        volume_z_20=_safe_div(col("_logv_dev"), col("_logv_std"), when_zero=0.0),
    )
    # --- step 4: RSI, MACD signal, directional indicators
    df = df.with_columns(
        # 100 * (x / y), not (100 * x) / y: x <= y then guarantees <= 100 exactly in floating point
        rsi_14=100 * _safe_div(col("_avg_gain"), col("_avg_gain") + col("_avg_loss"), when_zero=0.5),
        macd_signal=smooth("macd", span[9]),
        atr_pct=col("atr_14") / c,
        plus_di_14=100 * _safe_div(col("_pdm14"), col("atr_14"), when_zero=0.0),
        minus_di_14=100 * _safe_div(col("_mdm14"), col("atr_14"), when_zero=0.0),
    )
    # --- step 5: MACD histogram, ADX
    df = df.with_columns(
        macd_hist=col("macd") - col("macd_signal"),
        _dx=100 * _safe_div((col("plus_di_14") - col("minus_di_14")).abs(),
                            col("plus_di_14") + col("minus_di_14"), when_zero=0.0),
    )
    df = df.with_columns(macd_hist_pct=col("macd_hist") / c, **state("_dx", w14))
    df = df.with_columns(adx_14=smooth("_dx", w14))
    cols = feature_columns()
    out = df.select(*KEYS, *cols)
    # NaN can only come from log/ratio of invalid inputs: treat it as undefined, like warm-up.
    out = out.with_columns([col(x).fill_nan(None) for x in cols if out.schema[x].is_float()])
    return out.with_columns(warm=pl.all_horizontal(col(cols).is_not_null()))
