"""SQL over the lake: DuckDB reading the Delta tables in place, read-only (`stock-platform sql`, notebooks).

    from stock_platform.resources.sql import connect
    con = connect(lake)                         # a DuckDB connection with every lake table as a view
    con.sql("SELECT ticker, avg(close) FROM price_snapshots GROUP BY 1").pl()

Each lake table is a view of the same name over DuckDB's `delta` extension (`delta_scan`, which reads the Delta
log itself: the table's current version, partition pruning on the year columns). The views show what the lake's
own readers show: the year partition columns are left out, and `price_snapshots` shows its live rows (a soft
delete, `_is_deleted`, hides a row, as in the warehouse's `stock_price`). The extension comes from PyPI
(`duckdb-ext-delta`, `duckdb-ext-httpfs` for S3: both pinned to DuckDB's version) and is loaded from the installed
package: nothing is downloaded at run time.

Read-only twice over: `query` runs one SELECT (WITH ... SELECT included) and refuses any other statement before
DuckDB sees it; and the connection itself may touch files under the lake's root only
(`enable_external_access = false` with `allowed_directories`, then `lock_configuration`), so even a notebook's
`COPY ... TO` or `read_csv('/etc/passwd')` is refused by DuckDB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stock_platform.lib.tables import LAKE_TABLES, SNAPSHOT_TABLE

if TYPE_CHECKING:
    import duckdb
    import polars as pl

    from stock_platform.lake import Lake


class SQLError(ValueError):
    """A query refused or failed, with DuckDB's own words."""


def _extension_directory() -> str:
    """Where the `duckdb-ext-*` wheels put their extension binaries (site-packages/duckdb_ext/extensions)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("duckdb_ext")
    if spec is None or not spec.submodule_search_locations:
        raise SQLError("DuckDB's delta extension is not installed: pip install duckdb-ext-delta (see pyproject.toml)")
    return str(Path(next(iter(spec.submodule_search_locations))) / "extensions")


def _s3_secret(lake: Lake) -> str | None:
    """A DuckDB S3 secret from the environment's credentials and the lake's endpoint (None: a local lake)."""
    import os
    from urllib.parse import urlparse

    if not lake.uri.startswith("s3://"):
        return None
    options = {"TYPE": "s3", "REGION": lake.aws_region}
    for key, env in (("KEY_ID", "AWS_ACCESS_KEY_ID"), ("SECRET", "AWS_SECRET_ACCESS_KEY"),
                     ("SESSION_TOKEN", "AWS_SESSION_TOKEN")):
        if os.environ.get(env):
            options[key] = os.environ[env]
    if lake.aws_endpoint_url:
        endpoint = urlparse(lake.aws_endpoint_url)
        options |= {"ENDPOINT": endpoint.netloc, "URL_STYLE": "path", "USE_SSL": str(endpoint.scheme == "https")}
    body = ", ".join(f"{k} {_literal(v) if k != 'TYPE' else v}" for k, v in options.items())
    return f"CREATE SECRET lake ({body})"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def connect(lake: Lake) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with every existing lake table as a view of its name."""
    from pathlib import Path

    import duckdb

    from stock_platform.lake import YEAR_SUFFIX

    con = duckdb.connect(config={"extension_directory": _extension_directory(),
                                 "autoinstall_known_extensions": False, "autoload_known_extensions": False})
    secret = _s3_secret(lake)
    if secret:
        con.execute("LOAD httpfs")  # the S3 secret type
        con.execute(secret)
    con.execute("LOAD delta")
    root = lake.uri.rstrip("/") if "://" in lake.uri else str(Path(lake.uri).resolve())
    for name in filter(lake.exists, LAKE_TABLES):
        columns = [f.name for f in lake.table(name).schema().fields]
        hidden = [c for c in columns if c.endswith(YEAR_SUFFIX) and c.removesuffix(YEAR_SUFFIX) in columns]
        exclude = f" EXCLUDE ({', '.join(hidden)})" if hidden else ""
        live = " WHERE NOT _is_deleted" if name == SNAPSHOT_TABLE else ""
        con.execute(f"CREATE VIEW {name} AS SELECT *{exclude} FROM delta_scan({_literal(f'{root}/{name}')}){live}")
    con.execute(f"SET allowed_directories = [{_literal(root + '/')}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def query(lake: Lake, sql: str) -> pl.DataFrame:
    """The result of one read-only statement over the lake's views; SQLError naming the problem otherwise (a
    refused statement before the lake is touched)."""
    import duckdb

    try:
        statements = duckdb.connect().extract_statements(sql)
    except duckdb.Error as exc:
        raise SQLError(f"cannot parse the query: {exc}") from None
    if len(statements) != 1:
        raise SQLError(f"one statement at a time, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise SQLError(f"read-only: only SELECT runs over the lake, not {kind.name}; the lake is written by the "
                       "platform's assets")
    con = connect(lake)
    try:
        return con.sql(sql).pl()
    except duckdb.Error as exc:
        raise SQLError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    finally:
        con.close()
