"""The production deployment: docker/compose.yaml's processes started natively on Postgres, driven through the
webserver's GraphQL API as the UI drives it."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess

import polars as pl
import pytest

from stock_platform.launcher import WORKER_PID_TAG
from stock_platform.lib.calendar import trading_days
from stock_platform.resources.lake import LakeResource
from stock_platform.resources.warehouse import WarehouseResource
from stock_platform_tests.deployment import (ASSET_CHECKS, COMPOSE, PROCESSES, REPO, Deployment, compose,
                                             compose_services, launch_backfill, stack, wait_for_backfill)

TICKERS = ("AAPL", "MSFT", "XOM")
FIRST, LAST = dt.date(2023, 1, 3), dt.date(2024, 3, 28)  # > 272 sessions: features warm by the end
RUN_TAGS = "query($runId: ID!) { runOrError(runId: $runId) { ... on Run { tags { key value } } } }"


@pytest.mark.postgres
@pytest.mark.slow
def test_a_backfill_submitted_through_the_webserver_runs_on_postgres_and_reports_its_checks(tmp_path,
                                                                                           fresh_postgres_db):
    home, env = stack(tmp_path, fresh_postgres_db, TICKERS, FIRST.isoformat())
    sessions = [d.isoformat() for d in trading_days(FIRST, LAST)]
    assets = ["prices", "price_snapshots", "features"]
    # The daemon starts after the submission, as after a restart with a backfill pending: its backfill loop runs
    # every 30 s (Dagster's fixed interval), so its first iteration launches the run instead of its second.
    with Deployment(home, env, held=("daemon",)) as deployment:
        backfill_id = launch_backfill(deployment, assets, sessions, title="test backfill")
        deployment.start("daemon")
        done = wait_for_backfill(deployment, backfill_id)
        assert done["status"] == "COMPLETED_SUCCESS", (done, deployment.log("daemon")[-3000:])
        assert done["numPartitions"] == len(sessions)
        # single-run backfill policy: the whole range in one run, not one run per day
        assert len(done["runs"]) == 1 and done["runs"][0]["status"] == "SUCCESS"
        # dagster.yaml's launcher ran it, in one of the daemon's pre-started workers
        tags = deployment.graphql(RUN_TAGS, {"runId": done["runs"][0]["runId"]})["runOrError"]["tags"]
        assert WORKER_PID_TAG in {tag["key"] for tag in tags}

        checks = deployment.graphql(ASSET_CHECKS, {"keys": [{"path": [a]} for a in assets]})["assetNodes"]
        found = {(node["assetKey"]["path"][0], check["name"]): (check["blocking"],
                 (check["executionForLatestMaterialization"] or {}).get("status"))
                 for node in checks for check in node["assetChecksOrError"]["checks"]}
        # the freshness checks (non-blocking) are the freshness sensor's: it may have evaluated them by now or not
        fresh = {key: found.pop(key) for key in list(found) if key[1] == "freshness_check"}
        assert {asset for asset, _ in fresh} == set(assets) and not any(blocking for blocking, _ in fresh.values())
        assert found == {("prices", "prices_schema"): (True, "SUCCEEDED"),
                         ("features", "features_schema"): (True, "SUCCEEDED")}

    lake = LakeResource(uri=str(home / "lake"))
    for table in ("prices", "price_snapshots", "features"):
        rows = lake.read(table)
        assert rows.height == len(TICKERS) * len(sessions), table
        assert rows.select("ticker", "date").n_unique() == rows.height
    assert lake.read("features").filter(pl.col("date") == LAST)["warm"].all()
    warehouse = WarehouseResource(url=env["STOCK_PLATFORM_WAREHOUSE_URL"])
    assert warehouse.count("stock_price") == len(TICKERS) * len(sessions)


def test_the_image_runs_the_processes_the_native_deployment_starts():
    services = compose_services()
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    app = {name for name, svc in services.items() if svc.get("build")}
    assert app == {*PROCESSES, "mlflow", "api"}, "every stock_platform process runs the one image"
    assert {services[name]["image"] for name in app} == {"stock-platform:${STOCK_PLATFORM_VERSION:-latest}"}
    assert [services[name]["command"][0] for name in PROCESSES] == ["dagster", "dagster-webserver", "dagster-daemon"]
    assert services["code"]["command"][-2:] == ["-m", "stock_platform.definitions"]
    assert 'CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "stock_platform.definitions"]' \
        in dockerfile and services["code"]["command"] == ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p",
                                                          "4000", "-m", "stock_platform.definitions"]
    # the webserver and the daemon load the workspace the image carries, which points at the `code` service
    for name in ("webserver", "daemon"):
        assert services[name]["command"][-2:] == ["-w", "/opt/dagster/home/workspace.yaml"]
    assert "COPY docker/workspace.yaml ${DAGSTER_HOME}/workspace.yaml" in dockerfile
    assert "USER stock" in dockerfile and "pip install -r requirements.lock" in dockerfile
    # the API (which serves the dashboard) is the CLI's own subcommand
    from stock_platform.cli import build_parser

    assert services["api"]["command"][:2] == ["stock-platform", "serve"]
    assert build_parser().parse_args(services["api"]["command"][1:]).command == "serve"


def test_the_compose_file_is_complete_and_holds_no_secret():
    import re

    parsed = compose()
    services = parsed["services"]
    assert set(services) == {"postgres", "minio", "minio-buckets", "mlflow", *PROCESSES, "api", "marquez",
                             "marquez-web"}
    assert all(services[name]["profiles"] == ["lineage"] for name in ("marquez", "marquez-web"))  # off by default
    for name, svc in services.items():
        assert "image" in svc, name
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        if name != "minio-buckets":  # a one-shot job
            assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    for volume in (v.split(":")[0] for svc in services.values() for v in svc.get("volumes", [])):
        assert volume.startswith("./") or volume in parsed["volumes"], volume
    # every variable the file interpolates is documented in .env.example, and nothing there is a real secret
    example = dict(line.split("=", 1) for line in (REPO / "docker" / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    used = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE.read_text())) - {"STOCK_PLATFORM_VERSION"}
    assert used <= set(example), used - set(example)
    assert {example[k] for k in example if "PASSWORD" in k} <= {"change-me", "change-me-too"}
    assert ".env" in (REPO / ".gitignore").read_text()
    # the instance config reads the same variables the compose file sets
    app_env = parsed["x-app-environment"]
    assert {"DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"} <= set(app_env)
    assert set(re.findall(r"env: (DAGSTER_PG_[A-Z]+)", (REPO / "dagster.yaml").read_text())) <= set(app_env)


def compose_client() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.skipif(compose_client() is None,
                    reason="no docker compose client on this machine (the YAML test above still ran)")
def test_docker_compose_parses_the_file():
    client = compose_client()
    done = subprocess.run([*client, "-f", str(COMPOSE), "--env-file", str(REPO / "docker" / ".env.example"),
                           "config", "-q"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_image_lock_pins_what_pyproject_pins():
    import re
    import tomllib

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    lock = dict(line.split("==", 1) for line in (REPO / "docker" / "requirements.lock").read_text().splitlines()
                if line and not line.startswith("#"))
    lock = {norm(k): v for k, v in lock.items()}
    for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]+\])?==(\S+)", dep).groups()
        assert lock.get(norm(name)) == version, dep
