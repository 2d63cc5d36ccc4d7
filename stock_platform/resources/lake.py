"""The lake: Delta tables under one root (a local directory or s3://bucket/prefix).

Writes are Delta commits, so a failed or killed run never leaves a half-written table: readers see the
previous version until the commit lands. Two kinds of table:

- *range tables* (`prices`, quarantine, features): re-writing a date range replaces exactly that range;
- *snapshot tables* (`price_snapshots`): Hudi-like upserts keyed on (ticker, date) with a precombine
  column, soft deletes, time travel and a change data feed (see `lib/snapshots.py`).

Usable outside Dagster too: `LakeResource(uri="./.stock_platform/lake").snapshot("price_snapshots")`.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import dagster as dg

from stock_platform.settings import validate_identifier

if TYPE_CHECKING:
    import polars as pl
    from deltalake import DeltaTable

    from stock_platform.lib.snapshots import MergeCounts

T = TypeVar("T")
DAY_HOURS = 24


class LakeError(RuntimeError):
    """A lake operation was refused (missing table, vacuumed history, unsafe retention, ...)."""


@dataclass(frozen=True)
class UpsertResult:
    version: int
    committed: bool
    counts: MergeCounts
    metrics: dict[str, Any]


def _date_literal(day: dt.date) -> str:
    if not isinstance(day, dt.date):
        raise TypeError(f"expected a date, got {day!r}")
    return f"'{day.isoformat()}'"


def date_range_sql(column: str, start: dt.date, end: dt.date, *, alias: str | None = None) -> str:
    col = f"{alias}.{validate_identifier(column)}" if alias else validate_identifier(column)
    return f"{col} >= {_date_literal(start)} AND {col} <= {_date_literal(end)}"


class LakeResource(dg.ConfigurableResource):
    """Delta tables by name. `uri` is the lake root; S3 needs `aws_endpoint_url` only off AWS.

    `retention_hours` is how long replaced files and log entries are kept: time travel and change-feed
    consumers can reach back that far, and vacuum refuses anything shorter. It must exceed the lag of
    the slowest change-feed consumer.
    """

    uri: str
    aws_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    retention_hours: int = 30 * DAY_HOURS
    commit_retries: int = 8
    # Writes over many dates are split into commits of at most this many dates. delta-rs keeps a
    # writer per partition open until a write ends: a 10-year, 500-ticker features write in one go
    # peaks at ~10 GB and a MERGE at ~4 GB; in half-year commits they stay under 2 GB, as fast.
    dates_per_commit: int = 126

    # ------------------------------------------------------------------------------------ locations
    def table_uri(self, name: str) -> str:
        validate_identifier(name, where="lake table")
        return f"{self.uri.rstrip('/')}/{name}"

    def storage_options(self) -> dict[str, str] | None:
        if not self.uri.startswith("s3://"):
            return None
        # Credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never from config.
        opts = {"AWS_REGION": self.aws_region, "conditional_put": "etag"}
        if self.aws_endpoint_url:
            opts["AWS_ENDPOINT_URL"] = self.aws_endpoint_url
            if self.aws_endpoint_url.startswith("http://"):
                opts["AWS_ALLOW_HTTP"] = "true"
        return opts

    def exists(self, name: str) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(self.table_uri(name), storage_options=self.storage_options())

    def table(self, name: str, version: int | str | dt.datetime | None = None) -> DeltaTable:
        from deltalake import DeltaTable

        from deltalake.exceptions import TableNotFoundError

        try:
            table = DeltaTable(self.table_uri(name), storage_options=self.storage_options())
        except TableNotFoundError:
            raise LakeError(f"lake table {name!r} does not exist at {self.table_uri(name)}") from None
        if version is not None:
            latest = table.version()
            try:
                table.load_as_version(version)
            except Exception as exc:  # noqa: BLE001 - delta-rs raises a generic DeltaError
                raise LakeError(f"lake table {name!r} has no version {version!r} "
                                f"(latest is {latest}; older history may be vacuumed): {exc}") from None
        return table

    # --------------------------------------------------------------------------------------- writes
    def ensure_table(self, name: str, schema: dict[str, pl.DataType], *, partition_by: Sequence[str] | None = None,
                     change_data_feed: bool = False, description: str | None = None) -> None:
        """Create the table with `schema` once, up front (idempotent; concurrent creators are fine)."""
        import polars as pl
        from deltalake import DeltaTable

        if self.exists(name):
            return
        config = {
            "delta.logRetentionDuration": f"interval {self.retention_hours} hours",
            "delta.deletedFileRetentionDuration": f"interval {self.retention_hours} hours",
        }
        if change_data_feed:
            config["delta.enableChangeDataFeed"] = "true"
        arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema
        try:
            DeltaTable.create(self.table_uri(name), arrow_schema, mode="ignore", partition_by=list(partition_by or []),
                              description=description, configuration=config, storage_options=self.storage_options())
        except Exception:  # noqa: BLE001 - lost a creation race: fine if the table now exists
            if not self.exists(name):
                raise

    def replace_dates(self, name: str, df: pl.DataFrame, start: dt.date, end: dt.date, *,
                      date_column: str = "date", change_data_feed: bool = False) -> int:
        """Atomically replace the rows with `date_column` in [start, end] by `df`; return the new version.

        The table is partitioned by `date_column`, so a replace rewrites only the range's partitions.
        A long range is replaced in consecutive sub-ranges of `dates_per_commit` dates, one commit each:
        every partition is replaced atomically, and a rerun after a failure is idempotent.
        Rows of `df` outside the range are refused (they would survive a later replace of their range).
        `change_data_feed` applies when the table is created: a replace then records deletes and inserts.
        """
        import polars as pl
        from deltalake import write_deltalake

        outside = df.filter(~pl.col(date_column).is_between(start, end))
        if not outside.is_empty():
            raise LakeError(f"lake table {name}: {outside.height} row(s) outside {start}..{end}, "
                            f"e.g. {outside.row(0, named=True)}")
        self.ensure_table(name, dict(df.schema), partition_by=[date_column], change_data_feed=change_data_feed)

        def write(part: pl.DataFrame, first: dt.date, last: dt.date) -> int:
            write_deltalake(self.table_uri(name), part.to_arrow(), mode="overwrite",
                            predicate=date_range_sql(date_column, first, last), storage_options=self.storage_options())
            return self.table(name).version()

        version = -1
        for first, last in self._date_chunks(df.get_column(date_column), start, end):
            part = df.filter(pl.col(date_column).is_between(first, last))
            version = self._retry_conflicts(lambda part=part, first=first, last=last: write(part, first, last))
        return version

    def _date_chunks(self, dates: pl.Series, start: dt.date, end: dt.date) -> list[tuple[dt.date, dt.date]]:
        """Contiguous sub-ranges covering [start, end], each holding at most `dates_per_commit` of `dates`."""
        present = dates.unique().sort().to_list()
        bounds = present[self.dates_per_commit - 1::self.dates_per_commit]
        chunks, first = [], start
        for last in bounds:
            if last >= end:
                break
            chunks.append((first, last))
            first = last + dt.timedelta(days=1)
        return [*chunks, (first, end)]

    def upsert(self, name: str, batch: pl.DataFrame, *, keys: Sequence[str], order_by: str,
               prune: tuple[str, dt.date, dt.date] | None = None) -> UpsertResult:
        """Hudi-like upsert of `batch` into snapshot table `name` (see lib/snapshots.py).

        `prune=(column, start, end)` names the partition range the batch touches, so MERGE only scans
        those files (a daily upsert stays fast on a 10-year table). A batch over more than
        `dates_per_commit` dates is merged in consecutive date chunks, one commit each: every commit
        is atomic, and a rerun after a failure is idempotent. Commit conflicts with concurrent
        writers are retried with backoff: the merge is re-planned on the new version, so the newest
        record still wins whichever writer commits first.
        """
        import polars as pl

        from stock_platform.lib.snapshots import MergeCounts

        if prune is None:
            return self._upsert_once(name, batch, keys=keys, order_by=order_by, prune=None)
        column, start, end = prune
        results = [
            self._upsert_once(name, batch.filter(pl.col(column).is_between(first, last)), keys=keys,
                              order_by=order_by, prune=(column, first, last))
            for first, last in self._date_chunks(batch.get_column(column), start, end)
        ]
        counts = MergeCounts(*(sum(getattr(r.counts, f) for r in results) for f in MergeCounts.__dataclass_fields__))
        metrics = {k: sum(r.metrics.get(k, 0) for r in results) for k in results[0].metrics}
        return UpsertResult(results[-1].version, any(r.committed for r in results), counts, metrics)

    def _upsert_once(self, name: str, batch: pl.DataFrame, *, keys: Sequence[str], order_by: str,
                     prune: tuple[str, dt.date, dt.date] | None) -> UpsertResult:
        import polars as pl

        from stock_platform.lib.snapshots import DELETED, count_changes, merge_clauses, precombine

        for col in (*keys, order_by):
            validate_identifier(col, where="merge column")
        batch = precombine(batch, keys, order_by)
        if prune is not None:
            column, start, end = prune
            outside = batch.filter(~pl.col(column).is_between(start, end))
            if not outside.is_empty():
                raise LakeError(f"upsert into {name}: {outside.height} row(s) outside the pruned range {start}..{end}")
        values = [c for c in batch.columns if c not in (*keys, order_by, DELETED)]
        clauses = merge_clauses(keys, values, order_by,
                                prune=date_range_sql(prune[0], prune[1], prune[2], alias="t") if prune else None)
        source = batch.to_arrow()

        def merge():
            table = self.table(name)  # re-read on every attempt: a retry plans against the new version
            before = table.version()
            metrics = (
                table.merge(source, predicate=clauses.on, source_alias="s", target_alias="t")
                .when_matched_update(updates=clauses.delete_sets, predicate=clauses.delete_when)
                .when_matched_update_all(predicate=clauses.update_when)
                .when_not_matched_insert_all(predicate=clauses.insert_when)
                .execute()
            )
            return table, before, metrics

        table, before, metrics = self._retry_conflicts(merge)
        after = table.version()  # the merge moved this object to the version it committed
        if after == before:
            return UpsertResult(after, False, count_changes(pl.DataFrame(), batch.height), metrics)
        commit = pl.DataFrame(table.load_cdf(starting_version=after, ending_version=after))
        return UpsertResult(after, True, count_changes(commit, batch.height), metrics)

    def _retry_conflicts(self, write: Callable[[], T]) -> T:
        """Run a write, retrying commit conflicts with exponential backoff and jitter."""
        from deltalake.exceptions import CommitFailedError

        for attempt in range(self.commit_retries):
            try:
                return write()
            except CommitFailedError:
                if attempt == self.commit_retries - 1:
                    raise
                time.sleep(0.05 * 2**attempt * (1 + random.random()))
        raise AssertionError("unreachable")

    def vacuum(self, name: str, retention_hours: int | None = None, *, dry_run: bool = False) -> list[str]:
        """Delete files no version within the retention window needs, and clean up the old log."""
        hours = self.retention_hours if retention_hours is None else retention_hours
        if hours < self.retention_hours:
            raise LakeError(f"vacuum {name}: retention {hours} h is shorter than the configured "
                            f"{self.retention_hours} h that time travel and change-feed consumers rely on")
        table = self.table(name)
        removed = table.vacuum(retention_hours=hours, dry_run=dry_run, enforce_retention_duration=True)
        if not dry_run:
            table.cleanup_metadata()
        return removed

    # ---------------------------------------------------------------------------------------- reads
    def scan(self, name: str, *, version: int | str | dt.datetime | None = None) -> pl.LazyFrame:
        import polars as pl

        if version is None:
            return pl.scan_delta(self.table_uri(name), storage_options=self.storage_options())
        return pl.scan_delta(self.table(name, version))

    def read(self, name: str, start: dt.date | None = None, end: dt.date | None = None, *,
             tickers: Sequence[str] | None = None, columns: Sequence[str] | None = None,
             date_column: str = "date", version: int | str | dt.datetime | None = None) -> pl.DataFrame:
        """Rows of a table, optionally limited to a date range and tickers, sorted by (ticker, date) where it has them."""
        import polars as pl

        if not self.exists(name):
            raise LakeError(f"lake table {name!r} does not exist at {self.table_uri(name)}")
        lf = self.scan(name, version=version)
        if start is not None:
            lf = lf.filter(pl.col(date_column) >= start)
        if end is not None:
            lf = lf.filter(pl.col(date_column) <= end)
        if tickers is not None:
            lf = lf.filter(pl.col("ticker").is_in(list(tickers)))
        if columns is not None:
            lf = lf.select(list(columns))
        present = lf.collect_schema().names()
        sort = [c for c in ("ticker", date_column) if c in present]
        return lf.sort(sort).collect() if sort else lf.collect()

    def snapshot(self, name: str, *, as_of: int | str | dt.datetime | None = None, include_deleted: bool = False,
                 start: dt.date | None = None, end: dt.date | None = None,
                 tickers: Sequence[str] | None = None) -> pl.DataFrame:
        """The table as of now, or `as_of` a version number or a timestamp (time travel).

        Soft-deleted rows are left out unless `include_deleted`. A timestamp resolves to the last commit
        written at or before it (commit files' modification times: to the second on S3).
        """
        import polars as pl

        from stock_platform.lib.snapshots import DELETED

        df = self.read(name, start, end, tickers=tickers, version=as_of)
        return df if include_deleted else df.filter(~pl.col(DELETED)).drop(DELETED)

    def changes(self, name: str, since_version: int, until_version: int | None = None) -> pl.DataFrame:
        """The change data feed after `since_version` (exclusive) up to `until_version` (inclusive).

        Rows carry `_change_type` (insert, update_preimage, update_postimage), `_commit_version` and
        `_commit_timestamp`. Consumers keep the last version they processed as their cursor.
        """
        import polars as pl

        table = self.table(name)
        latest = table.version()
        until = latest if until_version is None else until_version
        if since_version >= until:
            return pl.DataFrame()
        try:
            return pl.DataFrame(table.load_cdf(starting_version=since_version + 1, ending_version=until))
        except Exception as exc:  # noqa: BLE001 - delta-rs raises a generic error for vacuumed history
            raise LakeError(f"changes of {name} since version {since_version} are no longer available "
                            f"(retention {self.retention_hours} h): {exc}. Re-read the snapshot and restart "
                            f"from version {latest}.") from exc

    def changed_keys(self, name: str, since_version: int, keys: Sequence[str] = ("ticker", "date")) -> pl.DataFrame:
        """The latest state of every key that changed after `since_version` (an incremental read)."""
        import polars as pl

        feed = self.changes(name, since_version)
        if feed.is_empty():
            return feed
        return (
            feed.filter(pl.col("_change_type") != "update_preimage")
            .sort("_commit_version")
            .unique(subset=list(keys), keep="last", maintain_order=True)
            .sort(list(keys))
        )

    def history(self, name: str, limit: int | None = 20) -> pl.DataFrame:
        """Commits, newest first: version, timestamp, operation and its metrics."""
        import polars as pl

        rows = self.table(name).history(limit)
        return pl.DataFrame([
            {"version": r.get("version"), "timestamp": dt.datetime.fromtimestamp(r["timestamp"] / 1000, dt.UTC),
             "operation": r.get("operation"), "metrics": str(r.get("operationMetrics", {}))}
            for r in rows
        ])

    def size_bytes(self, name: str) -> int:
        """Bytes of the data files the current version references."""
        actions = self.table(name).get_add_actions(flatten=True)
        return int(sum(actions.column("size_bytes").to_pylist()))
