"""Stage `ml`: `tuned_model` (weekly; LightGBM tuned by Ray Tune in the materialization, tracked in MLflow)."""

import datetime as dt

import dagster as dg

from stock_platform.assets.ml import features
from stock_platform.gates import FEATURES_CHECK, LEAKAGE_CHECK as LEAKAGE_CHECK_KEY, check_status
from stock_platform.lib.tables import FEATURES_TABLE, SNAPSHOT_TABLE
from stock_platform.partitions import model_weeks
from stock_platform.registry import register_version
from stock_platform.resources.lake import LakeResource
from stock_platform.resources.tracking import TrackingResource
from stock_platform.resources.tuning import TuningResource

LEAKAGE_CHECK = LEAKAGE_CHECK_KEY.name


class TuningConfig(dg.Config):
    """Per-run budget and validation layout (the defaults finish in about two minutes on 2 cores)."""

    trials: int = 16
    time_budget_seconds: float = 90.0
    folds: int = 3
    test_sessions: int = 60  # per fold; shrunk (not below 20) when the history is short
    holdout_sessions: int = 60  # the final window the champion gate scores on, never seen by the search
    embargo_sessions: int = 5
    seed: int = 7


def week_end(context: dg.AssetExecutionContext) -> dt.date:
    """The last day (Sunday) of the model week being materialized."""
    return context.partition_time_window.end.date() - dt.timedelta(days=1)


def load_training_set(lake: LakeResource, end: dt.date, exclude=None):
    """Warm features up to `end` with next-day-return labels known by `end` (labels from snapshots). `exclude`,
    given the feature dates read, names the ones to leave out (partitions whose blocking check failed)."""
    import polars as pl

    from stock_platform.lib.calendar import trading_days
    from stock_platform.lib.indicators import MODEL_FEATURES
    from stock_platform.lib.modeling import next_day_returns, training_set

    if not lake.exists(FEATURES_TABLE):
        raise dg.Failure("no features table: materialize `features` first")
    feats = lake.read(FEATURES_TABLE, end=end)
    if exclude is not None:
        feats = feats.filter(~pl.col("date").is_in(exclude(feats["date"].unique().sort().to_list())))
    if feats.is_empty():
        raise dg.Failure(f"no feature rows up to {end}: materialize `features` for these dates first")
    closes = lake.snapshot(SNAPSHOT_TABLE, start=feats["date"].min(), end=end).select("ticker", "date", "close", "dividends", "splits")
    labels = next_day_returns(closes, trading_days(feats["date"].min(), end))
    try:
        return training_set(feats.filter(pl.col("date") <= end), labels, MODEL_FEATURES)
    except ValueError as exc:
        raise dg.Failure(f"tuned_model up to {end}: {exc}") from exc


def failed_feature_days(context: dg.AssetExecutionContext, days: list[dt.date], excluded: list[str]) -> list[dt.date]:
    """The feature days whose latest features check failed (logged, and added to `excluded`)."""
    status = check_status(context.instance, FEATURES_CHECK, [d.isoformat() for d in days])
    if status.failed:
        context.log.warning(f"training leaves out {status.describe()}")
    excluded.extend(status.failed)
    return [dt.date.fromisoformat(k) for k in status.failed]


def track_and_register(context: dg.AssetExecutionContext, lake: LakeResource, tracking: TrackingResource, name: str,
                       data, final, params: dict, best: dict, verdict, trials: list[dict]) -> tuple[int, str]:
    """Log the tuning run to MLflow (parameters, CV/holdout/champion scores, the gate, every trial) and register
    the final model; its version and the MLflow run id."""
    import mlflow
    import pandas as pd

    from stock_platform.lib import modeling as m
    from stock_platform.lib.selection import cv_scores

    end = week_end(context)
    with tracking.run(name, tags={"dagster_run_id": context.run.run_id, "partition": context.partition_key}) as run:
        mlflow.log_params(params | {"features": len(data.feature_names), "train_end": str(end)})
        mlflow.log_metrics({f"cv_{k}": v for k, v in cv_scores(best).items()}
                           | {f"holdout_{k}": v for k, v in verdict.candidate.items()}
                           | {f"champion_holdout_{k}": v for k, v in (verdict.champion or {}).items()}
                           | {"promoted": float(verdict.promote)})
        mlflow.set_tags({"gate": verdict.reason})
        tracking.log_trials(trials, list(m.SEARCH_SPACE))
        version = register_version(lake, tracking, final, pd.DataFrame(data.x[-5:], columns=data.feature_names),
                                   train_end=end, promoted=verdict.promote, gate=verdict.reason)
    return version, run.info.run_id


@dg.asset(
    partitions_def=model_weeks,
    deps=[features],
    group_name="ml",
    kinds={"lightgbm", "ray", "mlflow"},
    check_specs=[dg.AssetCheckSpec(
        LEAKAGE_CHECK, asset="tuned_model", blocking=True,
        description="No feature's daily IC with the next-day return is implausibly high (|IC| > 0.3): a feature "
        "built from tomorrow's price fails this, blocks downstream predictions and keeps the champion.")],
    description="LightGBM on all warm feature rows up to the end of the week, predicting the next trading day's "
    "return. Ray Tune (Optuna TPE + ASHA) searches its parameters by walk-forward CV with purge and embargo; the "
    "best model is logged and registered in MLflow and becomes `champion` only if it beats the naive random walk "
    "(RMSE, IC) and the current champion (IC) on a held-out final window.",
)
def tuned_model(context: dg.AssetExecutionContext, config: TuningConfig, lake: LakeResource,
                tuning: TuningResource, tracking: TrackingResource) -> dg.MaterializeResult:
    import json

    from stock_platform.lib import modeling as m
    from stock_platform.lib import selection as sel

    end = week_end(context)
    excluded: list[str] = []  # blocking across runs: feature days whose latest check failed, said in the metadata
    data = load_training_set(lake, end, exclude=lambda days: failed_feature_days(context, days, excluded))
    ics = m.feature_ics(data)
    try:
        layout = sel.validation_layout(data.sessions, folds=config.folds, test_sessions=config.test_sessions,
                                       holdout_sessions=config.holdout_sessions, embargo=config.embargo_sessions)
        name = f"tuned_model_{context.partition_key}_{context.run.run_id[:8]}"
        with tuning.ray_session():
            trials = tuning.search(data, layout.folds, trials=config.trials,
                                   time_budget_seconds=config.time_budget_seconds, seed=config.seed, name=name)
        best, params, complete = sel.best_trial(trials, len(layout.folds))
    except ValueError as exc:
        raise dg.Failure(f"tuned_model up to {end}: {exc}") from exc
    champion = tracking.champion()
    champion_params = m.params_from_strings(tracking.run_params(champion.run_id)) if champion else None
    verdict = sel.gate(data, layout, params, champion_params, ics, threads=tuning.num_cpus)
    final = m.fit(params, data, (0, data.sessions - 1), threads=tuning.num_cpus)
    version, run_id = track_and_register(context, lake, tracking, name, data, final, params, best, verdict, trials)
    context.log.info(f"model version {version}: {'promoted' if verdict.promote else 'not promoted'} "
                     f"({verdict.reason})")
    tables = sel.report_tables(best, verdict, f"champion v{champion.version}" if champion else None, trials,
                               sel.top_importance(data.feature_names, final.feature_importance("gain")))
    return dg.MaterializeResult(
        metadata={
            "model_name": tracking.model_name, "model_version": version, "promoted": verdict.promote,
            "gate": verdict.reason, "mlflow_run_id": run_id, "best_params": dg.MetadataValue.json(params),
            "cv_ic": best["ic"], "cv_mase": best["mase"],
            "holdout_ic": verdict.candidate["ic"], "holdout_mase": verdict.candidate["mase"],
            "holdout_rmse": verdict.candidate["rmse"], "holdout_naive_rmse": verdict.candidate["naive_rmse"],
            "champion_holdout_ic": verdict.champion["ic"] if verdict.champion else None,
            **{key: dg.MetadataValue.md(table) for key, table in tables.items()},
            "layout": layout.describe(data),
            "dagster/row_count": len(data.y),
            "excluded_partitions": dg.MetadataValue.json({"check": FEATURES_CHECK.to_user_string(),
                                                          "count": len(excluded), "first": excluded[:20]}),
            "trials_complete": f"{len(complete)} of {len(trials)}",
            "leaky_features": json.dumps({k: round(v, 3) for k, v in verdict.leaks.items()}),
        },
        check_results=[dg.AssetCheckResult(
            check_name=LEAKAGE_CHECK, passed=not verdict.leaks, severity=dg.AssetCheckSeverity.ERROR,
            metadata={"suspects": dg.MetadataValue.json({k: round(v, 4) for k, v in verdict.leaks.items()}),
                      "threshold_abs_ic": m.LEAKAGE_IC, "max_abs_ic": max(abs(v) for v in ics.values())})],
    )
