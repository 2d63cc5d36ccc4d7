"""Small helpers for tests that run jobs through a real Dagster instance."""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import functools
import shutil
import tempfile
import threading
import time
from pathlib import Path

import dagster as dg
import polars as pl

from stock_platform.assets.lake import ensure_snapshot_table
from stock_platform.assets.model import load_training_set
from stock_platform.lib.calendar import trading_days
from stock_platform.lib.demo_market import generate
from stock_platform.lib.indicators import compute_features
from stock_platform.lib.modeling import next_day_returns
from stock_platform.lib.tables import FEATURES_TABLE, PRECOMBINE, SNAPSHOT_TABLE
from stock_platform.registry import register_version
from stock_platform.resources.lake import LakeResource
from stock_platform.resources.tracking import TrackingResource
from stock_platform.resources.tuning import TuningResource

START, END = dt.date(2021, 1, 4), dt.date(2024, 6, 28)


def run_range(defs: dg.Definitions, instance: dg.DagsterInstance, start: str, end: str, job: str = "daily_assets"):
    """Execute `job` for the partition range [start, end] as one run (a single-run backfill)."""
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, raise_on_error=False,
        tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end},
    )


def failure_message(result) -> str:
    """Every failed step's error with its causes (an exception raised in an asset is the cause of Dagster's)."""
    def chain(error):
        while error is not None:
            yield error.message.strip()
            error = error.cause
    return "\n".join(m for e in result.all_events if e.event_type_value == "STEP_FAILURE"
                     for m in chain(e.event_specific_data.error))


def materialization_metadata(result, asset: str) -> dict:
    """Metadata values of the asset's (first) materialization in a run."""
    [event, *_] = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in event.metadata.items()}


def build_lake(root: Path, *, leak: bool = False) -> LakeResource:
    """Snapshots and features of a 40-ticker demo market under `root/lake`; `leak` makes the model input `ret_1d`
    tomorrow's return (the classic off-by-one: a shift the wrong way). Built once per test session, copied here
    (a Delta table's log holds relative paths: the copy is a table of its own)."""
    shutil.copytree(_lake_template(leak), root / "lake")
    return LakeResource(uri=str(root / "lake"))


@functools.cache
def _lake_template(leak: bool) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"lake_template_{'leak' if leak else 'honest'}_"))
    atexit.register(shutil.rmtree, root, True)
    prices = generate([f"T{i:03d}" for i in range(40)], START, END)
    lake = LakeResource(uri=str(root / "lake"))
    ensure_snapshot_table(lake)
    lake.upsert(SNAPSHOT_TABLE, prices.with_columns(_is_deleted=pl.lit(False)), keys=["ticker", "date"],
                order_by=PRECOMBINE)
    features = compute_features(prices)
    if leak:
        tomorrow = next_day_returns(prices, trading_days(START, END)).select("ticker", "date", tomorrow="label")
        features = (features.join(tomorrow, on=["ticker", "date"], how="left")
                    .with_columns(ret_1d=pl.col("tomorrow")).drop("tomorrow"))
    lake.replace_dates(FEATURES_TABLE, features, START, END)
    return root / "lake"


def daily_definitions(source, lake: LakeResource, universe, root: Path) -> dg.Definitions:
    """prices -> price_snapshots -> features with their blocking checks and the daily job, on `lake`, with a
    landing zone and an SQLite warehouse under `root`."""
    from stock_platform.assets.ingestion import prices
    from stock_platform.assets.lake import price_snapshots
    from stock_platform.assets.ml import features
    from stock_platform.automation import daily_assets_job
    from stock_platform.checks import features_schema_check, prices_schema_check
    from stock_platform.resources.landing import LandingResource
    from stock_platform.resources.warehouse import WarehouseResource

    return dg.Definitions(
        assets=[prices, price_snapshots, features], asset_checks=[prices_schema_check, features_schema_check],
        jobs=[daily_assets_job],
        resources={"source": source, "lake": lake, "universe": universe,
                   "landing": LandingResource(uri=str(root / "landing")),
                   "warehouse": WarehouseResource(url=f"sqlite:///{root / 'warehouse.db'}")})


def model_resources(root: Path, lake: LakeResource) -> dict:
    return {"lake": lake, "tuning": TuningResource(storage_dir=str(root / "ray")),
            "tracking": TrackingResource(tracking_uri=f"sqlite:///{root}/mlflow.db",
                                         artifact_location=str(root / "mlartifacts"))}


def register_promoted_model(lake: LakeResource, tracking: TrackingResource, train_end: dt.date, params: dict,
                            family: str = "lightgbm") -> tuple[str, int]:
    """A model of `family` the library trains on the rows known by `train_end` (as the family's asset reads them),
    registered, tagged and promoted as the gate would; returns (model name, version)."""
    from stock_platform.assets.model import model_example
    from stock_platform.lib.families import FAMILIES

    fam = FAMILIES[family]
    data = load_training_set(lake, train_end, fam)
    model = fam.fit(params, data, (0, data.sessions - 1))
    with tracking.run(f"trained to {train_end}", tags={}):
        import mlflow

        mlflow.log_params(params)
        return register_version(lake, tracking, fam, model, model_example(fam, data), params=params,
                                train_end=train_end, promoted=True, gate="promoted by the test")


def fail_the_features_check(lake: LakeResource, instance: dg.DagsterInstance, day: dt.date, first: dt.date,
                            last: dt.date) -> None:
    """Corrupt one day's stored features (%K 120) and run the blocking features check over first..last in one
    run, as an earlier run would have: it fails, and names only `day` among the range's partitions."""
    from stock_platform.assets.ml import features
    from stock_platform.checks import features_schema_check

    lake.replace_dates(FEATURES_TABLE, lake.read(FEATURES_TABLE, day, day).with_columns(stoch_k_14=pl.lit(120.0)), day, day)
    check_job = dg.define_asset_job("features_check", selection=dg.AssetSelection.checks(features_schema_check))
    defs = dg.Definitions(assets=[features], asset_checks=[features_schema_check], jobs=[check_job],
                          resources={"lake": lake})
    [evaluation] = run_range(defs, instance, first.isoformat(), last.isoformat(), "features_check"
                             ).get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.metadata["failed_partitions"].value == [day.isoformat()]


def registry_booster(tracking: TrackingResource, version: str):
    """The booster MLflow's registry holds for `version`, loaded the way any MLflow user would (the platform
    serves its lake copy; tests compare the two)."""
    import mlflow

    tracking.client()  # points mlflow at the tracking and registry URIs
    from stock_platform.lib.families import FAMILIES

    return mlflow.lightgbm.load_model(f"models:/{tracking.model_name(FAMILIES['lightgbm'])}/{version}")


@contextlib.contextmanager
def serving(lake: LakeResource):
    """The API on `lake` in a real uvicorn server (a thread), polling the lake every 0.2 s; yields host:port."""
    import uvicorn

    from stock_platform.serving.api import create_app
    from stock_platform_tests.deployment import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(lake, poll_seconds=0.2), host="127.0.0.1", port=port,
                                           log_level="warning", timeout_graceful_shutdown=3))  # as `serve`
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
