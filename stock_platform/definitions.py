"""The single entry point Dagster loads: `defs`.

Loading stays fast: heavy libraries (pandera, deltalake, ray, lightgbm, mlflow, yfinance) are imported
inside the functions that use them.
"""

from __future__ import annotations

import gc

import dagster as dg

from stock_platform import automation
from stock_platform.alerts import alerts_sensor, freshness_checks, freshness_policy
from stock_platform.assets.ingestion import prices
from stock_platform.assets.lake import price_snapshots
from stock_platform.assets.forecast import prediction_evaluation, predictions
from stock_platform.assets.ml import features
from stock_platform.assets.model import family_models, tuned_model
from stock_platform.lineage import openlineage_sensor
from stock_platform.checks import features_schema_check, predictions_check, prices_schema_check
from stock_platform.resources import build_resources
from stock_platform.settings import Settings, get_settings


# Who answers for each group's assets (shown on every asset's page in the UI)
OWNERS = {"ingestion": "team:market-data", "lake": "team:market-data", "ml": "team:quant-research"}


def build_definitions(settings: Settings) -> dg.Definitions:
    """The platform's definitions on `settings` (the partitions start at `get_settings().start`: the CLI makes
    its settings the process's with `use_settings` before it imports this module)."""
    assets = dg.map_asset_specs(
        lambda spec: spec.replace_attributes(owners=[OWNERS[spec.group_name]], freshness_policy=freshness_policy(spec)),
        [prices, price_snapshots, features, *family_models, tuned_model, predictions, prediction_evaluation])
    fresh = freshness_checks([prices, price_snapshots, features, predictions], tuned_model)
    return dg.Definitions(
        assets=dg.with_source_code_references(assets),  # "View source" on each asset's page
        asset_checks=[prices_schema_check, features_schema_check, predictions_check, *fresh],
        jobs=automation.jobs,
        schedules=automation.schedules,
        sensors=[*automation.sensors, alerts_sensor, openlineage_sensor,
                 dg.build_sensor_for_freshness_checks(freshness_checks=fresh,
                                                      default_status=dg.DefaultSensorStatus.RUNNING)],
        resources=build_resources(settings),
        # Every job's steps run in the run's process, also the runs the UI launches (a backfill, "Materialize
        # all"), which Dagster would otherwise give a process per step: the daily assets form a chain, so steps
        # never run in parallel, and a step process costs ~2 s of start-up and imports (benchmarks/latency.py:
        # 19.7 s per landing run with processes); the model families' parallel work is Ray's, and their searches
        # share the run's one Ray (resources/tuning.py), which a fork must not inherit.
        executor=dg.in_process_executor,
    )


defs = build_definitions(get_settings())

# Everything built while loading lives as long as the process. Freezing it keeps the garbage collector
# from re-scanning ~1M objects of Dagster's on each full collection and at interpreter exit (0.5 s of
# every run process's shutdown on this machine).
gc.freeze()
