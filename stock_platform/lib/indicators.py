"""Technical indicators as polars expressions, for all tickers in one vectorised pass, free of look-ahead.

Prices are adjusted by the platform's own point-in-time factor (`lib/corporate_actions.py`): indicators run on
the total-return series `price * F`, and the price-level ones (moving averages, bands, ATR, MACD) are then
expressed in the share basis of their own day (divided by F(d)), so a split or a dividend never shows as a
price move, and no value uses an action after its date. Volume is split-adjusted forward (divided by the
running product of split ratios); only scale-free volume features are produced.

Every indicator at date d is a function of the ticker's rows up to and including d, and of at most
`LOOKBACK` of them: a daily run that reads a lookback window gives the values a 10-year backfill gives.
Exponential averages (EMA, and Wilder's smoothing with alpha = 1/n for RSI, ATR, ±DI, ADX) are therefore
finite-window averages: the standard weights (1 - alpha)^k, cut where the weight left out, (1 - alpha)^n of
the whole, falls below `TRUNCATION` (1e-5), and renormalised. That keeps them within ~1e-5 of the standard,
infinite-history indicator (TA-Lib's, once its own seed has washed out); they are null until their window
is full (`WARM_UP`), never approximated from a shorter history.

Bounded indicators are exact by construction, not clipped: windowed sums are computed from non-negative
terms only (`window_sum`), and every bounded value is a ratio a / b or a / (a + b) of such sums whose
numerator cannot exceed its denominator term by term. Floating-point addition and multiplication by a
non-negative constant are monotone, so the computed ratio cannot exceed 1 either (RSI, %K, %D, ±DI, ADX in
[0, 100]; the OBV ratio in [-1, 1]; the 52-week distances on their side of 0).

A row is `warm` when every model input (`MODEL_FEATURES`, the scale-free columns) is defined.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from stock_platform.lib.corporate_actions import daily_factor, split_ratio, with_factor
from stock_platform.lib.feature_set import (BANDS, EMA_SPANS, FLOW, MACD_SPANS, MODEL_FEATURES, PRICE_LEVEL,
                                           RETURN_HORIZONS, SMA_WINDOWS, STOCH, STOCH_D, WARM_ROWS, WARM_UP, WILDER,
                                           YEAR, feature_columns, span_alpha, window_length)

KEYS = ("ticker", "date")
# EMAs whose window is longer than every other indicator's: `compute_features(since=...)` runs them over the
# whole frame and everything else over the rows its values need (a daily run: 311 of the 1,152 rows).
LONG_SPANS = tuple(n for n in EMA_SPANS if WARM_UP[f"ema_{n}"] >= WARM_ROWS)
_LONG = {f"{kind}_{n}" for n in LONG_SPANS for kind in ("ema", "dist_ema")}
SHORT_LOOKBACK = max(v for c, v in WARM_UP.items() if c not in _LONG) + 1


# ------------------------------------------------------------------------------------ windowed sums
class WindowSums:
    """sum_{k<n} decay^k x(t-k) over each row's last n rows of its ticker, for the columns of a frame sorted by
    ticker (null until the window is full: `row` >= n - 1, or a null of x inside it).

    Computed from sums of non-negative multiples of x only (no running subtraction), so it is monotone in x:
    x <= y row by row gives a sum <= y's, and x >= 0 a sum >= 0, exactly in floating point. Each ticker's rows
    are cut into blocks of n; a window is the head of its own block (a prefix sum) plus the tail of the block
    before (a suffix sum), each weighted by powers of `decay`. Blocks are rows of a padded (blocks, n) array, so
    the prefix sums are numpy's sequential `cumsum` along an axis: O(rows), no group-by.
    """

    def __init__(self, tickers: pl.Series):
        counts = tickers.rle().struct.field("len").to_numpy().astype(np.int64)  # rows per ticker (frame sorted)
        self._counts = counts
        self._row = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, np.int64)
        self._layouts: dict[int, tuple[np.ndarray, int, np.ndarray]] = {}

    def _layout(self, n: int) -> tuple[np.ndarray, int, np.ndarray]:
        """Each row's position in the padded layout (every ticker padded to whole blocks of n), the layout's
        size, and the rows whose window would reach before their ticker's first row."""
        if n not in self._layouts:
            padded = -(-self._counts // n) * n
            offsets = np.cumsum(padded) - padded  # each ticker's first position
            self._layouts[n] = (np.repeat(offsets, self._counts) + self._row, int(padded.sum()), self._row < n - 1)
        return self._layouts[n]

    def __call__(self, x: pl.Series, n: int, decay: float = 1.0) -> pl.Series:
        pos, size, short = self._layout(n)
        x = x.cast(pl.Float64).fill_nan(None)
        buf = np.zeros(size)
        buf[pos] = x.fill_null(0.0).to_numpy()
        blocks = buf.reshape(-1, n)
        k = np.arange(n)
        if decay == 1.0:
            head = np.cumsum(blocks, axis=1)
            tail = np.cumsum(blocks[:, ::-1], axis=1)[:, ::-1]
            head[1:, : n - 1] += tail[:-1, 1:]
        else:
            head = np.multiply(blocks, decay ** -k)
            np.cumsum(head, axis=1, out=head)
            head *= decay ** k
            tail = np.multiply(blocks[:, ::-1], decay ** (n - 1 - k)[::-1])
            np.cumsum(tail, axis=1, out=tail)
            # the window ending at block position k takes the previous block's tail from position k + 1
            head[1:, : n - 1] += decay ** (k[: n - 1] + 1) * tail[:-1, ::-1][:, 1:]
        out = head.ravel()[pos]
        incomplete = short
        if x.null_count():  # a window holding a null is incomplete (a rolling count of integers is exact)
            nulls = np.cumsum(x.is_null().to_numpy())
            window_nulls = nulls - np.concatenate([np.zeros(n, nulls.dtype), nulls[:-n]])[: len(nulls)]
            incomplete = short | (window_nulls > 0)
        out[incomplete] = np.nan
        return pl.Series(out).fill_nan(None)


def _ratio(num: pl.Expr, den: pl.Expr, *, when_zero: float) -> pl.Expr:
    return pl.when(den.is_null() | num.is_null()).then(None).when(den == 0).then(when_zero).otherwise(num / den)


def compute_features(prices: pl.DataFrame, since=None) -> pl.DataFrame:
    """Indicators for every (ticker, date) of `prices` (as-traded prices/snapshot columns), or for the rows
    from `since` on (the same values, computed from the rows they need only: a daily run's shortcut).

    Exactly one implementation serves both: the long EMAs (`LONG_SPANS`) always run over the whole frame,
    the rest over the whole frame or over each ticker's last `SHORT_LOOKBACK` rows before `since` and after.
    """
    required = ["ticker", "date", "open", "high", "low", "close", "volume", "dividends", "splits"]
    nulls = {c: n for c, n in prices.select(pl.col(required).null_count()).row(0, named=True).items() if n}
    if nulls:
        raise ValueError(f"compute_features: prices have nulls ({nulls}); validate them first")
    frame = prices.select(required).sort(KEYS)
    short = frame
    if since is not None:
        row = pl.int_range(pl.len()).over("ticker")
        first = pl.when(pl.col("date") >= since).then(row).min().over("ticker")
        short = frame.filter(row >= first - (SHORT_LOOKBACK - 1))
    out = _indicators(short).join(_long_averages(frame), on=KEYS, how="left")
    if since is not None:
        out = out.filter(pl.col("date") >= since)
    cols = feature_columns()
    out = out.select(*KEYS, *cols)
    # NaN can only come from log/ratio of invalid inputs: treat it as undefined, like warm-up.
    out = out.with_columns([pl.col(x).fill_nan(None) for x in cols if out.schema[x].is_float()])
    return out.with_columns(warm=pl.all_horizontal(pl.col(list(MODEL_FEATURES)).is_not_null()))


def _long_averages(frame: pl.DataFrame) -> pl.DataFrame:
    """`ticker, date` and the long EMAs with the close's distance to them (see `_indicators`)."""
    df = with_factor(frame).with_columns(c=pl.col("close") * pl.col("factor"))
    windows = WindowSums(df["ticker"])
    cols = {}
    for n in LONG_SPANS:
        alpha = span_alpha(n)
        rows = window_length(alpha)
        ema = windows(df["c"], rows, 1.0 - alpha) * (alpha / (1.0 - (1.0 - alpha) ** rows))
        cols[f"ema_{n}"] = ema / df["factor"]  # in the share basis of its own day
        cols[f"dist_ema_{n}"] = df["c"] / ema - 1
    return df.select(*KEYS).with_columns(**cols)


def _indicators(frame: pl.DataFrame) -> pl.DataFrame:
    """Every indicator but the long EMAs, for every row of `frame` (sorted by ticker and date).

    Only what carries state from row to row runs per ticker (the
    windowed sums, in each ticker's own blocks; rolling statistics, `.over`), so no bit of a ticker's values
    depends on another ticker; shifts, rolling max/min and arithmetic run over the whole column, and `_row`
    (a row's position in its ticker's history) nulls each value whose window would reach into the previous
    ticker.
    """
    by = "ticker"
    f = pl.col("factor")
    df = with_factor(frame).with_columns(
        # the bar's range includes its open and close whatever the vendor sent: low <= close <= high exactly
        _hr=pl.max_horizontal("high", "open", "close"), _lr=pl.min_horizontal("low", "open", "close"),
        c=pl.col("close") * f,
        h=pl.max_horizontal("high", "open", "close") * f, l=pl.min_horizontal("low", "open", "close") * f,
        v=pl.col("volume").cast(pl.Float64) / split_ratio().cum_prod().over(by),
        _row=pl.int_range(pl.len()).over(by),
    )
    row, col = pl.col("_row"), pl.col

    def after(k: int, expr: pl.Expr) -> pl.Expr:
        """`expr` where the ticker has at least k earlier rows (its window stays inside the ticker)."""
        return pl.when(row >= k).then(expr)

    def rolling(expr: pl.Expr, n: int, fn: str, **kw) -> pl.Expr:
        window = getattr(expr, f"rolling_{fn}")(n, **kw)
        return after(n - 1, window if fn in ("max", "min") else window.over(by))

    windows = WindowSums(df["ticker"])

    def with_sums(frame: pl.DataFrame, specs: dict[str, tuple[str, int, float]]) -> pl.DataFrame:
        """Add windowed sums: name -> (source column, window rows, decay)."""
        return frame.with_columns(**{name: windows(frame[src], n, d) for name, (src, n, d) in specs.items()})

    def ema_spec(source: str, alpha: float) -> tuple[str, tuple[str, int, float]]:
        """(column, spec) of the finite-window exponential sum of `source`."""
        n = window_length(alpha)
        return f"_e_{source}_{n}", (source, n, 1.0 - alpha)

    def ema_mean(source: str, alpha: float) -> pl.Expr:
        """The finite-window EMA from its sum column: the sum over the total weight of the window."""
        n = window_length(alpha)
        return col(f"_e_{source}_{n}") * (alpha / (1.0 - (1.0 - alpha) ** n))

    spans = {n: span_alpha(n) for n in (*EMA_SPANS, *MACD_SPANS)}
    w14 = 1.0 / WILDER
    c, h, lo, v = col("c"), col("h"), col("l"), col("v")
    prev_c = after(1, c.shift(1))
    # True range and directional movement compare today's bar with yesterday's in yesterday's share basis
    # (as-traded prices, today's scaled by the day's factor step, exactly 1 without an action), then scale
    # by yesterday's factor: the +DM/-DM choice between two moves then never depends on where the frame
    # starts (a tie stays a tie), and every term stays comparable with the true range term by term.
    df = df.with_columns(_step=daily_factor(by), _prev_f=after(1, f.shift(1)), _yh=after(1, col("_hr").shift(1)),
                         _yl=after(1, col("_lr").shift(1)), _yc=after(1, col("close").shift(1)))
    prev_f, yh, yl, yc = col("_prev_f"), col("_yh"), col("_yl"), col("_yc")
    hr, lr = col("_hr") * col("_step"), col("_lr") * col("_step")
    up, down = hr - yh, yl - lr  # null on a ticker's first row: no movement yet
    # log of the split-adjusted volume, a zero-volume day counted as one share (finite): a split before the
    # frame's first row shifts it by a constant, so the z-score never depends on where the frame starts
    logv = pl.max_horizontal("volume", 1).cast(pl.Float64).log() - split_ratio().log().cum_sum().over(by)

    # --- step 1: returns, true range, directional movement, gains/losses, flows, rolling extremes
    df = df.with_columns(
        **{f"ret_{k}d": after(k, c / c.shift(k) - 1) for k in RETURN_HORIZONS},
        **{f"logret_{k}d": after(k, (c / c.shift(k)).log()) for k in RETURN_HORIZONS},
        # each DM <= tr: h - y_h <= h - y_c and y_l - l <= y_c - l (y_l <= y_c <= y_h); h - l on the first row
        _tr=pl.when(row >= 1).then(pl.max_horizontal(hr - lr, (hr - yc).abs(), (lr - yc).abs()) * prev_f)
        .otherwise((col("_hr") - col("_lr")) * f),
        _pdm=pl.when((up > down) & (up > 0)).then(up * prev_f).otherwise(0.0),
        _mdm=pl.when((down > up) & (down > 0)).then(down * prev_f).otherwise(0.0),
        _gain=(c - prev_c).clip(lower_bound=0),
        _loss=(prev_c - c).clip(lower_bound=0),
        _upv=pl.when(c > prev_c).then(v).otherwise(0.0),
        _downv=pl.when(c < prev_c).then(v).otherwise(0.0),
        _std20=rolling(c, BANDS, "std", ddof=0),
        _hh14=rolling(h, STOCH, "max"),
        _ll14=rolling(lo, STOCH, "min"),
        _hh52=rolling(h, YEAR, "max"),
        _ll52=rolling(lo, YEAR, "min"),
        _logv_dev=logv - rolling(logv, FLOW, "mean"),
        _logv_std=rolling(logv, FLOW, "std"),
        day_of_week=col("date").dt.weekday().cast(pl.Int8),
    )
    # --- step 2: windowed sums (SMA, EMA of the close, Wilder sums, flows), %K
    short_spans = [n for n in EMA_SPANS if n not in LONG_SPANS]
    df = with_sums(df, dict([ema_spec("c", spans[n]) for n in (*short_spans, 12, 26)]
                            + [ema_spec(s, w14) for s in ("_gain", "_loss", "_tr", "_pdm", "_mdm")]
                            + [(f"_s_{n}", ("c", n, 1.0)) for n in SMA_WINDOWS]
                            + [(f"_{s}20", (f"_{s}", FLOW, 1.0)) for s in ("upv", "downv")] + [("_v20", ("v", FLOW, 1.0))]))
    df = df.with_columns(
        # logret_1d is null on the first row: its 20-row windows are complete from row 20 on
        rvol_20=after(FLOW, col("logret_1d").rolling_std(FLOW).over(by) * math.sqrt(252)),
        # ll <= l <= c <= h <= hh: 0 <= c - ll <= hh - ll, so the fraction is in [0, 1]
        _k=_ratio(c - col("_ll14"), col("_hh14") - col("_ll14"), when_zero=0.5),
        dist_52w_high=c / col("_hh52") - 1,
        dist_52w_low=c / col("_ll52") - 1,
    )
    # --- step 3: averages, MACD line, RSI, ±DI, DX, %D, OBV ratio
    sma = {n: col(f"_s_{n}") / n for n in SMA_WINDOWS}
    ema = {n: ema_mean("c", spans[n]) for n in (*short_spans, 12, 26)}
    g, ls, pdm, mdm = (col(f"_e_{s}_{window_length(w14)}") for s in ("_gain", "_loss", "_pdm", "_mdm"))
    tr = col(f"_e__tr_{window_length(w14)}")
    df = df.with_columns(
        **{f"sma_{n}": sma[n] for n in SMA_WINDOWS},
        **{f"dist_sma_{n}": c / sma[n] - 1 for n in SMA_WINDOWS},
        **{f"ema_{n}": ema[n] for n in short_spans},
        **{f"dist_ema_{n}": c / ema[n] - 1 for n in short_spans},
        macd=ema[12] - ema[26],
        rsi_14=100 * _ratio(g, g + ls, when_zero=0.5),
        atr_14=ema_mean("_tr", w14),
        plus_di_14=100 * _ratio(pdm, tr, when_zero=0.0),
        minus_di_14=100 * _ratio(mdm, tr, when_zero=0.0),
        _dx=_ratio((pdm - mdm).abs(), pdm + mdm, when_zero=0.0),  # |p - m| <= p + m for p, m >= 0
        stoch_k_14=100 * col("_k"),
        stoch_d_3=100 * after(STOCH_D - 1, (col("_k") + col("_k").shift(1) + col("_k").shift(2)) / 3),
        # |up - down| <= up + down <= total volume, term by term
        obv_ratio_20=_ratio(col("_upv20") - col("_downv20"), col("_v20"), when_zero=0.0),
        volume_z_20=_ratio(col("_logv_dev"), col("_logv_std"), when_zero=0.0),
    )
    # --- step 4: the MACD signal and the ADX (the share of DX in its Wilder sum), the bands
    n14 = window_length(w14)
    df = with_sums(df.with_columns(_undx=1.0 - col("_dx")),
                   dict([ema_spec("macd", spans[9]), ("_adx_a", ("_dx", n14, 1.0 - w14)),
                         ("_adx_b", ("_undx", n14, 1.0 - w14))]))
    df = df.with_columns(
        macd_signal=ema_mean("macd", spans[9]),
        bb_mid=col("sma_20"),
        bb_upper=col("sma_20") + 2 * col("_std20"),
        bb_lower=col("sma_20") - 2 * col("_std20"),
        atr_pct=col("atr_14") / c,
    ).with_columns(
        bb_pctb=_ratio(c - col("bb_lower"), col("bb_upper") - col("bb_lower"), when_zero=0.5),
        bb_width=(col("bb_upper") - col("bb_lower")) / col("bb_mid"),
    )
    df = df.with_columns(
        macd_hist=col("macd") - col("macd_signal"),
        adx_14=100 * _ratio(col("_adx_a"), col("_adx_a") + col("_adx_b"), when_zero=0.0),
    ).with_columns(macd_hist_pct=col("macd_hist") / c)
    # price levels in the share basis of their own day
    levels = [x for x in PRICE_LEVEL if x not in _LONG]
    df = df.with_columns([col(x) / f for x in levels])
    return df.select(*KEYS, *[c for c in feature_columns() if c not in _LONG])
