"""Stage `lake`: `price_snapshots`, the Hudi-like upsert table on Delta Lake, mirrored to the warehouse."""

import dagster as dg

from stock_platform.assets.columns import column_lineage, column_schema
from stock_platform.assets.ingestion import LandingConfig, landed_events, prices
from stock_platform.gates import PRICES_CHECK, refuse_failed
from stock_platform.lib.contracts import PRICES, SNAPSHOTS
from stock_platform.lib.tables import PRECOMBINE, PRICES_TABLE, SNAPSHOT_KEYS, SNAPSHOT_TABLE
from stock_platform.partitions import daily_asset, partition_dates
from stock_platform.resources.lake import LakeResource
from stock_platform.resources.landing import LandingResource
from stock_platform.resources.warehouse import WarehouseResource


def ensure_snapshot_table(lake: LakeResource) -> None:
    from stock_platform.lib.prices import SNAPSHOT_SCHEMA

    # Partitioned by year, rows sorted by date: a day's upsert scans the files holding its dates only.
    lake.ensure_table(SNAPSHOT_TABLE, SNAPSHOT_SCHEMA, date_column="date", change_data_feed=True,
                      description="price snapshots: upserts on (ticker, date), precombine ingested_at, soft deletes")


@daily_asset(
    deps=[prices],
    group_name="lake",
    kinds={"deltalake", "sql"},
    description="Every price record ever accepted, upserted on (ticker, date) with `ingested_at` as the precombine "
    "field (newest wins; replays change nothing), `_is_deleted` soft deletes, time travel and a change data feed. "
    "Mirrored to the warehouse table `stock_price`.",
    metadata=column_schema(SNAPSHOTS) | column_lineage({c: {PRICES_TABLE: [c]} for c in PRICES.columns}),
)
def price_snapshots(context: dg.AssetExecutionContext, config: LandingConfig, lake: LakeResource,
                    warehouse: WarehouseResource, landing: LandingResource) -> dg.MaterializeResult:
    import polars as pl
    from sqlalchemy.exc import SQLAlchemyError

    dates = partition_dates(context)
    start, end = dates[0], dates[-1]
    # blocking across runs: a day whose latest prices check failed is not upserted (an earlier run's verdict)
    refuse_failed(context.instance, PRICES_CHECK, [d.isoformat() for d in dates], reader="price_snapshots")
    batch = (lake.read(PRICES_TABLE, start, end) if lake.exists(PRICES_TABLE) else pl.DataFrame())
    if batch.is_empty():
        raise dg.Failure(f"no prices stored for {start}..{end}: materialize `prices` for these partitions first")
    batch = batch.with_columns(_is_deleted=pl.lit(False))
    ensure_snapshot_table(lake)
    if config.landing_files:  # landed deletes: soft-delete the stored record, stamped with the event's time
        from stock_platform.lib.events import deletes

        gone = deletes(landed_events(landing, config.landing_files, dates))
        stored = lake.snapshot(SNAPSHOT_TABLE, start=start, end=end)
        tombstones = (stored.join(gone, on=["ticker", "date"])
                      .with_columns(_is_deleted=pl.lit(True), ingested_at=pl.col("ts")).drop("ts"))
        batch = pl.concat([batch, tombstones.select(batch.columns)], how="vertical_relaxed")
    result = lake.upsert(SNAPSHOT_TABLE, batch, keys=SNAPSHOT_KEYS, order_by=PRECOMBINE, prune=("date", start, end))
    # Mirror the whole range (not only this commit's changes): a rerun heals a warehouse write that failed.
    current = lake.snapshot(SNAPSHOT_TABLE, start=start, end=end, include_deleted=True)
    try:
        mirrored = warehouse.sync_prices(current)
    except SQLAlchemyError as exc:  # a dropped connection, a lock timeout: the mirror's one transaction rolled back
        root = exc  # the driver's first error (a rollback on the dead connection raises another on top of it)
        while root.__context__ is not None:
            root = root.__context__
        reason = str(root).strip().splitlines()[0]
        raise dg.Failure(f"warehouse table stock_price: mirroring {start}..{end} failed after the lake committed "
                         f"{SNAPSHOT_TABLE} version {result.version} ({type(root).__name__}: {reason}). The lake is "
                         "right and the warehouse unchanged: re-run these partitions to mirror them.") from exc
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": current.height,
            "dagster/uri": lake.table_uri(SNAPSHOT_TABLE),
            "table_version": result.version,
            "committed": result.committed,
            **{f"rows_{k}": v for k, v in result.counts.as_dict().items()},
            "table_size_bytes": lake.size_bytes(SNAPSHOT_TABLE),
            "files_scanned": result.metrics.get("num_target_files_scanned", 0),
            "warehouse_rows_upserted": mirrored["upserted"],
            "warehouse_rows_deleted": mirrored["deleted"],
        }
    )
