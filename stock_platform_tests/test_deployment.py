"""The production deployment: docker/compose.yaml's processes started natively on Postgres, driven through the
webserver's GraphQL API as the UI drives it."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
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
from stock_platform_tests.deployment import (ASSET_CHECKS, COMPOSE, PROCESSES, REPO, Deployment, compose,
                                             compose_services, free_port, launch_backfill, native_command, stack,
                                             wait_for_backfill)
from stock_platform_tests.live_stack import wait_for

TICKERS = ("AAPL", "MSFT", "XOM")
FIRST, LAST = dt.date(2023, 1, 3), dt.date(2024, 3, 28)  # > 272 sessions: features warm by the end
RUN_TAGS = "query($runId: ID!) { runOrError(runId: $runId) { ... on Run { tags { key value } } } }"


@pytest.mark.postgres
@pytest.mark.slow
def test_a_backfill_submitted_through_the_proxy_runs_on_postgres_and_reports_its_checks(tmp_path,
                                                                                       fresh_postgres_db):
    """The stack as compose starts it, behind its proxy: the UI's GraphQL backfill goes through the proxy's login,
    the dashboard and the API answer through it (the API with its bearer tokens), and no secret the test set
    (Postgres, proxy and API credentials) is in any log or stored event."""
    from stock_platform.serving.auth import new_token

    home, env = stack(tmp_path, fresh_postgres_db, TICKERS, FIRST.isoformat())
    client, dashboard = new_token(), new_token()
    secrets = {"pg": f"pg-{uuid.uuid4().hex}", "proxy": f"proxy-{uuid.uuid4().hex}", "client": client[0],
               "dashboard": dashboard[0]}
    # as compose sets them: the Postgres password from PGPASSWORD (no URL holds it; trust auth here ignores it)
    env |= {"PGPASSWORD": secrets["pg"], "DAGSTER_PG_PASSWORD": secrets["pg"],
            "STOCK_PLATFORM_API_TOKENS": f"{client[1]},{dashboard[1]}",
            "STOCK_PLATFORM_DASHBOARD_TOKEN": dashboard[0]}
    assert ":" not in env["STOCK_PLATFORM_WAREHOUSE_URL"].split("@")[0].split("//")[1]
    sessions = [d.isoformat() for d in trading_days(FIRST, LAST)]
    assets = ["prices", "price_snapshots", "features"]
    # The daemon starts after the submission, as after a restart with a backfill pending: its backfill loop runs
    # every 30 s (Dagster's fixed interval), so its first iteration launches the run instead of its second.
    with Deployment(home, env, held=("daemon",), proxied=("stock", secrets["proxy"])) as deployment:
        refused_without_login(deployment)
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
        served_through_the_proxy(deployment, client[0])

    logs = [path for path in home.rglob("*") if path.is_file() and path.suffix not in (".parquet", ".db")]
    assert any(p.name == "proxy.log" for p in logs) and any(p.name == "api.log" for p in logs)
    for path in logs:  # every process's log, the compute logs, the lake's Delta logs, the stored run configs
        data = path.read_bytes()
        for name, value in secrets.items():
            assert value.encode() not in data, f"the {name} secret is in {path}"
    engine = create_engine(fresh_postgres_db)
    with engine.connect() as conn:  # the instance: runs (their configs and tags) and the event log
        for name, value in secrets.items():
            for table, column in (("event_logs", "event"), ("runs", "run_body")):
                found = conn.execute(text(f"SELECT count(*) FROM {table} WHERE {column} LIKE :v"),
                                     {"v": f"%{value}%"}).scalar()
                assert found == 0, f"the {name} secret is in the instance's {table}"
    engine.dispose()

    lake = LakeResource(uri=str(home / "lake"))
    for table in ("prices", "price_snapshots", "features"):
        rows = lake.read(table)
        assert rows.height == len(TICKERS) * len(sessions), table
        assert rows.select("ticker", "date").n_unique() == rows.height
    assert lake.read("features").filter(pl.col("date") == LAST)["warm"].all()
    warehouse = WarehouseResource(url=env["STOCK_PLATFORM_WAREHOUSE_URL"])
    assert warehouse.count("stock_price") == len(TICKERS) * len(sessions)


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
    assert all(f">{t}</option>" in html for t in TICKERS) and html.count("<svg ") == 4  # no forecasts yet:
    assert "No forecasts for this ticker" in html  # prices, RSI, MACD and quarantine charts

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
