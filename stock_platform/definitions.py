"""The single entry point Dagster loads: `defs`.

Loading stays fast: heavy libraries (pandera, deltalake, ray, lightgbm, mlflow, yfinance) are imported
inside the functions that use them.
"""

from __future__ import annotations

import gc
import os

import dagster as dg

from stock_platform import automation
from stock_platform.assets.ingestion import prices
from stock_platform.assets.lake import price_snapshots
from stock_platform.assets.forecast import prediction_evaluation, predictions, predictions_check
from stock_platform.assets.ml import features
from stock_platform.assets.model import tuned_model
from stock_platform.checks import features_schema_check, prices_schema_check
from stock_platform.resources import PriceSourceResource, UniverseResource
from stock_platform.resources.landing import LandingResource
from stock_platform.resources.lake import LakeResource
from stock_platform.resources.tracking import TrackingResource
from stock_platform.resources.tuning import TuningResource
from stock_platform.resources.warehouse import WarehouseResource
from stock_platform.settings import Settings, get_settings


def _from_env(variable: str, default: str) -> str | dg.EnvVar:
    return dg.EnvVar(variable) if os.environ.get(variable) else default


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    return {
        "source": PriceSourceResource(
            source=settings.source, files_dir=str(settings.files_dir) if settings.files_dir else None
        ),
        "lake": LakeResource(uri=settings.lake_uri, aws_endpoint_url=settings.aws_endpoint_url),
        "landing": LandingResource(uri=settings.landing_uri, aws_endpoint_url=settings.aws_endpoint_url),
        "universe": UniverseResource(tickers=list(settings.tickers)),
        # The URL may hold a password: Dagster shows the variable's name, never its value.
        "warehouse": WarehouseResource(url=_from_env("STOCK_PLATFORM_WAREHOUSE_URL", settings.warehouse_url)),
        "tuning": TuningResource(address=settings.ray_address, storage_dir=str(settings.home / "ray_results")),
        "tracking": TrackingResource(tracking_uri=_from_env("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri),
                                     artifact_location=settings.mlflow_artifact_location),
    }


defs = dg.Definitions(
    assets=[prices, price_snapshots, features, tuned_model, predictions, prediction_evaluation],
    asset_checks=[prices_schema_check, features_schema_check, predictions_check],
    jobs=automation.jobs,
    schedules=automation.schedules,
    sensors=automation.sensors,
    resources=build_resources(get_settings()),
)

# Everything built while loading lives as long as the process. Freezing it keeps the garbage collector
# from re-scanning ~1M objects of Dagster's on each full collection and at interpreter exit (0.5 s of
# every run process's shutdown on this machine).
gc.freeze()
