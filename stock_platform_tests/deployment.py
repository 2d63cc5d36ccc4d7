"""The production deployment started natively (no Docker engine here): the code location's gRPC server,
`dagster-webserver` and `dagster-daemon`, each with the command docker/compose.yaml gives its service, on the
repository's dagster.yaml (Postgres storage). Used by test_deployment.py and docs/screenshots.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

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


def native_command(command: list[str], *, home: Path, ports: dict[int, int]) -> list[str]:
    """A compose service's command for this machine: bind to loopback, our ports, our DAGSTER_HOME, the
    repository's Caddyfile; `$$` (compose's escape) is the shell's `$`."""
    out = []
    for arg in command:
        arg = arg.replace(IMAGE_HOME, str(home)).replace("/etc/caddy/Caddyfile", str(REPO / "docker" / "Caddyfile"))
        arg = arg.replace("$$", "$")
        if arg == "0.0.0.0":
            arg = "127.0.0.1"
        elif arg.isdigit() and int(arg) in ports:
            arg = str(ports[int(arg)])
        out.append(arg)
    return out


def postgres_env(url) -> dict[str, str]:
    """The DAGSTER_PG_* variables dagster.yaml reads, for a SQLAlchemy URL."""
    return {"DAGSTER_PG_HOST": url.host or "127.0.0.1", "DAGSTER_PG_PORT": str(url.port or 5432),
            "DAGSTER_PG_USER": url.username or "postgres", "DAGSTER_PG_PASSWORD": url.password or "",
            "DAGSTER_PG_DB": url.database}


class Deployment:
    """Start with `with Deployment(home, env) as d:`; `d.graphql(query, variables)` talks to the webserver.
    `held` processes are not started with the others: `d.start(name)` starts one later. `proxied=(user,
    password)` also starts the API and the proxy (docker/Caddyfile) in front of them all, and talks to the webserver
    through it (`d.entry`: the proxy's URL)."""

    def __init__(self, home: Path, env: dict[str, str], *, held: tuple[str, ...] = (),
                 proxied: tuple[str, str] | None = None):
        self.home = home
        self.held = held
        self.dagster_home = home / "dagster"
        self.ports = {4000: free_port(), 3000: free_port(), 8000: free_port(), 8080: free_port()}
        command = compose_services()["webserver"]["command"]
        prefix = command[command.index("--path-prefix") + 1] if "--path-prefix" in command else ""
        self.url = f"http://127.0.0.1:{self.ports[3000]}{prefix}"
        self.entry = f"http://127.0.0.1:{self.ports[8080]}"
        self.proxied = proxied
        self.env = env | {"DAGSTER_HOME": str(self.dagster_home)}
        if proxied:
            self.env |= {"PROXY_ADDRESS": f"http://:{self.ports[8080]}", "PROXY_BIND": "127.0.0.1",
                         "PROXY_USER": proxied[0], "PROXY_PASSWORD": proxied[1],
                         "PROXY_TLS_DIR": str(REPO / "docker" / "tls.d"),
                         "API_UPSTREAM": f"127.0.0.1:{self.ports[8000]}",
                         "DAGSTER_UPSTREAM": f"127.0.0.1:{self.ports[3000]}", "MLFLOW_UPSTREAM": "127.0.0.1:9"}
            self.url = self.entry + prefix
        self.procs: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> Deployment:
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "dagster.yaml", self.dagster_home / "dagster.yaml")
        workspace = yaml.safe_load((REPO / "docker" / "workspace.yaml").read_text())
        workspace["load_from"][0]["grpc_server"] |= {"host": "127.0.0.1", "port": self.ports[4000]}
        (self.dagster_home / "workspace.yaml").write_text(yaml.safe_dump(workspace))
        try:
            for name in (*PROCESSES, *(("api", "proxy") if self.proxied else ())):
                if name not in self.held:
                    self.start(name)
            wait_for(self._location_loaded, timeout=120, every=0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def start(self, name: str) -> None:
        """Start the compose service `name` with the command docker/compose.yaml gives it."""
        cmd = native_command(compose_services()[name]["command"], home=self.dagster_home, ports=self.ports)
        log = open(self.home / f"{name}.log", "w")  # noqa: SIM115 - the process owns it
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
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
        done = subprocess.run(["dagster", "api", "grpc-health-check", "-p", str(self.ports[4000])], env=self.env,
                              capture_output=True, timeout=30)
        return done.returncode == 0

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


def launch_backfill(deployment: Deployment, assets: list[str], partitions: list[str], title: str) -> str:
    """A partition-range backfill of `assets`, as the UI's "Materialize selected" dialog submits it."""
    data = deployment.graphql(LAUNCH_BACKFILL, {"params": {
        "partitionNames": partitions, "assetSelection": [{"path": [a]} for a in assets], "fromFailure": False,
        "title": title}})["launchPartitionBackfill"]
    if data["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"backfill refused: {data}")
    return data["backfillId"]


def wait_for_backfill(deployment: Deployment, backfill_id: str, timeout: float = 300) -> dict:
    def finished():
        deployment._alive()
        found = deployment.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
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
