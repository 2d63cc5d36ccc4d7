"""Evaluation numbers checked by hand on tiny fixtures."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from stock_platform.lib.evaluation import diebold_mariano, evaluate, summarize, wilson_interval

D0, D1, D2 = dt.date(2024, 6, 3), dt.date(2024, 6, 4), dt.date(2024, 6, 5)


def closes():
    # B splits 2:1 on D1: the as-traded close halves, the split ratio carries the true return (+2%)
    return pl.DataFrame({
        "ticker": ["A", "A", "A", "B", "B"],
        "date": [D0, D1, D2, D0, D1],
        "close": [100.0, 102.0, 101.0, 50.0, 25.5],
        "dividends": [0.0] * 5,
        "splits": [0.0, 0.0, 0.0, 0.0, 2.0],
    })


def preds():
    return pl.DataFrame({
        "ticker": ["A", "A", "B"], "date": [D0, D1, D0], "target_date": [D1, D2, D1],
        "pred_return": [0.01, 0.005, -0.01], "pred_close": [101.0, 102.51, 49.5], "model_name": "lgbm",
        "model_version": [3, 3, 3],
    }).with_columns(pl.col("model_version").cast(pl.Int32))


def test_evaluation_rows_by_hand():
    ev = evaluate(preds(), closes()).sort("ticker", "target_date")
    got = ev.select("ticker", "target_date", "true_close", "abs_error", "naive_close", "naive_abs_error",
                    "direction_hit").rows()
    assert got[0] == ("A", D1, 102.0, pytest.approx(1.0), 100.0, 2.0, True)
    # A, D1 -> D2: true 101 (-0.98%), predicted up: a miss; error |102.51 - 101|, naive |102 - 101|
    assert got[1][:4] == ("A", D2, pytest.approx(101.0), pytest.approx(1.51)) and got[1][4:] == (102.0,
                                                                                                 pytest.approx(1.0),
                                                                                                 False)
    # B across its split: truth in D0's share basis is 50 * 1.02 = 51, not the raw 25.5
    assert got[2] == ("B", D1, pytest.approx(51.0), pytest.approx(1.5), 50.0, pytest.approx(1.0), False)


def test_the_naive_walks_flat_forecast_has_no_direction_and_its_errors_are_the_naive_ones():
    naive = preds().with_columns(pred_return=pl.lit(0.0), model_name=pl.lit("naive_random_walk"),
                                 model_version=pl.lit(1, pl.Int32))
    naive = naive.with_columns(pred_close=pl.Series([100.0, 102.0, 50.0]))  # today's close
    ev = evaluate(naive, closes())
    assert ev["direction_hit"].null_count() == ev.height  # neither a hit nor a miss
    assert ev["abs_error"].to_list() == pytest.approx(ev["naive_abs_error"].to_list())
    assert set(ev["model_name"]) == {"naive_random_walk"}


def test_a_prediction_whose_target_close_is_unknown_is_pending_not_evaluated():
    later = preds().vstack(pl.DataFrame({"ticker": ["B"], "date": [D1], "target_date": [D2], "pred_return": [0.0],
                                         "pred_close": [25.5], "model_name": ["lgbm"], "model_version": [3]},
                                        schema=preds().schema))
    assert evaluate(later, closes()).height == 3  # B has no bar on D2 yet


def test_summary_by_hand():
    s = summarize(evaluate(preds(), closes()))
    assert s["mae"] == pytest.approx((1.0 + 1.51 + 1.5) / 3)
    assert s["naive_mae"] == pytest.approx((2.0 + 1.0 + 1.0) / 3)
    assert s["mase"] == pytest.approx(s["mae"] / s["naive_mae"])
    assert s["hit_rate"] == pytest.approx(1 / 3)
    # long/short by sign, equal weight per day: D1: (+0.02 - 0.02) / 2 = 0; D2: +1 * (-1/102)
    assert s["strategy_return"] == pytest.approx((1 + 0.0) * (1 - 1 / 102) - 1)
    assert s["buy_and_hold_return"] == pytest.approx((1 + 0.02) * (1 - 1 / 102) - 1)


def test_diebold_mariano_against_a_hand_computed_value():
    # d = [1, -0.5, 2, 0.5, 1]: mean 0.8, gamma0 = 3.3 / 5 = 0.66, DM = 0.8 / sqrt(0.66 / 5) = 2.20193;
    # HLN (h = 1): x sqrt((5 + 1 - 2) / 5) = 1.96946; two-sided p for t(4) = 0.120243
    stat, p = diebold_mariano(np.array([1.0, -0.5, 2.0, 0.5, 1.0]), np.zeros(5))
    assert stat == pytest.approx(1.969464, abs=1e-6)
    assert p == pytest.approx(0.120243, abs=1e-6)
    assert diebold_mariano(np.zeros(5), np.array([1.0, -0.5, 2.0, 0.5, 1.0]))[0] == pytest.approx(-1.969464, abs=1e-6)


def test_wilson_interval():
    lo, hi = wilson_interval(55, 100)  # a textbook value: 0.452 .. 0.644
    assert (round(lo, 3), round(hi, 3)) == (0.452, 0.644)


def qlib_fixture() -> pl.DataFrame:
    """3 days x 4 tickers, predicted and true returns (hand-checked below)."""
    days = [dt.date(2024, 3, 4), dt.date(2024, 3, 5), dt.date(2024, 3, 6)]
    pred = {"A": [0.03, 0.01, 0.02], "B": [0.01, 0.02, 0.03], "C": [-0.01, -0.03, -0.01], "D": [-0.02, 0.00, -0.04]}
    true = {"A": [0.02, -0.01, 0.01], "B": [0.00, 0.01, 0.02], "C": [0.01, -0.02, 0.00], "D": [-0.01, 0.00, -0.03]}
    return pl.DataFrame([{"target_date": d, "ticker": t, "pred_return": pred[t][i], "true_return": true[t][i]}
                         for i, d in enumerate(days) for t in "ABCD"])


def test_qlib_measures_and_the_long_short_portfolio_after_costs_by_hand():
    from stock_platform.lib.evaluation import long_short_weights, signal_and_portfolio

    ev = qlib_fixture()
    weights = long_short_weights(ev, top_k=1)
    held = {(r["target_date"].day, r["ticker"]): r["w"] for r in weights.filter(pl.col("w") != 0).iter_rows(named=True)}
    # day 1: long A (highest forecast), short D; day 2: long B, short C; day 3: long B, short D
    assert held == {(4, "A"): 1.0, (4, "D"): -1.0, (5, "B"): 1.0, (5, "C"): -1.0, (6, "B"): 1.0, (6, "D"): -1.0}
    got = signal_and_portfolio(ev, top_k=1, cost_bps=10)
    # gross: .02 - (-.01) = .03; .01 - (-.02) = .03; .02 - (-.03) = .05. Turnover: 2 (buying in), 4 (all four
    # change), 2 (C closed, D opened). Costs at 10 bps per side: .002, .004, .002 -> net .028, .026, .048.
    assert got["ls_turnover"] == pytest.approx(8 / 3)
    assert got["ls_annual_return"] == pytest.approx((0.03 + 0.03 + 0.05) / 3 * 252)
    assert got["ls_annual_return_net"] == pytest.approx((0.028 + 0.026 + 0.048) / 3 * 252)
    # benchmark (equal weight): .005, -.005, 0 -> active .025, .035, .05 gross
    active = np.array([0.025, 0.035, 0.05])
    assert got["ls_information_ratio"] == pytest.approx(active.mean() / active.std(ddof=1) * math.sqrt(252))
    assert got["benchmark_annual_return"] == pytest.approx(0.0)
    assert got["ls_annual_volatility"] == pytest.approx(np.std([0.03, 0.03, 0.05], ddof=1) * math.sqrt(252))
    assert got["ls_max_drawdown"] == 0.0 and got["ls_max_drawdown_net"] == 0.0  # three winning days
    # Rank IC by hand (Spearman, 1 - 6 sum d^2 / (n (n^2 - 1))): days 1 and 2 swap one adjacent pair (0.8), day 3 none (1)
    assert got["rank_ic"] == pytest.approx((0.8 + 0.8 + 1.0) / 3)
    rank = np.array([0.8, 0.8, 1.0])
    assert got["rank_icir"] == pytest.approx(rank.mean() / rank.std(ddof=1))
    assert got["rank_ic_t"] == pytest.approx(rank.mean() / rank.std(ddof=1) * math.sqrt(3))
    pearson = [np.corrcoef(ev.filter(pl.col("target_date") == d)["pred_return"],
                           ev.filter(pl.col("target_date") == d)["true_return"])[0, 1] for d in ev["target_date"].unique()]
    assert got["pearson_ic"] == pytest.approx(np.mean(pearson)) and got["ic_days"] == 3


def test_a_single_day_a_daily_run_evaluates_buys_in_once():
    from stock_platform.lib.evaluation import signal_and_portfolio

    one = qlib_fixture().filter(pl.col("target_date") == dt.date(2024, 3, 4))
    got = signal_and_portfolio(one, top_k=1, cost_bps=10)
    assert got["ls_turnover"] == 2.0 and got["ls_annual_return_net"] == pytest.approx(0.028 * 252)
    assert got["rank_ic"] == pytest.approx(0.8) and math.isnan(got["rank_icir"])


def test_the_naive_walks_flat_forecasts_hold_no_position_and_have_no_ic():
    from stock_platform.lib.evaluation import signal_and_portfolio

    got = signal_and_portfolio(qlib_fixture().with_columns(pred_return=pl.lit(0.0)))
    assert got["ls_turnover"] == 0.0 and got["ls_annual_return"] == 0.0 and got["ls_annual_return_net"] == 0.0
    assert math.isnan(got["rank_ic"]) and math.isnan(got["pearson_ic"])
