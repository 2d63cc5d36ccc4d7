"""Corporate actions, point in time: the platform's own adjustment from stored splits and dividends.

The scenario of the issue, with yfinance-shaped answers (yf_fixtures.yahoo_answer builds Yahoo's answer as of a
download day): real GOOG bars (backtesting's test data) re-dated onto recent sessions, given a 4:1 split and a
2% dividend near the end. A history fetched before both, then daily fetches after them (each with Yahoo's
re-based `Close`, `Dividends`, `Volume` and `Adj Close`), must give the same features as one full re-fetch
afterwards, and the split day's and the dividend day's returns must be the real ones.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
import numpy as np
import pandas as pd
import polars as pl
import pytest

from stock_platform.lib.calendar import trading_days
from stock_platform.lib.corporate_actions import total_returns, unadjust_splits, with_factor
from stock_platform.lib.demo_market import generate
from stock_platform.lib.indicators import MODEL_FEATURES, compute_features, feature_columns
from stock_platform_tests import yf_fixtures
from stock_platform_tests.real_data import ohlcv

SPLIT, DIVIDEND = 4.0, 0.02


def truth_with_actions(sessions: int = 330):
    """GOOG's real as-traded bars on the last `sessions` trading days up to 2024-06-28, with a 4:1 split on the
    fourth-last day and a 2% dividend on the second-last (prices after an action move to its basis)."""
    real = ohlcv("GOOG").tail(sessions)
    days = trading_days(dt.date(2022, 1, 3), dt.date(2024, 6, 28))[-sessions:]
    frame = real.set_axis(pd.DatetimeIndex(days), axis=0).copy()
    frame["Dividends"], frame["Stock Splits"] = 0.0, 0.0
    split_day, dividend_day = frame.index[-4], frame.index[-2]
    after_split = frame.index >= split_day
    frame.loc[after_split, ["Open", "High", "Low", "Close"]] /= SPLIT
    frame.loc[after_split, "Volume"] *= SPLIT
    frame.loc[split_day, "Stock Splits"] = SPLIT
    cash = DIVIDEND * frame["Close"].shift(1)[dividend_day]  # 2% of the previous close
    frame.loc[frame.index >= dividend_day, ["Open", "High", "Low", "Close"]] *= 1 - DIVIDEND
    frame.loc[dividend_day, "Dividends"] = cash
    frame["Volume"] = frame["Volume"].round().astype("int64")
    return real, frame, split_day.date(), dividend_day.date()


def test_the_factor_makes_the_demo_markets_total_return_index():
    """The demo's adj_close is its total-return index (before its prices are rounded to 4 decimals); close * F,
    built from the stored splits and dividends alone, follows it day by day, action days included."""
    prices = generate(["AAPL", "MSFT", "XOM", "JPM"], dt.date(2015, 1, 2), dt.date(2024, 6, 28))
    actions = prices.filter((pl.col("splits") > 0) | (pl.col("dividends") > 0)).select("ticker", "date")
    assert prices["splits"].gt(0).sum() > 0 and prices["dividends"].gt(0).sum() > 20
    tri = with_factor(prices).select("ticker", "date", tri=pl.col("close") * pl.col("factor"), demo="adj_close")
    moves = tri.with_columns(
        gap=((pl.col("tri") / pl.col("tri").shift(1) - pl.col("demo") / pl.col("demo").shift(1)).over("ticker")).abs())
    assert moves["gap"].max() < 1e-5 and moves.join(actions, on=["ticker", "date"])["gap"].max() < 1e-5
    # and a day's total return never uses a later row
    early = total_returns(prices.filter(pl.col("date") <= dt.date(2020, 1, 31)))
    full = total_returns(prices).filter(pl.col("date") <= dt.date(2020, 1, 31))
    assert early.equals(full)


def test_split_and_dividend_days_give_the_true_total_return():
    real, truth, split_day, dividend_day = truth_with_actions(40)
    prices = pl.DataFrame({"ticker": "GOOG", "date": pl.Series(truth.index.values).cast(pl.Date),
                           "close": truth["Close"].to_numpy(), "dividends": truth["Dividends"].to_numpy(),
                           "splits": truth["Stock Splits"].to_numpy()})
    got = dict(total_returns(prices).select("date", "total_return").iter_rows())
    real_returns = real["Close"].pct_change().to_numpy()
    for day in (split_day, dividend_day):
        i = list(truth.index.date).index(day)
        assert got[day] == pytest.approx(real_returns[i], rel=1e-12)  # the move of the real bars, not -75% / -2%
    raw_drop = truth["Close"].iloc[list(truth.index.date).index(split_day)] / truth["Close"].shift(1)[str(split_day)]
    assert raw_drop < 0.3  # the as-traded close did fall by three quarters


def test_unadjusting_yahoos_answer_restores_the_as_traded_rows():
    from stock_platform.resources.sources import yfinance_to_polars

    _, truth, split_day, _ = truth_with_actions(60)
    answer = yf_fixtures.yahoo_answer(truth, "GOOG", truth.index[0], truth.index[-1] + pd.Timedelta(days=1),
                                      truth.index[-1])
    # Yahoo's answer after the split: the old closes divided by 4, the old volumes multiplied by 4
    assert answer[("Close", "GOOG")].iloc[0] == pytest.approx(truth["Close"].iloc[0] / SPLIT)
    restored = unadjust_splits(yfinance_to_polars(answer, ["GOOG"])).sort("date")
    np.testing.assert_allclose(restored["close"].to_numpy(), truth["Close"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(restored["dividends"].to_numpy(), truth["Dividends"].to_numpy(), rtol=1e-12)
    assert restored["volume"].to_list() == truth["Volume"].to_list()
    assert restored.filter(pl.col("splits") > 0)["date"].dt.date().to_list() == [split_day]


@pytest.fixture
def yahoo(monkeypatch):
    """yf.download answering from `truth` as of the day in `state["as_of"]` (requests beyond it get what
    existed then); counts the calls."""
    import yfinance

    state = {"truth": None, "as_of": None, "calls": []}

    def download(tickers, start=None, end=None, **kwargs):
        state["calls"].append((start, end))
        assert kwargs.get("auto_adjust") is False and kwargs.get("actions") is True
        return yf_fixtures.yahoo_answer(state["truth"], tickers[0], start, end, state["as_of"])

    monkeypatch.setattr(yfinance, "download", download)
    return state


@pytest.mark.slow
def test_daily_fetches_across_a_split_and_a_dividend_equal_a_full_refetch(yahoo, tmp_path):
    from stock_platform.assets.ingestion import prices
    from stock_platform.lib.tables import PRICES_TABLE
    from stock_platform.assets.lake import price_snapshots
    from stock_platform.assets.ml import features
    from stock_platform.lib.tables import FEATURES_TABLE
    from stock_platform.checks import features_schema_check, prices_schema_check
    from stock_platform.resources import PriceSourceResource, UniverseResource
    from stock_platform.resources.landing import LandingResource
    from stock_platform.resources.lake import LakeResource
    from stock_platform.resources.warehouse import WarehouseResource
    from stock_platform_tests.helpers import failure_message, run_range

    real, truth, split_day, dividend_day = truth_with_actions()
    yahoo["truth"] = truth
    days = [d.date() for d in truth.index]
    job = dg.define_asset_job("chain", selection=dg.AssetSelection.assets(prices, price_snapshots, features))

    def platform(name: str):
        lake = LakeResource(uri=str(tmp_path / name / "lake"))
        defs = dg.Definitions(
            assets=[prices, price_snapshots, features], asset_checks=[prices_schema_check, features_schema_check],
            jobs=[job], resources={
                "source": PriceSourceResource(source="yfinance", retries=0), "lake": lake,
                "universe": UniverseResource(tickers=["GOOG"]),
                "landing": LandingResource(uri=str(tmp_path / name / "landing")),
                "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path / name / 'warehouse.db'}")})
        return defs, lake

    def fetch(defs, instance, first: dt.date, last: dt.date, as_of: dt.date):
        yahoo["as_of"] = as_of
        result = run_range(defs, instance, first.isoformat(), last.isoformat(), job="chain")
        assert result.success, failure_message(result)

    # the daily path: history before the split, then one fetch per day after the close
    daily_defs, daily_lake = platform("daily")
    with dg.instance_for_test() as instance:
        before = days.index(split_day) - 1
        fetch(daily_defs, instance, days[0], days[before], as_of=days[before])
        for day in days[before + 1:]:
            fetch(daily_defs, instance, day, day, as_of=day)
    # the same history fetched once, after both actions
    full_defs, full_lake = platform("full")
    with dg.instance_for_test() as instance:
        fetch(full_defs, instance, days[0], days[-1], as_of=days[-1])
    # every fetch asked Yahoo up to today (so the answer holds every split Yahoo applied)
    assert all(end > days[-1].isoformat() for _, end in yahoo["calls"])

    stored = {name: lake.read(PRICES_TABLE).sort("date") for name, lake in (("daily", daily_lake), ("full", full_lake))}
    # both paths store the as-traded rows, whatever basis Yahoo answered in
    for rows in stored.values():
        np.testing.assert_allclose(rows["close"].to_numpy(), truth["Close"].to_numpy(), rtol=1e-12)
        assert rows["volume"].to_list() == truth["Volume"].to_list()
    # the vendor's adj_close of the first rows differs between the paths (re-based twice): it is not used
    assert stored["daily"]["adj_close"][0] != pytest.approx(stored["full"]["adj_close"][0], rel=1e-3)

    daily, full = (lake.read(FEATURES_TABLE).sort("date") for lake in (daily_lake, full_lake))
    assert daily.select("date", "warm").equals(full.select("date", "warm"))
    for col in feature_columns():
        a, b = daily[col].to_numpy().astype(float), full[col].to_numpy().astype(float)
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=col)

    # the split day's and the dividend day's returns are the real bars' moves (no -75%, no -2% step)
    row = {d: r for d, r in zip(full["date"].to_list(), full.iter_rows(named=True))}
    real_returns = dict(zip(days, real["Close"].pct_change().to_numpy()))
    for day in (split_day, dividend_day):
        assert row[day]["ret_1d"] == pytest.approx(real_returns[day], rel=1e-9)
    # and the scale-free features equal those of the real bars without any action
    plain = compute_features(pl.DataFrame({
        "ticker": "GOOG", "date": days, **{c.lower(): real[c].to_numpy() for c in ("Open", "High", "Low", "Close")},
        "volume": real["Volume"].to_numpy().astype("int64"), "dividends": 0.0, "splits": 0.0}))
    for col in MODEL_FEATURES:
        if col.startswith(("obv", "volume")):
            continue  # volume is split-adjusted forward from the first row: the same up to the split's scale
        np.testing.assert_allclose(full[col].to_numpy().astype(float), plain[col].to_numpy().astype(float),
                                   rtol=1e-9, atol=1e-12, err_msg=col)
    # price levels are in each day's own share basis: after the split a quarter of before
    assert row[days[-1]]["sma_10"] == pytest.approx(plain["sma_10"][-1] * (1 - DIVIDEND) / SPLIT, rel=1e-9)
