"""Pandera (polars) schemas: the data contracts the asset checks and the quarantine enforce.

pandera is imported inside the functions: it costs ~0.3 s, which loading the definitions must not pay.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

import polars as pl

from stock_platform.lib.prices import PRICE_COLUMNS, PRICES_SCHEMA, REJECT_SCHEMA, empty_rejects
from stock_platform.settings import TICKER_PATTERN

if TYPE_CHECKING:
    import pandera.polars as pa


def _finite(pa_mod):
    return pa_mod.Check(
        lambda data: data.lazyframe.select(pl.col(data.key).is_finite()),
        name="finite",
        error="must be finite",
    )


def _row_check(pa_mod, name: str, expr: pl.Expr, error: str):
    # Null comparisons count as failures here (fill_null(False)): a row we cannot judge is not valid.
    return pa_mod.Check(lambda data: data.lazyframe.select(expr.fill_null(False)), name=name, error=error)


def prices_schema(tickers: Sequence[str], dates: Sequence[dt.date]) -> pa.DataFrameSchema:
    """The `prices` contract for a universe and the trading days of a partition range."""
    import pandera.polars as pa

    price = [pa.Check.gt(0, error="price must be > 0")]
    columns = {
        "ticker": pa.Column(
            pl.Utf8,
            [pa.Check.str_matches(TICKER_PATTERN, error="malformed ticker"),
             pa.Check.isin(list(tickers), error="ticker not in the universe")],
        ),
        "date": pa.Column(pl.Date, pa.Check.isin(list(dates), error="not a trading day of the partition")),
        **{c: pa.Column(pl.Float64, [*price, _finite(pa)]) for c in PRICE_COLUMNS},
        "volume": pa.Column(pl.Int64, pa.Check.ge(0, error="volume must be >= 0")),
        "dividends": pa.Column(pl.Float64, [pa.Check.ge(0), _finite(pa)]),
        "splits": pa.Column(pl.Float64, [pa.Check.ge(0), _finite(pa)]),
        "source": pa.Column(pl.Utf8),
        "ingested_at": pa.Column(pl.Datetime("us", "UTC")),
    }
    assert list(columns) == list(PRICES_SCHEMA), "schema and PRICES_SCHEMA must list the same columns"
    return pa.DataFrameSchema(
        columns,
        checks=[
            _row_check(pa, "low_le_open_close", pl.col("low") <= pl.min_horizontal("open", "close"),
                       "low > min(open, close)"),
            _row_check(pa, "high_ge_open_close", pl.col("high") >= pl.max_horizontal("open", "close"),
                       "high < max(open, close)"),
            # a dividend is paid out of the price: one at or above the day's close is a unit or parsing error
            _row_check(pa, "dividend_below_close", pl.col("dividends") < pl.col("close"), "dividend >= close"),
        ],
        unique=["ticker", "date"],
        strict=True,
        name="prices",
    )


def failure_cases(schema: pa.DataFrameSchema, df: pl.DataFrame) -> pl.DataFrame:
    """Validate lazily; return pandera's failure cases (empty when the frame is valid)."""
    import pandera.errors as pae

    try:
        schema.validate(df, lazy=True)
    except pae.SchemaErrors as exc:
        return exc.failure_cases
    return pl.DataFrame(schema={"failure_case": pl.Utf8, "schema_context": pl.Utf8, "column": pl.Utf8,
                                "check": pl.Utf8, "check_number": pl.Int32, "index": pl.Int32})


def split_valid(schema: pa.DataFrameSchema, df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Split `df` into (valid rows, rejected rows with reasons, failure cases).

    Every row pandera flags is rejected with all the rules it broke; the rest pass untouched. Failure
    cases that name no row (a wrong column type, a missing column) cannot be split off: they raise.
    """
    cases = failure_cases(schema, df)
    if cases.is_empty():
        return df, empty_rejects(), cases
    whole = cases.filter(pl.col("index").is_null())
    if not whole.is_empty():
        problems = "; ".join(f"{r['column']}: {r['check']} ({r['failure_case']})" for r in whole.iter_rows(named=True))
        raise ValueError(f"{schema.name}: the frame as a whole breaks the schema: {problems}")
    label = pl.when(pl.col("check") == "multiple_fields_uniqueness").then(pl.lit("duplicate (ticker, date) with different values"))
    label = label.when(pl.col("schema_context") == "DataFrameSchema").then(pl.col("check"))
    label = label.otherwise(
        pl.format("{}: {} (value: {})", pl.col("column"), pl.col("check"), pl.col("failure_case").fill_null("null"))
    )
    reasons = (
        cases.with_columns(reason=label)
        .group_by("index")
        .agg(pl.col("reason").unique(maintain_order=True).str.join("; "))
        .rename({"index": "_row"})
        .with_columns(pl.col("_row").cast(pl.UInt32))
    )
    indexed = df.with_row_index("_row")
    bad = indexed.join(reasons, on="_row", how="inner").sort("_row")
    valid = indexed.join(reasons, on="_row", how="anti").drop("_row")
    rejects = bad.select(
        pl.col("ticker").cast(pl.Utf8),
        pl.col("date").cast(pl.Date),
        "reason",
        record=pl.struct(pl.exclude("_row", "reason").cast(pl.Utf8)).struct.json_encode(),
    ).cast(REJECT_SCHEMA)
    return valid, rejects, cases


def features_schema(dates: Sequence[dt.date]) -> pa.DataFrameSchema:
    """The `features` contract: finite values, every model input in warm rows, indicator ranges, ordered bands.
    (A long-window indicator such as ema_200 is null until its own window is full, warm or not.)"""
    import pandera.polars as pa

    from stock_platform.lib.indicators import MODEL_FEATURES, feature_columns

    def finite_or_null(name: str):
        return pa.Check(lambda data: data.lazyframe.select(pl.col(data.key).is_finite() | pl.col(data.key).is_null()),
                        name="finite", error="must be finite (no inf/NaN)")

    bounded = {c: (0, 100) for c in ("rsi_14", "stoch_k_14", "stoch_d_3", "plus_di_14", "minus_di_14", "adx_14")}
    bounded |= {"obv_ratio_20": (-1, 1), "day_of_week": (1, 5)}
    nonneg = ("atr_14", "atr_pct", "rvol_20", "bb_width", "dist_52w_low")
    columns = {
        "ticker": pa.Column(pl.Utf8, pa.Check.str_matches(TICKER_PATTERN, error="malformed ticker")),
        "date": pa.Column(pl.Date, pa.Check.isin(list(dates), error="not a trading day of the partition")),
    }
    for c in feature_columns():
        if c == "day_of_week":
            columns[c] = pa.Column(pl.Int8, pa.Check.in_range(1, 5), nullable=False)
            continue
        checks = [finite_or_null(c)]
        if c in bounded:
            checks.append(pa.Check.in_range(*bounded[c]))
        if c in nonneg:
            checks.append(pa.Check.ge(0))
        if c == "dist_52w_high":
            checks.append(pa.Check.le(0))
        columns[c] = pa.Column(pl.Float64, checks, nullable=True)
    columns["warm"] = pa.Column(pl.Boolean)
    tol = 1e-9
    return pa.DataFrameSchema(
        columns,
        checks=[
            _row_check(pa, "model_inputs_in_warm_rows",
                       ~pl.col("warm") | pl.all_horizontal(pl.col(list(MODEL_FEATURES)).is_not_null()),
                       "a warm row has a null model input"),
            _row_check(pa, "bands_ordered",
                       pl.col("bb_lower").is_null() | ((pl.col("bb_lower") <= pl.col("bb_mid") + tol)
                                                       & (pl.col("bb_mid") <= pl.col("bb_upper") + tol)),
                       "Bollinger bands out of order"),
        ],
        unique=["ticker", "date"],
        strict=True,
        name="features",
    )


# --------------------------------------------------------------------------------- the schemas in Dagster's UI
def _statistic(value) -> str:
    if isinstance(value, list) and len(value) > 8:
        return f"{len(value)} allowed values"
    return str(value)


def _constraint(check) -> str:
    stats = ", ".join(f"{k}={_statistic(v)}" for k, v in (check.statistics or {}).items())
    return f"{check.error or check.name}" + (f" ({stats})" if stats else "")


def contract_column_schema(contract: pa.DataFrameSchema, descriptions: dict[str, str] | None = None):
    """A pandera contract as Dagster's `dagster/column_schema` (a TableSchema): each column's type, nullability and
    checks (as constraints), the contract's row checks and unique key as table constraints."""
    import dagster as dg

    descriptions = descriptions or {}
    columns = [
        dg.TableColumn(name, str(column.dtype), description=descriptions.get(name),
                       constraints=dg.TableColumnConstraints(nullable=column.nullable, unique=column.unique,
                                                             other=[_constraint(c) for c in column.checks]))
        for name, column in contract.columns.items()
    ]
    unique = [f"unique ({', '.join(contract.unique)})"] if contract.unique else []
    return dg.TableSchema(columns, constraints=dg.TableConstraints(
        other=unique + [f"{c.name}: fails when {c.error}" for c in contract.checks]))


def frame_column_schema(schema: dict, descriptions: dict[str, str] | None = None, *, nullable=(),
                        key: Sequence[str] = ()):
    """A polars schema (name -> dtype) as `dagster/column_schema`, for tables without a pandera contract."""
    import dagster as dg

    descriptions = descriptions or {}
    columns = [dg.TableColumn(name, str(dtype), description=descriptions.get(name),
                              constraints=dg.TableColumnConstraints(nullable=name in nullable))
               for name, dtype in schema.items()]
    return dg.TableSchema(columns, constraints=dg.TableConstraints(
        other=[f"unique ({', '.join(key)})"] if key else []))
