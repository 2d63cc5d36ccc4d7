"""Evaluation numbers checked by hand on tiny fixtures."""

from __future__ import annotations

import datetime as dt

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
