"""Stage `ml`: `predictions` (the champion's next-day forecasts) and `prediction_evaluation` (vs the naive walk)."""

import datetime as dt

import dagster as dg

from stock_platform.assets.columns import column_lineage, column_schema
from stock_platform.assets.lake import price_snapshots
from stock_platform.assets.ml import features
from stock_platform.assets.model import tuned_model
from stock_platform.gates import FEATURES_CHECK, PREDICTIONS_CHECK, check_status
from stock_platform.lib.contracts import EVALUATION, PREDICTIONS
from stock_platform.lib.feature_set import MODEL_FEATURES
from stock_platform.lib.tables import (EVALUATION_TABLE, FEATURES_TABLE, PREDICTIONS_TABLE,
                                       SNAPSHOT_TABLE, WAREHOUSE_EVALUATION, WAREHOUSE_PREDICTIONS)
from stock_platform.partitions import daily_asset, partition_dates
from stock_platform.registry import load_model, promoted_versions, served_versions
from stock_platform.resources.lake import LakeResource
from stock_platform.resources.warehouse import WarehouseResource

# A target day's forecast was made on the session before it.
PREVIOUS_SESSION = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)
# A day's model is from a finished week: offsets count the daily side, and five sessions back is always in an
# earlier week (after a holiday week, two weeks back). Lineage only: the version is picked by its training end.
EARLIER_WEEK = dg.TimeWindowPartitionMapping(start_offset=-5, end_offset=-5)


FORECAST_LINEAGE = column_lineage({
    "ticker": {FEATURES_TABLE: ["ticker"]}, "date": {FEATURES_TABLE: ["date"]},
    "pred_return": {FEATURES_TABLE: list(MODEL_FEATURES)},
    "pred_close": {FEATURES_TABLE: list(MODEL_FEATURES), SNAPSHOT_TABLE: ["close"]}})
_TRUTH = {SNAPSHOT_TABLE: ["close", "dividends", "splits"]}
EVALUATION_LINEAGE = column_lineage(
    {c: {PREDICTIONS_TABLE: [c]} for c in ("ticker", "target_date", "date", "pred_close", "pred_return",
                                           "model_name", "model_version")}
    | {"true_close": _TRUTH, "true_return": _TRUTH, "naive_close": {SNAPSHOT_TABLE: ["close"]},
       "abs_error": {PREDICTIONS_TABLE: ["pred_close"]} | _TRUTH, "naive_abs_error": _TRUTH,
       "direction_hit": {PREDICTIONS_TABLE: ["pred_return"]} | _TRUTH})


@daily_asset(
    deps=[features, dg.AssetDep(tuned_model, partition_mapping=EARLIER_WEEK)],
    group_name="ml",
    kinds={"deltalake", "sql"},
    description="For each ticker and session d: the next session's predicted return and implied close, from the "
    "newest champion model (of any family) trained on data before d (never a later one); on days no promoted model covers, the "
    "naive random walk (model `naive_random_walk`: tomorrow's close is today's). Every row names its model. "
    "Mirrored to the warehouse table `stock_pred`.",
    metadata=column_schema(PREDICTIONS) | FORECAST_LINEAGE,
)
def predictions(context: dg.AssetExecutionContext, lake: LakeResource,
                warehouse: WarehouseResource) -> dg.MaterializeResult:
    import polars as pl

    from stock_platform.lib.calendar import trading_days
    from stock_platform.lib.selection import NAIVE_MODEL, forecast_frame, model_for_each_day

    dates = partition_dates(context)
    start, end = dates[0], dates[-1]
    served = served_versions(lake)  # read once: the plan, the boosters, their registration
    # blocking across runs: no forecast from a day whose latest features check failed (said in the metadata)
    blocked = check_status(context.instance, FEATURES_CHECK, [d.isoformat() for d in dates])
    if blocked.failed:
        context.log.warning(f"no predictions for {blocked.describe()}")
    plan = model_for_each_day(blocked.usable(dates), promoted_versions(served))
    modelled = [d for d, v in plan.items() if v is not None]
    feats = lake.read(FEATURES_TABLE, start, end).filter(pl.col("warm") & pl.col("date").is_in(modelled))
    closes = lake.snapshot(SNAPSHOT_TABLE, start=start, end=end)

    def predict(model: tuple[str, int], rows: pl.DataFrame):
        family, fitted = load_model(served, *model)
        return family.predict_frame(fitted, rows)

    registered = {(name, version): at for name, version, at in
                  served.select("model_name", "version", "registered_at").iter_rows()}
    out = forecast_frame(feats, closes, trading_days(start, end + dt.timedelta(days=10)), plan, predict, registered)
    # with a change data feed: the API's /ws/updates streams new forecasts from it
    version = lake.replace_dates(PREDICTIONS_TABLE, out, start, end, change_data_feed=True)
    warehouse.upsert(WAREHOUSE_PREDICTIONS, out.with_columns(
        model=pl.format("{}/{}", "model_name", "model_version")))
    naive = sorted(d for d, v in plan.items() if v is None)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": out.height,
        "dagster/uri": lake.table_uri(PREDICTIONS_TABLE),
        "table_version": version,
        "model_versions": dg.MetadataValue.json({str(d): "{}/{}".format(*v) if v else NAIVE_MODEL
                                                 for d, v in sorted(plan.items())[-10:]}),
        "versions_used": ["{}/{}".format(*v) for v in sorted({v for v in plan.values() if v is not None})],
        "days_served_by_naive": len(naive),
        "first_naive_day": str(naive[0]) if naive else None,
        "tickers": out["ticker"].n_unique(),
        "excluded_partitions": dg.MetadataValue.json({"check": FEATURES_CHECK.to_user_string(),
                                                      "partitions": blocked.failed}),
    })


@daily_asset(
    deps=[dg.AssetDep(predictions, partition_mapping=PREVIOUS_SESSION), price_snapshots],
    group_name="ml",
    kinds={"deltalake", "sql"},
    description="Per ticker and target day: predicted vs true close, absolute error, the naive random walk's "
    "forecast and error, direction hit. Predictions whose target close is not known yet stay pending and are "
    "filled by a later run. Aggregates (MAE/RMSE/MASE, hit rate with its CI, IC, Diebold-Mariano, a long/short "
    "backtest vs buy-and-hold) and a plot in the metadata; mirrored to the warehouse table `stock_pred_eval`.",
    metadata=column_schema(EVALUATION) | EVALUATION_LINEAGE,
)
def prediction_evaluation(context: dg.AssetExecutionContext, lake: LakeResource,
                          warehouse: WarehouseResource) -> dg.MaterializeResult:
    import base64

    import polars as pl

    from stock_platform.lib.evaluation import evaluate, plot_png, summarize, summary_markdown

    dates = partition_dates(context)
    start, end = dates[0], dates[-1]
    preds = (lake.read(PREDICTIONS_TABLE, start, end, date_column="target_date")
             if lake.exists(PREDICTIONS_TABLE) else pl.DataFrame())
    # blocking across runs: forecasts made on a day whose latest predictions check failed are not scored
    blocked = check_status(context.instance, PREDICTIONS_CHECK,
                           sorted({d.isoformat() for d in preds["date"]}) if preds.height else [])
    if blocked.failed:
        context.log.warning(f"not evaluating forecasts of {blocked.describe()}")
        preds = preds.filter(~pl.col("date").is_in([dt.date.fromisoformat(k) for k in blocked.failed]))
    if preds.is_empty():
        context.log.info(f"no predictions target {start}..{end}: nothing to evaluate")
        return dg.MaterializeResult(metadata={"dagster/row_count": 0, "evaluated": 0, "pending": 0,
                                              "excluded_partitions": dg.MetadataValue.json(blocked.failed)})
    closes = lake.snapshot(SNAPSHOT_TABLE, start=preds["date"].min(), end=end).select(
        "ticker", "date", "close", "dividends", "splits")
    table = evaluate(preds, closes)
    version = lake.replace_dates(EVALUATION_TABLE, table, start, end, date_column="target_date")
    warehouse.upsert(WAREHOUSE_EVALUATION, table.rename({"date": "asof_date", "target_date": "date"}).with_columns(
        model=pl.format("{}/{}", "model_name", "model_version")))
    summary = summarize(table)
    metadata = {
        "dagster/row_count": table.height,
        "dagster/uri": lake.table_uri(EVALUATION_TABLE),
        "table_version": version,
        "evaluated": table.height,
        "pending": preds.height - table.height,  # target close not stored yet: a later run fills them
        "coverage": table.height / preds.height,
        "model_vs_naive": dg.MetadataValue.md(summary_markdown(summary)),
        "excluded_partitions": dg.MetadataValue.json(blocked.failed),
    }
    metadata |= {k: v for k, v in summary.items() if k in ("mase", "hit_rate", "ic", "dm_stat", "dm_p_value",
                                                           "pearson_ic", "pearson_icir", "rank_ic", "rank_icir",
                                                           "ls_annual_return_net", "ls_information_ratio_net")}
    if table["target_date"].n_unique() >= 2:
        # the range's plot (~80 KB) on its last partition only, the one the UI shows as the latest: as the result's
        # metadata a backfill would copy it onto every partition's event
        png = base64.b64encode(plot_png(table)).decode()
        context.add_asset_metadata({"plot": dg.MetadataValue.md(f"![equity and error](data:image/png;base64,{png})")},
                                   partition_key=context.partition_key_range.end)
    return dg.MaterializeResult(metadata=metadata)
