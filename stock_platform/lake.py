"""The lake: Delta tables under one root (a local directory or s3://bucket/prefix).

Writes are Delta commits, so a failed or killed run never leaves a half-written table: readers see the
previous version until the commit lands. Two kinds of table:

- *range tables* (`prices`, quarantine, features): re-writing a date range replaces exactly that range;
- *snapshot tables* (`price_snapshots`): Hudi-like upserts keyed on (ticker, date) with a precombine
  column, soft deletes, time travel and a change data feed (see `lib/snapshots.py`).

Layout: a dated table is partitioned by the *year* of its date column (`date` -> `date_year`, added on write,
dropped on read), its rows written sorted by date, so a reader prunes by partition and by the files' date
statistics. A daily write adds one small file to the year; `maintain` (the `lake_maintenance` job) compacts
them, checkpoints the log and vacuums within the retention. Tables of the earlier one-folder-per-date layout
are migrated by the first write or maintenance that meets them (`migrate_layout`).

Dagster-free (only a layout migration, a write, borrows Dagster's logger): the API and the dashboard read through
`Lake` without loading Dagster (a second of their start-up); Dagster's assets and jobs get it as
`resources.lake.LakeResource`, the same class with its fields as config.
`Lake(uri="./.stock_platform/lake").snapshot("price_snapshots")`.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self, TypeVar

import pydantic

from stock_platform.settings import validate_identifier

if TYPE_CHECKING:
    import polars as pl
    from deltalake import DeltaTable

    from stock_platform.lib.snapshots import MergeCounts
    from stock_platform.settings import Settings

T = TypeVar("T")
DAY_HOURS = 24
YEAR_SUFFIX = "_year"
# Marks the commit that moved a table to the year layout (its change feed cannot be read: `changes` skips it).
MIGRATION_MARK = {"stock_platform.operation": "layout migration"}
# delta-rs OPTIMIZE's file size (its default is 100 MB): a year of 500 tickers' prices is ~6 MB, so a year is one file.
TARGET_FILE_BYTES = 128 * 1024**2


class LakeError(RuntimeError):
    """A lake operation was refused (missing table, vacuumed history, unsafe retention, ...)."""


@dataclass(frozen=True)
class Maintenance:
    """What `Lake.maintain` did to one table."""

    table: str
    files_before: int
    bytes_before: int
    files_after: int
    bytes_after: int
    files_compacted: int  # small files OPTIMIZE rewrote into larger ones
    files_vacuumed: int  # files deleted: replaced longer ago than the retention
    migrated_version: int | None  # the version that moved the table to the year layout (None: already there)
    seconds: float


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


def range_sql(column: str, start: dt.date, end: dt.date, years: dict[str, str], *, alias: str | None = None) -> str:
    """`date_range_sql`, plus the same bounds on the year partition column where the table has one (partition
    pruning before any file is opened)."""
    sql = date_range_sql(column, start, end, alias=alias)
    for year, date in years.items():
        if date == column:
            col = f"{alias}.{year}" if alias else year
            sql += f" AND {col} >= {start.year} AND {col} <= {end.year}"
    return sql


def year_column(date_column: str) -> str:
    """The partition column of a table dated by `date_column`: the date's year (`date` -> `date_year`)."""
    return validate_identifier(date_column, where="date column") + YEAR_SUFFIX


def year_columns(table: DeltaTable) -> dict[str, str]:
    """The table's year partition columns, each with the date column it is the year of (empty: not year-partitioned)."""
    names = {field.name for field in table.schema().fields}
    return {p: p.removesuffix(YEAR_SUFFIX) for p in table.metadata().partition_columns
            if p.endswith(YEAR_SUFFIX) and p.removesuffix(YEAR_SUFFIX) in names}


def with_years(df: pl.DataFrame, years: dict[str, str]) -> pl.DataFrame:
    """`df` with the year partition columns a table with `years` (see `year_columns`) stores."""
    import polars as pl

    return df.with_columns(pl.col(date).dt.year().cast(pl.Int32).alias(year) for year, date in years.items())


class Lake(pydantic.BaseModel):
    """Delta tables by name. `uri` is the lake root; S3 needs `aws_endpoint_url` only off AWS.

    `retention_hours` is how long replaced files and log entries are kept: time travel and change-feed
    consumers can reach back that far, and vacuum refuses anything shorter. It must exceed the lag of
    the slowest change-feed consumer.
    """

    model_config = pydantic.ConfigDict(frozen=True)

    uri: str
    aws_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    retention_hours: int = 30 * DAY_HOURS
    commit_retries: int = 8
    # Writes over many dates are split into commits of at most this many dates: a 10-year, 500-ticker
    # features write in one commit peaks at 3.2 GB (1.6 GB above its input) and a MERGE at 1.5 GB (0.7 GB
    # above); in half-year commits neither adds to the input's peak, at about the same speed (8.2 vs 6.7 s,
    # 4.3 vs 4.7 s; measured 2026-12-03). Under the earlier per-date layout one commit peaked at ~10 GB.
    dates_per_commit: int = 126

    @classmethod
    def of(cls, settings: Settings) -> Self:
        """The lake `settings` name (a `LakeResource` when called on that class)."""
        return cls(uri=settings.lake_uri, aws_endpoint_url=settings.aws_endpoint_url)

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
    def ensure_table(self, name: str, schema: dict[str, pl.DataType], *, date_column: str | None = None,
                     change_data_feed: bool = False, description: str | None = None) -> None:
        """Create the table with `schema` once, up front (idempotent; concurrent creators are fine).

        A table dated by `date_column` is partitioned by its year (see the module's doc); an existing table of
        the earlier per-date layout is migrated to it here, with a log line saying so.
        """
        import polars as pl
        from deltalake import DeltaTable

        if self.exists(name):
            if date_column is not None:
                self.migrate_layout(name)
            return
        config = {
            "delta.logRetentionDuration": f"interval {self.retention_hours} hours",
            "delta.deletedFileRetentionDuration": f"interval {self.retention_hours} hours",
        }
        if change_data_feed:
            config["delta.enableChangeDataFeed"] = "true"
        partition_by = [year_column(date_column)] if date_column else []
        arrow_schema = pl.DataFrame(schema=schema | dict.fromkeys(partition_by, pl.Int32)).to_arrow().schema
        try:
            DeltaTable.create(self.table_uri(name), arrow_schema, mode="ignore", partition_by=partition_by,
                              description=description, configuration=config, storage_options=self.storage_options())
        except Exception:  # noqa: BLE001 - lost a creation race: fine if the table now exists
            if not self.exists(name):
                raise

    def migrate_layout(self, name: str) -> int | None:
        """Move a table of the earlier layout (one partition per date) to the year layout, keeping every row.

        One overwrite commit, so readers see the old table or the new one, never a mix; versions before it stay
        readable by time travel until vacuumed. Returns the migration's version, or None if there was nothing to
        do. New code never writes to a table of the old layout except through here, and two migrations racing
        conflict on the metadata change (the loser retries and finds the table migrated).
        """
        import polars as pl
        from deltalake import CommitProperties, write_deltalake

        def migrate() -> int | None:
            table = self.table(name)
            partition_columns = table.metadata().partition_columns
            if len(partition_columns) != 1 or partition_columns[0].endswith(YEAR_SUFFIX):
                return None
            (date_column,) = partition_columns
            scan = pl.scan_delta(table)
            if scan.collect_schema()[date_column] != pl.Date:
                return None
            rows = scan.collect()
            years = {year_column(date_column): date_column}
            order = [c for c in (date_column, "ticker") if c in rows.columns]
            write_deltalake(table, with_years(rows, years).sort(order).to_arrow(), mode="overwrite",
                            schema_mode="overwrite", partition_by=list(years),
                            commit_properties=CommitProperties(custom_metadata=MIGRATION_MARK))
            version = self.table(name).version()
            import dagster as dg  # its logger: in a run, the warning shows in the run's logs

            dg.get_dagster_logger().warning(
                f"lake table {name}: migrated {rows.height} rows from one partition per {date_column} to one per "
                f"year ({year_column(date_column)}) at version {version}; earlier versions stay readable by time "
                "travel until vacuumed")
            return version

        return self._retry_conflicts(migrate)

    def replace_dates(self, name: str, df: pl.DataFrame, start: dt.date, end: dt.date, *,
                      date_column: str = "date", change_data_feed: bool = False) -> int:
        """Atomically replace the rows with `date_column` in [start, end] by `df`; return the new version.

        The table is partitioned by the year of `date_column` and its rows written sorted by date, so a replace
        rewrites only the files whose dates overlap the range (a new day's write rewrites nothing).
        A long range is replaced in consecutive sub-ranges of `dates_per_commit` dates, one commit each:
        every sub-range is replaced atomically, and a rerun after a failure is idempotent.
        Rows of `df` outside the range are refused (they would survive a later replace of their range).
        A column the table lacks is added (schema evolution: rows written before it read null); a column of
        another type is refused. `change_data_feed` applies when the table is created: a replace then records
        deletes and inserts.
        """
        import polars as pl
        from deltalake import write_deltalake

        outside = df.filter(~pl.col(date_column).is_between(start, end))
        if not outside.is_empty():
            raise LakeError(f"lake table {name}: {outside.height} row(s) outside {start}..{end}, "
                            f"e.g. {outside.row(0, named=True)}")
        self.ensure_table(name, dict(df.schema), date_column=date_column, change_data_feed=change_data_feed)
        order = [c for c in (date_column, "ticker") if c in df.columns]

        def write(part: pl.DataFrame, first: dt.date, last: dt.date) -> int:
            table = self.table(name)  # re-read on every attempt: a retry replaces against the new version
            years = year_columns(table)
            write_deltalake(table, with_years(part, years).sort(order).to_arrow(), mode="overwrite",
                            predicate=range_sql(date_column, first, last, years), schema_mode="merge")
            return table.version()

        version = -1
        for first, last in self._date_chunks(df.get_column(date_column), start, end):
            part = df.filter(pl.col(date_column).is_between(first, last))
            version = self._retry_conflicts(lambda part=part, first=first, last=last: write(part, first, last))
        return version

    def append(self, name: str, df: pl.DataFrame, *, date_column: str) -> int:
        """Append `df` to an event-log table (created on first use, partitioned by the year of `date_column`);
        return the new version. Appends never conflict with each other."""
        from deltalake import write_deltalake

        self.ensure_table(name, dict(df.schema), date_column=date_column)

        def write() -> int:
            table = self.table(name)
            write_deltalake(table, with_years(df, year_columns(table)).to_arrow(), mode="append", schema_mode="merge")
            return table.version()

        return self._retry_conflicts(write)

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

        def merge():
            table = self.table(name)  # re-read on every attempt: a retry plans against the new version
            before = table.version()
            years = year_columns(table)
            source = with_years(batch, years)
            values = [c for c in source.columns if c not in (*keys, order_by, DELETED)]
            clauses = merge_clauses(keys, values, order_by,
                                    prune=range_sql(*prune, years, alias="t") if prune else None)
            metrics = (
                table.merge(source.to_arrow(), predicate=clauses.on, source_alias="s", target_alias="t")
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

    def maintain(self, name: str, *, target_file_bytes: int = TARGET_FILE_BYTES) -> Maintenance:
        """Hudi's compaction and cleaner, Delta's OPTIMIZE and VACUUM, for one table.

        Migrates a table of the earlier layout; compacts the small files daily writes leave into files of up to
        `target_file_bytes` (the rows stay, so time travel and the change feed are untouched: a compaction commit
        changes no data); checkpoints the log; vacuums within `retention_hours`. Nothing here deletes a file a
        version within the retention reads, so it is safe beside a writer; a compaction that loses a commit race
        with one is re-planned on the new version (and a writer that loses to it retries likewise).
        """
        started = time.perf_counter()
        before = self.table(name).get_add_actions(flatten=True)
        migrated = self.migrate_layout(name)
        compacted = self._retry_conflicts(lambda: self.table(name).optimize.compact(target_size=target_file_bytes))
        self.table(name).create_checkpoint()
        vacuumed = self.vacuum(name)
        after = self.table(name).get_add_actions(flatten=True)
        return Maintenance(
            table=name, files_before=before.num_rows, bytes_before=_bytes(before),
            files_after=after.num_rows, bytes_after=_bytes(after),
            files_compacted=int(compacted.get("numFilesRemoved", 0)), files_vacuumed=len(vacuumed),
            migrated_version=migrated, seconds=round(time.perf_counter() - started, 3))

    # ---------------------------------------------------------------------------------------- reads
    def scan(self, name: str, *, version: int | str | dt.datetime | None = None) -> pl.LazyFrame:
        """The table (as of `version`) as a lazy frame of its own columns (the year partition columns left out)."""
        import polars as pl

        table = self.table(name, version)
        return pl.scan_delta(table).drop(list(year_columns(table)))

    def read(self, name: str, start: dt.date | None = None, end: dt.date | None = None, *,
             tickers: Sequence[str] | None = None, columns: Sequence[str] | None = None,
             date_column: str = "date", version: int | str | dt.datetime | None = None) -> pl.DataFrame:
        """Rows of a table, optionally limited to a date range and tickers, sorted by (ticker, date) where it has them."""
        import polars as pl

        table = self.table(name, version)
        lf = pl.scan_delta(table)
        year = next((y for y, d in year_columns(table).items() if d == date_column), None)
        if start is not None:
            lf = lf.filter(pl.col(date_column) >= start, *([pl.col(year) >= start.year] if year else []))
        if end is not None:
            lf = lf.filter(pl.col(date_column) <= end, *([pl.col(year) <= end.year] if year else []))
        if tickers is not None:
            lf = lf.filter(pl.col("ticker").is_in(list(tickers)))
        lf = lf.drop(list(year_columns(table)))
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
        `_commit_timestamp`. Consumers keep the last version they processed as their cursor. A layout
        migration's commit changes no row and is left out (its change feed cannot be read).
        """
        import polars as pl

        table = self.table(name)
        latest = table.version()
        until = latest if until_version is None else until_version
        if since_version >= until:
            return pl.DataFrame()
        try:
            return self._feed(name, since_version + 1, until, table)
        except Exception as exc:  # noqa: BLE001 - delta-rs raises a generic error for vacuumed history
            error = exc
        cut = next((c["version"] for c in table.history(latest - since_version)
                    if since_version < c["version"] <= until and all(c.get(k) == v for k, v in MIGRATION_MARK.items())),
                   None)
        if cut is not None:  # read around the migration's commit
            try:
                parts = [self._feed(name, a, b, table) for a, b in ((since_version + 1, cut - 1), (cut + 1, until))
                         if a <= b]
                return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()
            except Exception as exc:  # noqa: BLE001
                error = exc
        raise LakeError(f"changes of {name} since version {since_version} are no longer available "
                        f"(retention {self.retention_hours} h): {error}. Re-read the snapshot and restart "
                        f"from version {latest}.") from error

    def _feed(self, name: str, first: int, last: int, latest: DeltaTable) -> pl.DataFrame:
        """Versions first..last of the change feed, read with the schema of `last` (a migration changed it)."""
        import polars as pl

        table = latest if latest.version() == last else self.table(name, last)
        return pl.DataFrame(table.load_cdf(starting_version=first, ending_version=last)).drop(list(year_columns(table)))

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
        return _bytes(self.table(name).get_add_actions(flatten=True))


def _bytes(add_actions) -> int:
    return int(sum(add_actions.column("size_bytes").to_pylist()))
