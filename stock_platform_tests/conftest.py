"""Shared fixtures. Everything here is real: Delta tables on disk, Dagster instances, Postgres."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


def _session_root() -> str:
    """One directory for everything the session writes (tmp_path, Dagster instances, Ray's session files, the
    subprocesses' TMPDIR), removed when the session ends. In memory (/dev/shm) where the machine has one with room:
    Dagster's SQLite storage commits every event with an fsync, and a backfill's runs write thousands of events
    (one test of six runs spent 60% of its time in those fsyncs on disk). Nothing a test checks depends on
    durability against a machine crash, only against a killed process, which memory gives as disk does."""
    shm = Path("/dev/shm")
    fast = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 4 * 2**30
    # (a short prefix: Ray puts its sockets below it, and a Unix socket's path may hold 107 bytes)
    return tempfile.mkdtemp(prefix="spt_", dir=str(shm) if fast else None)


SESSION_ROOT = _session_root()
tempfile.tempdir = SESSION_ROOT  # tmp_path, tempfile.mkdtemp() and instance_for_test() in this process
os.environ["TMPDIR"] = SESSION_ROOT  # and in every subprocess (Ray, the CLI, Dagster's run workers)
# Before anything loads settings: keep the test session's embedded state out of the work tree (each pytest-xdist
# worker its own: a worker inherits the controller's environment).
if "PYTEST_XDIST_WORKER" in os.environ or "STOCK_PLATFORM_HOME" not in os.environ:
    os.environ["STOCK_PLATFORM_HOME"] = tempfile.mkdtemp(prefix="stock_platform_test_")
for _var in ("STOCK_PLATFORM_SOURCE", "STOCK_PLATFORM_TICKERS", "STOCK_PLATFORM_FILES_DIR", "STOCK_PLATFORM_START",
             "STOCK_PLATFORM_LAKE_URI", "STOCK_PLATFORM_WAREHOUSE_URL"):
    os.environ.pop(_var, None)
# Dagster's feature flag as the platform's processes set it (the CLI's instance, docker/compose.yaml): a range run
# records one "planned" event per asset and check, not one per partition (a third of a 330-day run's time here).
os.environ["DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"] = "true"

import dagster as dg  # noqa: E402
import hypothesis  # noqa: E402
import pytest  # noqa: E402

from stock_platform.resources import PriceSourceResource, UniverseResource  # noqa: E402
from stock_platform.resources.lake import LakeResource  # noqa: E402

MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")

# The property tests draw the same examples on every run (a failure found once is found again, on any machine),
# and keep no example database in the work tree.
hypothesis.settings.register_profile("stock_platform", derandomize=True, database=None)
hypothesis.settings.load_profile("stock_platform")


@pytest.fixture(autouse=True)
def _mlflow_uri_stays_in_its_test():
    """`mlflow.set_tracking_uri` (called by TrackingResource) also writes MLFLOW_TRACKING_URI into the process
    environment. Undo that after each test: otherwise a later test's settings, or a subprocess it starts,
    would point at an earlier test's (deleted) MLflow store."""
    before = {v: os.environ.get(v) for v in MLFLOW_URI_VARIABLES}
    yield
    for variable, value in before.items():
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value


POSTGRES_URL = os.environ.get("STOCK_PLATFORM_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
TICKERS = ["AAPL", "MSFT", "XOM"]


@pytest.fixture
def lake(tmp_path: Path) -> LakeResource:
    return LakeResource(uri=str(tmp_path / "lake"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real local S3 server (moto server, its own process on 127.0.0.1), with test credentials.

    Its own process, not a thread: delta-rs holds the GIL during some calls, which would starve an
    in-process server.
    """
    port = _free_port()
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_lake(s3_endpoint) -> LakeResource:
    import boto3

    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return LakeResource(uri=f"s3://{bucket}/root", aws_endpoint_url=s3_endpoint)


@pytest.fixture(params=["local", "s3"])
def any_lake(request, tmp_path) -> LakeResource:
    """The same tests on a local lake and on S3 (the moto server): one code path, two stores."""
    if request.param == "local":
        return LakeResource(uri=str(tmp_path / "lake"))
    return request.getfixturevalue("s3_lake")


@pytest.fixture
def http_receiver():
    """A local HTTP server keeping every JSON body POSTed to it and its path: the stand-in for an outside service
    (Slack's incoming webhook, Marquez). Yields (base URL, bodies, paths)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bodies: list[dict] = []
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            paths.append(self.path)
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", bodies, paths
    server.shutdown()


@pytest.fixture
def writer_process():
    """Start `stock_platform_tests.lake_writer` in a process of its own on a lake (its options as keywords; True/False:
    a flag given or not): the concurrency and crash tests' other writer."""
    def start(lake: LakeResource, start: dt.date, end: dt.date, **extra) -> subprocess.Popen:
        args = [sys.executable, "-W", "ignore", "-m", "stock_platform_tests.lake_writer", "--uri", lake.uri,
                "--start", start.isoformat(), "--end", end.isoformat()]
        if lake.aws_endpoint_url:
            args += ["--endpoint", lake.aws_endpoint_url]
        for key, value in extra.items():
            if value is not False:
                args += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())

    return start


@pytest.fixture
def universe() -> UniverseResource:
    return UniverseResource(tickers=TICKERS)


@pytest.fixture
def demo_source() -> PriceSourceResource:
    return PriceSourceResource(source="demo")


@pytest.fixture
def instance(tmp_path: Path):
    """A real Dagster instance (SQLite storage) in a temporary DAGSTER_HOME."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


def _postgres_available() -> str | None:
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # noqa: BLE001
        return str(exc).splitlines()[0]
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The Postgres server at 127.0.0.1:5432 (db `test`). Required under CI=true; skipped elsewhere if absent."""
    problem = _postgres_available()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but Postgres at {POSTGRES_URL} is unreachable: {problem}")
        pytest.skip(f"Postgres at {POSTGRES_URL} unreachable: {problem}")
    return POSTGRES_URL


@pytest.fixture
def postgres_databases(postgres_url: str):
    """Make new, empty Postgres databases (`make()` returns each one's URL); all dropped after the test."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def make():
        name = f"sp_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return make_url(postgres_url).set(database=name)

    try:
        yield make
    finally:
        with admin.connect() as conn:
            for name in made:
                conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture
def fresh_postgres_db(postgres_databases):
    """A new, empty Postgres database for one test; dropped afterwards. Yields its URL parts."""
    return postgres_databases()


# What makes a test slow, by what it uses (so the `slow` mark cannot drift from the test's needs): a real
# Dagster instance and runs, Postgres, the S3 server or the prepared near-real-time stack. The fast tier,
# `python -m pytest -m "not slow"`, is everything else; `python -m pytest` runs both.
SLOW_FIXTURES = {"instance", "s3_endpoint", "s3_lake", "postgres_url", "postgres_databases", "fresh_postgres_db",
                 "prepared", "demo_run", "writer_process"}
POSTGRES_FIXTURES = {"postgres_url", "postgres_databases", "fresh_postgres_db"}


# ------------------------------------------------------------------ the demo with a model, run once per session
DEMO_TICKERS = ("AAPL", "MSFT", "XOM", "JPM")
DEMO_END = "2025-06-30"
DEMO_ARGS = ("--tickers", ",".join(DEMO_TICKERS), "--years", "2.5", "--end", DEMO_END, "--trials", "2")


def user_env() -> dict[str, str]:
    """This environment without the platform's, Dagster's and MLflow's settings: what a user's shell starts with."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("STOCK_PLATFORM_", "DAGSTER_", "MLFLOW_"))}


@dataclass(frozen=True)
class DemoRun:
    home: Path  # the template: tests work on a copy (`copy_to`)
    stdout: str  # what the first `stock-platform demo` printed
    stderr: str

    def copy_to(self, home: Path) -> Path:
        """A home of its own: the lake's Delta logs, the SQLite instance, warehouse and MLflow store hold paths
        relative to it (MLflow's artifact URIs still name the template's, which stays for the session)."""
        shutil.copytree(self.home, home)
        return home


# secrets a user's shell may hold while running the demo (unused by its local stores): none may reach its output,
# logs, run records or tables (test_cli checks)
DEMO_SECRETS = {"PGPASSWORD": f"pg-{uuid.uuid4().hex}", "MLFLOW_TRACKING_PASSWORD": f"mlflow-{uuid.uuid4().hex}",
                "AWS_SECRET_ACCESS_KEY": f"aws-{uuid.uuid4().hex}"}


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> DemoRun:
    """`stock-platform demo` over 2.5 years of four tickers with a 2-trial model, run once per session as a user
    runs it (a subprocess with its own environment); test_cli and test_serving copy its home."""
    home = tmp_path_factory.mktemp("demo_template") / "home"
    done = subprocess.run([sys.executable, "-W", "ignore", "-m", "stock_platform.cli", "demo", "--home", str(home),
                           *DEMO_ARGS], env=user_env() | DEMO_SECRETS, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return DemoRun(home, done.stdout, done.stderr)


# ------------------------------------------------------------------ two workers (pytest-xdist, `-n 2` in addopts)
# A test whose expensive fixture outlives it (the session's demo, a module's fixtures) runs on the worker that built
# that fixture; every other test goes to whichever worker is free. pytest-xdist's own `--dist loadgroup` cannot
# do it here: it tags node ids with `@group` through `item._nodeid`, which pytest 9.2 no longer reads, so each
# worker writes its groups into the controller's session directory and the scheduler below reads them.
GROUPS_DIR = os.environ.setdefault("SPT_XDIST_GROUPS_DIR", SESSION_ROOT)  # the controller's, inherited


def shared_fixture_group(item) -> str | None:
    """The group of an `xdist_group` mark (tests sharing something no fixture owns, e.g. a file one of them
    touches), "demo_run" for the users of the session's demo (test_cli, test_serving), the module's name for a test
    that uses a module-scoped fixture, else None. (pytest keeps a test's fixture definitions, with their scopes, in
    `_fixtureinfo` only.)"""
    if (mark := item.get_closest_marker("xdist_group")) is not None:
        return mark.args[0]
    if "demo_run" in item.fixturenames:
        return "demo_run"
    definitions = getattr(item, "_fixtureinfo", None)
    scopes = {defs[-1].scope for defs in definitions.name2fixturedefs.values()} if definitions else set()
    return item.module.__name__ if "module" in scopes else None


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        if used & SLOW_FIXTURES or "s3" in params.values():
            item.add_marker(pytest.mark.slow)
        if used & POSTGRES_FIXTURES:
            item.add_marker(pytest.mark.postgres)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        # The slow tests first, the quick ones last: they fill the end of the session while the other worker finishes
        # (a two-minute test handed out last would run alone). A stable sort: a module keeps its order.
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
        groups = {item.nodeid: group for item in items if (group := shared_fixture_group(item))}
        (Path(GROUPS_DIR) / f"groups-{worker}.json").write_text(json.dumps(groups))


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scope scheduling with the workers' groups as scopes (each other test a scope of its own)."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # first called once every worker has collected (and written its file)
                self.groups = {}
                for written in Path(GROUPS_DIR).glob("groups-*.json"):
                    self.groups |= json.loads(written.read_text())
            return self.groups.get(nodeid, nodeid)

    return SharedFixtureScheduling(config, log)


def pytest_unconfigure(config):
    shutil.rmtree(SESSION_ROOT, ignore_errors=True)
