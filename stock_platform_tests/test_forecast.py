"""`predictions` and `prediction_evaluation` through real Dagster runs, real MLflow registry, real warehouses."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import numpy as np
import polars as pl
import pytest

from stock_platform.assets.forecast import prediction_evaluation, predictions
from stock_platform.checks import predictions_check
from stock_platform.lib.selection import NAIVE_MODEL, model_for_each_day
from stock_platform.lib.calendar import trading_days
from stock_platform.lib.tables import EVALUATION_TABLE, PREDICTIONS_TABLE, SNAPSHOT_TABLE
from stock_platform.registry import load_model, promoted_versions, served_versions, set_promoted
from stock_platform.resources import UniverseResource
from stock_platform.resources.warehouse import WarehouseResource
from stock_platform_tests.helpers import (build_lake, fail_the_features_check, failure_message,
                                         materialization_metadata, model_resources, register_promoted_model,
                                         registry_booster)

pytestmark = pytest.mark.slow
FIRST, LAST = dt.date(2024, 5, 13), dt.date(2024, 6, 14)
LGBM, RIDGE = ("stock_platform_lgbm", 1), ("stock_platform_ridge", 1)
# Sundays: the ends of two model weeks; a LightGBM version of the first, a ridge version of the second
TRAIN_ENDS = {LGBM: dt.date(2024, 5, 19), RIDGE: dt.date(2024, 6, 9)}
PARAMS = {LGBM: {"num_leaves": 15, "learning_rate": 0.05, "min_data_in_leaf": 200, "feature_fraction": 0.7,
                 "bagging_fraction": 0.8, "lambda_l1": 0.1, "lambda_l2": 1.0, "n_estimators": 60},
          RIDGE: {"alpha": 0.01, "clip": 5.0}}


def test_each_day_gets_the_newest_model_trained_before_it():
    at = dt.datetime(2024, 6, 9, tzinfo=dt.UTC)
    promoted = [("a", 1, dt.date(2024, 5, 19), at), ("b", 3, dt.date(2024, 6, 9), at),
                ("a", 4, dt.date(2024, 6, 9), at + dt.timedelta(hours=1))]  # same training end, registered later
    days = [dt.date(2024, 5, 17), dt.date(2024, 5, 20), dt.date(2024, 6, 7), dt.date(2024, 6, 10)]
    assert model_for_each_day(days, promoted) == {days[0]: None, days[1]: ("a", 1), days[2]: ("a", 1),
                                                  days[3]: ("a", 4)}
    assert model_for_each_day(days, []) == dict.fromkeys(days)  # no champion: the naive walk every day


def register(res: dict, lake) -> None:
    """Two promoted versions of two families, each trained (by the library) only on rows up to its train_end."""
    for (name, version), end in TRAIN_ENDS.items():
        family = "lightgbm" if name.endswith("lgbm") else "ridge"
        assert register_promoted_model(lake, res["tracking"], end, PARAMS[(name, version)], family) == (name, version)


def run(res, instance):
    return dg.materialize([predictions, prediction_evaluation, predictions_check], resources=res, instance=instance,
                          raise_on_error=False,
                          tags={"dagster/asset_partition_range_start": FIRST.isoformat(),
                                "dagster/asset_partition_range_end": LAST.isoformat()})


@pytest.fixture(params=["sqlite", "postgres"])
def warehouse(request, tmp_path) -> WarehouseResource:
    if request.param == "sqlite":
        return WarehouseResource(url=f"sqlite:///{tmp_path}/warehouse.db")
    url = request.getfixturevalue("fresh_postgres_db")
    return WarehouseResource(url=url.render_as_string(hide_password=False))


def test_predictions_use_only_earlier_models_evaluate_against_the_naive_walk_and_rerun_idempotently(
        tmp_path, instance, warehouse):
    lake = build_lake(tmp_path)
    res = model_resources(tmp_path, lake) | {"warehouse": warehouse,
                                            "universe": UniverseResource(tickers=[f"T{i:03d}" for i in range(40)])}
    register(res, lake)
    result = run(res, instance)
    assert result.success, failure_message(result)
    assert [(c.check_name, c.passed) for c in result.get_asset_check_evaluations()] == [
        ("predictions_complete_and_plausible", True)]

    every = lake.read(PREDICTIONS_TABLE)
    # days before the first model: the naive random walk, for every ticker
    naive = every.filter(pl.col("model_name") == NAIVE_MODEL)
    assert naive["date"].unique().to_list() == trading_days(FIRST, dt.date(2024, 5, 17))
    assert naive.height == 40 * 5 and (naive["pred_return"] == 0).all()
    # no model predicts a day on or before the end of its training data
    preds = every.filter(pl.col("model_name") != NAIVE_MODEL)
    assert preds["date"].min() == dt.date(2024, 5, 20)
    train_end = pl.Series([TRAIN_ENDS[key] for key in preds.select("model_name", "model_version").iter_rows()])
    assert (train_end < preds["date"]).all()
    assert set(preds.filter(pl.col("date") >= dt.date(2024, 6, 10))["model_name"]) == {RIDGE[0]}
    assert set(preds.filter(pl.col("date") <= dt.date(2024, 6, 7))["model_name"]) == {LGBM[0]}
    sessions = trading_days(dt.date(2024, 5, 20), LAST)
    assert preds.height == 40 * len(sessions)
    closes = lake.snapshot(SNAPSHOT_TABLE, start=FIRST, end=LAST).select("ticker", "date", "close")
    joined = preds.join(closes, on=["ticker", "date"])
    np.testing.assert_allclose(joined["pred_close"], joined["close"] * (1 + joined["pred_return"]))
    assert (preds["target_date"] == preds["date"].replace_strict(dict(zip(sessions[:-1], sessions[1:])),
                                                                  default=dt.date(2024, 6, 17))).all()

    ev = lake.read(EVALUATION_TABLE, date_column="target_date")
    # targets inside the run's range: every prediction made before LAST, the naive walk's included
    assert ev.height == 40 * (len(trading_days(FIRST, LAST)) - 1) and ev["target_date"].min() == dt.date(2024, 5, 14)
    md = materialization_metadata(result, "prediction_evaluation")
    assert md["pending"] == 0 and md["coverage"] == 1.0
    assert "| MASE |" in md["model_vs_naive"] and "Diebold-Mariano" in md["model_vs_naive"]
    # the range's plot is on its last partition's event only (not copied onto each)
    events = {e.partition: e.metadata for e in result.asset_materializations_for_node("prediction_evaluation")}
    assert events[LAST.isoformat()]["plot"].value.startswith("![equity and error](data:image/png;base64,")
    assert len(events) > 1 and not any("plot" in m for p, m in events.items() if p != LAST.isoformat())

    counts = (warehouse.count("stock_pred"), warehouse.count("stock_pred_eval"))
    assert counts == (every.height, ev.height)
    stored = warehouse.read("stock_pred_eval")
    assert set(stored.columns) >= {"date", "ticker", "pred_close", "true_close", "abs_error", "model"}
    assert set(stored["model"]) == {"naive_random_walk/1", "stock_platform_lgbm/1", "stock_platform_ridge/1"}

    again = run(res, instance)
    assert again.success, failure_message(again)
    assert lake.read(PREDICTIONS_TABLE).drop("created_at").equals(every.drop("created_at"))
    assert lake.read(EVALUATION_TABLE, date_column="target_date").equals(ev)
    assert (warehouse.count("stock_pred"), warehouse.count("stock_pred_eval")) == counts


def test_without_a_champion_the_naive_walk_serves_every_day_and_is_evaluated(tmp_path, instance):
    lake = build_lake(tmp_path)
    res = model_resources(tmp_path, lake) | {
        "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path}/warehouse.db"),
        "universe": UniverseResource(tickers=[f"T{i:03d}" for i in range(40)])}
    result = run(res, instance)
    assert result.success, failure_message(result)
    sessions = trading_days(FIRST, LAST)
    assert materialization_metadata(result, "predictions")["days_served_by_naive"] == len(sessions)
    assert [(c.check_name, c.passed) for c in result.get_asset_check_evaluations()] == [
        ("predictions_complete_and_plausible", True)]
    preds = lake.read(PREDICTIONS_TABLE)
    assert preds.height == 40 * len(sessions) and set(preds["model_name"]) == {NAIVE_MODEL}
    closes = lake.snapshot(SNAPSHOT_TABLE, start=FIRST, end=LAST).select("ticker", "date", "close")
    assert preds.join(closes, on=["ticker", "date"]).select((pl.col("pred_close") == pl.col("close")).all()).item()
    md = materialization_metadata(result, "prediction_evaluation")
    assert md["evaluated"] == 40 * (len(sessions) - 1) and md["mase"] == pytest.approx(1.0)


def test_rolling_back_a_model_moves_champion_and_predictions_to_the_previous_version(tmp_path, instance):
    lake = build_lake(tmp_path)
    res = model_resources(tmp_path, lake) | {
        "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path}/warehouse.db"),
        "universe": UniverseResource(tickers=[f"T{i:03d}" for i in range(40)])}
    tracking = res["tracking"]
    register(res, lake)
    # the serving copy predicts exactly what the registry's model predicts
    x = lake.read("features", dt.date(2024, 6, 10), dt.date(2024, 6, 10)).filter("warm")
    family, served = load_model(served_versions(lake), *LGBM)
    registry = registry_booster(tracking, "1")
    np.testing.assert_array_equal(family.predict_frame(served, x),
                                  registry.predict(x.select(registry.feature_name()).to_numpy()))

    def promoted() -> list:
        return [row[:3] for row in promoted_versions(served_versions(lake))]

    def champion():
        version = tracking.champion()
        return (version.name, int(version.version)) if version else None

    assert promoted() == [(*LGBM, TRAIN_ENDS[LGBM]), (*RIDGE, TRAIN_ENDS[RIDGE])] and champion() == RIDGE
    assert set_promoted(lake, tracking, *RIDGE, False) == LGBM  # the champion moves across families
    assert champion() == LGBM
    assert tracking.client().get_model_version(RIDGE[0], "1").tags["promoted"] == "false"
    assert promoted() == [(*LGBM, TRAIN_ENDS[LGBM])]
    result = run(res, instance)
    assert result.success, failure_message(result)
    served = lake.read(PREDICTIONS_TABLE).select("model_name", "model_version").unique().rows()
    assert sorted(served) == [(NAIVE_MODEL, 1), LGBM]  # the naive walk before v1's week

    assert set_promoted(lake, tracking, *LGBM, False) is None
    assert champion() is None
    result = run(res, instance)  # every version demoted: the naive random walk serves every day again
    assert result.success, failure_message(result)
    assert set(lake.read(PREDICTIONS_TABLE)["model_name"]) == {NAIVE_MODEL}
    assert set_promoted(lake, tracking, *RIDGE, True) == RIDGE and champion() == RIDGE
    assert promoted() == [(*RIDGE, TRAIN_ENDS[RIDGE])]
    with pytest.raises(ValueError, match="no registered version 7"):
        set_promoted(lake, tracking, LGBM[0], 7, False)


def test_a_day_whose_features_failed_their_check_in_an_earlier_run_is_not_forecast(tmp_path, instance):
    """Blocking across runs: the check failed in another run, so Dagster does not stop this one; the readers do."""
    lake = build_lake(tmp_path)
    res = model_resources(tmp_path, lake) | {
        "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path}/warehouse.db"),
        "universe": UniverseResource(tickers=[f"T{i:03d}" for i in range(40)])}
    register(res, lake)
    bad_day = dt.date(2024, 6, 5)
    fail_the_features_check(lake, instance, bad_day, dt.date(2024, 6, 3), dt.date(2024, 6, 7))
    result = run(res, instance)
    assert result.success, failure_message(result)
    preds = lake.read(PREDICTIONS_TABLE)
    assert bad_day not in set(preds["date"]) and dt.date(2024, 6, 4) in set(preds["date"])
    assert preds.height == 40 * (len(trading_days(FIRST, LAST)) - 1)
    md = materialization_metadata(result, "predictions")
    assert md["excluded_partitions"] == {"check": "features:features_schema", "partitions": ["2024-06-05"]}
    # the forecast check does not expect what was excluded, and the evaluation has no forecast made that day
    assert [(c.check_name, c.passed) for c in result.get_asset_check_evaluations()] == [
        ("predictions_complete_and_plausible", True)]
    evaluated = lake.read(EVALUATION_TABLE, date_column="target_date")
    assert bad_day not in set(evaluated["date"]) and dt.date(2024, 6, 4) in set(evaluated["date"])
