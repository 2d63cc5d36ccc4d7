"""`tuned_model` through real Dagster runs: real Ray Tune (small budget), a real MLflow store and registry."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import dagster as dg
import pytest

from stock_platform.assets.model import LEAKAGE_CHECK, load_training_set, tuned_model

from stock_platform.lib.indicators import MODEL_FEATURES
from stock_platform.registry import load_booster, served_versions
from stock_platform.resources.tracking import TrackingResource
from stock_platform.resources.tuning import TuningResource
from stock_platform_tests.helpers import (build_lake, fail_the_features_check, failure_message,
                                         materialization_metadata, model_resources, registry_booster)

pytestmark = pytest.mark.slow
SMALL = {"ops": {"tuned_model": {"config": {"trials": 4, "time_budget_seconds": 120}}}}


def ray_processes() -> list[str]:
    """Command lines of the live Ray processes (raylet, GCS, workers) this test process started: its descendants,
    so a Ray job of another process on the machine does not count."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # the process ended meanwhile
            continue
    mine, grew = {os.getpid()}, True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in mine} - mine
        mine |= found
        grew = bool(found)
    commands = []
    for pid in mine - {os.getpid()}:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(name in cmd for name in ("raylet", "gcs_server", "ray::", "default_worker.py")):
            commands.append(cmd[:120])
    return commands


def materialize(res: dict, instance, week: str):
    return dg.materialize([tuned_model], partition_key=week, resources=res, instance=instance,
                          raise_on_error=False, run_config=SMALL)


def test_two_weeks_register_two_versions_and_champion_follows_the_gate(tmp_path, instance):
    res = model_resources(tmp_path, build_lake(tmp_path))
    tracking: TrackingResource = res["tracking"]
    decisions = []
    for week in ("2024-06-10", "2024-06-17"):
        if week == "2024-06-17":  # blocking across runs: a day whose features failed their check is left out
            fail_the_features_check(res["lake"], instance, dt.date(2024, 5, 15), dt.date(2024, 5, 13),
                                    dt.date(2024, 5, 17))
        result = materialize(res, instance, week)
        assert result.success, failure_message(result)
        md = materialization_metadata(result, "tuned_model")
        decisions.append(md)
        assert [(c.check_name, c.passed) for c in result.get_asset_check_evaluations()] == [(LEAKAGE_CHECK, True)]
        assert md["dagster/row_count"] > 20_000 and "naive random walk" in md["holdout_scores"]
        assert "| feature | gain |" in md["feature_importance"] and md["mlflow_run_id"]
        assert not ray_processes(), "Ray left processes behind"

    client = tracking.client()
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{tracking.model_name}'"))
    assert versions == [1, 2]
    first, second = decisions
    assert first["excluded_partitions"] == {"check": "features:features_schema", "count": 0, "first": []}
    assert second["excluded_partitions"] == {"check": "features:features_schema", "count": 1, "first": ["2024-05-15"]}
    every_row = load_training_set(res["lake"], dt.date(2024, 6, 23))
    assert second["dagster/row_count"] == len(every_row.y) - 40  # the 40 tickers' rows of that day
    # the gate's rule, applied to the numbers each run recorded
    assert first["promoted"] == (first["holdout_rmse"] < first["holdout_naive_rmse"] and first["holdout_ic"] > 0)
    expect_second = second["holdout_rmse"] < second["holdout_naive_rmse"] and second["holdout_ic"] > 0 and (
        not first["promoted"] or second["holdout_ic"] > second["champion_holdout_ic"])
    assert second["promoted"] == expect_second
    champion = tracking.champion()
    expected = "2" if second["promoted"] else ("1" if first["promoted"] else None)
    assert (str(champion.version) if champion else None) == expected
    # the parent run holds the trials as nested runs, and the logged model predicts from the registry
    run = client.get_run(second["mlflow_run_id"])
    nested = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(nested) == 4 and {"num_leaves", "learning_rate"} <= set(nested[0].data.params)
    model = registry_booster(tracking, "2")
    assert model.feature_name() == list(MODEL_FEATURES)  # the scale-free inputs only, never a price level
    # the lake's serving copy: both versions, promoted as the gate said, the same trees as the registry's
    served = served_versions(res["lake"], tracking.model_name)
    assert served["version"].to_list() == [1, 2]
    assert served["promoted"].to_list() == [first["promoted"], second["promoted"]]
    assert load_booster(served, 2).model_to_string() == model.model_to_string()


def test_a_feature_from_tomorrows_price_fails_the_leakage_check_and_is_never_promoted(tmp_path, instance):
    res = model_resources(tmp_path, build_lake(tmp_path, leak=True))
    result = materialize(res, instance, "2024-06-17")
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == LEAKAGE_CHECK and not check.passed
    assert set(check.metadata["suspects"].value) == {"ret_1d"}
    md = materialization_metadata(result, "tuned_model")
    assert md["promoted"] is False and "leakage suspected in ['ret_1d']" in md["gate"]
    assert res["tracking"].champion() is None


def test_too_little_history_fails_clearly_before_starting_ray(tmp_path, instance):
    res = model_resources(tmp_path, build_lake(tmp_path))
    result = materialize(res, instance, "2022-01-03")  # warm features start in 2022: a few sessions only
    assert not result.success
    assert "too few" in failure_message(result) or "no warm feature rows" in failure_message(result)


def test_ray_is_shut_down_when_the_block_fails(tmp_path):
    import ray

    tuning = TuningResource(storage_dir=str(tmp_path / "ray"), num_cpus=1)
    with pytest.raises(RuntimeError, match="boom"), tuning.ray_session():
        assert ray.is_initialized()
        raise RuntimeError("boom")
    assert not ray.is_initialized()
    assert not ray_processes()
