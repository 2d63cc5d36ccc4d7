"""Choosing and gating a model, without Dagster (lib/selection.py): the layout, the best trial, the holdout gate,
the report tables and the forecast frame, on the demo market."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from stock_platform.lib import modeling as m
from stock_platform.lib import selection as sel
from stock_platform.lib.calendar import session_close_utc, trading_days
from stock_platform.lib.demo_market import generate
from stock_platform.lib.indicators import MODEL_FEATURES, compute_features
from stock_platform.lib.tables import predictions_schema

PARAMS = {"num_leaves": 7, "learning_rate": 0.1, "min_data_in_leaf": 50, "feature_fraction": 0.8,
          "bagging_fraction": 0.8, "lambda_l1": 0.1, "lambda_l2": 1.0, "n_estimators": 40}


def test_layout_leaves_a_gap_before_each_fold_and_the_holdout():
    layout = sel.validation_layout(400, folds=3, test_sessions=60, holdout_sessions=60, embargo=5)
    assert (layout.gap, layout.holdout_first, layout.test_sessions) == (6, 340, 60)
    assert layout.folds[-1].test_last == layout.holdout_first - layout.gap - 1  # nothing of the holdout is tested
    for fold in layout.folds:
        assert fold.test_first - fold.train_last - 1 == layout.gap
    short = sel.validation_layout(250, folds=3, test_sessions=60, holdout_sessions=60, embargo=5)
    assert short.test_sessions == (250 - 60 - 12 - 60) // 3  # shrunk to fit: 39
    with pytest.raises(ValueError, match="180 sessions of labelled features are too few for 3 folds of >= 20"):
        sel.validation_layout(180, folds=3, test_sessions=60, holdout_sessions=60, embargo=5)


def test_best_trial_is_the_best_ic_among_complete_trials():
    trials = [{"trial": "a", "ic": 0.09, "folds_done": 2, "error": None, "rounds": 10, **PARAMS},  # stopped early
              {"trial": "b", "ic": 0.05, "folds_done": 3, "error": None, "rounds": 17.0, **PARAMS},
              {"trial": "c", "ic": 0.04, "folds_done": 3, "error": None, "rounds": 30, **PARAMS},
              {"trial": "d", "ic": 0.99, "folds_done": 3, "error": "boom", "rounds": 1, **PARAMS}]
    best, params, complete = sel.best_trial(trials, folds=3)
    assert best["trial"] == "b" and [t["trial"] for t in complete] == ["b", "c"]
    assert params == PARAMS | {"n_estimators": 17}  # the rounds early stopping found
    with pytest.raises(ValueError, match=r"no trial finished all 3 folds within the budget; errors: \['boom'\]"):
        sel.best_trial(trials[:1] + trials[3:], folds=3)


@pytest.fixture(scope="module")
def data():
    start, end = dt.date(2022, 1, 3), dt.date(2024, 6, 28)
    prices = generate([f"T{i:02d}" for i in range(30)], start, end)
    return m.training_set(compute_features(prices), m.next_day_returns(prices, trading_days(start, end)),
                          MODEL_FEATURES)


def test_the_gate_scores_candidate_and_champion_on_the_same_holdout(data):
    layout = sel.validation_layout(data.sessions, folds=2, test_sessions=40, holdout_sessions=60, embargo=5)
    ics = m.feature_ics(data)
    verdict = sel.gate(data, layout, PARAMS, PARAMS, ics, threads=1)
    holdout_rows = len(data.rows(layout.holdout_first, data.sessions - 1))
    assert verdict.candidate["rows"] == verdict.champion["rows"] == holdout_rows
    assert verdict.candidate == pytest.approx(verdict.champion)  # same parameters, same sessions: same model
    # the gate's rule on these scores; an equal IC never displaces a champion
    assert (verdict.promote, verdict.reason) == m.should_promote(verdict.candidate, verdict.champion)
    assert not verdict.promote
    assert verdict.leaks == {}
    leaky = sel.gate(data, layout, PARAMS, None, ics | {"tomorrow": 0.9}, threads=1)
    assert not leaky.promote and leaky.reason.startswith("leakage suspected in ['tomorrow']")
    assert leaky.champion is None


def test_report_tables_put_the_naive_walk_beside_every_model():
    scores = {"mae": 0.01, "rmse": 0.02, "naive_mae": 0.011, "naive_rmse": 0.021, "mase": 0.91, "hit_rate": 0.52,
              "up_rate": 0.51, "ic": 0.03}
    best = scores | {"trial": "b", "folds_done": 3, "rounds": 12, **PARAMS}
    verdict = sel.Verdict(candidate=scores, champion=scores | {"ic": 0.01}, promote=True, reason="r", leaks={})
    tables = sel.report_tables(best, verdict, "champion v3", [best], [("rsi_14", 2.5)])
    assert set(tables) == {"cv_scores", "holdout_scores", "trials", "feature_importance"}
    holdout = tables["holdout_scores"].splitlines()
    assert [line.split("|")[1].strip() for line in holdout[2:]] == ["candidate", "champion v3", "naive random walk"]
    assert "| naive random walk | 0.011 | 0.021 | 1 | 0.51 | 0 |" in tables["cv_scores"].replace("1.0 ", "1 ")
    assert "rsi_14" in tables["feature_importance"]


def test_forecast_frame_uses_each_days_model_and_stamps_when_it_could_exist():
    days = trading_days(dt.date(2024, 6, 17), dt.date(2024, 6, 24))  # 19 June: Juneteenth
    feats = pl.DataFrame({"ticker": ["A", "B"] * 3, "date": [days[0]] * 2 + [days[1]] * 2 + [days[2]] * 2,
                          "f": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    closes = pl.concat([feats.select("ticker", "date", close=pl.lit(100.0)),
                        pl.DataFrame({"ticker": ["A", "B", "C"], "date": [days[3]] * 3, "close": [100.0, 20.0, 7.5]})])
    plan = {days[0]: 1, days[1]: 1, days[2]: 2, days[3]: None}  # days[3]: no model, no features (C is new)
    late = dt.datetime(2024, 6, 20, 23, 0, tzinfo=dt.UTC)  # version 2 registered after days[2]'s close
    registered = {1: dt.datetime(2024, 6, 1, tzinfo=dt.UTC), 2: late}

    def predict(version, rows):
        return (rows["f"] / 100 * (1 if version == 1 else -1)).to_numpy()

    out = sel.forecast_frame(feats, closes, days, plan, predict, registered, "lgbm")
    assert out.schema == pl.Schema(predictions_schema())
    a = {r["date"]: r for r in out.filter(pl.col("ticker") == "A").iter_rows(named=True)}
    assert [a[d]["model_version"] for d in days[:3]] == [1, 1, 2]
    assert a[days[1]]["target_date"] == days[2] == dt.date(2024, 6, 20)  # the next session, past the holiday
    assert a[days[2]]["pred_return"] == pytest.approx(-0.05) and a[days[2]]["pred_close"] == pytest.approx(95.0)
    close_utc = pl.select(session_close_utc(pl.lit(days[0]))).item()
    assert a[days[0]]["created_at"] == close_utc  # the day's close: the model was older
    assert a[days[2]]["created_at"] == late  # a backfill: not before the model existed
    assert set(out.filter(pl.col("model_name") == "lgbm")["date"]) == set(days[:3])
    # a day no model covers: the naive random walk for every ticker with a close, stamped at the close
    naive = out.filter(pl.col("date") == days[3])
    assert naive["ticker"].to_list() == ["A", "B", "C"] and set(naive["model_name"]) == {sel.NAIVE_MODEL}
    assert naive["pred_return"].to_list() == [0.0] * 3 and naive["pred_close"].to_list() == [100.0, 20.0, 7.5]
    assert naive["model_version"].to_list() == [sel.NAIVE_VERSION] * 3 and naive["target_date"][0] == days[4]
    assert naive["created_at"][0] == pl.select(session_close_utc(pl.lit(days[3]))).item()
    assert sel.forecast_frame(feats, closes, days, {}, predict, registered, "lgbm").is_empty()
    assert np.isfinite(out["pred_close"].to_numpy()).all()
