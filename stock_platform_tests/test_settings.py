from __future__ import annotations

import datetime as dt

import pytest

from stock_platform.settings import DEFAULT_TICKERS, SettingsError, load_settings, validate_identifier, validate_ticker


def test_defaults_live_under_home(tmp_path):
    s = load_settings({"STOCK_PLATFORM_HOME": str(tmp_path)})
    assert s.source == "demo"
    assert s.tickers == DEFAULT_TICKERS and len(s.tickers) == 10
    assert s.start == dt.date(2015, 1, 2)
    assert s.lake_uri == str(tmp_path / "lake")
    assert s.landing_uri == str(tmp_path / "landing")
    assert s.warehouse_url == f"sqlite:///{tmp_path / 'warehouse.db'}"
    assert s.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert s.dagster_home == tmp_path / "dagster"
    assert s.ray_address is None
    assert s.api_max_rows == 10_000_000
    assert (s.tuning_trials, s.tuning_seconds) == (16, 90.0)


def test_values_are_read_and_normalised(tmp_path):
    s = load_settings({
        "STOCK_PLATFORM_HOME": str(tmp_path), "STOCK_PLATFORM_TICKERS": " aapl, BRK-B,EURUSD=X,aapl ",
        "STOCK_PLATFORM_LAKE_URI": "s3://my-bucket/lake/", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "STOCK_PLATFORM_START": "2020-01-02", "RAY_ADDRESS": "ray://head:10001",
        "STOCK_PLATFORM_WAREHOUSE_URL": "postgresql://user@db:5432/warehouse", "STOCK_PLATFORM_API_MAX_ROWS": "5_000_000",
        "STOCK_PLATFORM_TUNING_TRIALS": " 4", "STOCK_PLATFORM_TUNING_SECONDS": "45.5",
    })
    assert (s.tuning_trials, s.tuning_seconds) == (4, 45.5)
    assert s.api_max_rows == 5_000_000
    assert s.warehouse_url == "postgresql+psycopg2://user@db:5432/warehouse"  # one driver: psycopg2
    assert s.tickers == ("AAPL", "BRK-B", "EURUSD=X")
    assert s.lake_uri == "s3://my-bucket/lake"
    assert s.start == dt.date(2020, 1, 2)
    assert s.ray_address == "ray://head:10001"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"STOCK_PLATFORM_SOURCE": "bloomberg"}, "STOCK_PLATFORM_SOURCE"),
        ({"STOCK_PLATFORM_TICKERS": "AAPL,../etc/passwd"}, "STOCK_PLATFORM_TICKERS"),
        ({"STOCK_PLATFORM_TICKERS": "AAPL,X'; DROP TABLE stock_price;--"}, "STOCK_PLATFORM_TICKERS"),
        ({"STOCK_PLATFORM_TICKERS": " , "}, "STOCK_PLATFORM_TICKERS"),
        ({"STOCK_PLATFORM_TICKERS": ""}, "STOCK_PLATFORM_TICKERS is set but empty"),  # not the default universe
        ({"STOCK_PLATFORM_LAKE_URI": "  "}, "STOCK_PLATFORM_LAKE_URI is set but empty"),
        ({"STOCK_PLATFORM_START": "2015-13-01"}, "STOCK_PLATFORM_START"),
        ({"STOCK_PLATFORM_START": "1970-01-02"}, "STOCK_PLATFORM_START"),
        ({"STOCK_PLATFORM_LAKE_URI": "ftp://host/lake"}, "STOCK_PLATFORM_LAKE_URI"),
        ({"STOCK_PLATFORM_LANDING_URI": "s3://UPPER_bucket/x"}, "STOCK_PLATFORM_LANDING_URI"),
        ({"STOCK_PLATFORM_WAREHOUSE_URL": "mysql://root@localhost/db"}, "STOCK_PLATFORM_WAREHOUSE_URL"),
        ({"STOCK_PLATFORM_SOURCE": "files"}, "STOCK_PLATFORM_FILES_DIR"),
        ({"STOCK_PLATFORM_FILES_DIR": "/definitely/not/here"}, "STOCK_PLATFORM_FILES_DIR"),
        ({"AWS_ENDPOINT_URL": "localhost:9000"}, "AWS_ENDPOINT_URL"),
        ({"STOCK_PLATFORM_API_MAX_ROWS": "2e6"}, "STOCK_PLATFORM_API_MAX_ROWS"),
        ({"STOCK_PLATFORM_API_MAX_ROWS": "-1"}, "STOCK_PLATFORM_API_MAX_ROWS"),
        ({"STOCK_PLATFORM_TUNING_TRIALS": "0"}, "STOCK_PLATFORM_TUNING_TRIALS"),
        ({"STOCK_PLATFORM_TUNING_TRIALS": "many"}, "STOCK_PLATFORM_TUNING_TRIALS"),
        ({"STOCK_PLATFORM_TUNING_SECONDS": "nan"}, "STOCK_PLATFORM_TUNING_SECONDS"),
        ({"STOCK_PLATFORM_TUNING_SECONDS": "0.5"}, "STOCK_PLATFORM_TUNING_SECONDS"),
    ],
)
def test_bad_values_name_the_variable_and_value(tmp_path, env, variable):
    with pytest.raises(SettingsError) as err:
        load_settings({"STOCK_PLATFORM_HOME": str(tmp_path), **env})
    message = str(err.value)
    assert message.startswith(variable)
    if variable in env and env[variable].strip(" ,"):
        # the offending value (or, for a list, the offending item) is quoted in the message
        assert any(repr(part.strip().upper()) in message or repr(part.strip()) in message
                   for part in [env[variable], *env[variable].split(",")])


@pytest.mark.parametrize("bad", ["", "aapl", "../X", "A/B", "A B", "A;B", "A'B", "TOO_LONG_TICKER_X", "$AAPL", "^GSPC"])
def test_ticker_validation_rejects_unsafe_symbols(bad):
    with pytest.raises(SettingsError, match="not a valid ticker"):
        validate_ticker(bad)


@pytest.mark.parametrize("good", ["AAPL", "BRK.B", "BRK-B", "ES=F", "EURUSD=X", "7203", "X^Y"])
def test_ticker_validation_accepts_real_symbols(good):
    assert validate_ticker(good) == good


@pytest.mark.parametrize("bad", ["Prices", "../x", "a-b", "1abc", "a;drop"])
def test_identifier_validation(bad):
    with pytest.raises(SettingsError):
        validate_identifier(bad)


def test_unreachable_sqlite_warehouse_fails_with_its_url(tmp_path):
    s = load_settings({"STOCK_PLATFORM_HOME": str(tmp_path),
                       "STOCK_PLATFORM_WAREHOUSE_URL": "sqlite:////no/such/dir/warehouse.db"})
    with pytest.raises(SettingsError, match=r"STOCK_PLATFORM_WAREHOUSE_URL=.*no/such/dir.*unreachable"):
        s.check_warehouse_reachable()


def test_unreachable_postgres_warehouse_fails_with_its_url(tmp_path):
    s = load_settings({"STOCK_PLATFORM_HOME": str(tmp_path),
                       "STOCK_PLATFORM_WAREHOUSE_URL": "postgresql://nobody:secret@127.0.0.1:1/test"})
    with pytest.raises(SettingsError, match="unreachable") as err:
        s.check_warehouse_reachable()
    assert "secret" not in str(err.value)  # the password is hidden
    assert "127.0.0.1:1" in str(err.value)


@pytest.mark.postgres
def test_reachable_postgres_warehouse(tmp_path, postgres_url):
    s = load_settings({"STOCK_PLATFORM_HOME": str(tmp_path), "STOCK_PLATFORM_WAREHOUSE_URL": postgres_url})
    s.check_warehouse_reachable()
