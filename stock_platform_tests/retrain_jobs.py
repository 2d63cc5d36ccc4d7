"""A reconstructable job for test_tuned_model.py's re-execution test: `ridge_model` on the lake and MLflow store
under STOCK_PLATFORM_TEST_ROOT (re-execution needs a job Dagster can load again by name)."""

import os
from pathlib import Path

import dagster as dg

from stock_platform.assets.model import family_models
from stock_platform.resources.lake import LakeResource
from stock_platform_tests.helpers import model_resources


def ridge_job() -> dg.JobDefinition:
    root = Path(os.environ["STOCK_PLATFORM_TEST_ROOT"])
    [ridge] = [a for a in family_models if a.key == dg.AssetKey("ridge_model")]
    job = dg.define_asset_job("ridge_week", selection=[ridge], executor_def=dg.in_process_executor)
    defs = dg.Definitions(assets=[ridge], jobs=[job],
                          resources=model_resources(root, LakeResource(uri=str(root / "lake"))))
    return defs.resolve_job_def("ridge_week")
