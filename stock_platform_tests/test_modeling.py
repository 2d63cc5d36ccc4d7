"""Labels, walk-forward folds, scores, the champion gate and the learning claims, on the demo market."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import polars as pl
import pytest

from stock_platform.lib import modeling as m
from stock_platform.lib.calendar import trading_days
from stock_platform.lib.demo_market import generate, true_signal
from stock_platform.lib.indicators import MODEL_FEATURES, compute_features

D = trading_days(dt.date(2024, 1, 2), dt.date(2024, 1, 12))  # Jan 15 is a holiday


def test_label_is_the_next_sessions_return_and_a_gap_gives_none():
    # B pays a dividend of 0.5 on D[1] (ex-day reference 5.0 - 0.5 = 4.5; close 4.95: +10% total return)
    closes = pl.DataFrame({"ticker": ["A"] * 4 + ["B"] * 2, "date": [D[0], D[1], D[2], D[4], D[0], D[1]],
                           "close": [10.0, 11.0, 9.9, 12.0, 5.0, 4.95], "dividends": [0.0] * 5 + [0.5],
                           "splits": [0.0] * 6})
    labels = m.next_day_returns(closes, D)
    got = {(r["ticker"], r["date"]): (r["target_date"], round(r["label"], 10)) for r in labels.iter_rows(named=True)}
    # A on D[2] has no bar on D[3]: no label rather than a two-day return; the last bars have none either
    assert got == {("A", D[0]): (D[1], 0.1), ("A", D[1]): (D[2], -0.1), ("B", D[0]): (D[1], 0.1)}


def test_walk_forward_folds_never_train_on_or_next_to_their_test_block():
    folds = m.walk_forward_folds(300, folds=3, test_sessions=40, embargo=5, end=280)
    assert [(f.test_first, f.test_last) for f in folds] == [(160, 199), (200, 239), (240, 279)]
    for f in folds:  # purge (1, the label horizon) + embargo (5): six sessions between train and test
        assert f.test_first - f.train_last - 1 == 6
    with pytest.raises(ValueError, match="cannot hold 3 folds of 40 test sessions"):
        m.walk_forward_folds(150, folds=3, test_sessions=40)


def test_scores_by_hand():
    t = np.array([0, 0, 0, 1, 1, 1])
    y = np.array([0.01, -0.02, 0.03, 0.0, 0.01, -0.01])
    p = np.array([0.02, -0.01, 0.01, 0.01, 0.0, -0.02])
    s = m.scores(t, y, p)
    assert s["mae"] == pytest.approx(np.mean([0.01, 0.01, 0.02, 0.01, 0.01, 0.01]))
    assert s["naive_mae"] == pytest.approx(np.mean(np.abs(y)))
    assert s["mase"] == pytest.approx(s["mae"] / s["naive_mae"])
    assert s["hit_rate"] == pytest.approx(4 / 5)  # the flat day does not count; p=0 on a move is a miss
    assert s["up_rate"] == pytest.approx(3 / 5)
    # Spearman, day 0: ranks y (2,1,3) vs p (3,1,2), sum d^2 = 2 -> 1 - 6*2/(3*8) = 0.5;
    # day 1: ranks y (2,3,1) vs p (3,2,1), sum d^2 = 2 -> 0.5
    assert s["ic"] == pytest.approx(0.5)


def test_the_gate_needs_the_baseline_beaten_then_the_champion():
    good = {"rmse": 0.0190, "naive_rmse": 0.0191, "ic": 0.08}
    assert m.should_promote(good, None)[0]
    assert not m.should_promote(good | {"rmse": 0.0192}, None)[0]
    assert not m.should_promote(good | {"ic": -0.01}, None)[0]
    assert m.should_promote(good, {"ic": 0.05})[0]
    promote, reason = m.should_promote(good, {"ic": 0.09})
    assert not promote and "champion's 0.0900" in reason


def test_models_learn_the_label_net_of_the_days_market_move():
    t = np.array([0, 0, 1, 1, 1])
    y = np.array([0.01, 0.03, -0.01, 0.0, 0.04])
    assert np.allclose(m.demeaned(t, y), [-0.01, 0.01, -0.02, -0.01, 0.03])


# ------------------------------------------------------------------ learning the demo market's signal
@pytest.fixture(scope="module")
def market():
    start, end = dt.date(2021, 1, 4), dt.date(2024, 12, 31)
    prices = generate([f"T{i:03d}" for i in range(100)], start, end)
    data = m.training_set(compute_features(prices), m.next_day_returns(prices, trading_days(start, end)),
                          MODEL_FEATURES)
    folds = m.walk_forward_folds(data.sessions, folds=4, test_sessions=60)
    test = np.concatenate([data.rows(f.test_first, f.test_last) for f in folds])
    signal = data.keys.join(true_signal(prices), on=["ticker", "date"], how="left")["true_signal"].to_numpy()
    return data, folds, test, m.daily_ic(data.t[test], data.y[test], signal[test])


PARAMS = {"num_leaves": 15, "learning_rate": 0.05, "min_data_in_leaf": 500, "feature_fraction": 0.7,
          "bagging_fraction": 0.8, "lambda_l1": 0.1, "lambda_l2": 1.0, "n_estimators": 300}


def test_out_of_sample_ic_reaches_80_percent_of_the_true_signals(market):
    data, folds, _, true_ic = market
    result = m.run_trial(PARAMS, data, folds)
    print(f"out-of-sample IC {result['ic']:.4f} vs true signal {true_ic:.4f} ({result['ic'] / true_ic:.0%})")
    assert true_ic > 0.05
    assert result["ic"] >= 0.8 * true_ic
    assert result["rmse"] < result["naive_rmse"] and result["hit_rate"] > result["up_rate"]


def test_shuffled_labels_teach_nothing(market):
    data, folds, _, _ = market
    rng = np.random.default_rng(3)
    shuffled = dataclasses.replace(data, y=rng.permutation(data.y), target=None)  # target: demeaned anew
    result = m.run_trial(PARAMS, shuffled, folds)
    assert abs(result["ic"]) < 0.02, result["ic"]
    assert result["rmse"] >= 0.999 * result["naive_rmse"]


def test_a_feature_built_from_tomorrows_price_stands_out(market):
    data, *_ = market
    honest = m.feature_ics(data)
    assert max(abs(v) for v in honest.values()) < m.LEAKAGE_IC
    leaky = m.TrainingSet(x=np.column_stack([data.x, data.y + np.random.default_rng(1).normal(0, 0.01, len(data.y))]),
                          y=data.y, t=data.t, dates=data.dates, feature_names=[*data.feature_names, "tomorrow"],
                          keys=data.keys, target=data.target)
    suspects = {k for k, v in m.feature_ics(leaky).items() if abs(v) > m.LEAKAGE_IC}
    assert suspects == {"tomorrow"}
