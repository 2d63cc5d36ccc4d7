"""The production instance config (top-level dagster.yaml, dagster-postgres) on the real Postgres server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from stock_platform.assets.ingestion import prices
from stock_platform.automation import daily_assets_job
from stock_platform.checks import prices_schema_check
from stock_platform.resources.landing import LandingResource

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.postgres
def test_production_dagster_yaml_runs_partitions_on_postgres(fresh_postgres_db, monkeypatch, demo_source, lake, universe,
                                                             tmp_path):
    url = fresh_postgres_db
    # the repository's dagster.yaml, in a DAGSTER_HOME of its own (local artefacts such as compute logs go there)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    for key, value in {"DAGSTER_PG_HOST": url.host, "DAGSTER_PG_PORT": str(url.port or 5432),
                       "DAGSTER_PG_USER": url.username or "postgres", "DAGSTER_PG_PASSWORD": url.password or "",
                       "DAGSTER_PG_DB": url.database}.items():
        monkeypatch.setenv(key, value)
    defs = dg.Definitions(assets=[prices], asset_checks=[prices_schema_check], jobs=[daily_assets_job],
                          resources={"source": demo_source, "lake": lake, "universe": universe,
                                     "landing": LandingResource(uri=str(tmp_path / "landing"))})
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        result = defs.resolve_job_def("daily_assets").execute_in_process(
            instance=instance, raise_on_error=False,
            tags={"dagster/asset_partition_range_start": "2024-05-01", "dagster/asset_partition_range_end": "2024-05-10"})
        assert result.success
        assert instance.get_materialized_partitions(dg.AssetKey("prices")) == {
            "2024-05-01", "2024-05-02", "2024-05-03", "2024-05-06", "2024-05-07", "2024-05-08", "2024-05-09",
            "2024-05-10"}
        record = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey("prices"), "prices_schema"))
        assert record is not None and record.event.asset_check_evaluation.passed
    assert os.environ["DAGSTER_PG_DB"].startswith("sp_test_")
