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
def test_backfill_runs_in_the_homes_instance_reruns_change_nothing_and_status_tells(tmp_path):
    """`backfill` on a fresh home: one single-run backfill with its progress shown; a rerun runs nothing; a session
    whose blocking check failed later, or a grown universe, runs again; `--force` rewrites the same tables; `status`
    tells what is there; `demo` over a range inside it is up to date."""
    args = ("--tickers", "AAPL,MSFT", "--start", "2025-05-01", "--end", "2025-06-30")
    first = cli(tmp_path, "backfill", *args)
    assert first.returncode == 0, first.stderr
    lake = pl.read_delta(str(tmp_path / "lake" / "prices"))
    n_days = lake["date"].n_unique()
    assert set(lake["ticker"]) == {"AAPL", "MSFT"} and lake.height == 2 * n_days == 2 * 41
    assert f"{n_days} of {n_days} session(s) (2025-05-01 .. 2025-06-30) in one run" in first.stdout
    for line in ("prices: started", "prices: done in", "check prices/prices_schema: passed", "features: done in",
                 "check predictions/predictions_complete_and_plausible: passed", "prediction_evaluation: done in"):
        assert line in first.stdout, line
    predictions = pl.read_delta(str(tmp_path / "lake" / "predictions")).drop("predicted_at", strict=False)

    second = cli(tmp_path, "backfill", *args)
    assert second.returncode == 0, second.stderr
    assert f"up to date: {n_days} session(s), nothing to run" in second.stdout and "started" not in second.stdout
    assert pl.read_delta(str(tmp_path / "lake" / "prices")).equals(lake)

    # the snapshot command reads the same lake: latest rows, history, and a clear error for a bad version
    snap = cli(tmp_path, "snapshot", "--tickers", "MSFT", "--rows", "3")
    assert snap.returncode == 0 and f"price_snapshots @ latest: {n_days} rows" in snap.stdout
    history = cli(tmp_path, "snapshot", "--history")
    assert history.returncode == 0 and "MERGE" in history.stdout and "CREATE TABLE" in history.stdout
    bad = cli(tmp_path, "snapshot", "--as-of", "999")
    assert bad.returncode == 1 and "has no version 999 (latest is 1" in bad.stderr

    # the run is in the instance under STOCK_PLATFORM_HOME, where `dagster dev` finds it, tagged as a backfill of
    # the range; a session whose blocking check failed in a later run is not "up to date": it runs again
    days = sorted(lake["date"].unique())
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        [run] = instance.get_runs()
        assert run.tags["stock_platform/launched_by"] == "cli" and run.status == dg.DagsterRunStatus.SUCCESS
        assert (run.tags["dagster/asset_partition_range_start"], run.tags["dagster/asset_partition_range_end"]) == (
            "2025-05-01", "2025-06-30")
        assert len(instance.get_materialized_partitions(dg.AssetKey("prediction_evaluation"))) == n_days
        fail_the_features_check(LakeResource(uri=str(tmp_path / "lake")), instance, days[-2], days[0], days[-1])
    third = cli(tmp_path, "backfill", *args)
    assert third.returncode == 0, third.stderr
    assert f"1 of {n_days} session(s) ({days[-2]} .. {days[-2]}) in one run" in third.stdout
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        assert check_status(instance, FEATURES_CHECK, [d.isoformat() for d in days]).failed == []
    assert pl.read_delta(str(tmp_path / "lake" / "features"))["stoch_k_14"].drop_nulls().max() <= 100

    status = cli(tmp_path, "status")
    assert status.returncode == 0, status.stderr
    assert "universe on 2025-06-30: 2 ticker(s) (AAPL, MSFT)" in status.stdout
    assert f"| prices | {n_days} | 2025-05-01 | 2025-06-30 | 0 |" in status.stdout
    assert "| tuned_model | 0 | - | - | - | - |" in status.stdout
    for check in ("prices | prices_schema", "features | features_schema",  # the latest: the one session's rerun
                  "predictions | predictions_complete_and_plausible"):
        assert f"| {check} | passed | {days[-2]} .. {days[-2]} |" in status.stdout, check
    assert "champion: none: the naive random walk serves" in status.stdout

    # the demo over a range inside the backfilled one: its data stage is up to date, too short to train
    demo_out = demo(tmp_path, "--tickers", "AAPL,MSFT", "--years", "0.1", "--end", "2025-06-30")
    assert demo_out.returncode == 0, demo_out.stderr
    assert "[1/3] daily assets: prices, price_snapshots, features (+ blocking checks) ... up to date" in demo_out.stdout
    assert "tuned_model: skipped: --years 0.1 is too short" in demo_out.stdout

    # a grown universe runs the whole range again, and rewrites the same rows; --force runs an up-to-date session
    grown = cli(tmp_path, "backfill", "--tickers", "AAPL,MSFT,XOM", "--start", "2025-05-01", "--end", "2025-06-30")
    assert grown.returncode == 0 and f"{n_days} of {n_days} session(s)" in grown.stdout, grown.stderr
    forced = cli(tmp_path, "backfill", "--tickers", "AAPL,MSFT,XOM", "--start", "2025-06-30", "--end", "2025-06-30",
                 "--assets", "data", "--force")
    assert forced.returncode == 0 and "1 of 1 session(s) (2025-06-30 .. 2025-06-30)" in forced.stdout, forced.stderr
    assert set(pl.read_delta(str(tmp_path / "lake" / "prices"))["ticker"]) == {"AAPL", "MSFT", "XOM"}
    again = pl.read_delta(str(tmp_path / "lake" / "predictions")).drop("predicted_at", strict=False)
    assert again.filter(pl.col("ticker") != "XOM").sort("ticker", "date").equals(predictions.sort("ticker", "date"))


def test_commands_refuse_bad_ranges_and_weeks_and_an_empty_home(tmp_path):
    bad = cli(tmp_path, "backfill", "--start", "2025-06-30", "--end", "2025-06-01")
    assert bad.returncode == 2 and "--start 2025-06-30 is after the end 2025-06-01" in bad.stderr
    bad = cli(tmp_path, "backfill", "--start", "2025-06-31")
    assert bad.returncode == 2 and "--start '2025-06-31': not a date" in bad.stderr
    bad = cli(tmp_path, "train", "--week", "2025-04-08")
    assert bad.returncode == 2 and "--week 2025-04-08: a model week starts on a Monday (that week's: 2025-04-07)" \
        in bad.stderr
    bad = cli(tmp_path, "train", "--week", "2025-04-07", "--trials", "0")
    assert bad.returncode == 2 and "--trials 0: at least one trial per family" in bad.stderr
    empty = cli(tmp_path / "nothing", "status")
    assert empty.returncode == 1 and "nothing has run in this home yet" in empty.stderr
    assert not (tmp_path / "nothing").exists()


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

    # `train` and `status` on the demo's home: its week is trained (a rerun starts no run); status shows the week,
    # the gate's check and the registry (a fresh home's `train`: test_real_data's commands on the shipped files)
    rerun = cli(home, "train", "--week", "2025-03-31", "--trials", "2")
    assert rerun.returncode == 0 and "up to date: week 2025-03-31 is trained" in rerun.stdout, rerun.stderr
    assert "model families, week 2025-03-31" in rerun.stdout
    status = cli(home, "status")
    assert status.returncode == 0, status.stderr
    assert "| tuned_model | 1 | 2025-03-31 | 2025-03-31 | 0 | - |" in status.stdout
    assert "| tuned_model | no_leakage | passed | 2025-03-31 |" in status.stdout
    assert "champion: none: the naive random walk serves (3 registered version(s)" in status.stdout  # demoted above
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert len(instance.get_runs(dg.RunsFilter(job_name="weekly_retrain"))) == 1


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
