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
from stock_platform.lib.families import FAMILIES
from stock_platform.lib.indicators import compute_features
from stock_platform.lib.tables import predictions_schema

LGBM = FAMILIES["lightgbm"]
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
    best, params, complete = sel.best_trial(LGBM, trials, folds=3)
    assert best["trial"] == "b" and [t["trial"] for t in complete] == ["b", "c"]
    assert params == PARAMS | {"n_estimators": 17}  # the rounds early stopping found
    ridge = [{"trial": "r", "ic": 0.03, "folds_done": 3, "error": None, "alpha": 0.5, "clip": 4.0}]
    assert sel.best_trial(FAMILIES["ridge"], ridge, folds=3)[1] == {"alpha": 0.5, "clip": 4.0}
    with pytest.raises(ValueError, match=r"no lightgbm trial finished all 3 folds within the budget; errors: \['boom'\]"):
        sel.best_trial(LGBM, trials[:1] + trials[3:], folds=3)


def scored(rmse: float, ic: float, naive_rmse: float = 0.0200) -> dict[str, float]:
    return {"rmse": rmse, "naive_rmse": naive_rmse, "ic": ic}


def test_the_gate_promotes_the_best_family_that_beats_the_naive_walk_and_the_champion():
    # hand-built holdout scores of three families' candidates
    scores = {"lightgbm": scored(0.0199, 0.030), "ridge": scored(0.0198, 0.045), "ar": scored(0.0201, 0.080)}
    winner, reasons = sel.choose(scores, None, {})
    assert winner == "ridge"  # ar has the best IC but a worse squared error than the naive walk: not eligible
    assert reasons["ar"].endswith("no better than the naive random walk's squared error")
    assert reasons["lightgbm"].endswith("IC below ridge's 0.0450") and reasons["ridge"].endswith("; promoted")
    # a champion with a better IC keeps serving; one with a worse IC is displaced
    assert sel.choose(scores | {"champion": scored(0.0197, 0.050)}, "champion", {})[0] is None
    winner, reasons = sel.choose(scores | {"champion": scored(0.0197, 0.040)}, "champion", {})
    assert winner == "ridge" and reasons["ridge"].endswith("promoted: IC above the champion's 0.0400")
    # an equal IC never displaces a champion
    assert sel.choose(scores | {"champion": scored(0.0150, 0.045)}, "champion", {})[0] is None


def test_the_gate_promotes_none_when_no_family_beats_the_naive_walk_or_a_feature_leaks():
    scores = {"lightgbm": scored(0.0201, 0.02), "ridge": scored(0.0199, -0.01), "ar": scored(0.0200, 0.05)}
    winner, reasons = sel.choose(scores, None, {})
    assert winner is None
    assert "IC <= 0" in reasons["ridge"] and "squared error" in reasons["ar"] and "squared error" in reasons["lightgbm"]
    winner, reasons = sel.choose({"ridge": scored(0.0190, 0.05)}, None, {"tomorrow": 0.9})
    assert winner is None and "leakage suspected in ['tomorrow']" in reasons["ridge"]


@pytest.fixture(scope="module")
def datasets():
    start, end = dt.date(2022, 1, 3), dt.date(2024, 6, 28)
    prices = generate([f"T{i:02d}" for i in range(30)], start, end)
    feats, labels = compute_features(prices), m.next_day_returns(prices, trading_days(start, end))
    return {key: m.training_set(feats, labels, f.inputs) for key, f in FAMILIES.items()}


RIDGE = {"alpha": 0.01, "clip": 5.0}


def test_the_gate_scores_every_contender_on_the_same_holdout_beside_the_naive_walk(datasets):
    data = datasets["lightgbm"]
    first, gap = sel.holdout(data.sessions)
    ics = m.feature_ics(data)
    contenders = [sel.Contender("candidate", "sp_lgbm", 4, LGBM, PARAMS),
                  sel.Contender("candidate", "sp_ridge", 2, FAMILIES["ridge"], RIDGE),
                  sel.Contender("candidate", "sp_ar", 2, FAMILIES["ar"], {"lags": 2, "shrinkage": 5.0,
                                                                          "history_sessions": 500}),
                  sel.Contender("champion", "sp_lgbm", 3, LGBM, PARAMS)]
    verdict = sel.gate(datasets, first, gap, contenders, ics, threads=1)
    rows = {r["model"]: r for r in verdict.rows}
    holdout_rows = len(data.rows(first, data.sessions - 1))
    assert list(rows) == ["sp_lgbm v4", "sp_ridge v2", "sp_ar v2", "sp_lgbm v3", sel.NAIVE_MODEL]
    assert {r["rows"] for r in rows.values()} == {holdout_rows} and rows["sp_ar v2"]["days"] == sel.HOLDOUT_SESSIONS
    assert rows["sp_lgbm v4"]["rmse"] == pytest.approx(rows["sp_lgbm v3"]["rmse"])  # same params, same sessions
    assert rows[sel.NAIVE_MODEL]["rmse"] == rows["sp_ridge v2"]["naive_rmse"]
    for label in ("sp_lgbm v4", "sp_ridge v2", "sp_ar v2"):  # DM against the naive walk: lower loss, negative
        assert (rows[label]["dm_stat"] < 0) == (rows[label]["rmse"] < rows[label]["naive_rmse"])
        assert 0 <= rows[label]["dm_p_value"] <= 1
    # the decision is `choose`'s on these scores
    scores = {r["model"]: r for r in verdict.rows if r["role"] != "baseline"}
    winner, reasons = sel.choose(scores, "sp_lgbm v3", {})
    assert (verdict.promoted.label if verdict.promoted else None) == winner
    assert all(rows[label]["decision"] == reason for label, reason in reasons.items())
    frame = sel.decision_frame(verdict, dt.date(2024, 6, 30), "run1")
    assert frame.height == 5 and frame["promoted"].sum() == (winner is not None)
    assert frame.filter(pl.col("role") == "baseline")["model_name"].to_list() == [sel.NAIVE_MODEL]
    assert "dm_p_value" in sel.decision_table(verdict).splitlines()[0]
    leaky = sel.gate(datasets, first, gap, contenders[:3], ics | {"tomorrow": 0.9}, threads=1)
    assert leaky.promoted is None and leaky.leaks == {"tomorrow": 0.9}


def test_contenders_are_the_weeks_newest_candidate_per_family_and_the_champion_before_it():
    week, earlier = dt.date(2024, 6, 30), dt.date(2024, 6, 23)
    at = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)
    served = pl.DataFrame({
        "model_name": ["sp_lgbm", "sp_lgbm", "sp_lgbm", "sp_ridge", "sp_ridge", "sp_ar"],
        "version": [1, 2, 3, 1, 2, 1],
        "train_end": [earlier, week, week, earlier, week, week],
        "promoted": [True, True, False, True, False, False],
        "registered_at": [at, at, at, at + dt.timedelta(hours=1), at, at],
    })
    stored = {"sp_lgbm": {k: "7" for k in LGBM.space}, "sp_ridge": {"alpha": "0.5", "clip": "3"},
              "sp_ar": {"lags": "2.0", "shrinkage": "1", "history_sessions": "250"}}
    got = sel.contenders(served, week, lambda name, version: stored[name])
    assert [(c.role, c.label) for c in got] == [("candidate", "sp_ar v1"), ("candidate", "sp_lgbm v3"),
                                                 ("candidate", "sp_ridge v2"), ("champion", "sp_ridge v1")]
    assert got[0].params == {"lags": 2, "shrinkage": 1.0, "history_sessions": 250}
    # v2 of this week was promoted by an earlier run of the gate; the week's candidate is now v3
    assert sel.superseded(served, week, {(c.model_name, c.version) for c in got}) == [("sp_lgbm", 2)]


def test_tuning_tables_put_the_naive_walk_beside_the_family():
    scores = {"mae": 0.01, "rmse": 0.02, "naive_mae": 0.011, "naive_rmse": 0.021, "mase": 0.91, "hit_rate": 0.52,
              "up_rate": 0.51, "ic": 0.03}
    best = scores | {"trial": "b", "folds_done": 3, "rounds": 12, **PARAMS}
    tables = sel.tuning_tables(LGBM, best, [best], [("rsi_14", 2.5)])
    assert set(tables) == {"cv_scores", "trials", "importance"}
    assert "| naive random walk | 0.011 | 0.021 | 1 | 0.51 | 0 |" in tables["cv_scores"].replace("1.0 ", "1 ")
    assert "rsi_14" in tables["importance"] and "rounds" in tables["trials"].splitlines()[0]


def test_forecast_frame_uses_each_days_model_and_stamps_when_it_could_exist():
    days = trading_days(dt.date(2024, 6, 17), dt.date(2024, 6, 24))  # 19 June: Juneteenth
    feats = pl.DataFrame({"ticker": ["A", "B"] * 3, "date": [days[0]] * 2 + [days[1]] * 2 + [days[2]] * 2,
                          "f": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    closes = pl.concat([feats.select("ticker", "date", close=pl.lit(100.0)),
                        pl.DataFrame({"ticker": ["A", "B", "C"], "date": [days[3]] * 3, "close": [100.0, 20.0, 7.5]})])
    lgbm, ridge = ("lgbm", 1), ("ridge", 2)
    plan = {days[0]: lgbm, days[1]: lgbm, days[2]: ridge, days[3]: None}  # days[3]: no model, no features (C is new)
    late = dt.datetime(2024, 6, 20, 23, 0, tzinfo=dt.UTC)  # ridge v2 registered after days[2]'s close
    registered = {lgbm: dt.datetime(2024, 6, 1, tzinfo=dt.UTC), ridge: late}

    def predict(model, rows):
        return (rows["f"] / 100 * (1 if model == lgbm else -1)).to_numpy()

    out = sel.forecast_frame(feats, closes, days, plan, predict, registered)
    assert out.schema == pl.Schema(predictions_schema())
    a = {r["date"]: r for r in out.filter(pl.col("ticker") == "A").iter_rows(named=True)}
    assert [(a[d]["model_name"], a[d]["model_version"]) for d in days[:3]] == [lgbm, lgbm, ridge]
    assert a[days[1]]["target_date"] == days[2] == dt.date(2024, 6, 20)  # the next session, past the holiday
    assert a[days[2]]["pred_return"] == pytest.approx(-0.05) and a[days[2]]["pred_close"] == pytest.approx(95.0)
    close_utc = pl.select(session_close_utc(pl.lit(days[0]))).item()
    assert a[days[0]]["created_at"] == close_utc  # the day's close: the model was older
    assert a[days[2]]["created_at"] == late  # a backfill: not before the model existed
    assert set(out.filter(pl.col("model_name") != sel.NAIVE_MODEL)["date"]) == set(days[:3])
    # a day no model covers: the naive random walk for every ticker with a close, stamped at the close
    naive = out.filter(pl.col("date") == days[3])
    assert naive["ticker"].to_list() == ["A", "B", "C"] and set(naive["model_name"]) == {sel.NAIVE_MODEL}
    assert naive["pred_return"].to_list() == [0.0] * 3 and naive["pred_close"].to_list() == [100.0, 20.0, 7.5]
    assert naive["model_version"].to_list() == [sel.NAIVE_VERSION] * 3 and naive["target_date"][0] == days[4]
    assert naive["created_at"][0] == pl.select(session_close_utc(pl.lit(days[3]))).item()
    assert sel.forecast_frame(feats, closes, days, {}, predict, registered).is_empty()
    assert np.isfinite(out["pred_close"].to_numpy()).all()
