"""Indicators: hand-computed values, an independent pandas oracle, no look-ahead, window consistency."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stock_platform.assets.ml import lookback_start
from stock_platform.lib.calendar import trading_days
from stock_platform.lib.demo_market import generate
from stock_platform.lib.feature_set import LOOKBACK
from stock_platform.lib.indicators import (MODEL_FEATURES, WARM_ROWS, WARM_UP, compute_features, feature_columns,
                                           window_length)
from stock_platform_tests.reference_indicators import reference_features

DAYS = trading_days(dt.date(2015, 1, 2), dt.date(2024, 6, 28))


def bars(close, *, high=None, low=None, volume=None, splits=None, ticker="AAA") -> pl.DataFrame:
    n = len(close)
    close = np.asarray(close, dtype=float)
    return pl.DataFrame({
        "ticker": [ticker] * n, "date": DAYS[:n], "open": close,
        "high": close if high is None else np.asarray(high, float), "low": close if low is None else np.asarray(low, float),
        "close": close, "adj_close": close, "volume": [1000] * n if volume is None else volume,
        "dividends": [0.0] * n, "splits": [0.0] * n if splits is None else splits,
    })


def last(df: pl.DataFrame, col: str):
    return df[col][-1]


# ------------------------------------------------------------------------------------ hand-computed
def test_returns_and_simple_moving_averages():
    f = compute_features(bars(np.arange(1, 301, dtype=float)))
    assert last(f, "ret_1d") == pytest.approx(300 / 299 - 1)
    assert last(f, "logret_5d") == pytest.approx(math.log(300 / 295))
    assert last(f, "sma_10") == pytest.approx(np.mean(np.arange(291, 301)))
    assert last(f, "sma_200") == pytest.approx(np.mean(np.arange(101, 301)))
    assert last(f, "dist_sma_10") == pytest.approx(300 / 295.5 - 1)
    assert f["sma_10"][8] is None and f["sma_10"][9] == pytest.approx(5.5)


def test_ema_on_a_straight_line_lags_by_its_weighted_mean_age():
    """For x_t = t, EMA = t - sum(k w_k)/sum(w_k): (1-a)/a for an untruncated EMA."""
    f = compute_features(bars(np.arange(1, 301, dtype=float)))
    for span in (10, 20, 50):
        a = 2 / (span + 1)
        w = (1 - a) ** np.arange(window_length(a))  # newest first
        lag = float((np.arange(len(w)) * w).sum() / w.sum())
        assert last(f, f"ema_{span}") == pytest.approx(300 - lag)
        assert lag == pytest.approx((1 - a) / a, rel=1e-3)  # truncation at 1e-5 barely matters


def test_oscillators_at_their_limits():
    rising = compute_features(bars(np.linspace(10, 40, 400), high=np.linspace(10.5, 40.5, 400),
                                   low=np.linspace(9.5, 39.5, 400)))
    falling = compute_features(bars(np.linspace(40, 10, 400), high=np.linspace(40.5, 10.5, 400),
                                    low=np.linspace(39.5, 9.5, 400)))
    assert last(rising, "rsi_14") == pytest.approx(100) and last(falling, "rsi_14") == pytest.approx(0)
    assert last(rising, "obv_ratio_20") == pytest.approx(1) and last(falling, "obv_ratio_20") == pytest.approx(-1)
    assert last(rising, "minus_di_14") == pytest.approx(0) and last(rising, "adx_14") == pytest.approx(100)
    assert last(rising, "dist_52w_low") > 0 and last(falling, "dist_52w_high") < 0
    zigzag = compute_features(bars(100 + np.tile([1.0, -1.0], 200)))
    assert last(zigzag, "rsi_14") == pytest.approx(50, abs=3)


def test_bands_stochastic_and_atr_hand_computed():
    close = np.array([10.0, 12.0] * 150)
    f = compute_features(bars(close, high=close + 1, low=close - 1))
    # last 20 closes alternate 10/12: mean 11, population sd 1
    assert last(f, "bb_mid") == pytest.approx(11) and last(f, "bb_upper") == pytest.approx(13)
    assert last(f, "bb_lower") == pytest.approx(9) and last(f, "bb_pctb") == pytest.approx((12 - 9) / 4)
    assert last(f, "bb_width") == pytest.approx(4 / 11)
    # 14-day high 13, low 9, close 12 -> %K 75; true range is 3 every day -> ATR 3
    assert last(f, "stoch_k_14") == pytest.approx(75) and last(f, "atr_14") == pytest.approx(3)
    flat = compute_features(bars(np.full(300, 50.0)))
    assert last(flat, "macd") == pytest.approx(0) and last(flat, "rvol_20") == pytest.approx(0)
    assert last(flat, "bb_pctb") == 0.5 and last(flat, "stoch_k_14") == 50 and last(flat, "volume_z_20") == 0


def test_volume_z_ignores_a_split():
    volume = [1000] * 280 + [2000] * 20   # a 2:1 split doubles the share count: not a volume surge
    splits = [0.0] * 280 + [2.0] + [0.0] * 19
    f = compute_features(bars(np.full(300, 50.0), volume=volume, splits=splits))
    assert f["volume_z_20"].tail(20).abs().max() == pytest.approx(0)


def test_warm_up_rows_are_marked_and_null_never_zero():
    n = LOOKBACK + 50
    f = compute_features(bars(np.linspace(10, 20, n)))
    assert f["warm"].to_list() == [False] * (WARM_ROWS - 1) + [True] * (n - WARM_ROWS + 1)
    # each indicator is null exactly until its own window is full, then never again
    for col, first in WARM_UP.items():
        assert f[col].is_null().to_list() == [True] * first + [False] * (n - first), col
    assert WARM_ROWS == 311 and LOOKBACK == 1152  # ADX's two Wilder windows; the EMA-200's window
    assert set(MODEL_FEATURES).isdisjoint({"sma_200", "ema_200", "dist_ema_200", "macd", "atr_14", "bb_upper"})
    cold = f.filter(~pl.col("warm"))
    assert cold["dist_52w_high"].null_count() == WARM_UP["dist_52w_high"]
    assert (cold["sma_200"].is_null() | (cold["sma_200"] != 0)).all()


def test_day_of_week():
    f = compute_features(bars(np.ones(5) * 10))
    assert f["day_of_week"].to_list() == [d.isoweekday() for d in DAYS[:5]]


# ------------------------------------------------------------------------------------- the oracle
def test_polars_pass_equals_the_independent_pandas_implementation():
    prices = generate(["AAPL", "MSFT", "XOM"], dt.date(2019, 1, 2), dt.date(2024, 6, 28))
    assert prices["splits"].gt(0).any() and prices["dividends"].gt(0).any()  # the factor is exercised
    ours = compute_features(prices).sort("ticker", "date").to_pandas()
    ref = reference_features(prices.to_pandas()).sort_values(["ticker", "date"]).reset_index(drop=True)
    assert (ours["warm"].to_numpy() == ref["warm"].to_numpy()).all()
    for col in feature_columns():
        a, b = ours[col].to_numpy(dtype=float), ref[col].to_numpy(dtype=float)
        assert (np.isnan(a) == np.isnan(b)).all(), f"{col}: nulls differ"
        np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-7, atol=1e-9, err_msg=col)


# ----------------------------------------------------------------------------------- no look-ahead
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    cutoff=st.integers(WARM_ROWS - 20, LOOKBACK + 40),
    shock=st.floats(0.5, 2.0),
)
def test_changing_prices_after_d_never_changes_features_at_or_before_d(seed, cutoff, shock):
    rng = np.random.default_rng(seed)
    n = LOOKBACK + 60
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    high, low = close * (1 + rng.uniform(0, 0.02, n)), close * (1 - rng.uniform(0, 0.02, n))
    volume = rng.integers(1_000, 100_000, n)
    base = pl.concat([bars(close, high=high, low=low, volume=volume, ticker="AAA"),
                      bars(close[::-1].copy(), high=high[::-1].copy(), low=low[::-1].copy(), volume=volume, ticker="BBB")])
    d = DAYS[cutoff]
    after = pl.col("date") > d
    changed = base.with_columns(
        [pl.when(after).then(pl.col(c) * shock).otherwise(pl.col(c)) for c in ("open", "high", "low", "close", "adj_close")]
        + [pl.when(after).then(pl.col("volume") * 3).otherwise(pl.col("volume")),
           pl.when(after & (pl.col("ticker") == "AAA")).then(2.0).otherwise(pl.col("splits")).alias("splits"),
           pl.when(after & (pl.col("ticker") == "BBB")).then(pl.col("close") * 0.05).otherwise(pl.col("dividends"))
           .alias("dividends")]
    )
    before = compute_features(base).filter(pl.col("date") <= d)
    later = compute_features(changed).filter(pl.col("date") <= d)
    assert before.equals(later)


def test_a_lookback_window_gives_the_same_values_as_the_full_history():
    prices = generate(["AAPL", "JPM"], dt.date(2017, 1, 3), dt.date(2024, 6, 28))
    full = compute_features(prices).filter(pl.col("date") >= dt.date(2024, 6, 3))
    window_start = lookback_start(dt.date(2024, 6, 3))  # what the `features` asset reads
    assert len(trading_days(window_start, dt.date(2024, 6, 3))) > LOOKBACK
    window = prices.filter(pl.col("date") >= window_start)
    windowed = compute_features(window).filter(pl.col("date") >= dt.date(2024, 6, 3))
    # the daily run's shortcut: only the long EMAs over the whole window, the rest over the rows they need
    shortcut = compute_features(window, since=dt.date(2024, 6, 3))
    assert shortcut.select("ticker", "date", "warm").equals(windowed.select("ticker", "date", "warm"))
    for col in feature_columns():
        np.testing.assert_allclose(shortcut[col].to_numpy(), windowed[col].to_numpy(), rtol=1e-9, atol=1e-9, err_msg=col)
    assert windowed["warm"].all()
    assert windowed.select(pl.sum_horizontal(pl.col(feature_columns()).null_count())).item() == 0  # all in the window
    assert windowed.select("ticker", "date").equals(full.select("ticker", "date"))
    # equal up to float rounding (rolling sums accumulate from different first rows)
    for col in feature_columns():
        np.testing.assert_allclose(windowed[col].to_numpy(), full[col].to_numpy(), rtol=1e-9, atol=1e-9, err_msg=col)


def test_prices_with_nulls_are_refused_not_zero_filled():
    rows = bars(np.linspace(10, 20, 30)).with_columns(close=pl.when(pl.int_range(pl.len()) == 5).then(None)
                                                      .otherwise(pl.col("close")))
    with pytest.raises(ValueError, match=r"prices have nulls \({'close': 1}\)"):
        compute_features(rows)


# ------------------------------------------------------------------------- bounded by construction
BOUNDED = {c: (0.0, 100.0) for c in ("rsi_14", "stoch_k_14", "stoch_d_3", "plus_di_14", "minus_di_14", "adx_14")}
BOUNDED |= {"obv_ratio_20": (-1.0, 1.0), "dist_52w_high": (-1.0, 0.0), "dist_52w_low": (0.0, math.inf),
            "bb_width": (0.0, math.inf), "atr_14": (0.0, math.inf), "rvol_20": (0.0, math.inf)}


def _segment(kind: str, length: int, price: float, rng: np.random.Generator):
    """(open, high, low, close) rows of one adversarial stretch starting from `price`."""
    rows = []
    for _ in range(length):
        if kind == "flat":  # nothing trades differently all day: every range is zero
            o = h = l = c = price
        elif kind == "limit_up":  # closes at the high, the high of the window, day after day
            o = l = price
            c = h = price * 1.1
        elif kind == "limit_down":
            o = h = price
            c = l = price * 0.9
        elif kind == "tiny":  # moves of one part in 1e12
            o, c = price, price * (1 + rng.choice([-1e-12, 0.0, 1e-12]))
            h, l = max(o, c), min(o, c)
        else:  # an ordinary day
            o = price * float(np.exp(rng.normal(0, 0.01)))
            c = price * float(np.exp(rng.normal(0, 0.02)))
            h, l = max(o, c) * float(np.exp(abs(rng.normal(0, 0.01)))), min(o, c) * float(np.exp(-abs(rng.normal(0, 0.01))))
        rows.append((o, h, l, c))
        price = c
    return rows, price


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    segments=st.lists(st.tuples(st.sampled_from(["flat", "limit_up", "limit_down", "tiny", "normal"]),
                                st.integers(1, 120)), min_size=3, max_size=12),
    base=st.sampled_from([1e-6, 0.0672, 1.0, 123.456, 5e4, 1e9]),
    seed=st.integers(0, 1000),
    zero_volume=st.booleans(),
)
def test_bounded_indicators_stay_in_range_on_adversarial_series(segments, base, seed, zero_volume):
    rng = np.random.default_rng(seed)
    rows, price = [], base
    for kind, length in segments:
        part, price = _segment(kind, length, price, rng)
        rows += part
    rows = (rows * (WARM_ROWS // len(rows) + 2))[: WARM_ROWS + 60]  # long enough for every oscillator
    o, h, lo, c = (np.array(x) for x in zip(*rows))
    n = len(c)
    volume = np.zeros(n, dtype=np.int64) if zero_volume else rng.integers(0, 10**9, n)
    frame = bars(c, high=h, low=lo, volume=volume).with_columns(open=pl.Series(o))
    f = compute_features(frame)
    for col, (low, high) in BOUNDED.items():
        values = f[col].drop_nulls()
        assert values.is_finite().all(), col
        assert values.min() >= low and values.max() <= high, (col, values.min(), values.max())
    assert f.filter(pl.col("bb_lower") > pl.col("bb_mid")).is_empty()
    assert f.filter(pl.col("bb_mid") > pl.col("bb_upper")).is_empty()
    assert f["warm"].sum() == n - WARM_ROWS + 1


def test_a_rally_of_closes_at_the_high_gives_oscillators_of_exactly_100():
    """The failure seen on real prices: %D = mean of three %K of 100 came out as 100.00000000000004."""
    close = 50 * 1.013 ** np.arange(WARM_ROWS + 40)
    f = compute_features(bars(close, high=close, low=close / 1.013))
    tail = f.tail(30)
    for col in ("stoch_k_14", "stoch_d_3", "rsi_14", "plus_di_14", "adx_14"):
        assert tail[col].max() <= 100.0 and tail[col].min() > 99.99, col
    assert (tail["stoch_d_3"] == 100.0).all() and (tail["rsi_14"] == 100.0).all()
    from stock_platform.schemas import failure_cases, features_schema

    assert failure_cases(features_schema(f["date"].to_list()), f).is_empty()
