"""Shared fixtures. Everything here is real: Delta tables on disk, Dagster instances, Postgres."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

# Before anything loads settings: keep the test session's embedded state out of the work tree.
os.environ.setdefault("STOCK_PLATFORM_HOME", tempfile.mkdtemp(prefix="stock_platform_test_"))
for _var in ("STOCK_PLATFORM_SOURCE", "STOCK_PLATFORM_TICKERS", "STOCK_PLATFORM_FILES_DIR", "STOCK_PLATFORM_START",
             "STOCK_PLATFORM_LAKE_URI", "STOCK_PLATFORM_WAREHOUSE_URL"):
    os.environ.pop(_var, None)

import dagster as dg  # noqa: E402
import pytest  # noqa: E402

from stock_platform.resources import PriceSourceResource, UniverseResource  # noqa: E402
from stock_platform.resources.lake import LakeResource  # noqa: E402

POSTGRES_URL = os.environ.get("STOCK_PLATFORM_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
TICKERS = ["AAPL", "MSFT", "XOM"]


@pytest.fixture
def lake(tmp_path: Path) -> LakeResource:
    return LakeResource(uri=str(tmp_path / "lake"))


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
def fresh_postgres_db(postgres_url: str):
    """A new, empty Postgres database for one test; dropped afterwards. Yields its URL parts."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"sp_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_url).set(database=name)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
