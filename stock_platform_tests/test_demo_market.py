from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from stock_platform.lib import demo_market
from stock_platform.lib.calendar import trading_days
from stock_platform.schemas import failure_cases, prices_schema

TICKERS = ["AAPL", "MSFT", "XOM", "JPM"]


@pytest.fixture(scope="module")
def market() -> pl.DataFrame:
    return demo_market.generate(TICKERS, dt.date(2015, 1, 2), dt.date(2024, 12, 31))


def test_deterministic_for_a_seed_and_different_across_seeds(market):
    again = demo_market.generate(TICKERS, dt.date(2015, 1, 2), dt.date(2024, 12, 31))
    assert again.equals(market)
    other = demo_market.generate(TICKERS, dt.date(2015, 1, 2), dt.date(2024, 12, 31), seed=8)
    assert not other["close"].equals(market["close"])


@pytest.mark.parametrize("day", [dt.date(2015, 1, 2), dt.date(2020, 3, 16), dt.date(2024, 12, 31)])
def test_any_slice_equals_the_same_rows_of_a_long_history(market, day):
    one = demo_market.generate(["XOM", "AAPL"], day, day)
    expected = market.filter(pl.col("date") == day, pl.col("ticker").is_in(["XOM", "AAPL"])).sort("ticker")
    assert one.sort("ticker").equals(expected)


def test_output_satisfies_the_prices_contract(market):
    dates = trading_days(dt.date(2015, 1, 2), dt.date(2024, 12, 31))
    assert market.height == len(dates) * len(TICKERS)
    cases = failure_cases(prices_schema(TICKERS, dates), market)
    assert cases.is_empty(), cases


def test_has_fat_tails_volatility_clustering_splits_and_dividends(market):
    r = market.sort("ticker", "date").with_columns(r=pl.col("adj_close").log().diff().over("ticker")).drop_nulls("r")
    assert 0.01 < r["r"].std() < 0.04
    assert r["r"].kurtosis() > 2  # fatter than a normal's 0 excess kurtosis
    # volatility clustering: |r| is autocorrelated
    abs_r = r.with_columns(a=pl.col("r").abs(), a_lag=pl.col("r").abs().shift(1).over("ticker")).drop_nulls()
    assert abs_r.select(pl.corr("a", "a_lag")).item() > 0.1
    assert (market["dividends"] > 0).sum() > 20
    full = demo_market.generate([f"T{i}" for i in range(40)], dt.date(2015, 1, 2), dt.date(2024, 12, 31))
    assert (full["splits"] > 0).sum() >= 3
    assert full.filter(pl.col("splits") > 0)["splits"].is_in([2.0, 4.0]).all()


def test_adj_close_is_the_total_return_index(market):
    """adj_close ratios equal the total return: split-adjusted close change plus the dividend."""
    m = market.sort("ticker", "date").with_columns(
        prev_close=pl.col("close").shift(1).over("ticker"), prev_adj=pl.col("adj_close").shift(1).over("ticker")
    ).drop_nulls()
    split = pl.when(pl.col("splits") > 0).then(pl.col("splits")).otherwise(1.0)
    total = split * (pl.col("close") + pl.col("dividends")) / pl.col("prev_close")
    err = m.select(((pl.col("adj_close") / pl.col("prev_adj")) / total - 1).abs().max()).item()
    assert err < 2e-3  # prices are rounded to 4 decimals


def test_known_predictable_component_has_the_documented_strength(market):
    """The true signal's IC against the next return is ~REVERSAL*sqrt(5) (weak but real)."""
    nxt = market.sort("ticker", "date").with_columns(
        next_r=(pl.col("adj_close").log().shift(-1) - pl.col("adj_close").log()).over("ticker")
    )
    joined = demo_market.true_signal(market).join(nxt.select("ticker", "date", "next_r"), on=["ticker", "date"]).drop_nulls()
    ic = joined.select(pl.corr("true_signal", "next_r", method="spearman")).item()
    assert 0.04 < ic < 0.15, ic


def test_before_origin_is_refused():
    with pytest.raises(ValueError, match="demo market starts on 2000-01-03"):
        demo_market.generate(["AAPL"], dt.date(1999, 1, 4), dt.date(2000, 2, 1))
