"""The `sql` source: daily bars from a table or a query of any SQLAlchemy database, through the `prices` asset,
on SQLite and on the real Postgres here (STOCK_PLATFORM_SOURCE=sql, _SOURCE_URL, _SOURCE_TABLE / _SOURCE_QUERY)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid

import dagster as dg
import polars as pl
import pytest
import sqlalchemy as sa

from stock_platform.lib.tables import PRICES_TABLE, QUARANTINE_TABLE
from stock_platform.resources import build_resources
from stock_platform.resources.landing import LandingResource
from stock_platform.resources.sources import SourceError, fetch_sql
from stock_platform.settings import SettingsError, load_settings
from stock_platform_tests.helpers import failure_message, run_range as run
from stock_platform_tests.test_prices_asset import make_defs

TICKERS = ["AAPL", "MSFT", "XOM"]
DAYS = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]
GOOD = (10, 11, 9, 10.5, 10.4, 100)
# a staging table as vendors' loaders leave them: mixed-case names, text where numbers belong
CREATE = ('CREATE TABLE {table} ("Symbol" VARCHAR(16), "Date" {date}, "Open" {price}, "High" REAL, "Low" REAL, '
          '"Close" REAL, "Adj Close" REAL, "Volume" BIGINT)')
INSERT = ('INSERT INTO {table} ("Symbol", "Date", "Open", "High", "Low", "Close", "Adj Close", "Volume") '
          'VALUES (:t, :d, :o, :h, :l, :c, :a, :v)')


def rows(bad_aapl: bool = True, extra: list[tuple] = ()) -> list[dict]:
    """3 tickers x 4 days; AAPL's 2024-01-03 opens at -10 and its 2024-01-04 at 'abc' (bad_aapl); then `extra`; plus
    a year of other days the range must leave in the database (the pushed-down predicate)."""
    out = [(t, d, *GOOD) for t in TICKERS for d in DAYS]
    if bad_aapl:
        out[1] = ("AAPL", DAYS[1], -10, *GOOD[1:])
        out[2] = ("AAPL", DAYS[2], "abc", *GOOD[1:])
    out += list(extra)
    out += [(t, (dt.date(2023, 1, 2) + dt.timedelta(days=i)).isoformat(), *GOOD) for t in TICKERS for i in range(360)]
    return [dict(zip("tdohlcav", r)) for r in out]


def make_table(url: str, table: str = "daily_bars", *, date: str = "DATE", price: str = "TEXT", data=None) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(CREATE.format(table=table, date=date, price=price)))
        values = data if data is not None else rows()
        if date == "DATE":
            values = [r | {"d": dt.date.fromisoformat(r["d"])} for r in values]
        conn.execute(sa.text(INSERT.format(table=table)), values)
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path) -> str:
    """An empty database: a SQLite file, or a fresh database on the Postgres here, as a URL with a password in it
    (trust auth ignores it; it must never show)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vendor.db'}"
    url = request.getfixturevalue("fresh_postgres_db")
    return url.set(password=SECRET).render_as_string(hide_password=False)


SECRET = f"pw-{uuid.uuid4().hex}"


def sql_env(url: str, **extra: str) -> dict[str, str]:
    return {"STOCK_PLATFORM_SOURCE": "sql", "STOCK_PLATFORM_SOURCE_URL": url, "STOCK_PLATFORM_TICKERS": ",".join(TICKERS),
            "STOCK_PLATFORM_START": "2015-01-02", **extra}


def source_of(url: str, **extra: str):
    """The resource build_resources makes of these settings (the URL as the EnvVar it names, as in deployment)."""
    return build_resources(load_settings(sql_env(url, **extra)))["source"]


def test_a_table_is_read_for_the_range_only_and_its_bad_rows_are_quarantined(database, tmp_path, instance, lake,
                                                                             universe, monkeypatch):
    make_table(database)
    monkeypatch.setenv("STOCK_PLATFORM_SOURCE_URL", database)
    statements = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", seen)
    try:
        result = run(make_defs(source_of(database, STOCK_PLATFORM_SOURCE_TABLE="daily_bars"), lake, universe),
                     instance, DAYS[0], DAYS[-1], job="everything")
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", seen)
    assert result.success
    # the range and the tickers went into the WHERE clause: the year of other days stayed in the database
    [(statement, parameters)] = [(s, p) for s, p in statements if "daily_bars" in s and "SELECT" in s
                                 and "Symbol" in s]
    assert "WHERE" in statement and "BETWEEN" in statement and "IN" in statement
    bound = {str(v) for v in (parameters.values() if isinstance(parameters, dict) else parameters)}
    assert {"2024-01-02", "2024-01-05", *TICKERS} <= bound
    stored = lake.read(PRICES_TABLE)
    assert stored.height == 10 and set(stored["source"]) == {"sql"}
    quarantine = lake.read(QUARANTINE_TABLE, date_column="partition_date").sort("date")
    assert quarantine["reason"].to_list() == ["open: price must be > 0 (value: -10.0); low > min(open, close)",
                                              "open='abc' is not a number"]
    # the password is nowhere Dagster keeps what a run did: its events, its run record (config included)
    records = [str(e) for e in instance.all_logs(result.run_id)] + [str(instance.get_run_by_id(result.run_id))]
    assert not any(SECRET in r for r in records)


def test_a_query_takes_the_range_as_parameters_and_mixed_types_are_judged_row_by_row(tmp_path):
    """SQLite keeps 'abc' in a REAL column: the column arrives with mixed types and only its bad row is refused."""
    url = f"sqlite:///{tmp_path / 'vendor.db'}"
    make_table(url, date="TEXT", price="REAL")
    query = ('SELECT "Symbol" AS symbol, "Date" AS date, "Open", "High", "Low", "Close", "Volume" FROM daily_bars '
             'WHERE "Date" BETWEEN :start AND :end')
    settings = load_settings(sql_env(url, STOCK_PLATFORM_SOURCE_QUERY=query))
    got = fetch_sql(settings.source_url, ["AAPL", "MSFT"], dt.date(2024, 1, 2), dt.date(2024, 1, 5),
                    query=settings.source_query)
    assert got.prices.height == 7 and got.missing_tickers == []  # the open of -10 is the contract's to refuse
    assert got.rejects["reason"].to_list() == ["open='abc' is not a number"]
    # the adjusted close was not selected: the close is all that is known
    assert (got.prices["adj_close"] == got.prices["close"]).all()


def test_duplicate_keys_missing_columns_and_unknown_tables_are_told_apart(database, instance, lake, universe,
                                                                          monkeypatch):
    twice = [("MSFT", DAYS[0], 10, 11, 9, 10.7, 10.6, 200)]  # MSFT's first day again, with another close
    make_table(database, data=rows(bad_aapl=False, extra=twice))
    monkeypatch.setenv("STOCK_PLATFORM_SOURCE_URL", database)
    result = run(make_defs(source_of(database, STOCK_PLATFORM_SOURCE_TABLE="daily_bars"), lake, universe),
                 instance, DAYS[0], DAYS[-1], job="everything")
    assert result.success
    quarantine = lake.read(QUARANTINE_TABLE, date_column="partition_date")
    assert quarantine.height == 2 and set(quarantine["ticker"]) == {"MSFT"}
    assert all("duplicate" in r for r in quarantine["reason"])
    assert lake.read(PRICES_TABLE).height == 11  # 12 keys, the twice-delivered one held back

    engine = sa.create_engine(database)
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE TABLE no_volume ("Symbol" TEXT, "Date" DATE, "Open" REAL, "High" REAL, "Low" REAL, '
                             '"Close" REAL)'))
        conn.execute(sa.text('INSERT INTO no_volume VALUES (\'AAPL\', \'2024-01-08\', 1, 1, 1, 1)'))
    engine.dispose()
    for table, expected in (("no_volume", "missing column(s) volume"), ("nowhere", "no table 'nowhere'")):
        failed = run(make_defs(source_of(database, STOCK_PLATFORM_SOURCE_TABLE=table), lake, universe), instance,
                     "2024-01-08", "2024-01-08", job="everything")
        message = failure_message(failed)
        assert not failed.success and expected in message and "sql source" in message
        assert SECRET not in message
    with pytest.raises(SourceError, match="no ticker") as no_ticker:
        fetch_sql(database, TICKERS, dt.date(2024, 1, 2), dt.date(2024, 1, 2),
                  query='SELECT "Date", "Open" FROM daily_bars WHERE "Date" BETWEEN :start AND :end')
    assert SECRET not in str(no_ticker.value)


@pytest.mark.postgres
def test_an_unreachable_database_is_an_outage_named_without_its_password(postgres_url):
    url = sa.engine.make_url(postgres_url).set(port=1, password=SECRET).render_as_string(hide_password=False)
    with pytest.raises(SourceError) as down:
        fetch_sql(url, TICKERS, dt.date(2024, 1, 2), dt.date(2024, 1, 2), table="daily_bars")
    assert down.value.transient and "127.0.0.1" in str(down.value) and SECRET not in str(down.value)


@pytest.mark.parametrize(("env", "message"), [
    ({}, "STOCK_PLATFORM_SOURCE_URL is required"),
    ({"STOCK_PLATFORM_SOURCE_URL": "sqlite:///x.db"}, "needs one of STOCK_PLATFORM_SOURCE_TABLE"),
    ({"STOCK_PLATFORM_SOURCE_URL": "sqlite:///x.db", "STOCK_PLATFORM_SOURCE_TABLE": "bars; DROP TABLE x"},
     "STOCK_PLATFORM_SOURCE_TABLE='bars; DROP TABLE x'"),
    ({"STOCK_PLATFORM_SOURCE_URL": "sqlite:///x.db", "STOCK_PLATFORM_SOURCE_QUERY": "SELECT * FROM bars"},
     "no :start, :end"),
    ({"STOCK_PLATFORM_SOURCE_URL": "sqlite:///x.db", "STOCK_PLATFORM_SOURCE_QUERY": "DELETE FROM b WHERE d = :start "
      "OR d = :end"}, "expected a SELECT"),
    ({"STOCK_PLATFORM_SOURCE_URL": f"postgres ql://u:{SECRET}" + "@h/db", "STOCK_PLATFORM_SOURCE_TABLE": "b"},
     "not a SQLAlchemy URL"),
])
def test_settings_of_the_sql_source_are_checked_at_start(env, message):
    with pytest.raises(SettingsError, match="STOCK_PLATFORM_SOURCE") as bad:
        load_settings({"STOCK_PLATFORM_SOURCE": "sql", **env})
    assert message in str(bad.value) and SECRET not in str(bad.value)


def test_replay_streams_a_table_into_the_landing_zone(tmp_path):
    url = f"sqlite:///{tmp_path / 'vendor.db'}"
    make_table(url, data=rows(bad_aapl=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCK_PLATFORM_", "DAGSTER_", "MLFLOW_"))}
    env |= sql_env(url, STOCK_PLATFORM_SOURCE_TABLE="daily_bars")
    done = subprocess.run([sys.executable, "-W", "ignore", "-m", "stock_platform.cli", "replay", "--source", "sql",
                           "--start", DAYS[0], "--end", DAYS[-1], "--speed", "0", "--home", str(tmp_path / "home")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "replaying 12 bars of 3 tickers, 4 days" in done.stdout
    landing = LandingResource(uri=str(tmp_path / "home" / "landing"))
    keys = sorted(f.key for f in landing.list())
    assert keys == [f"replay/{d.replace('-', '/')}/bars.jsonl" for d in DAYS]
    events = [json.loads(line) for line in landing.read(keys[0]).decode().splitlines()]
    assert {e["ticker"] for e in events} == set(TICKERS) and {e["op"] for e in events} == {"upsert"}
    assert pl.DataFrame(events)["close"].to_list() == [10.5] * 3


def test_the_resource_holds_the_url_as_the_variable_it_came_from(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'vendor.db'}"
    monkeypatch.setenv("STOCK_PLATFORM_SOURCE_URL", url)
    source = build_resources(load_settings(sql_env(url, STOCK_PLATFORM_SOURCE_TABLE="daily_bars")))["source"]
    assert isinstance(source.url, dg.EnvVar) and source.url == "STOCK_PLATFORM_SOURCE_URL"
