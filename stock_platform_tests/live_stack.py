"""A real near-real-time stack for tests and the latency benchmark: a temporary home with history, a promoted
model, and a `dagster-daemon` (sensor + run queue) running the landing sensor against our definitions."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

TICKERS = ("AAPL", "MSFT", "XOM")
HISTORY = (dt.date(2023, 2, 1), dt.date(2024, 6, 14))  # > 311 sessions (WARM_ROWS): warm rows from April 2024
TRAIN_END = dt.date(2024, 6, 9)
QUEUE_YAML = """run_coordinator:
  module: dagster._core.run_coordinator.queued_run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
"""
WARM_LAUNCHER_YAML = """run_launcher:
  module: stock_platform.launcher
  class: WarmProcessRunLauncher
"""


def monitoring_yaml(poll_seconds: int | None) -> str:
    """Production's run monitoring and run retries (the repository's dagster.yaml), polling every `poll_seconds`
    (None: production's interval)."""
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "dagster.yaml").read_text())
    if poll_seconds:
        config["run_monitoring"]["poll_interval_seconds"] = poll_seconds
    return yaml.safe_dump({k: config[k] for k in ("run_monitoring", "run_retries")})


def stack_env(home: Path, **extra: str) -> dict[str, str]:
    # the stack's own settings only (MLflow's URI included: the stack has its own store under `home`)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCK_PLATFORM_", "DAGSTER_", "MLFLOW_"))}
    return env | {
        "STOCK_PLATFORM_HOME": str(home), "STOCK_PLATFORM_TICKERS": ",".join(TICKERS),
        "STOCK_PLATFORM_START": HISTORY[0].isoformat(), "DAGSTER_HOME": str(home / "dagster"),
        "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true", **extra,
    }


PREPARE = """
import datetime as dt, sys
import dagster as dg
from stock_platform.definitions import defs
from stock_platform_tests.helpers import register_promoted_model
first, last, train_end = sys.argv[1:4]  # train_end "": no model (the naive random walk forecasts)
with dg.DagsterInstance.get() as instance:
    defs.resolve_job_def("daily_assets").execute_in_process(
        instance=instance, raise_on_error=True,
        asset_selection=[dg.AssetKey(a) for a in ("prices", "price_snapshots", "features")],
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last})
if not train_end:
    sys.exit(0)
params = {"num_leaves": 7, "learning_rate": 0.1, "min_data_in_leaf": 20, "feature_fraction": 0.8,
          "bagging_fraction": 0.8, "lambda_l1": 0.1, "lambda_l2": 1.0, "n_estimators": 30}
register_promoted_model(defs.resources["lake"], defs.resources["tracking"], dt.date.fromisoformat(train_end), params)
"""


def prepare(home: Path, env: dict[str, str], *, queued: bool = True, warm_launcher: bool = True,
            monitor_seconds: int | None = None, model: bool = True) -> None:
    """History (prices -> features) as one in-process run, and (`model`) a promoted model trained up to TRAIN_END
    (without: the last two months of history only).

    `queued=False`: the sensor daemon launches runs itself (no queue: no dequeue wait, no concurrency limits).
    `warm_launcher=False`: Dagster's DefaultRunLauncher (the code server spawns each run's process) instead of
    stock_platform.launcher.WarmProcessRunLauncher (production's), with production's run monitoring (polling
    every `monitor_seconds` if given)."""
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    launcher = WARM_LAUNCHER_YAML + monitoring_yaml(monitor_seconds) if warm_launcher else ""
    (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n" + (QUEUE_YAML if queued else "")
                                                   + launcher)
    # without a model, two months of history (the naive random walk needs no warm features)
    first = HISTORY[0] if model else HISTORY[1] - dt.timedelta(days=60)
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", PREPARE, first.isoformat(), HISTORY[1].isoformat(),
                           TRAIN_END.isoformat() if model else ""], env=env, capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"preparing the live stack failed:\n{done.stderr[-3000:]}")


class Daemon:
    """`dagster-daemon run` on the home's instance, with the landing sensor started."""

    def __init__(self, home: Path, env: dict[str, str]):
        self.home, self.env = home, env
        self.log = open(home / "daemon.log", "a")  # noqa: SIM115 - closed in stop()
        subprocess.run([sys.executable, "-m", "dagster", "sensor", "start", "-m", "stock_platform.definitions",
                        "landing_zone_sensor"], env=env, check=True, capture_output=True, timeout=120)
        self.proc = subprocess.Popen([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-m",
                                      "stock_platform.definitions"],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL the daemon with every process it started (its run workers): a container killed, a host lost."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def wait_for(check, timeout: float, every: float = 0.25):
    """Poll `check()` until it returns something (not None/False); return it and the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        value = check()
        if value is not None and value is not False:
            return value, time.perf_counter() - start
        time.sleep(every)
    raise TimeoutError(f"nothing after {timeout:.0f} s")


def rows_for(lake_dir: Path, table: str, day: dt.date, tickers: tuple[str, ...] = TICKERS) -> pl.DataFrame | None:
    """The table's rows of `day` once every ticker has one (None before)."""
    path = lake_dir / table
    if not (path / "_delta_log").exists():
        return None
    try:
        rows = pl.read_delta(str(path)).filter(pl.col("date") == day)
    except Exception:  # noqa: BLE001 - a commit in progress: try again
        return None
    return rows if set(rows["ticker"]) >= set(tickers) else None
