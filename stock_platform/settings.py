"""Environment variables -> typed settings, read and validated in one place.

Every variable of the README's Configuration section is read here and nowhere else. A bad value fails at start with a
`SettingsError` that names the variable and the value. Defaults live under `STOCK_PLATFORM_HOME`.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stock_platform.lib.calendar import exchange_date
from stock_platform.lib.contracts import TICKER_PATTERN

_TICKER_RE = re.compile(TICKER_PATTERN)
# Table and object names that reach a file path or a URI: lowercase identifiers only.
_IDENTIFIER_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_S3_URI_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[A-Za-z0-9_.\-/]*)?$")

SOURCES = ("demo", "yfinance", "alphavantage", "files", "sql")
# the alphavantage source's functions: with the adjusted close, dividends and splits (premium), or as-traded bars only
ALPHAVANTAGE_FUNCTIONS = ("TIME_SERIES_DAILY_ADJUSTED", "TIME_SERIES_DAILY")
DEFAULT_API_MAX_ROWS = 10_000_000  # served rows the API holds in memory, ~3.8 GB (see serving/read_model.py)
DEFAULT_TICKERS = ("AAPL", "MSFT", "AMZN", "GOOGL", "META", "NVDA", "JPM", "XOM", "JNJ", "PG")
DEFAULT_START = dt.date(2015, 1, 2)
DEFAULT_TUNING_TRIALS, DEFAULT_TUNING_SECONDS = 16, 90.0  # per model family and week (about two minutes on 2 cores)
SECRET_VARIABLES = ("STOCK_PLATFORM_WAREHOUSE_URL", "MLFLOW_TRACKING_URI", "STOCK_PLATFORM_ALERT_WEBHOOK",
                    "STOCK_PLATFORM_SOURCE_URL", "ALPHAVANTAGE_API_KEY")
# A table of the `sql` source: a name, or schema.name (letters, digits, _; quoted by SQLAlchemy, never pasted)
_SOURCE_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the variable and the value."""


def validate_ticker(ticker: str, *, where: str = "ticker") -> str:
    """Return `ticker` if it is a safe symbol (no path or SQL characters), else raise."""
    if not isinstance(ticker, str) or not _TICKER_RE.fullmatch(ticker):
        raise SettingsError(f"{where}: {ticker!r} is not a valid ticker (expected {TICKER_PATTERN})")
    return ticker


def validate_identifier(name: str, *, where: str = "name") -> str:
    """Return `name` if it is a safe lowercase identifier for a table, file or column."""
    if not isinstance(name, str) or not _IDENTIFIER_RE.fullmatch(name):
        raise SettingsError(f"{where}: {name!r} is not a valid identifier (lowercase letters, digits, _)")
    return name


def parse_tickers(value: str, *, where: str = "STOCK_PLATFORM_TICKERS") -> tuple[str, ...]:
    tickers = [t.strip().upper() for t in value.split(",") if t.strip()]
    if not tickers:
        raise SettingsError(f"{where}={value!r}: no tickers given")
    for t in tickers:
        validate_ticker(t, where=where)
    # keep the order given, drop repeats
    return tuple(dict.fromkeys(tickers))


def validate_storage_uri(value: str, *, where: str) -> str:
    """A local directory path or an `s3://bucket/prefix` URI (returned normalised)."""
    value = value.strip()
    if value.startswith("s3://"):
        if not _S3_URI_RE.fullmatch(value) or ".." in value:
            raise SettingsError(f"{where}={value!r}: not a valid s3://bucket/prefix URI")
        return value.rstrip("/")
    if "://" in value:
        raise SettingsError(f"{where}={value!r}: only local paths and s3:// URIs are supported")
    if not value or "\x00" in value:
        raise SettingsError(f"{where}={value!r}: empty or invalid path")
    return str(Path(value).expanduser().resolve())


_SQL_URL_RE = re.compile(r"^(sqlite|postgresql)(\+[a-z0-9_]+)?://.*$")


def normalize_sql_url(value: str) -> str:
    """One Postgres driver for everything (dagster-postgres needs psycopg2): SQLAlchemy 2.1 would
    otherwise pick psycopg 3 for a plain postgresql:// URL."""
    if value.startswith("postgresql://"):
        return "postgresql+psycopg2://" + value.removeprefix("postgresql://")
    return value


def _validate_sql_url(value: str, *, where: str) -> str:
    # A cheap syntactic check at start (SQLAlchemy is imported only when the warehouse is used).
    value = value.strip()
    if not _SQL_URL_RE.fullmatch(value):
        raise SettingsError(f"{where}={value!r}: expected a sqlite:// or postgresql:// SQLAlchemy URL")
    return normalize_sql_url(value)


def validate_sql_source(url: str | None, table: str | None, query: str | None) -> tuple[str, str | None, str | None]:
    """The `sql` source's settings: a SQLAlchemy URL (never echoed: it may hold a password) and exactly one of a
    table name or a SELECT that takes the range as :start and :end."""
    if not url:
        raise SettingsError("STOCK_PLATFORM_SOURCE_URL is required when STOCK_PLATFORM_SOURCE='sql' (a SQLAlchemy URL)")
    if not re.fullmatch(r"[a-z][a-z0-9_]*(\+[a-z0-9_]+)?://\S*", url.strip()):
        raise SettingsError("STOCK_PLATFORM_SOURCE_URL: not a SQLAlchemy URL (dialect[+driver]://...)")
    if (table is None) == (query is None):
        raise SettingsError("STOCK_PLATFORM_SOURCE='sql' needs one of STOCK_PLATFORM_SOURCE_TABLE (a table of daily "
                            "bars) or STOCK_PLATFORM_SOURCE_QUERY (a SELECT with :start and :end), not "
                            f"{'both' if table else 'neither'}")
    if table is not None and not _SOURCE_TABLE_RE.fullmatch(table):
        raise SettingsError(f"STOCK_PLATFORM_SOURCE_TABLE={table!r}: expected a table name or schema.table (letters, "
                            "digits, _)")
    if query is not None:
        missing = [p for p in (":start", ":end") if not re.search(rf"{p}\b", query)]
        if missing or not re.match(r"(?is)\s*(with|select)\b", query):
            raise SettingsError(f"STOCK_PLATFORM_SOURCE_QUERY={query[:80]!r}: expected a SELECT (or WITH ... SELECT) "
                                "that takes the range as the parameters :start and :end"
                                + (f" (no {', '.join(missing)})" if missing else ""))
    return normalize_sql_url(url.strip()), table, query


def validate_alphavantage(api_key: str | None, function: str, per_minute: str, url: str | None
                          ) -> tuple[str, str, float, str | None]:
    """The `alphavantage` source's settings: the key (never echoed), the function, the calls a minute the key may
    make (the free tier's 5 by default) and, optionally, another endpoint (a proxy) in STOCK_PLATFORM_SOURCE_URL."""
    if not api_key:
        raise SettingsError("ALPHAVANTAGE_API_KEY is required when STOCK_PLATFORM_SOURCE='alphavantage' (a free key: "
                            "https://www.alphavantage.co/support/#api-key)")
    if not re.fullmatch(r"[A-Za-z0-9]{4,64}", api_key.strip()):
        raise SettingsError("ALPHAVANTAGE_API_KEY: not an Alpha Vantage key (letters and digits)")
    function = function.strip().upper()
    if function not in ALPHAVANTAGE_FUNCTIONS:
        raise SettingsError(f"STOCK_PLATFORM_ALPHAVANTAGE_FUNCTION={function!r}: expected one of "
                            f"{', '.join(ALPHAVANTAGE_FUNCTIONS)}")
    try:
        rate = float(per_minute)
    except ValueError:
        rate = float("nan")
    if not 0 < rate <= 1200:
        raise SettingsError(f"STOCK_PLATFORM_ALPHAVANTAGE_CALLS_PER_MINUTE={per_minute!r}: expected calls a minute "
                            "between 0 and 1200 (the free tier: 5)")
    if url is not None and not re.fullmatch(r"https?://[^\s?#]+", url.strip()):
        raise SettingsError("STOCK_PLATFORM_SOURCE_URL: the alphavantage source takes an http(s):// endpoint there")
    return api_key.strip(), function, rate, url.strip() if url else None


@dataclass(frozen=True)
class Settings:
    home: Path
    source: str
    tickers: tuple[str, ...]
    start: dt.date
    files_dir: Path | None
    lake_uri: str
    landing_uri: str
    warehouse_url: str
    mlflow_tracking_uri: str
    mlflow_artifact_location: str | None
    ray_address: str | None
    dagster_home: Path
    aws_endpoint_url: str | None
    alert_webhook: str | None = None  # where alerts are posted (Slack-compatible incoming webhook); None: logged only
    dagster_url: str = "http://localhost:3000"  # the Dagster UI, for links in alerts and MLflow notes
    openlineage_url: str | None = None  # an OpenLineage backend (Marquez): HTTP transport
    openlineage_file: str | None = None  # or a file of events, one JSON per line
    api_max_rows: int = DEFAULT_API_MAX_ROWS  # the API holds the served tables in memory up to this many rows
    api_token_hashes: tuple[str, ...] = ()  # bearer tokens the API accepts, as hashes (serving/auth.py); none: open
    # the `sql` source: a SQLAlchemy URL (a secret: it may hold a password), and a table or a query with :start/:end
    source_url: str | None = None
    source_table: str | None = None
    source_query: str | None = None
    # the `alphavantage` source: the key (a secret), TIME_SERIES_DAILY(_ADJUSTED), the key's calls a minute
    alphavantage_api_key: str | None = None
    alphavantage_function: str = "TIME_SERIES_DAILY_ADJUSTED"
    alphavantage_calls_per_minute: float = 5.0
    # the weekly retrain's search budget per family (TuningConfig's defaults: the schedule's runs and the Launchpad's)
    tuning_trials: int = DEFAULT_TUNING_TRIALS
    tuning_seconds: float = DEFAULT_TUNING_SECONDS
    # The secret-bearing variables (URLs may hold a password) that the environment set: resources then take them
    # as `dg.EnvVar`, so Dagster shows the variable's name, never its value.
    secrets_from_env: frozenset[str] = frozenset()

    def check_warehouse_reachable(self) -> None:
        """Connect once to the warehouse; raise a SettingsError naming the URL when it fails."""
        from sqlalchemy import create_engine, text
        from sqlalchemy.exc import ArgumentError

        try:
            engine = create_engine(self.warehouse_url)
        except (ArgumentError, ImportError) as exc:
            raise SettingsError(f"STOCK_PLATFORM_WAREHOUSE_URL: cannot use this URL ({exc})") from None
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any driver error means unreachable
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SettingsError(
                f"STOCK_PLATFORM_WAREHOUSE_URL={engine.url.render_as_string(hide_password=True)!r}: "
                f"unreachable ({first_line})"
            ) from None
        finally:
            engine.dispose()


def load_settings(env: Mapping[str, str] | None = None, *, now: dt.datetime | None = None) -> Settings:
    """Read the environment (or `env`) into validated Settings; `now` (default: the clock) dates "today"."""
    env = dict(os.environ if env is None else env)
    empty = sorted(k for k, v in env.items() if k.startswith("STOCK_PLATFORM_") and not v.strip())
    if empty:  # `X=` in a shell or an env file: a mistake, never a silent default
        raise SettingsError(f"{empty[0]} is set but empty: unset it for its default (see README, Configuration) "
                            "or give it a value")

    home = Path(env.get("STOCK_PLATFORM_HOME") or "./.stock_platform").expanduser().resolve()

    source = env.get("STOCK_PLATFORM_SOURCE", "demo").strip().lower()
    if source not in SOURCES:
        raise SettingsError(f"STOCK_PLATFORM_SOURCE={source!r}: unknown source (choose from {', '.join(SOURCES)})")

    tickers = parse_tickers(env["STOCK_PLATFORM_TICKERS"]) if "STOCK_PLATFORM_TICKERS" in env else DEFAULT_TICKERS

    start_raw = env.get("STOCK_PLATFORM_START", DEFAULT_START.isoformat())
    try:
        start = dt.date.fromisoformat(start_raw.strip())
    except ValueError:
        raise SettingsError(f"STOCK_PLATFORM_START={start_raw!r}: not a date (expected YYYY-MM-DD)") from None
    today = exchange_date(now)
    if not dt.date(1990, 1, 1) <= start <= today:
        raise SettingsError(f"STOCK_PLATFORM_START={start_raw!r}: must be between 1990-01-01 and today in New York "
                            f"({today})")

    files_dir = None
    if env.get("STOCK_PLATFORM_FILES_DIR"):
        files_dir = Path(validate_storage_uri(env["STOCK_PLATFORM_FILES_DIR"], where="STOCK_PLATFORM_FILES_DIR"))
        if not files_dir.is_dir():
            raise SettingsError(f"STOCK_PLATFORM_FILES_DIR={str(files_dir)!r}: not a directory")
    if source == "files" and files_dir is None:
        raise SettingsError("STOCK_PLATFORM_FILES_DIR is required when STOCK_PLATFORM_SOURCE='files'")

    source_url = env.get("STOCK_PLATFORM_SOURCE_URL") or None
    source_table = (env.get("STOCK_PLATFORM_SOURCE_TABLE") or "").strip() or None
    source_query = (env.get("STOCK_PLATFORM_SOURCE_QUERY") or "").strip() or None
    if source == "sql":
        source_url, source_table, source_query = validate_sql_source(source_url, source_table, source_query)
    av_key, av_function, av_rate = None, "TIME_SERIES_DAILY_ADJUSTED", 5.0
    if source == "alphavantage":
        av_key, av_function, av_rate, source_url = validate_alphavantage(
            env.get("ALPHAVANTAGE_API_KEY"), env.get("STOCK_PLATFORM_ALPHAVANTAGE_FUNCTION", av_function),
            env.get("STOCK_PLATFORM_ALPHAVANTAGE_CALLS_PER_MINUTE", "5"), source_url)

    lake_uri = validate_storage_uri(env.get("STOCK_PLATFORM_LAKE_URI") or str(home / "lake"), where="STOCK_PLATFORM_LAKE_URI")
    landing_uri = validate_storage_uri(
        env.get("STOCK_PLATFORM_LANDING_URI") or str(home / "landing"), where="STOCK_PLATFORM_LANDING_URI"
    )
    warehouse_url = _validate_sql_url(
        env.get("STOCK_PLATFORM_WAREHOUSE_URL") or f"sqlite:///{home / 'warehouse.db'}",
        where="STOCK_PLATFORM_WAREHOUSE_URL",
    )
    mlflow_uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
    # A local store keeps artifacts beside it (MLflow's default is ./mlruns of whatever the working
    # directory is); a tracking server decides for itself.
    local_store = mlflow_uri.startswith(("sqlite:", "file:", "/"))
    artifacts = env.get("MLFLOW_ARTIFACT_LOCATION") or (str(home / "mlartifacts") if local_store else None)

    ray_address = env.get("RAY_ADDRESS") or None
    dagster_home = Path(env.get("DAGSTER_HOME") or home / "dagster").expanduser().resolve()

    endpoint = env.get("AWS_ENDPOINT_URL") or None
    if endpoint and not re.fullmatch(r"https?://[A-Za-z0-9.\-]+(:\d{1,5})?/?", endpoint):
        raise SettingsError(f"AWS_ENDPOINT_URL={endpoint!r}: expected http(s)://host[:port]")

    webhook = env.get("STOCK_PLATFORM_ALERT_WEBHOOK") or None
    if webhook and not re.fullmatch(r"https?://[^\s]+", webhook):
        raise SettingsError("STOCK_PLATFORM_ALERT_WEBHOOK: expected an http(s):// URL")  # not echoed: it is a secret
    dagster_url = env.get("STOCK_PLATFORM_DAGSTER_URL") or "http://localhost:3000"
    if not re.fullmatch(r"https?://[^\s]+", dagster_url):
        raise SettingsError(f"STOCK_PLATFORM_DAGSTER_URL={dagster_url!r}: expected an http(s):// URL")

    openlineage_url = env.get("OPENLINEAGE_URL") or None
    if openlineage_url and not re.fullmatch(r"https?://[^\s]+", openlineage_url):
        raise SettingsError(f"OPENLINEAGE_URL={openlineage_url!r}: expected an http(s):// URL")
    openlineage_file = env.get("OPENLINEAGE_FILE") or None
    if openlineage_file:
        openlineage_file = validate_storage_uri(openlineage_file, where="OPENLINEAGE_FILE")

    max_rows_raw = env.get("STOCK_PLATFORM_API_MAX_ROWS", str(DEFAULT_API_MAX_ROWS)).strip().replace("_", "")
    if not max_rows_raw.isdigit():
        raise SettingsError(f"STOCK_PLATFORM_API_MAX_ROWS={max_rows_raw!r}: expected a whole number of rows (0: "
                            "never load the tables, scan on every request)")

    token_hashes = tuple(h.strip() for h in env.get("STOCK_PLATFORM_API_TOKENS", "").split(",") if h.strip())
    bad = [i for i, h in enumerate(token_hashes, 1) if not re.fullmatch(r"sha256:[0-9a-f]{64}", h)]
    if bad:  # not echoed: a token pasted in place of its hash would be a secret
        raise SettingsError(f"STOCK_PLATFORM_API_TOKENS: entry {bad[0]} is not a token hash (expected sha256:<64 hex "
                            "digits>; `stock-platform token` makes a token and its hash)")

    trials_raw = env.get("STOCK_PLATFORM_TUNING_TRIALS", str(DEFAULT_TUNING_TRIALS)).strip()
    if not trials_raw.isdigit() or int(trials_raw) < 1:
        raise SettingsError(f"STOCK_PLATFORM_TUNING_TRIALS={trials_raw!r}: expected a whole number of trials >= 1")
    seconds_raw = env.get("STOCK_PLATFORM_TUNING_SECONDS", str(DEFAULT_TUNING_SECONDS)).strip()
    try:
        tuning_seconds = float(seconds_raw)
    except ValueError:
        tuning_seconds = float("nan")
    if not 1 <= tuning_seconds <= 7 * 24 * 3600:
        raise SettingsError(f"STOCK_PLATFORM_TUNING_SECONDS={seconds_raw!r}: expected seconds between 1 and a week")

    return Settings(
        home=home,
        source=source,
        tickers=tickers,
        start=start,
        files_dir=files_dir,
        lake_uri=lake_uri,
        landing_uri=landing_uri,
        warehouse_url=warehouse_url,
        mlflow_tracking_uri=mlflow_uri,
        mlflow_artifact_location=artifacts,
        ray_address=ray_address,
        dagster_home=dagster_home,
        aws_endpoint_url=endpoint,
        alert_webhook=webhook,
        dagster_url=dagster_url.rstrip("/"),
        openlineage_url=openlineage_url,
        openlineage_file=openlineage_file,
        api_max_rows=int(max_rows_raw),
        api_token_hashes=token_hashes,
        source_url=source_url,
        source_table=source_table,
        source_query=source_query,
        alphavantage_api_key=av_key,
        alphavantage_function=av_function,
        alphavantage_calls_per_minute=av_rate,
        tuning_trials=int(trials_raw),
        tuning_seconds=tuning_seconds,
        secrets_from_env=frozenset(v for v in SECRET_VARIABLES if env.get(v)),
    )


_process_settings: Settings | None = None


def get_settings() -> Settings:
    """The process's settings: those `use_settings` was given, else the environment's, read once."""
    global _process_settings
    if _process_settings is None:
        _process_settings = load_settings()
    return _process_settings


def use_settings(settings: Settings) -> Settings:
    """Make `settings` the process's settings: the CLI does this with what it built from the environment and
    its options, before it loads the definitions (whose partitions start at `settings.start`)."""
    global _process_settings
    _process_settings = settings
    return settings
