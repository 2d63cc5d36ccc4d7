"""All I/O: price sources, the lake, (later) the warehouse, tuning and tracking."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import field_validator

from stock_platform.settings import SOURCES, validate_ticker

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
    """Where daily bars come from. `source`: demo | yfinance | files (adapters in `sources.py`)."""

    source: str = "demo"
    files_dir: str | None = None
    seed: int = 7
    retries: int = 4  # the adapter's own retries of one request (yfinance), after 1, 2, 4, 8 s x jitter
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
                             retries=self.retries, backoff=self.retry_backoff_seconds)
