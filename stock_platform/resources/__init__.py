"""All I/O: price sources, the lake, (later) the warehouse, tuning and tracking."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import field_validator

from stock_platform.settings import SOURCES, Settings, validate_ticker

if TYPE_CHECKING:
    from stock_platform.resources.sources import FetchResult


class UniverseResource(dg.ConfigurableResource):
    """The tickers the platform tracks (configuration, not a partition dimension)."""

    tickers: list[str]

    @field_validator("tickers")
    @classmethod
    def _valid(cls, tickers: list[str]) -> list[str]:
        if not tickers:
            raise ValueError("the universe has no tickers")
        return [validate_ticker(t, where="universe") for t in tickers]


class PriceSourceResource(dg.ConfigurableResource):
    """Where daily bars come from. `source`: demo | yfinance | alphavantage | files | sql (adapters in `sources.py`)."""

    source: str = "demo"
    files_dir: str | None = None
    url: str | None = None  # sql: a SQLAlchemy URL (from STOCK_PLATFORM_SOURCE_URL: Dagster shows the name only);
    # alphavantage: another endpoint than AV's own (a proxy)
    table: str | None = None  # sql: a table of daily bars
    query: str | None = None  # sql: or a SELECT taking :start and :end
    api_key: str | None = None  # alphavantage: from ALPHAVANTAGE_API_KEY (an EnvVar: Dagster shows the name only)
    function: str = "TIME_SERIES_DAILY_ADJUSTED"  # alphavantage: or TIME_SERIES_DAILY (the free tier's)
    calls_per_minute: float = 5.0  # alphavantage: the key's rate (the free tier's 5)
    seed: int = 7
    retries: int = 4  # the adapter's own retries of one request (yfinance, alphavantage), after 1, 2, 4, 8 s x jitter
    retry_backoff_seconds: float = 1.0
    # An outage that outlasts them: the `prices` step asks Dagster to run it again, after 60, 120, 240 s x jitter.
    step_retries: int = 3
    step_retry_seconds: float = 60.0

    @field_validator("source")
    @classmethod
    def _known(cls, source: str) -> str:
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r} (choose from {', '.join(SOURCES)})")
        return source

    def fetch(self, tickers: list[str] | tuple[str, ...], start: dt.date, end: dt.date) -> FetchResult:
        from stock_platform.resources import sources

        return sources.fetch(self.source, list(tickers), start, end, files_dir=self.files_dir, seed=self.seed,
                             retries=self.retries, backoff=self.retry_backoff_seconds, url=self.url,
                             table=self.table, query=self.query, api_key=self.api_key, function=self.function,
                             calls_per_minute=self.calls_per_minute)


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The resources of `settings` (the definitions' and the CLI's); a secret-bearing URL the environment set is
    passed as its `dg.EnvVar`."""
    from stock_platform.alerts import AlertResource
    from stock_platform.lineage import LineageResource
    from stock_platform.resources.lake import LakeResource
    from stock_platform.resources.landing import LandingResource
    from stock_platform.resources.tracking import TrackingResource
    from stock_platform.resources.tuning import TuningResource
    from stock_platform.resources.warehouse import WarehouseResource

    def secret(variable: str, value: str) -> str | dg.EnvVar:
        return dg.EnvVar(variable) if variable in settings.secrets_from_env else value

    return {
        "source": PriceSourceResource(
            source=settings.source, files_dir=str(settings.files_dir) if settings.files_dir else None,
            url=secret("STOCK_PLATFORM_SOURCE_URL", settings.source_url) if settings.source_url else None,
            table=settings.source_table, query=settings.source_query,
            api_key=secret("ALPHAVANTAGE_API_KEY", settings.alphavantage_api_key)
            if settings.alphavantage_api_key else None,
            function=settings.alphavantage_function, calls_per_minute=settings.alphavantage_calls_per_minute,
        ),
        "lake": LakeResource.of(settings),
        "landing": LandingResource(uri=settings.landing_uri, aws_endpoint_url=settings.aws_endpoint_url),
        "universe": UniverseResource(tickers=list(settings.tickers)),
        "warehouse": WarehouseResource(url=secret("STOCK_PLATFORM_WAREHOUSE_URL", settings.warehouse_url)),
        "tuning": TuningResource(address=settings.ray_address, storage_dir=str(settings.home / "ray_results")),
        "tracking": TrackingResource(tracking_uri=secret("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri),
                                     artifact_location=settings.mlflow_artifact_location),
        "lineage": LineageResource(url=settings.openlineage_url, file=settings.openlineage_file,
                                   lake_uri=settings.lake_uri),
        "alerts": AlertResource(webhook_url=secret("STOCK_PLATFORM_ALERT_WEBHOOK", settings.alert_webhook)
                                if settings.alert_webhook else None, dagster_url=settings.dagster_url),
    }
