"""`stock-platform demo` end to end, as a user runs it (a subprocess with its own environment)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import dagster as dg
import polars as pl
import pytest

from stock_platform.gates import FEATURES_CHECK, check_status
from stock_platform.resources.lake import LakeResource
from stock_platform_tests.conftest import DEMO_ARGS, DEMO_SECRETS
from stock_platform_tests.helpers import fail_the_features_check


def cli(home, command: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCK_PLATFORM_", "DAGSTER_HOME"))}
    return subprocess.run([sys.executable, "-W", "ignore", "-m", "stock_platform.cli", command, "--home", str(home),
                           *args], capture_output=True, text=True, env=env, timeout=600)


def demo(home, *args: str) -> subprocess.CompletedProcess:
    return cli(home, "demo", *args)


@pytest.mark.slow
def test_demo_runs_in_a_real_instance_and_a_second_run_changes_nothing(tmp_path):
    args = ("--tickers", "AAPL,MSFT", "--years", "0.1", "--end", "2025-06-30")
    first = demo(tmp_path, *args)
    assert first.returncode == 0, first.stderr
    assert "partition(s) in one run" in first.stdout
    assert "tuned_model: skipped: --years 0.1 is too short" in first.stdout
    row = next(line for line in first.stdout.splitlines() if line.startswith("prices"))
    assert "1/1 passed" in row
    lake = pl.read_delta(str(tmp_path / "lake" / "prices"))
    assert set(lake["ticker"]) == {"AAPL", "MSFT"}
    n_days = lake["date"].n_unique()
    assert lake.height == 2 * n_days and f"{n_days}/{n_days}" in row

    second = demo(tmp_path, *args)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    assert pl.read_delta(str(tmp_path / "lake" / "prices")).equals(lake)

    snap_row = next(line for line in first.stdout.splitlines() if line.startswith("price_snapshots"))
    assert f"{n_days}/{n_days}" in snap_row

    # the snapshot command reads the same lake: latest rows, history, and a clear error for a bad version
    snap = cli(tmp_path, "snapshot", "--tickers", "MSFT", "--rows", "3")
    assert snap.returncode == 0 and f"price_snapshots @ latest: {n_days} rows" in snap.stdout
    history = cli(tmp_path, "snapshot", "--history")
    assert history.returncode == 0 and "MERGE" in history.stdout and "CREATE TABLE" in history.stdout
    bad = cli(tmp_path, "snapshot", "--as-of", "999")
    assert bad.returncode == 1 and "has no version 999 (latest is 1" in bad.stderr

    # the runs are in the instance under STOCK_PLATFORM_HOME, where `dagster dev` finds them
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        runs = instance.get_runs()
        assert len(runs) == 1 and runs[0].tags["stock_platform/launched_by"] == "demo"
        assert len(instance.get_materialized_partitions(dg.AssetKey("prices"))) == n_days

        # a partition whose blocking check failed in a later run is not "up to date": the demo runs it again
        days = sorted(lake["date"].unique())
        fail_the_features_check(LakeResource(uri=str(tmp_path / "lake")), instance, days[-2], days[0], days[-1])
        assert check_status(instance, FEATURES_CHECK, [d.isoformat() for d in days]).failed == [days[-2].isoformat()]
    third = demo(tmp_path, *args)
    assert third.returncode == 0, third.stderr
    assert "up to date" not in third.stdout.splitlines()[3] and "partition(s) in one run" in third.stdout
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        assert check_status(instance, FEATURES_CHECK, [d.isoformat() for d in days]).failed == []
    assert pl.read_delta(str(tmp_path / "lake" / "features"))["stoch_k_14"].drop_nulls().max() <= 100


def test_demo_trains_a_model_and_shows_it_beside_the_naive_baseline(demo_run, tmp_path):
    home = demo_run.copy_to(tmp_path / "home")  # `stock-platform demo` DEMO_ARGS, run once for the session
    first = demo_run.stdout
    row = next(line for line in first.splitlines() if line.startswith("tuned_model"))
    # trained up to 12 weeks before the end; the weeks after it are forecast out of sample
    assert "week 2025-03-31" in row and "1/1 passed" in row
    # every family's candidate beside the naive walk on the held-out window, with Diebold-Mariano, and the choice
    for name in ("stock_platform_lgbm v1", "stock_platform_ridge v1", "stock_platform_ar v1"):
        assert f"| {name} | candidate |" in first
    assert "| naive_random_walk | baseline |" in first and "dm_p_value" in first and "\ngate: " in first
    assert "Created version" not in first + demo_run.stderr
    assert (home / "mlflow.db").exists() and (home / "mlartifacts").is_dir()
    assert "[3/3] predictions, prediction_evaluation: 2025-04-07 .. 2025-06-30" in first
    # whatever the gate decided, every day is forecast and evaluated: by the model, or by the naive walk
    assert "| MASE |" in first and "Diebold-Mariano" in first
    pred_row = next(line for line in first.splitlines() if line.startswith("predictions"))
    assert "1/1 passed" in pred_row
    promoted = re.search(r"promoted (stock_platform_\w+) v1", row)
    served = f"{promoted[1]} v1" if promoted else "naive_random_walk v1"
    assert promoted or "none promoted" in row
    assert f"served by {served} (" in first

    second = demo(home, *DEMO_ARGS)
    assert second.returncode == 0, second.stderr
    assert "tuned_model, week 2025-03-31: Ray Tune, 2 trials per family ... up to date" in second.stdout

    report = cli(home, "report", "--start", "2025-05-01", "--plot", str(home / "eval.png"), "--top-k", "2",
                 "--cost-bps", "10")
    assert report.returncode == 0, report.stderr
    assert "model selection, week ending 2025-04-06: held-out 60 sessions" in report.stdout
    assert "| stock_platform_ridge v1 | candidate |" in report.stdout and "dm_p_value" in report.stdout
    assert "out-of-sample forecasts 2025-05-01 .. " in report.stdout and f"served by {served} (" in report.stdout
    assert "| Rank IC (Spearman) |" in report.stdout and "after 10 bps per side" in report.stdout
    assert (home / "eval.png").read_bytes()[:4] == b"\x89PNG"

    listed = cli(home, "models")
    assert listed.returncode == 0, listed.stderr
    assert "3 registered version(s) of stock_platform_lgbm, stock_platform_ridge, stock_platform_ar" in listed.stdout
    assert "2025-04-06" in listed.stdout
    family = {"lgbm": "lightgbm", "ridge": "ridge", "ar": "ar"}[promoted[1].rsplit("_", 1)[1]] if promoted else "ar"
    rollback = cli(home, "models", "--demote", f"{family}/1")
    assert rollback.returncode == 0, rollback.stderr
    assert "demoted stock_platform_" in rollback.stdout
    assert "champion is now none: the naive random walk serves" in rollback.stdout
    assert cli(home, "models", "--demote", "lightgbm/9").stderr.strip() == (
        "error: model stock_platform_lgbm has no registered version 9")
    assert "name a version as FAMILY/VERSION" in cli(home, "models", "--demote", "1").stderr


def test_the_demo_leaves_no_secret_of_its_environment_anywhere(demo_run):
    """The session's demo ran with secrets in its environment (a Postgres and an MLflow password, an AWS key):
    none is in its output or in any file of its home, searched byte by byte (logs, compute logs, the instance's
    SQLite run and event storage, the lake's Delta logs, MLflow's store, the warehouse)."""
    files = [p for p in demo_run.home.rglob("*") if p.is_file()]
    assert len(files) > 100 and any(p.name == "mlflow.db" for p in files)
    for name, value in DEMO_SECRETS.items():
        assert value not in demo_run.stdout + demo_run.stderr, name
        for path in files:
            assert value.encode() not in path.read_bytes(), f"{name} is in {path}"


def test_demo_refuses_a_bad_ticker_with_a_clear_message(tmp_path):
    out = demo(tmp_path, "--tickers", "AAPL,../../etc")
    assert out.returncode == 2
    assert "--tickers: '../../ETC' is not a valid ticker" in out.stderr


@pytest.mark.slow
def test_demo_over_a_range_the_files_do_not_cover_says_so(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "AAPL.csv").write_text("Date,Open,High,Low,Close,Volume\n2024-01-02,10,11,9,10.5,100\n")
    out = demo(tmp_path / "home", "--source", "files", "--files-dir", str(files), "--tickers", "AAPL", "--years", "0.05",
               "--end", "2025-06-30")
    assert out.returncode == 1 and out.stdout.rstrip().endswith("FAILED")
    assert "source 'files' returned no rows for AAPL between 2025-06-" in out.stderr
    assert "tuned_model" not in out.stdout  # stopped before training on nothing


def test_demo_fails_at_start_on_an_unreachable_warehouse(tmp_path):
    env_url = "postgresql://nobody@127.0.0.1:1/none"
    out = subprocess.run([sys.executable, "-W", "ignore", "-m", "stock_platform.cli", "demo", "--home", str(tmp_path)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "STOCK_PLATFORM_WAREHOUSE_URL": env_url})
    assert out.returncode == 2
    assert "STOCK_PLATFORM_WAREHOUSE_URL='postgresql+psycopg2://nobody@127.0.0.1:1/none': unreachable" in out.stderr


def test_maintain_runs_the_lake_maintenance_job_in_the_homes_instance(tmp_path):
    from stock_platform_tests.helpers import build_lake

    lake = build_lake(tmp_path / "home")  # snapshots and features of 40 tickers, written in 126-date commits
    before = {name: lake.read(name) for name in ("price_snapshots", "features")}
    result = cli(tmp_path / "home", "maintain")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| price_snapshots |" in result.stdout and "| features |" in result.stdout, result.stdout
    assert "lake_maintenance run" in result.stdout and "done" in result.stdout
    for name, rows in before.items():
        assert lake.read(name).equals(rows), name
        assert lake.table(name).get_add_actions(flatten=True).num_rows == 4, name  # 2021..2024: a file per year
    with dg.DagsterInstance.from_config(str(tmp_path / "home" / "dagster")) as instance:
        [run] = instance.get_runs(dg.RunsFilter(job_name="lake_maintenance"))
        assert run.status == dg.DagsterRunStatus.SUCCESS
        observed = instance.fetch_observations(dg.AssetKey("price_snapshots"), limit=5).records
        assert [r.asset_observation.metadata["table_files"].value for r in observed] == [4]
