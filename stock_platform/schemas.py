"""Pandera (polars) schemas: the data contracts (lib/contracts.py) as the asset checks and the quarantine enforce them.

pandera is imported inside the functions: it costs ~0.3 s, which loading the definitions must not pay.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

import polars as pl

from stock_platform.lib.contracts import FEATURES, PRICES, Contract, Rule, polars_schema
from stock_platform.lib.feature_set import MODEL_FEATURES
from stock_platform.lib.prices import REJECT_SCHEMA, empty_rejects

if TYPE_CHECKING:
    import pandera.polars as pa


def _check(pa_mod, rule: Rule, sets: dict[str, Sequence], nullable: bool):
    """One column rule of a contract as a pandera check (a nullable column's nulls pass `finite`)."""
    if rule.check == "finite":
        def finite(data):
            ok = pl.col(data.key).is_finite()
            return data.lazyframe.select(ok | pl.col(data.key).is_null() if nullable else ok)

        return pa_mod.Check(finite, name="finite", error=rule.error)
    if rule.check == "isin":
        return pa_mod.Check.isin(list(sets[rule.args[0]]), error=rule.error)
    return getattr(pa_mod.Check, rule.check)(*rule.args, **({"error": rule.error} if rule.error else {}))


def _pandera(contract: Contract, sets: dict[str, Sequence], row_checks: dict[str, pl.Expr]) -> pa.DataFrameSchema:
    """A contract (lib/contracts.py) as a strict pandera schema; `row_checks` holds the row rules' expressions
    (a row whose rule is null counts as failing: a row we cannot judge is not valid)."""
    import pandera.polars as pa

    assert set(row_checks) == set(contract.row_rules), f"{contract.name}: row rules and their expressions differ"
    dtypes = polars_schema(contract)
    return pa.DataFrameSchema(
        {name: pa.Column(dtypes[name], [_check(pa, r, sets, c.nullable) for r in c.rules], nullable=c.nullable)
         for name, c in contract.columns.items()},
        checks=[pa.Check(lambda data, expr=expr: data.lazyframe.select(expr.fill_null(False)), name=name,
                         error=contract.row_rules[name]) for name, expr in row_checks.items()],
        unique=list(contract.key),
        strict=True,
        name=contract.name,
    )


def prices_schema(tickers: Sequence[str], dates: Sequence[dt.date]) -> pa.DataFrameSchema:
    """The `prices` contract for a universe and the trading days of a partition range."""
    return _pandera(PRICES, {"universe": tickers, "partition": dates}, {
        "low_le_open_close": pl.col("low") <= pl.min_horizontal("open", "close"),
        "high_ge_open_close": pl.col("high") >= pl.max_horizontal("open", "close"),
        "dividend_below_close": pl.col("dividends") < pl.col("close"),
    })


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
    tol = 1e-9
    return _pandera(FEATURES, {"partition": dates}, {
        "model_inputs_in_warm_rows": ~pl.col("warm") | pl.all_horizontal(pl.col(list(MODEL_FEATURES)).is_not_null()),
        "bands_ordered": pl.col("bb_lower").is_null() | ((pl.col("bb_lower") <= pl.col("bb_mid") + tol)
                                                         & (pl.col("bb_mid") <= pl.col("bb_upper") + tol)),
    })
