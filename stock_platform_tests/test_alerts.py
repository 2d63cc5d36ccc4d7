"""Alerts and freshness (stock_platform/alerts.py) on a real Dagster instance: a failed run, a failed blocking
check and a late partition each reach a local HTTP receiver (standing in for Slack) exactly once."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pytest

from stock_platform.alerts import AlertResource, alerts_sensor, freshness_checks
from stock_platform.assets.forecast import predictions
from stock_platform.assets.ingestion import prices
from stock_platform.assets.lake import price_snapshots
from stock_platform.assets.ml import features
from stock_platform.assets.model import tuned_model
from stock_platform.resources.lake import LakeResource
from stock_platform_tests.helpers import build_lake, fail_the_features_check

LINKS = "http://dagster.example:3000"


@pytest.fixture
def receiver(http_receiver):
    """Slack's stand-in: alerts arrive by POST /hook (and nowhere else: checked after the test)."""
    base, bodies, paths = http_receiver
    yield f"{base}/hook", bodies
    assert set(paths) <= {"/hook"}


class Ticker:
    """Ticks of the alerts sensor against the instance, with its cursor carried from tick to tick."""

    def __init__(self, instance, url: str):
        self.instance, self.cursor = instance, None
        self.alerts = AlertResource(webhook_url=url, dagster_url=LINKS)

    def tick(self):
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, resources={"alerts": self.alerts})
        result = alerts_sensor(context)
        self.cursor = context.cursor
        return result


def test_a_failed_run_a_failed_check_and_a_late_partition_alert_exactly_once(tmp_path, instance, receiver):
    url, bodies = receiver
    sensor = Ticker(instance, url)
    sensor.tick()  # the first tick starts from now
    assert bodies == []

    # 1. a run that fails: features for a day without snapshots
    empty = LakeResource(uri=str(tmp_path / "empty"))
    failed = dg.materialize([features], partition_key="2021-03-01", resources={"lake": empty}, instance=instance,
                            raise_on_error=False)
    assert not failed.success
    sensor.tick()
    sensor.tick()  # nothing new: nothing posted again
    [run_alert] = bodies
    text = run_alert["text"]
    assert "run failed: features partition 2021-03-01" in text and "no price snapshots for 2021-03-01" in text
    assert f"{LINKS}/runs/{failed.run_id}" in text and run_alert["blocks"][0]["text"]["text"] == text

    # 2. a blocking check that fails (its run fails too: one alert, the check's)
    lake = build_lake(tmp_path)
    day = dt.date(2024, 5, 15)
    fail_the_features_check(lake, instance, day, dt.date(2024, 5, 13), dt.date(2024, 5, 17))
    sensor.tick()
    sensor.tick()
    assert len(bodies) == 2
    text = bodies[1]["text"]
    assert "check failed: features partition 2024-05-13..2024-05-17" in text
    assert "blocking check `features_schema` failed" in text and '"failed_partitions": ["2024-05-15"]' in text
    assert f"{LINKS}/runs/" in text

    # 3. a late partition: the freshness check of `prices`, whose latest trading day was never materialized
    checks = freshness_checks([prices, price_snapshots, features, predictions], tuned_model)
    job = dg.define_asset_job("freshness", selection=dg.AssetSelection.checks(*checks))
    # the assets as the graph knows them (keys, partitions): the job runs the checks only
    specs = [dg.AssetSpec(a.key, partitions_def=a.partitions_def)
             for a in (prices, price_snapshots, features, predictions, tuned_model)]
    defs = dg.Definitions(assets=specs, asset_checks=checks, jobs=[job])
    result = defs.resolve_job_def("freshness").execute_in_process(instance=instance)
    evaluations = {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()}
    assert not evaluations["prices"].passed and evaluations["prices"].severity == dg.AssetCheckSeverity.WARN
    sensor.tick()
    sensor.tick()
    fresh = [b["text"] for b in bodies[2:]]
    assert len(fresh) == len(evaluations) == 5  # one per asset whose partition is late, once
    prices_alert = next(t for t in fresh if "freshness: prices" in t)
    assert "not fresh" in prices_alert and f"{LINKS}/runs/{result.run_id}" in prices_alert


def test_an_unreachable_webhook_delays_alerts_and_loses_none(tmp_path, instance, receiver):
    url, bodies = receiver
    sensor = Ticker(instance, "http://127.0.0.1:9/unreachable")  # nothing listens on the discard port
    sensor.tick()
    dg.materialize([features], partition_key="2021-03-01", resources={"lake": LakeResource(uri=str(tmp_path / "e"))},
                   instance=instance, raise_on_error=False)
    stuck = json.loads(sensor.cursor)
    assert isinstance(sensor.tick(), dg.SkipReason) and bodies == []
    waiting = json.loads(sensor.cursor)  # not posted: the cursor waits before that run's first alert
    assert waiting["after"] == stuck["after"] and waiting["done"] == 0
    sensor.alerts = AlertResource(webhook_url=url, dagster_url=LINKS)  # the webhook is back
    sensor.tick()
    sensor.tick()
    assert len(bodies) == 1 and "run failed: features partition 2021-03-01" in bodies[0]["text"]
