"""The lake: Delta tables under one root (a local directory or s3://bucket/prefix).

Writes are Delta commits, so a failed run never leaves a half-written table: readers see the previous
version until the commit lands. Re-writing a date range replaces exactly that range (idempotent).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import dagster as dg

from stock_platform.settings import validate_identifier

if TYPE_CHECKING:
    import polars as pl
    from deltalake import DeltaTable

_COMMIT_RETRIES = 6


def _date_literal(day: dt.date) -> str:
    if not isinstance(day, dt.date):
        raise TypeError(f"expected a date, got {day!r}")
    return f"'{day.isoformat()}'"


class LakeResource(dg.ConfigurableResource):
    """Delta tables by name. `uri` is the lake root; S3 needs `aws_endpoint_url` only off AWS."""

    uri: str
    aws_endpoint_url: str | None = None
    aws_region: str = "us-east-1"

    # ------------------------------------------------------------------------------------ locations
    def table_uri(self, name: str) -> str:
        validate_identifier(name, where="lake table")
        return f"{self.uri.rstrip('/')}/{name}"

    def storage_options(self) -> dict[str, str] | None:
        if not self.uri.startswith("s3://"):
            return None
        # Credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never from config.
        opts = {"AWS_REGION": self.aws_region}
        if self.aws_endpoint_url:
            opts["AWS_ENDPOINT_URL"] = self.aws_endpoint_url
            if self.aws_endpoint_url.startswith("http://"):
                opts["AWS_ALLOW_HTTP"] = "true"
        return opts

    def exists(self, name: str) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(self.table_uri(name), storage_options=self.storage_options())

    def table(self, name: str) -> DeltaTable:
        from deltalake import DeltaTable

        return DeltaTable(self.table_uri(name), storage_options=self.storage_options())

    # --------------------------------------------------------------------------------------- writes
    def ensure_table(self, name: str, schema: dict[str, pl.DataType], *, description: str | None = None) -> None:
        """Create the table with `schema` if it does not exist yet (creation is idempotent)."""
        from deltalake import DeltaTable

        if self.exists(name):
            return
        import polars as pl

        arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema
        DeltaTable.create(self.table_uri(name), arrow_schema, mode="ignore", description=description,
                          storage_options=self.storage_options())

    def replace_dates(self, name: str, df: pl.DataFrame, start: dt.date, end: dt.date, *,
                      date_column: str = "date") -> int:
        """Atomically replace the rows with `date_column` in [start, end] by `df`; return the new version.

        Rows of `df` outside the range are refused (they would survive a later replace of their range).
        """
        import polars as pl

        validate_identifier(date_column, where="date column")
        outside = df.filter(~pl.col(date_column).is_between(start, end))
        if not outside.is_empty():
            raise ValueError(f"lake table {name}: {outside.height} row(s) outside {start}..{end}, "
                             f"e.g. {outside.row(0, named=True)}")
        self.ensure_table(name, dict(df.schema))
        predicate = f"{date_column} >= {_date_literal(start)} AND {date_column} <= {_date_literal(end)}"
        return self._commit(name, lambda: self._write(name, df, predicate))

    def _write(self, name: str, df: pl.DataFrame, predicate: str) -> int:
        from deltalake import write_deltalake

        write_deltalake(self.table_uri(name), df.to_arrow(), mode="overwrite", predicate=predicate,
                        storage_options=self.storage_options())
        return self.table(name).version()

    def _commit(self, name: str, write) -> int:
        """Run a write, retrying commit conflicts with exponential backoff."""
        from deltalake.exceptions import CommitFailedError

        for attempt in range(_COMMIT_RETRIES):
            try:
                return write()
            except CommitFailedError:
                if attempt == _COMMIT_RETRIES - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------------------------------- reads
    def scan(self, name: str, *, version: int | None = None) -> pl.LazyFrame:
        import polars as pl

        return pl.scan_delta(self.table_uri(name), version=version, storage_options=self.storage_options())

    def read(self, name: str, start: dt.date | None = None, end: dt.date | None = None, *,
             tickers: Sequence[str] | None = None, columns: Sequence[str] | None = None,
             date_column: str = "date") -> pl.DataFrame:
        """Rows of a table, optionally limited to a date range and tickers, sorted by (ticker, date)."""
        if not self.exists(name):
            raise FileNotFoundError(f"lake table {name!r} does not exist at {self.table_uri(name)}")
        lf = self.scan(name)
        import polars as pl

        if start is not None:
            lf = lf.filter(pl.col(date_column) >= start)
        if end is not None:
            lf = lf.filter(pl.col(date_column) <= end)
        if tickers is not None:
            lf = lf.filter(pl.col("ticker").is_in(list(tickers)))
        if columns is not None:
            lf = lf.select(list(columns))
        sort = [c for c in ("ticker", date_column) if columns is None or c in columns]
        return lf.sort(sort).collect() if sort else lf.collect()
