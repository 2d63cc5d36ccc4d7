"""The production deployment: docker/compose.yaml's processes started natively on Postgres, driven through the
webserver's GraphQL API as the UI drives it."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import create_engine, text

from stock_platform.launcher import WORKER_PID_TAG
from stock_platform.lib.calendar import trading_days
from stock_platform.resources.lake import LakeResource
from stock_platform.resources.warehouse import WarehouseResource
from stock_platform_tests.deployment import (ASSET_CHECKS, COMPOSE, PROCESSES, REPO, Deployment, Production,
                                             compose, compose_services, free_port, launch_backfill,
                                             launch_run_request, native_command, schedule_tick, start_automation,
                                             wait_for_backfill, wait_for_run)
from stock_platform_tests.live_stack import wait_for

TICKERS = ("AAPL", "MSFT", "XOM")
# more than WARM_ROWS (311) sessions plus what tuning needs of warm ones (CV folds, a gap, the held-out window)
FIRST, LAST = dt.date(2022, 1, 3), dt.date(2024, 3, 28)
WEEK = "2024-03-25"  # the model week LAST ends: retrained by the schedule's tick of Monday 2024-04-01, 06:00 New York
LANDED, CLOSED = dt.date(2024, 4, 1), dt.date(2024, 4, 2)  # quotes land for the first; the schedule closes the second
DAILY = ["prices", "price_snapshots", "features"]


def new_york(day: dt.date, hour: int) -> float:
    from zoneinfo import ZoneInfo

    return dt.datetime.combine(day, dt.time(hour), ZoneInfo("America/New_York")).timestamp()


@pytest.mark.postgres
@pytest.mark.slow
def test_the_production_stack_backfills_retrains_takes_a_landed_file_and_forecasts_the_day(tmp_path, s3_endpoint,
                                                                                          postgres_databases):
    """docker/compose.yaml's stack, each process natively in the environment compose gives it: the lake and the
    landing zone on S3 (the moto server in MinIO's place), the instance and the warehouse on Postgres, MLflow's
    server (Postgres store, artifacts on S3, its own login), the warm run launcher, the daemon with the sensors and
    schedules on, behind the proxy. Driven through the proxy as users drive it: a backfill (the UI's dialog), the
    weekly retrain and the day's close (the schedules' ticks at their instants, "Test schedule" + launch: the
    daemon's own ticks come at the wall clock's 06:00 and 18:00 New York, which no test may wait for), a landed
    quote file (the sensor); the API and the dashboard serve the result from the S3 lake, and no secret the test set
    is in any log, stored event or run record."""
    import boto3

    from stock_platform.lib.demo_market import generate
    from stock_platform.lib.events import bars_to_events, encode
    from stock_platform.resources.landing import LandingResource
    from stock_platform.serving.auth import new_token

    client, dashboard = new_token(), new_token()
    secrets = {name: f"{name}-{uuid.uuid4().hex}" for name in ("pg", "proxy", "minio", "mlflow", "mlflow_key")}
    secrets |= {"client": client[0], "dashboard": dashboard[0]}
    dotenv = {  # docker/.env
        "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": secrets["pg"],  # trust auth here does not ask for it
        "MINIO_ROOT_USER": "stock-platform", "MINIO_ROOT_PASSWORD": secrets["minio"],  # the S3 server takes any
        "MLFLOW_ADMIN_PASSWORD": secrets["mlflow"], "MLFLOW_SECRET_KEY": secrets["mlflow_key"],
        "PROXY_USER": "stock", "PROXY_PASSWORD": secrets["proxy"],
        "STOCK_PLATFORM_API_TOKENS": f"{client[1]},{dashboard[1]}", "STOCK_PLATFORM_DASHBOARD_TOKEN": dashboard[0],
        "STOCK_PLATFORM_TICKERS": ",".join(TICKERS), "STOCK_PLATFORM_START": FIRST.isoformat(),
        "STOCK_PLATFORM_TUNING_TRIALS": "1", "STOCK_PLATFORM_TUNING_SECONDS": "120"}
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    buckets = [target.removeprefix("local/") for target in compose_services()["minio-buckets"]["entrypoint"][3:]]
    for bucket in buckets:  # compose's one-shot `minio-buckets`
        s3.create_bucket(Bucket=bucket)
    database, mlflow_database = postgres_databases(), postgres_databases()
    production = Production(dotenv, database, mlflow_database, s3_endpoint)
    sessions = [d.isoformat() for d in trading_days(FIRST, LAST)]
    # The daemon starts after the submission, as after a restart with a backfill pending: its backfill loop runs
    # every 30 s (Dagster's fixed interval), so its first iteration launches the run instead of its second.
    clock = time.perf_counter()
    phases = {}

    def phase(name: str) -> None:
        nonlocal clock
        phases[name], clock = round(time.perf_counter() - clock, 1), time.perf_counter()

    with Deployment(tmp_path, production=production, held=("daemon",)) as deployment:
        phase("start")
        assert {proc.pid for proc in deployment.procs.values()} <= set(deployment.leftovers())  # what it finds
        app_env = deployment.service_env("code")
        assert app_env["STOCK_PLATFORM_LAKE_URI"] == "s3://stock-platform/lake"
        lake = LakeResource(uri=app_env["STOCK_PLATFORM_LAKE_URI"], aws_endpoint_url=s3_endpoint)
        landing = LandingResource(uri=app_env["STOCK_PLATFORM_LANDING_URI"], aws_endpoint_url=s3_endpoint)
        refused_without_login(deployment)
        start_automation(deployment, ["daily_close", "weekly_retrain_schedule"], ["landing_zone_sensor"])
        backfill_id = launch_backfill(deployment, DAILY, sessions, title="history")
        deployment.start("daemon")
        # its run; the daemon marks the backfill done on its next pass, up to 30 s later (its fixed interval): the
        # retrain goes on meanwhile, and the backfill's own status is read after it
        ran = wait_for_backfill(deployment, backfill_id, first_run=True)
        assert [r["status"] for r in ran["runs"]] == ["SUCCESS"], (ran, deployment.log("daemon")[-3000:])
        # dagster.yaml's launcher ran it, in one of the daemon's pre-started workers
        tags = wait_for_run(deployment, ran["runs"][0]["runId"])["tags"]
        assert WORKER_PID_TAG in {tag["key"] for tag in tags}
        checks = deployment.graphql(ASSET_CHECKS, {"keys": [{"path": [a]} for a in DAILY]})["assetNodes"]
        found = {(node["assetKey"]["path"][0], check["name"]): (check["blocking"],
                 (check["executionForLatestMaterialization"] or {}).get("status"))
                 for node in checks for check in node["assetChecksOrError"]["checks"]}
        # the freshness checks (non-blocking) are the freshness sensor's: it may have evaluated them by now or not
        fresh = {key: found.pop(key) for key in list(found) if key[1] == "freshness_check"}
        assert {asset for asset, _ in fresh} == set(DAILY) and not any(blocking for blocking, _ in fresh.values())
        assert found == {("prices", "prices_schema"): (True, "SUCCEEDED"),
                         ("features", "features_schema"): (True, "SUCCEEDED")}
        phase("backfill")

        # the weekly retrain: the schedule's Monday tick, with the deployment's search budget (1 trial a family)
        [retrain] = schedule_tick(deployment, "weekly_retrain_schedule", new_york(LANDED, 6))
        assert retrain["runKey"] == f"weekly_retrain:{WEEK}" and retrain["jobName"] == "weekly_retrain"
        run = wait_for_run(deployment, launch_run_request(deployment, retrain, "weekly_retrain_schedule"), timeout=420)
        assert run["status"] == "SUCCESS", deployment.log("daemon")[-3000:]
        phase("retrain")
        done = wait_for_backfill(deployment, backfill_id)
        assert done["status"] == "COMPLETED_SUCCESS", (done, deployment.log("daemon")[-3000:])
        assert done["numPartitions"] == len(sessions)
        # single-run backfill policy: the whole range in one run, not one run per day
        assert len(done["runs"]) == 1 and done["runs"][0]["status"] == "SUCCESS"

        # quotes land for the next session: the sensor's run upserts them and forecasts the day after
        bars = generate(list(TICKERS), LANDED, LANDED)
        landing.write(f"quotes/{LANDED}/bars.jsonl", encode(bars_to_events(bars, "demo"), "jsonl"))
        landing.write(f"quotes/{LANDED}/broken.jsonl", b"{not json")
        landed, _ = wait_for(lambda: day_rows(lake, "predictions", LANDED), timeout=180)
        snapshot = lake.read("price_snapshots", LANDED, LANDED).sort("ticker")
        assert snapshot["close"].to_list() == bars.sort("ticker")["close"].to_list()
        # the ledger took each file version once: the bars for one run of their day (marked submitted with the
        # run's id by a tick after the run was created), the broken file quarantined with its reason
        ledger, _ = wait_for(lambda: submitted(lake), timeout=60)
        assert ledger.select("key", "day", "status").rows() == [
            (f"quotes/{LANDED}/bars.jsonl", LANDED.isoformat(), "submitted"),
            (f"quotes/{LANDED}/broken.jsonl", "", "quarantined")]
        assert ledger["run_key"][0].startswith(f"landing:{LANDED}:") and ledger["run_id"][0]
        assert [f.key for f in landing.list()] == [f"quotes/{LANDED}/bars.jsonl"]
        assert b"unreadable json" in landing.read(f"_quarantine/quotes/{LANDED}/broken.jsonl.reason.txt")
        phase("landed file")

        # the day's close: the schedule's 18:00 tick runs the day from its prices to the forecasts' evaluation
        [close] = schedule_tick(deployment, "daily_close", new_york(CLOSED, 18))
        assert close["runKey"] == f"daily_close:{CLOSED}"
        run = wait_for_run(deployment, launch_run_request(deployment, close, "daily_close"))
        assert run["status"] == "SUCCESS", deployment.log("daemon")[-3000:]
        phase("daily close")
        served_through_the_proxy(deployment, client[0])
        phase("served")

        # MLflow's server holds the week's candidates, registered by the runs as its admin (the platform's
        # service account); through the proxy, it asks who you are and readers cannot change the registry
        models = mlflow_asks_who_you_are(deployment.entry + "/mlflow", secrets["mlflow"])
        phase("mlflow")
    wait_for(lambda: not deployment.leftovers(), timeout=30)  # no process of the stack is left
    assert models == {"stock_platform_lgbm", "stock_platform_ridge", "stock_platform_ar"}
    artifacts = s3.list_objects_v2(Bucket="mlflow", Prefix="artifacts/")
    assert artifacts["KeyCount"] > 0 and any(o["Key"].endswith("MLmodel") for o in artifacts["Contents"])
    decision = lake.read("model_selection", date_column="train_end")
    assert decision.height >= 3 and decision["train_end"].unique().to_list() == [dt.date(2024, 3, 31)]

    # the lake on S3 (nothing local), the warehouse on Postgres
    assert not list(tmp_path.rglob("_delta_log"))
    days = len(sessions) + 2
    for table in DAILY:
        rows = lake.read(table)
        assert rows.height == len(TICKERS) * days and rows.select("ticker", "date").n_unique() == rows.height, table
    assert lake.read("features").filter(pl.col("date") == CLOSED)["warm"].all()
    forecasts = lake.read("predictions", LANDED, CLOSED)
    assert forecasts.height == 2 * len(TICKERS) and forecasts["pred_close"].is_finite().all()
    assert landed["model_name"].to_list() == forecasts.filter(pl.col("date") == LANDED)["model_name"].to_list()
    evaluated = lake.read("prediction_evaluation", CLOSED, CLOSED, date_column="target_date")
    assert evaluated.height == len(TICKERS)  # LANDED's forecasts, against CLOSED's close
    warehouse = WarehouseResource(url=app_env["STOCK_PLATFORM_WAREHOUSE_URL"])
    assert warehouse.count("stock_price") == len(TICKERS) * days

    logs = [path for path in tmp_path.rglob("*") if path.is_file() and path.suffix not in (".parquet", ".db")]
    assert {"proxy.log", "api.log", "mlflow.log", "daemon.log"} <= {p.name for p in logs}
    for path in logs:  # every process's log, the compute logs, the stored run configs
        data = path.read_bytes()
        for name, value in secrets.items():
            assert value.encode() not in data, f"the {name} secret is in {path}"
    for bucket in buckets:  # the lake's Delta logs, the landing ledger, MLflow's artifacts
        for key in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]:
            if not key.endswith(".parquet"):
                data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                assert not any(v.encode() in data for v in secrets.values()), f"a secret is in s3://{bucket}/{key}"
    for url, tables in ((database, (("event_logs", "event"), ("runs", "run_body"))),
                        (mlflow_database, (("params", "value"), ("tags", "value")))):
        engine = create_engine(url)
        with engine.connect() as conn:  # the instance's runs and events; MLflow's params and tags
            for name, value in secrets.items():
                for table, column in tables:
                    hits = conn.execute(text(f"SELECT count(*) FROM {table} WHERE {column} LIKE :v"),
                                        {"v": f"%{value}%"}).scalar()
                    assert hits == 0, f"the {name} secret is in {url.database}'s {table}"
        engine.dispose()
    phase("checked")
    print("seconds per phase:", phases)


def mlflow_asks_who_you_are(uri: str, admin_password: str) -> set[str]:
    """MLflow's basic auth (docker/mlflow-auth.ini): 401 without credentials or with a wrong password; a user the
    admin creates reads the registry and gets PERMISSION_DENIED for every change. Returns the registered models."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{uri}/api/2.0/mlflow/registered-models/search?max_results=5", timeout=30)
    assert refused.value.code == 401
    reader = ("reader", f"reader-{uuid.uuid4().hex}")
    login = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": admin_password}
    saved = {k: os.environ.get(k) for k in login}
    try:
        os.environ.update(login)
        get_app_client("basic-auth", tracking_uri=uri).create_user(*reader)
        os.environ.update(MLFLOW_TRACKING_USERNAME=reader[0], MLFLOW_TRACKING_PASSWORD=reader[1])
        client = mlflow.MlflowClient(uri, uri)
        models = client.search_registered_models()
        name, version = models[0].name, models[0].latest_versions[0].version
        assert client.get_model_version(name, version).status == "READY"
        for change in (lambda: client.delete_registered_model(name),
                       lambda: client.set_registered_model_alias(name, "champion", version),
                       lambda: client.delete_model_version(name, version)):
            with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
                change()
        os.environ["MLFLOW_TRACKING_PASSWORD"] = "wrong-password-here"
        with pytest.raises(MlflowException, match="401|Unauthorized|UNAUTHENTICATED|credentials"):
            client.search_registered_models()
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return {m.name for m in models}


def submitted(lake: LakeResource) -> pl.DataFrame | None:
    """The landing ledger once no file version in it waits for its run to be created (None before)."""
    from stock_platform.resources.landing import read_ledger

    ledger = read_ledger(lake).sort("key")
    return None if ledger.is_empty() or (ledger["status"] == "requested").any() else ledger


def day_rows(lake: LakeResource, table: str, day: dt.date) -> pl.DataFrame | None:
    """The table's rows of `day` once every ticker has one (None before)."""
    if not lake.exists(table):
        return None
    rows = lake.read(table, day, day)
    return rows if set(rows["ticker"]) >= set(TICKERS) else None


def refused_without_login(deployment: Deployment) -> None:
    """Every path of the proxy asks who you are: the UI and the dashboard for the proxy's login, the API for a
    bearer token (its /health excepted)."""
    import base64

    def status(path: str, headers: dict[str, str] | None = None) -> int:
        request = urllib.request.Request(deployment.entry + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status
        except urllib.error.HTTPError as refused:
            return refused.code

    wrong = {"Authorization": "Basic " + base64.b64encode(b"stock:guess").decode()}
    for path in ("/", "/dashboard", "/dagster/", "/dagster/graphql", "/docs"):
        assert status(path) == 401 and status(path, wrong) == 401, path
        assert status(path, deployment.login()) in (200, 400), path  # 400: GraphQL without a query
    assert status("/api/tickers") == 401 and status("/api/tickers", deployment.login()) == 401
    assert status("/api/health") in (200, 503)  # open: 503 until the lake has prices


def served_through_the_proxy(deployment: Deployment, token: str) -> None:
    """The dashboard (the proxy shows it with its own token) and the API (the client's token; wrong or missing:
    403/401, on REST and on the WebSocket handshake)."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    page = urllib.request.urlopen(urllib.request.Request(deployment.entry + "/dashboard", headers=deployment.login()),
                                  timeout=30)
    assert page.headers["X-Content-Type-Options"] == "nosniff" and page.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert "Server" not in page.headers
    html = page.read().decode()
    assert all(f">{t}</option>" in html for t in TICKERS) and html.count("<svg ") == 5  # with the forecasts
    assert "No forecasts for this ticker" not in html

    def api(path: str, headers: dict[str, str]):
        request = urllib.request.Request(deployment.entry + "/api" + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as refused:
            return refused.code, json.load(refused)

    bearer = {"Authorization": f"Bearer {token}"}
    assert api("/tickers", {})[0] == 401 and api("/tickers", {"Authorization": "Bearer guess"})[0] == 403
    code, listed = api("/tickers", bearer)
    assert code == 200 and [t["ticker"] for t in listed] == sorted(TICKERS)
    ws_url = deployment.entry.replace("http://", "ws://") + "/api/ws/updates"
    for headers, expected in (({}, 401), ({"Authorization": "Bearer guess"}, 403)):
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url, additional_headers=headers, open_timeout=30)
        assert refused.value.response.status_code == expected
    with connect(ws_url, additional_headers=bearer, open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "cursor"
    # the day's forecasts, served from the lake on S3 once the read model follows the runs' commits
    def forecast():
        code, page = api(f"/predictions/{TICKERS[0]}?start={CLOSED}", bearer)
        return code == 200 and page["items"] or None

    [served], _ = wait_for(forecast, timeout=30)
    assert served["target_date"] == "2024-04-03" and served["pred_close"] > 0


def test_the_proxy_terminates_tls_with_a_configured_certificate(tmp_path):
    """docker/Caddyfile with a certificate in its TLS directory (README "Run in production"): HTTPS with that
    certificate, HSTS, and the login still asked for; plain HTTP on the port is not served."""
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    tls = tmp_path / "tls.d"
    tls.mkdir()
    (tls / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tls / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    (tls / "site.caddy").write_text(f"tls {tls / 'cert.pem'} {tls / 'key.pem'}\n")
    port = free_port()
    env = {**os.environ, "PROXY_ADDRESS": f"https://localhost:{port}", "PROXY_BIND": "127.0.0.1",
           "PROXY_USER": "stock", "PROXY_PASSWORD": "tls-test-password", "PROXY_TLS_DIR": str(tls),
           "STOCK_PLATFORM_DASHBOARD_TOKEN": "unused", "API_UPSTREAM": "127.0.0.1:9", "DAGSTER_UPSTREAM": "127.0.0.1:9",
           "MLFLOW_UPSTREAM": "127.0.0.1:9", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    command = native_command(compose_services()["proxy"]["command"], home=tmp_path, ports={})
    with open(tmp_path / "proxy.log", "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    context = ssl.create_default_context(cafile=str(tls / "cert.pem"))
    try:
        def answered():
            assert proc.poll() is None, (tmp_path / "proxy.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"https://localhost:{port}/", context=context, timeout=5)
            except urllib.error.HTTPError as refused:
                return refused
            except OSError:
                return None

        refused, _ = wait_for(answered, timeout=60, every=0.2)
        assert refused.code == 401 and refused.headers["Strict-Transport-Security"] == "max-age=31536000"
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # it is that certificate
            urllib.request.urlopen(f"https://localhost:{port}/", context=ssl.create_default_context(), timeout=5)
        with pytest.raises((urllib.error.HTTPError, OSError)) as plain:
            urllib.request.urlopen(f"http://localhost:{port}/", timeout=5)
        assert getattr(plain.value, "code", 400) == 400  # Caddy: "Client sent an HTTP request to an HTTPS server"
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(10)


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
    assert set(services) == {"postgres", "minio", "minio-buckets", "mlflow", *PROCESSES, "api", "proxy", "marquez",
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

    # one entry point: only the proxy publishes a port beyond this host's loopback
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert name == "proxy" or str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"
    assert services["proxy"]["ports"] == ["${PROXY_PORT:-8080}:8080"]
    # every secret comes from docker/.env (an interpolated variable), never a literal in the file
    secret = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY")
    for name, env in [("x-app-environment", parsed["x-app-environment"])] + [
            (n, svc.get("environment", {})) for n, svc in services.items()]:
        for key, value in env.items():
            if secret.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*)?\}", str(value)), f"{name}: {key} is not from docker/.env"
    # and none is on a command line (`ps`, `docker inspect`): no secret variable interpolated into a command, no
    # password inside a URL argument; the proxy hashes its password with a shell builtin's output on a pipe
    for name, svc in services.items():
        argv = [*svc.get("command", []), *svc.get("entrypoint", []), *svc.get("healthcheck", {}).get("test", [])]
        for arg in map(str, argv):
            assert not re.search(r"\$\{[A-Z_]*(PASSWORD|SECRET|TOKEN|_KEY)", arg), f"{name}: {arg}"
            assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", arg), f"{name}: {arg}"
    for value in map(str, parsed["x-app-environment"].values()):  # URLs in the environment carry no password
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", value), value
    assert ".env" in (REPO / ".gitignore").read_text()
    # the instance config reads the same variables the compose file sets
    app_env = parsed["x-app-environment"]
    assert {"DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"} <= set(app_env)
    assert set(re.findall(r"env: (DAGSTER_PG_[A-Z]+)", (REPO / "dagster.yaml").read_text())) <= set(app_env)


def test_the_repository_holds_no_secret():
    """Every tracked file: no private key, no cloud or chat token, and a password inside a URL only as a
    placeholder of the docs and tests or a docker/.env variable; docker/.env itself is never tracked."""
    import re

    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert "docker/.env" not in tracked and len(tracked) > 100
    patterns = {"private key": re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
                "AWS access key": re.compile(rb"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
                "Slack token": re.compile(rb"\bxox[abpr]-[0-9A-Za-z-]{10,}"),
                "GitHub token": re.compile(rb"\bgh[pousr]_[0-9A-Za-z]{36}\b")}
    url_password = re.compile(rb"[a-z0-9+]+://[^/\s\"'@:]+:([^/\s\"'@]+)@")
    placeholders = {b"pw", b"secret", b"${MINIO_ROOT_PASSWORD}"}
    for name in tracked:
        path = REPO / name
        if path.suffix in (".png", ".parquet") or not path.is_file():
            continue
        data = path.read_bytes()
        for what, pattern in patterns.items():
            assert not pattern.search(data), f"{name}: a {what}"
        for found in url_password.finditer(data):
            assert found.group(1) in placeholders, f"{name}: a password in a URL ({found.group(0)[:40]!r}...)"


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
