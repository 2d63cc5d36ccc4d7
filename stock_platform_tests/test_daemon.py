"""Near-real-time with a real `dagster-daemon` when it dies: a landing run whose daemon is killed is failed by run
monitoring, retried once, and its file applied once. (Files landed on S3 through the daemon, to snapshots and
predictions, with a quarantined broken file: test_deployment.py's production stack.)"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from stock_platform.lib.demo_market import generate
from stock_platform.lib.events import bars_to_events, encode
from stock_platform.resources.landing import LandingResource
from stock_platform_tests.live_stack import TICKERS, Daemon, prepare, rows_for, stack_env, wait_for

pytestmark = pytest.mark.slow
DAY = dt.date(2024, 6, 17)  # the first session after the prepared history


def submitted(ledger_path) -> pl.DataFrame | None:
    """The ledger once no file version in it waits for its run to be created (None before)."""
    if not (ledger_path / "_delta_log").exists():
        return None
    ledger = pl.read_delta(str(ledger_path)).sort("key")
    return None if (ledger["status"] == "requested").any() else ledger


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A stack home with history (no model: the naive random walk forecasts), built once; each test works on a copy
    of it."""
    template = tmp_path_factory.mktemp("prepared")
    prepare(template, stack_env(template), monitor_seconds=1, model=False)  # a dead worker is found within a second
    return template


def test_a_landing_run_whose_daemon_dies_fails_is_retried_once_and_applies_its_file_once(tmp_path, prepared):
    """kill -9 of the daemon with its run worker mid-run: the run would stay STARTED for ever; the restarted
    daemon's run monitoring fails it (its worker is gone), run retries start it again, and the file lands once."""
    env = stack_env(tmp_path)
    shutil.copytree(prepared, tmp_path, dirs_exist_ok=True)
    landing = LandingResource(uri=str(tmp_path / "landing"))
    bars = generate(list(TICKERS), DAY, DAY)
    daemon = Daemon(tmp_path, env)
    instance = dg.DagsterInstance.from_config(str(tmp_path / "dagster"))
    # the landing run only: the freshness-check sensor (RUNNING by default) starts runs of its own
    started = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED],
                            tags={"stock_platform/trigger": "landing_zone_sensor"})
    try:
        landing.write(f"quotes/{DAY}/bars.jsonl", encode(bars_to_events(bars, "demo"), "jsonl"))
        first, _ = wait_for(lambda: next(iter(instance.get_runs(started)), None), timeout=180, every=0.1)
        daemon.kill()
        assert instance.get_run_by_id(first.run_id).status == dg.DagsterRunStatus.STARTED  # nobody left to end it
        daemon = Daemon(tmp_path, env)
        wait_for(lambda: instance.get_run_by_id(first.run_id).status == dg.DagsterRunStatus.FAILURE, timeout=120)
        retry, _ = wait_for(lambda: next(iter(instance.get_runs(
            dg.RunsFilter(tags={"dagster/parent_run_id": first.run_id}))), None), timeout=120)
        retry, _ = wait_for(lambda: (r := instance.get_run_by_id(retry.run_id)).is_finished and r, timeout=240)
        ledger, _ = wait_for(lambda: submitted(tmp_path / "lake" / "landing_ledger"), timeout=60)
        runs = instance.get_runs(dg.RunsFilter(tags={"stock_platform/trigger": "landing_zone_sensor"}))
        messages = [e.message or "" for e in instance.all_logs(first.run_id)]
    finally:
        daemon.stop()
        instance.dispose()
    assert retry.status == dg.DagsterRunStatus.SUCCESS, retry.status
    assert any("is gone" in m and "Marking run" in m for m in messages)  # run monitoring's verdict
    assert {r.run_id for r in runs} == {first.run_id, retry.run_id}  # the sensor asked for no second run
    assert ledger.select("key", "status", "run_id").rows() == [(f"quotes/{DAY}/bars.jsonl", "submitted", first.run_id)]
    lake = tmp_path / "lake"
    snap = pl.read_delta(str(lake / "price_snapshots")).filter(pl.col("date") == DAY).sort("ticker")
    assert snap["close"].to_list() == bars.sort("ticker")["close"].to_list()  # applied, once per key
    assert pl.read_delta(str(lake / "prices")).filter(pl.col("date") == DAY).height == len(TICKERS)
    assert rows_for(lake, "predictions", DAY) is not None
