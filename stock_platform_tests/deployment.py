"""The production deployment started natively (no Docker engine here): each process with the command
docker/compose.yaml gives its service, on the repository's dagster.yaml (Postgres storage): the code location's
gRPC server, `dagster-webserver` and `dagster-daemon`, and with `Production` also MLflow's server, the API and the
proxy, each in the environment compose gives it. Used by test_deployment.py and docs/screenshots.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml
from sqlalchemy.engine import URL

from stock_platform_tests.live_stack import stack_env, wait_for

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker" / "compose.yaml"
IMAGE_HOME = "/opt/dagster/home"  # DAGSTER_HOME inside the image (docker/Dockerfile)
PROCESSES = ("code", "webserver", "daemon")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose() -> dict:
    """docker/compose.yaml, parsed."""
    return yaml.safe_load(COMPOSE.read_text())


def compose_services() -> dict:
    return compose()["services"]


def compose_dagster_env() -> dict[str, str]:
    """The Dagster settings docker/compose.yaml gives every app process other than the Postgres connection
    (`postgres_env` makes that one for the test's database): event batching, planned events."""
    return {k: str(v) for k, v in compose()["x-app-environment"].items()
            if k.startswith("DAGSTER_") and not k.startswith("DAGSTER_PG_")}


def native_command(command: list[str], *, home: Path, ports: dict[int, int],
                   addresses: dict[str, str] | None = None) -> list[str]:
    """A compose service's command for this machine: bind to loopback, our ports, our DAGSTER_HOME, the
    repository's Caddyfile, the compose network's `addresses` (substrings) as this machine's; `$$` (compose's
    escape) is the shell's `$`."""
    out = []
    for arg in command:
        arg = arg.replace(IMAGE_HOME, str(home)).replace("/etc/caddy/Caddyfile", str(REPO / "docker" / "Caddyfile"))
        arg = rewrite(arg.replace("$$", "$"), addresses or {})
        if arg == "0.0.0.0":
            arg = "127.0.0.1"
        elif arg.isdigit() and int(arg) in ports:
            arg = str(ports[int(arg)])
        out.append(arg)
    return out


def rewrite(text: str, addresses: dict[str, str]) -> str:
    for compose_address, native in addresses.items():
        text = text.replace(compose_address, native)
    return text


def interpolate(value: str, dotenv: dict[str, str]) -> str:
    """Compose's substitution of docker/.env's values: `${X}`, `${X:-default}` (unset or empty), `${X:?error}`."""
    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if dotenv.get(name):
            return dotenv[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else dotenv.get(name, "")

    return re.sub(r"(?<!\$)\$\{([A-Za-z0-9_]+)(?:(:-|:\?)([^}]*))?\}", one, value)


def compose_environment(service: str, dotenv: dict[str, str]) -> dict[str, str]:
    """The environment docker/compose.yaml gives `service`, filled in from `dotenv` (docker/.env's values)."""
    return {k: interpolate(str(v), dotenv) for k, v in (compose_services()[service].get("environment") or {}).items()}


def postgres_env(url) -> dict[str, str]:
    """The DAGSTER_PG_* variables dagster.yaml reads, for a SQLAlchemy URL."""
    return {"DAGSTER_PG_HOST": url.host or "127.0.0.1", "DAGSTER_PG_PORT": str(url.port or 5432),
            "DAGSTER_PG_USER": url.username or "postgres", "DAGSTER_PG_PASSWORD": url.password or "",
            "DAGSTER_PG_DB": url.database}


@dataclass(frozen=True)
class Production:
    """docker/compose.yaml's whole stack: every service's environment is compose's, filled from `dotenv` (docker/.env's
    values), with the compose network's addresses made this machine's: Postgres's `dagster` and `warehouse`
    databases -> `database`, `mlflow` -> `mlflow_database`; MinIO -> the S3 server at `s3_endpoint`; MLflow's server
    and every other service on ports of their own."""

    dotenv: dict[str, str]
    database: URL
    mlflow_database: URL
    s3_endpoint: str


class Deployment:
    """Start with `with Deployment(home, env) as d:`; `d.graphql(query, variables)` talks to the webserver.
    `held` processes are not started with the others: `d.start(name)` starts one later.

    With `env`: the code server, the webserver and the daemon in that environment. With `production`: every service
    of docker/compose.yaml that runs the platform's image (MLflow's server, the code server, the webserver, the
    daemon, the API) and the proxy in front of them, each in the environment compose gives it; `d.graphql` goes
    through the proxy (`d.entry`: its URL) with its login."""

    def __init__(self, home: Path, env: dict[str, str] | None = None, *, production: Production | None = None,
                 held: tuple[str, ...] = ()):
        self.home = home
        self.held = held
        self.dagster_home = home / "dagster"
        self.ports = {4000: free_port(), 3000: free_port(), 8000: free_port(), 8080: free_port(), 5000: free_port()}
        command = compose_services()["webserver"]["command"]
        prefix = command[command.index("--path-prefix") + 1] if "--path-prefix" in command else ""
        self.url = f"http://127.0.0.1:{self.ports[3000]}{prefix}"
        self.entry = f"http://127.0.0.1:{self.ports[8080]}"
        self.production = production
        self.services = PROCESSES
        self.addresses: dict[str, str] = {}
        self.env = (env or {}) | {"DAGSTER_HOME": str(self.dagster_home)}
        self.proxied = None
        if production:
            self.services = ("mlflow", "api", "proxy", *PROCESSES)  # those that need no code server first
            self.proxied = (production.dotenv["PROXY_USER"], production.dotenv["PROXY_PASSWORD"])
            self.url = self.entry + prefix
            db, mlflow_db = production.database, production.mlflow_database
            mlflow = f"localhost:{self.ports[5000]}"
            self.addresses = {  # compose's network -> this machine (substrings of values and arguments)
                "@postgres:5432/warehouse": f"@{db.host}:{db.port or 5432}/{db.database}",
                "@postgres:5432/mlflow": f"@{mlflow_db.host}:{mlflow_db.port or 5432}/{mlflow_db.database}",
                "http://minio:9000": production.s3_endpoint, "http://mlflow:5000": f"http://{mlflow}",
                "mlflow:5000": mlflow, "localhost:5000": mlflow}
        self.procs: dict[str, subprocess.Popen] = {}

    def service_env(self, name: str) -> dict[str, str]:
        """The environment `name` runs in: compose's for it (production), else the deployment's `env`."""
        if not self.production:
            return self.env
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCK_PLATFORM_", "DAGSTER_", "MLFLOW_", "AWS_"))}
        env |= {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "DAGSTER_HOME": str(self.dagster_home)}
        db = self.production.database
        exact = {"DAGSTER_PG_HOST": db.host, "DAGSTER_PG_PORT": str(db.port or 5432), "DAGSTER_PG_DB": db.database}
        env |= {k: exact.get(k, rewrite(v, self.addresses))
                for k, v in compose_environment(name, self.production.dotenv).items()}
        if name == "mlflow":  # its users' database beside it (compose: a volume)
            ini = (REPO / "docker" / "mlflow-auth.ini").read_text().replace("sqlite:////mlflow-auth/",
                                                                            f"sqlite:///{self.home}/")
            (self.home / "mlflow-auth.ini").write_text(ini)
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(self.home / "mlflow-auth.ini")
        if name == "proxy":  # its upstreams on this machine's ports
            env |= {"PROXY_ADDRESS": f"http://:{self.ports[8080]}", "PROXY_BIND": "127.0.0.1",
                    "PROXY_TLS_DIR": str(REPO / "docker" / "tls.d"), "API_UPSTREAM": f"127.0.0.1:{self.ports[8000]}",
                    "DAGSTER_UPSTREAM": f"127.0.0.1:{self.ports[3000]}",
                    "MLFLOW_UPSTREAM": self.addresses["mlflow:5000"]}  # a name in its --allowed-hosts
        return env

    def __enter__(self) -> Deployment:
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "dagster.yaml", self.dagster_home / "dagster.yaml")
        workspace = yaml.safe_load((REPO / "docker" / "workspace.yaml").read_text())
        workspace["load_from"][0]["grpc_server"] |= {"host": "127.0.0.1", "port": self.ports[4000]}
        (self.dagster_home / "workspace.yaml").write_text(yaml.safe_dump(workspace))
        try:
            for name in self.services:
                if name not in self.held:
                    self.start(name)
            wait_for(self._location_loaded, timeout=120, every=0.5)
            if "mlflow" in self.procs:
                wait_for(self._mlflow_healthy, timeout=120, every=0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def start(self, name: str) -> None:
        """Start the compose service `name` with the command docker/compose.yaml gives it."""
        command = compose_services()[name]["command"]
        if self.production:
            command = [interpolate(arg, self.production.dotenv) for arg in command]
        cmd = native_command(command, home=self.dagster_home, ports=self.ports, addresses=self.addresses)
        log = open(self.home / f"{name}.log", "w")  # noqa: SIM115 - the process owns it
        self.procs[name] = subprocess.Popen(cmd, env=self.service_env(name), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, cwd=self.home)
        if name == "code":  # the others connect to it
            wait_for(self._code_server_ready, timeout=120, every=0.5)

    def __exit__(self, *exc) -> None:
        self.stop()

    def _alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")

    def _code_server_ready(self) -> bool:
        self._alive()
        done = subprocess.run(["dagster", "api", "grpc-health-check", "-p", str(self.ports[4000])], env=self.service_env("code"),
                              capture_output=True, timeout=30)
        return done.returncode == 0

    @property
    def mlflow_uri(self) -> str:
        """MLflow's server as the platform's processes reach it."""
        return self.service_env("code")["MLFLOW_TRACKING_URI"]

    def _mlflow_healthy(self) -> bool:
        self._alive()
        try:
            return urllib.request.urlopen(f"{self.mlflow_uri}/health", timeout=5).status == 200
        except OSError:
            return False

    def _location_loaded(self) -> bool:
        self._alive()
        try:
            data = self.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                                "locationOrLoadError { __typename } } } } }")
        except OSError:
            return False
        entries = data["workspaceOrError"]["locationEntries"]
        return bool(entries) and all(e["loadStatus"] == "LOADED" and
                                     e["locationOrLoadError"]["__typename"] == "RepositoryLocation" for e in entries)

    def login(self) -> dict[str, str]:
        """The proxy's basic-auth header (none without the proxy)."""
        if not self.proxied:
            return {}
        import base64

        return {"Authorization": "Basic " + base64.b64encode(":".join(self.proxied).encode()).decode()}

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        request = urllib.request.Request(f"{self.url}/graphql", json.dumps({"query": query, "variables": variables or {}})
                                         .encode(), headers={"Content-Type": "application/json", **self.login()})
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.load(response)
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def leftovers(self) -> list[int]:
        """Live processes (not zombies) of this deployment: everything its processes started inherits its
        DAGSTER_HOME (the run workers, Ray's processes, MLflow's and uvicorn's workers)."""
        from stock_platform_tests.ray_cluster import process_table

        marker = f"DAGSTER_HOME={self.dagster_home}\0".encode()
        alive = []
        for pid, (state, _, _) in process_table().items():
            try:
                if state != "Z" and marker in Path(f"/proc/{pid}/environ").read_bytes():
                    alive.append(pid)
            except OSError:  # ended meanwhile, or not ours to read
                continue
        return alive

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}"""

BACKFILL_STATUS = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status numPartitions
      runs(limit: 20) { runId status }
      error { message }
    }
  }
}"""

ASSET_CHECKS = """
query Checks($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    assetChecksOrError {
      __typename
      ... on AssetChecks { checks { name blocking executionForLatestMaterialization { status } } }
    }
  }
}"""


LOCATION = yaml.safe_load((REPO / "docker" / "workspace.yaml").read_text())["load_from"][0]["grpc_server"][
    "location_name"]
REPOSITORY = "__repository__"  # a code location's one Definitions

START_SCHEDULE = """
mutation Start($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
  }
}"""

START_SENSOR = """
mutation Start($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
  }
}"""

SCHEDULE_DRY_RUN = """
mutation DryRun($selector: ScheduleSelector!, $timestamp: Float) {
  scheduleDryRun(selectorData: $selector, timestamp: $timestamp) {
    __typename
    ... on DryRunInstigationTick {
      evaluationResult { skipReason error { message } runRequests { runKey jobName runConfigYaml tags { key value } } }
    }
    ... on PythonError { message }
  }
}"""

SCHEDULE_JOB = "query($selector: ScheduleSelector!) { scheduleOrError(scheduleSelector: $selector) { ... on Schedule { pipelineName } } }"

LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""

RUN_STATUS = "query($runId: ID!) { runOrError(runId: $runId) { ... on Run { status tags { key value } } } }"


def start_automation(deployment: Deployment, schedules: list[str], sensors: list[str]) -> None:
    """Switch schedules and sensors on, as the toggles of the UI's Automation page do."""
    where = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}
    for name in schedules:
        done = deployment.graphql(START_SCHEDULE, {"selector": where | {"scheduleName": name}})["startSchedule"]
        assert done["__typename"] == "ScheduleStateResult", done
    for name in sensors:
        done = deployment.graphql(START_SENSOR, {"selector": where | {"sensorName": name}})["startSensor"]
        assert done["__typename"] == "Sensor", done


def schedule_tick(deployment: Deployment, schedule: str, at: float) -> list[dict]:
    """The run requests of `schedule`'s tick at the instant `at` (a Unix timestamp), evaluated by the code server:
    the UI's "Test schedule" dialog."""
    selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "scheduleName": schedule}
    done = deployment.graphql(SCHEDULE_DRY_RUN, {"selector": selector, "timestamp": at})["scheduleDryRun"]
    assert done["__typename"] == "DryRunInstigationTick", done
    result = done["evaluationResult"]
    assert not result["error"] and not result["skipReason"], result
    job = deployment.graphql(SCHEDULE_JOB, {"selector": selector})["scheduleOrError"]["pipelineName"]
    return [request | {"jobName": request["jobName"] or job} for request in result["runRequests"]]


def launch_run_request(deployment: Deployment, request: dict, schedule: str) -> str:
    """Submit a tick's run request as the dialog's "Launch" does (its job, config and tags): the run goes to the
    instance's queue, and the daemon starts it. Returns the run's id."""
    tags = [t for t in request["tags"]] + [{"key": "dagster/schedule_name", "value": schedule}]
    params = {"selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY,
                           "jobName": request["jobName"]},
              "runConfigData": request["runConfigYaml"], "executionMetadata": {"tags": tags}}
    done = deployment.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
    assert done["__typename"] == "LaunchRunSuccess", done
    return done["run"]["runId"]


def wait_for_run(deployment: Deployment, run_id: str, timeout: float = 300) -> dict:
    """The run once it has finished: its status and tags."""
    def finished():
        deployment._alive()
        run = deployment.graphql(RUN_STATUS, {"runId": run_id})["runOrError"]
        return run if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None

    return wait_for(finished, timeout=timeout, every=1.0)[0]


def launch_backfill(deployment: Deployment, assets: list[str], partitions: list[str], title: str) -> str:
    """A partition-range backfill of `assets`, as the UI's "Materialize selected" dialog submits it."""
    data = deployment.graphql(LAUNCH_BACKFILL, {"params": {
        "partitionNames": partitions, "assetSelection": [{"path": [a]} for a in assets], "fromFailure": False,
        "title": title}})["launchPartitionBackfill"]
    if data["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"backfill refused: {data}")
    return data["backfillId"]


def wait_for_backfill(deployment: Deployment, backfill_id: str, timeout: float = 300, *,
                      first_run: bool = False) -> dict:
    """The backfill once it ended, or (`first_run`) once its first run finished: the daemon marks a backfill done
    on its next pass after the runs, up to 30 s later (its fixed interval)."""
    def finished():
        deployment._alive()
        found = deployment.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if first_run:
            done = [r for r in found["runs"] if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
            return found if done or found["status"] not in ("REQUESTED", "CANCELING") else None
        return found if found["status"] not in ("REQUESTED", "CANCELING") else None

    return wait_for(finished, timeout=timeout, every=1.0)[0]


def stack(home: Path, url, tickers: tuple[str, ...], start: str) -> tuple[Path, dict[str, str]]:
    """A home and environment for a deployment on the Postgres database `url` (instance + warehouse)."""
    env = stack_env(home) | compose_dagster_env() | postgres_env(url) | {
        "STOCK_PLATFORM_TICKERS": ",".join(tickers), "STOCK_PLATFORM_START": start,
        "STOCK_PLATFORM_WAREHOUSE_URL": url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False),
        # the console scripts (dagster, dagster-webserver, dagster-daemon) of this interpreter's environment
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return home, env
