"""Labels, walk-forward folds, scores and every model family's learning claims, on the demo market."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import polars as pl
import pytest

from stock_platform.lib import modeling as m
from stock_platform.lib.calendar import trading_days
from stock_platform.lib.demo_market import generate, true_signal
from stock_platform.lib.families import FAMILIES
from stock_platform.lib.indicators import compute_features

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


def test_models_learn_the_label_net_of_the_days_market_move():
    t = np.array([0, 0, 1, 1, 1])
    y = np.array([0.01, 0.03, -0.01, 0.0, 0.04])
    assert np.allclose(m.demeaned(t, y), [-0.01, 0.01, -0.02, -0.01, 0.03])


# ------------------------------------------------------------------ learning the demo market's signal
@pytest.fixture(scope="module")
def market():
    """Each family's training set of the same rows (100 tickers x 4 years), the folds, the true signal's IC."""
    start, end = dt.date(2021, 1, 4), dt.date(2024, 12, 31)
    prices = generate([f"T{i:03d}" for i in range(100)], start, end)
    feats, labels = compute_features(prices), m.next_day_returns(prices, trading_days(start, end))
    datasets = {key: m.training_set(feats, labels, family.inputs) for key, family in FAMILIES.items()}
    data = datasets["lightgbm"]
    folds = m.walk_forward_folds(data.sessions, folds=4, test_sessions=60)
    test = np.concatenate([data.rows(f.test_first, f.test_last) for f in folds])
    signal = data.keys.join(true_signal(prices), on=["ticker", "date"], how="left")["true_signal"].to_numpy()
    return datasets, folds, test, m.daily_ic(data.t[test], data.y[test], signal[test])


# A reasonable point of each family's search space (the searches find as good or better ones)
PARAMS = {
    "lightgbm": {"num_leaves": 15, "learning_rate": 0.05, "min_data_in_leaf": 500, "feature_fraction": 0.7,
                 "bagging_fraction": 0.8, "lambda_l1": 0.1, "lambda_l2": 1.0, "n_estimators": 300},
    "ridge": {"alpha": 0.01, "clip": 5.0},
    "ar": {"lags": 3, "shrinkage": 10.0, "history_sessions": 2520},
}


@pytest.fixture(scope="module")
def cv(market):
    datasets, folds, _, _ = market
    return {key: m.run_trial(FAMILIES[key], PARAMS[key], datasets[key], folds) for key in FAMILIES}


def test_the_best_familys_out_of_sample_ic_reaches_80_percent_of_the_true_signals(market, cv):
    *_, true_ic = market
    for key, result in cv.items():
        print(f"{key}: out-of-sample IC {result['ic']:.4f} vs true signal {true_ic:.4f} ({result['ic'] / true_ic:.0%})")
    best = max(cv.values(), key=lambda r: r["ic"])
    assert true_ic > 0.05
    assert best["ic"] >= 0.8 * true_ic
    assert best["rmse"] < best["naive_rmse"] and best["hit_rate"] > best["up_rate"]
    # the demo market's signal is a 5-day reversal, linear in a return the AR family reads (ret_5d): every family
    # finds it (measured: LightGBM 94%, ridge 92%, AR 100% of the true signal's IC)
    assert all(r["ic"] >= 0.8 * true_ic for r in cv.values())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_shuffled_labels_teach_no_family_anything(market, family):
    datasets, folds, _, _ = market
    rng = np.random.default_rng(3)
    data = datasets[family]
    shuffled = dataclasses.replace(data, y=rng.permutation(data.y), target=None)  # target: demeaned anew
    result = m.run_trial(FAMILIES[family], PARAMS[family], shuffled, folds)
    assert abs(result["ic"]) < 0.02, result["ic"]
    assert result["rmse"] >= 0.999 * result["naive_rmse"]


def test_a_feature_built_from_tomorrows_price_stands_out(market):
    data = market[0]["lightgbm"]
    honest = m.feature_ics(data)
    assert max(abs(v) for v in honest.values()) < m.LEAKAGE_IC
    leaky = m.TrainingSet(x=np.column_stack([data.x, data.y + np.random.default_rng(1).normal(0, 0.01, len(data.y))]),
                          y=data.y, t=data.t, dates=data.dates, feature_names=[*data.feature_names, "tomorrow"],
                          keys=data.keys, target=data.target)
    suspects = {k for k, v in m.feature_ics(leaky).items() if abs(v) > m.LEAKAGE_IC}
    assert suspects == {"tomorrow"}
