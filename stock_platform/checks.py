"""The blocking asset checks of the daily assets, all here: `prices` and `features` against their pandera contracts
(schemas.py), `predictions` for completeness and plausibility. A failed ERROR check stops downstream assets in the
run and, through gates.py, in later runs. (`tuned_model`'s leakage check is a check spec of the asset itself:
its materialization computes the evidence.) Each names its asset by key, never by importing an asset module.
Every evaluation is also appended to the lake's `check_results` table (`recorded`), where the dashboard, the API's
users and SQL read the data-quality history without opening the Dagster instance."""

import functools

import dagster as dg

from stock_platform.gates import FAILED_PARTITIONS, FEATURES_CHECK, PREDICTIONS_CHECK, PRICES_CHECK, check_status
from stock_platform.lib.markdown import markdown_table
from stock_platform.lib.tables import (CHECKS_TABLE, FEATURES_TABLE, PREDICTIONS_TABLE, PRICES_TABLE, QUARANTINE_TABLE,
                                       SNAPSHOT_TABLE, predictions_schema)
from stock_platform.partitions import daily_check, partition_dates
from stock_platform.resources import UniverseResource
from stock_platform.registry import promoted_versions, served_versions
from stock_platform.resources.lake import LakeResource

# Below this share of valid rows the check warns (it does not block: the stored rows are valid).
MIN_DQ_SCORE = 0.99
MAX_ABS_RETURN = 0.5  # a forecast beyond ±50% in a day is a broken model, not a bold one
_MAX_TABLE_ROWS = 25


def _failed_partitions(stored, cases) -> dict:
    """Metadata naming the partitions (dates) of the rows that broke the contract: a reader of a range whose
    check failed then refuses only those days (see gates.py); a failure of the frame as a whole names none."""
    import dagster as dg
    import polars as pl

    rows = cases["index"]
    if rows.is_null().any():
        return {}
    days = stored.with_row_index("_row").filter(pl.col("_row").is_in(rows.cast(pl.UInt32).implode()))["date"]
    return {FAILED_PARTITIONS: dg.MetadataValue.json(sorted({d.isoformat() for d in days}))}


# the check metadata a result row keeps (the rest stays in Dagster)
RECORDED_METADATA = ("rows_checked", "failed_rows", "quarantined_rows", "dq_score", "warm_rows", "expected",
                     "predicted", "missing", "implausible")


def recorded(key: dg.AssetCheckKey):
    """Append each evaluation of the check `key` to the lake's `check_results` table: the check, its partition
    range, passed, severity, description, the counts of RECORDED_METADATA, the run and when it was evaluated."""

    def decorate(fn):
        @functools.wraps(fn)  # Dagster reads the parameters (resources) through the wrapper
        def check(context: dg.AssetCheckExecutionContext, **resources) -> dg.AssetCheckResult:
            import datetime as dt
            import json

            import polars as pl

            result = fn(context, **resources)
            dates = partition_dates(context)
            details = {k: getattr(v, "value", v) for k, v in (result.metadata or {}).items() if k in RECORDED_METADATA}
            resources["lake"].append(CHECKS_TABLE, pl.DataFrame({
                "check": [key.to_user_string()], "passed": [result.passed],
                "severity": [result.severity.value], "partition_start": [dates[0]], "partition_end": [dates[-1]],
                "description": [result.description or ""], "details": [json.dumps(details)],
                "run_id": [context.run.run_id], "evaluated_at": [dt.datetime.now(dt.UTC)],
            }, schema_overrides={"evaluated_at": pl.Datetime("us", "UTC")}), date_column="partition_end")
            return result

        return check

    return decorate


def _markdown(df) -> str:
    """A small polars frame as a markdown table (first rows only)."""
    rows = df.head(_MAX_TABLE_ROWS)
    more = f"\n\n… {df.height - rows.height} more rows" if df.height > rows.height else ""
    return markdown_table(rows.iter_rows(), rows.columns, fmt="{}") + more


@daily_check(
    asset=PRICES_CHECK.asset_key,
    name=PRICES_CHECK.name,
    description="Stored rows satisfy the pandera prices contract (prices > 0, OHLC ordering, volume >= 0, unique "
    "(ticker, date), trading days of the partition, tickers of the universe). Reports quarantined rows and the "
    f"DQ score per partition; warns below {MIN_DQ_SCORE:.0%}.",
)
@recorded(PRICES_CHECK)
def prices_schema_check(context: dg.AssetCheckExecutionContext, lake: LakeResource,
                        universe: UniverseResource) -> dg.AssetCheckResult:
    import polars as pl

    from stock_platform.lib.quality import dq_by_date, dq_score
    from stock_platform.schemas import failure_cases, prices_schema

    dates = partition_dates(context)
    start, end = dates[0], dates[-1]
    stored = lake.read(PRICES_TABLE, start, end) if lake.exists(PRICES_TABLE) else pl.DataFrame()
    if stored.is_empty():
        return dg.AssetCheckResult(passed=False, description=f"no rows stored for {start}..{end}",
                                   metadata={"rows_checked": 0})
    cases = failure_cases(prices_schema(universe.tickers, dates), stored)
    quarantined = (lake.read(QUARANTINE_TABLE, start, end, date_column="partition_date", columns=["partition_date"])
                   if lake.exists(QUARANTINE_TABLE) else pl.DataFrame({"partition_date": []}, schema={"partition_date": pl.Date}))
    per_day = dq_by_date(stored["date"], quarantined["partition_date"])
    score = dq_score(stored.height, quarantined.height)
    worst = per_day.filter(pl.col("quarantined") > 0).sort("dq_score")

    metadata = {
        "rows_checked": stored.height,
        "failed_rows": int(cases["index"].n_unique()) if not cases.is_empty() else 0,
        "quarantined_rows": quarantined.height,
        "dq_score": dg.FloatMetadataValue(round(score, 4)),
        "min_partition_dq_score": dg.FloatMetadataValue(round(float(per_day["dq_score"].min()), 4)),
        "partitions_with_quarantine": worst.height,
        "dq_by_partition": dg.MetadataValue.md(_markdown(worst if worst.height else per_day.head(5))),
    }
    if not cases.is_empty():
        metadata["failure_cases"] = dg.MetadataValue.md(_markdown(cases))
        metadata |= _failed_partitions(stored, cases)
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
                                   description=f"{metadata['failed_rows']} stored row(s) break the prices contract")
    if score < MIN_DQ_SCORE:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata=metadata,
                                   description=f"{quarantined.height} row(s) quarantined: DQ score {score:.2%}")
    return dg.AssetCheckResult(passed=True, metadata=metadata)


@daily_check(
    asset=FEATURES_CHECK.asset_key,
    name=FEATURES_CHECK.name,
    description="Stored features satisfy the pandera features contract: no inf/NaN, every model input in warm rows, "
    "RSI/stochastics/ADX in [0, 100], OBV ratio in [-1, 1], Bollinger bands ordered, 52-week distances signed "
    "right, unique (ticker, date).",
)
@recorded(FEATURES_CHECK)
def features_schema_check(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
    from stock_platform.schemas import failure_cases, features_schema

    dates = partition_dates(context)
    stored = lake.read(FEATURES_TABLE, dates[0], dates[-1])
    cases = failure_cases(features_schema(dates), stored)
    metadata = {
        "rows_checked": stored.height,
        "warm_rows": int(stored["warm"].sum()) if stored.height else 0,
        "failed_rows": int(cases["index"].n_unique()) if not cases.is_empty() else 0,
    }
    if stored.is_empty():
        return dg.AssetCheckResult(passed=False, metadata=metadata, description=f"no features stored for {dates[0]}..{dates[-1]}")
    if not cases.is_empty():
        metadata["failure_cases"] = dg.MetadataValue.md(_markdown(cases))
        metadata |= _failed_partitions(stored, cases)
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
                                   description=f"{metadata['failed_rows']} feature row(s) break the contract")
    return dg.AssetCheckResult(passed=True, metadata=metadata)


@daily_check(asset=PREDICTIONS_CHECK.asset_key, name=PREDICTIONS_CHECK.name,
             description="Every universe ticker has a prediction on each day whose features passed their check: "
             "where a model serves, for every warm feature row; where the naive random walk serves, for every "
             "close. Every predicted return is finite and within ±50%.")
@recorded(PREDICTIONS_CHECK)
def predictions_check(context: dg.AssetCheckExecutionContext, lake: LakeResource, universe: UniverseResource) -> dg.AssetCheckResult:
    import polars as pl

    from stock_platform.lib.selection import model_for_each_day

    dates = partition_dates(context)
    blocked = check_status(context.instance, FEATURES_CHECK, [d.isoformat() for d in dates])
    plan = model_for_each_day(blocked.usable(dates), promoted_versions(served_versions(lake)))
    modelled = (lake.read(FEATURES_TABLE, dates[0], dates[-1], columns=["ticker", "date", "warm"])
                .filter(pl.col("warm") & pl.col("date").is_in([d for d, v in plan.items() if v is not None])))
    naive = lake.snapshot(SNAPSHOT_TABLE, start=dates[0], end=dates[-1]).filter(
        pl.col("date").is_in([d for d, v in plan.items() if v is None]))
    expected = pl.concat([modelled.select("ticker", "date"), naive.select("ticker", "date")]).filter(
        pl.col("ticker").is_in(universe.tickers))
    got = lake.read(PREDICTIONS_TABLE, dates[0], dates[-1]) if lake.exists(PREDICTIONS_TABLE) else None
    got = got if got is not None else pl.DataFrame(schema=predictions_schema())
    missing = expected.join(got, on=["ticker", "date"], how="anti")
    bad = got.filter(~pl.col("pred_return").is_finite() | (pl.col("pred_return").abs() >= MAX_ABS_RETURN))
    return dg.AssetCheckResult(
        passed=missing.is_empty() and bad.is_empty(),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"expected": expected.height, "predicted": got.height, "missing": missing.height,
                  "implausible": bad.height,
                  "examples": dg.MetadataValue.json(
                      [{k: str(v) for k, v in r.items()} for r in pl.concat(
                          [missing.head(5).with_columns(problem=pl.lit("missing")),
                           bad.select("ticker", "date").head(5).with_columns(problem=pl.lit("implausible"))]
                      ).to_dicts()])},
    )
