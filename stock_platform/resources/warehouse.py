"""The SQL warehouse (SQLAlchemy 2.x): tables for SQL users, mirrored from the lake with idempotent upserts.

Works on Postgres and SQLite alike: `INSERT ... ON CONFLICT (key) DO UPDATE`. The schema is created on
first use; no hand-run SQL. Identifiers are fixed in code, values always travel as bound parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:
    import polars as pl
    from sqlalchemy import Engine, MetaData, Table

_BATCH_ROWS = 2_000  # x 11 columns stays under SQLite's 32,766 bound parameters


def _metadata() -> MetaData:
    from sqlalchemy import BigInteger, Column, Date, DateTime, Float, MetaData, String, Table

    md = MetaData()
    Table(
        "stock_price", md,
        Column("date", Date, primary_key=True),
        Column("ticker", String(16), primary_key=True),
        Column("open", Float, nullable=False),
        Column("high", Float, nullable=False),
        Column("low", Float, nullable=False),
        Column("close", Float, nullable=False),
        Column("adj_close", Float, nullable=False),
        Column("volume", BigInteger, nullable=False),
        Column("dividends", Float, nullable=False),
        Column("stock_splits", Float, nullable=False),
        Column("ingested_at", DateTime(timezone=True), nullable=False),
    )
    return md


class WarehouseResource(dg.ConfigurableResource):
    """A SQLAlchemy URL (`STOCK_PLATFORM_WAREHOUSE_URL`); the password, if any, comes from the environment."""

    url: str

    def engine(self) -> Engine:
        from sqlalchemy import create_engine, event

        from stock_platform.settings import normalize_sql_url

        engine = create_engine(normalize_sql_url(self.url), pool_pre_ping=True)
        if engine.dialect.name == "sqlite":
            @event.listens_for(engine, "connect")
            def _pragmas(conn, _record):  # concurrent readers while a run writes
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA busy_timeout=30000")
        return engine

    def table(self, engine: Engine, name: str) -> Table:
        md = _metadata()
        if name not in md.tables:
            raise KeyError(f"unknown warehouse table {name!r} (known: {', '.join(md.tables)})")
        md.create_all(engine, tables=[md.tables[name]], checkfirst=True)
        return md.tables[name]

    def upsert(self, name: str, rows: pl.DataFrame) -> int:
        """Insert or update `rows` (columns named like the table's) by primary key; return rows written."""
        if rows.is_empty():
            return 0
        engine = self.engine()
        try:
            table = self.table(engine, name)
            missing = [c.name for c in table.columns if c.name not in rows.columns]
            if missing:
                raise ValueError(f"warehouse {name}: rows lack column(s) {', '.join(missing)}")
            insert = _insert(engine)
            keys = [c.name for c in table.primary_key.columns]
            with engine.begin() as conn:  # one transaction: all rows or none
                for chunk in rows.select([c.name for c in table.columns]).iter_slices(_BATCH_ROWS):
                    stmt = insert(table).values(chunk.to_dicts())
                    stmt = stmt.on_conflict_do_update(
                        index_elements=keys,
                        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
                    )
                    conn.execute(stmt)
            return rows.height
        finally:
            engine.dispose()

    def delete(self, name: str, keys: pl.DataFrame) -> int:
        """Delete rows by primary key (`keys` holds the key columns); return rows deleted."""
        from sqlalchemy import and_, or_

        if keys.is_empty():
            return 0
        engine = self.engine()
        try:
            table = self.table(engine, name)
            key_cols = [c.name for c in table.primary_key.columns]
            deleted = 0
            with engine.begin() as conn:
                for chunk in keys.select(key_cols).iter_slices(500):
                    cond = or_(*(and_(*(table.c[k] == v for k, v in row.items())) for row in chunk.to_dicts()))
                    deleted += conn.execute(table.delete().where(cond)).rowcount
            return deleted
        finally:
            engine.dispose()

    def read(self, name: str, where: dict[str, Any] | None = None) -> pl.DataFrame:
        import polars as pl
        from sqlalchemy import select

        engine = self.engine()
        try:
            table = self.table(engine, name)
            query = select(table)
            for col, value in (where or {}).items():
                query = query.where(table.c[col] == value)
            with engine.connect() as conn:
                result = conn.execute(query.order_by(*table.primary_key.columns)).all()
            df = pl.DataFrame([tuple(r) for r in result], schema=[c.name for c in table.columns], orient="row")
            return _conform_read(df, table)
        finally:
            engine.dispose()

    def count(self, name: str) -> int:
        from sqlalchemy import func, select

        engine = self.engine()
        try:
            table = self.table(engine, name)
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
        finally:
            engine.dispose()

    # -------------------------------------------------------------------------------- price mirror
    def sync_prices(self, snapshot_rows: pl.DataFrame) -> dict[str, int]:
        """Mirror snapshot rows (with `_is_deleted`) into `stock_price`: upsert live rows, delete the rest."""
        import polars as pl

        live = snapshot_rows.filter(~pl.col("_is_deleted")).rename({"splits": "stock_splits"})
        gone = snapshot_rows.filter(pl.col("_is_deleted")).select("date", "ticker")
        return {"upserted": self.upsert("stock_price", live), "deleted": self.delete("stock_price", gone)}


def _insert(engine: Engine):
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif engine.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # settings.py only lets these two through
        raise ValueError(f"unsupported warehouse dialect {engine.dialect.name!r}")
    return insert


def _conform_read(df: pl.DataFrame, table: Table) -> pl.DataFrame:
    """Typed frame from rows read back (SQLite returns naive datetimes: they were written as UTC)."""
    import polars as pl
    from sqlalchemy import BigInteger, Date, DateTime, Float

    exprs = []
    for c in table.columns:
        col = pl.col(c.name)
        if isinstance(c.type, DateTime):
            naive = df.schema[c.name] == pl.Null or getattr(df.schema[c.name], "time_zone", None) is None
            col = col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC") if naive else col.dt.convert_time_zone("UTC")
            exprs.append(col.cast(pl.Datetime("us", "UTC")))
        elif isinstance(c.type, Date):
            exprs.append(col.cast(pl.Date))
        elif isinstance(c.type, BigInteger):
            exprs.append(col.cast(pl.Int64))
        elif isinstance(c.type, Float):
            exprs.append(col.cast(pl.Float64))
        else:
            exprs.append(col.cast(pl.Utf8))
    return df.select(exprs)


def warehouse_tables() -> Sequence[str]:
    return list(_metadata().tables)
