"""Stage `ml`, weekly: one asset per model family (`lightgbm_model`, `ridge_model`, `ar_model`: each tuned by Ray
Tune in its materialization and registered in MLflow as a candidate) and `tuned_model`, the gate that scores every
family's candidate beside the naive random walk and the current champion on a held-out window and promotes at most
one."""

import datetime as dt
from typing import Literal

import dagster as dg

from stock_platform.assets.ml import features
from stock_platform.gates import FEATURES_CHECK, LEAKAGE_CHECK as LEAKAGE_CHECK_KEY, check_status
from stock_platform.lib.families import FAMILIES, Family
from stock_platform.lib.tables import FEATURES_TABLE, MODEL_SELECTION_TABLE, SNAPSHOT_TABLE
from stock_platform.partitions import model_weeks
from stock_platform.registry import register_version
from stock_platform.resources.lake import LakeResource
from stock_platform.resources.tracking import TrackingResource
from stock_platform.resources.tuning import TuningResource
from stock_platform.settings import get_settings

LEAKAGE_CHECK = LEAKAGE_CHECK_KEY.name


class TuningConfig(dg.Config):
    """Per-run search budget and CV layout of a family. The budget's defaults are the deployment's
    (STOCK_PLATFORM_TUNING_TRIALS, STOCK_PLATFORM_TUNING_SECONDS: 16 trials in at most 90 s, about two minutes on
    2 cores): the weekly schedule's runs take them, the Launchpad shows them. The held-out window the gate scores on
    is fixed (`lib/selection.py`: HOLDOUT_SESSIONS), so no search sees it."""

    trials: int = get_settings().tuning_trials
    time_budget_seconds: float = get_settings().tuning_seconds
    folds: int = 3
    test_sessions: int = 60  # per fold; shrunk (not below 20) when the history is short
    seed: int = 7
    # "optuna": TPE proposals and ASHA's early stops (they depend on the order trials finish in); "random": `trials`
    # seeded points, each through every fold, so the same seed gives the same trials wherever they run
    searcher: Literal["optuna", "random"] = "optuna"


def week_end(context: dg.AssetExecutionContext) -> dt.date:
    """The last day (Sunday) of the model week being materialized."""
    return context.partition_time_window.end.date() - dt.timedelta(days=1)


def load_training_sets(lake: LakeResource, end: dt.date, families, exclude=None) -> dict:
    """Per family key, the warm features up to `end` (that family's inputs) with next-day-return labels known by
    `end` (labels from snapshots): the same rows for every family. `exclude`, given the feature dates read, names
    the ones to leave out (partitions whose blocking check failed)."""
    import polars as pl

    from stock_platform.lib.calendar import trading_days
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
        return {f.key: training_set(feats, labels, f.inputs) for f in families}
    except ValueError as exc:
        raise dg.Failure(f"training data up to {end}: {exc}") from exc


def load_training_set(lake: LakeResource, end: dt.date, family: Family = FAMILIES["lightgbm"], exclude=None):
    """One family's training set (see `load_training_sets`)."""
    return load_training_sets(lake, end, [family], exclude)[family.key]


def failed_feature_days(context: dg.AssetExecutionContext, days: list[dt.date], excluded: list[str]) -> list[dt.date]:
    """The feature days whose latest features check failed (logged, and added to `excluded`)."""
    status = check_status(context.instance, FEATURES_CHECK, [d.isoformat() for d in days])
    if status.failed:
        context.log.warning(f"training leaves out {status.describe()}")
    excluded.extend(status.failed)
    return [dt.date.fromisoformat(k) for k in status.failed]


def excluded_metadata(excluded: list[str]) -> dg.MetadataValue:
    return dg.MetadataValue.json({"check": FEATURES_CHECK.to_user_string(), "count": len(excluded),
                                  "first": excluded[:20]})


def model_example(family: Family, data):
    """A few input rows, as MLflow logs them beside a model (its signature): the inputs, and the ticker where the
    model is per ticker (the linear families' python model reads it). Float64, as the features table holds them."""
    import pandas as pd

    example = pd.DataFrame(data.x[:5].astype("float64"), columns=data.feature_names)
    if family.key != "lightgbm":
        example.insert(0, "ticker", data.keys["ticker"].head(5).to_list())
    return example


def family_asset(family: Family) -> dg.AssetsDefinition:
    """The weekly asset that tunes one family by Ray Tune and registers its candidate."""

    @dg.asset(
        name=f"{family.key}_model",
        partitions_def=model_weeks,
        deps=[features],
        group_name="ml",
        kinds={family.key, "ray", "mlflow"},
        description=f"{family.title}, trained on all warm feature rows up to the end of the week to predict the next "
        "trading day's return. Ray Tune (Optuna TPE + ASHA) searches its parameters by walk-forward CV with purge "
        "and embargo, never on the held-out window; MLflow gets one run per week with a nested run per trial, and "
        "the final model is registered as a candidate: `tuned_model` decides whether it serves.",
    )
    def _asset(context: dg.AssetExecutionContext, config: TuningConfig, lake: LakeResource, tuning: TuningResource,
               tracking: TrackingResource) -> dg.MaterializeResult:
        import mlflow

        from stock_platform.lib import selection as sel

        end = week_end(context)
        excluded: list[str] = []  # blocking across runs: feature days whose latest check failed
        data = load_training_set(lake, end, family, exclude=lambda days: failed_feature_days(context, days, excluded))
        try:
            layout = sel.validation_layout(data.sessions, folds=config.folds, test_sessions=config.test_sessions)
            name = f"{family.key}_{context.partition_key}_{context.run.run_id[:8]}"
            with tuning.ray_session():
                trials = tuning.search(family, data, layout.folds, trials=config.trials, seed=config.seed,
                                       time_budget_seconds=config.time_budget_seconds, name=name,
                                       searcher=config.searcher)
            best, params, complete = sel.best_trial(family, trials, len(layout.folds))
        except ValueError as exc:
            raise dg.Failure(f"{family.key}_model up to {end}: {exc}") from exc
        final = family.fit(params, data, (0, data.sessions - 1), threads=tuning.num_cpus)
        with tracking.asset_run(context, f"{family.key} week {context.partition_key}") as run:
            tracking.log_params(params | {"family": family.key, "inputs": len(data.feature_names),
                                          "train_end": str(end)})
            mlflow.log_metrics({f"cv_{k}": v for k, v in sel.cv_scores(best).items()})
            tracking.log_trials(trials, list(family.space))
            model_name, version = register_version(
                lake, tracking, family, final, model_example(family, data), params=params, train_end=end,
                promoted=False, gate="candidate: `tuned_model` decides on the held-out window")
        context.log.info(f"{model_name} v{version}: best CV IC {best['ic']:.4f} of {len(complete)} complete trials")
        tables = sel.tuning_tables(family, best, trials, family.importance(final, data.feature_names))
        return dg.MaterializeResult(metadata={
            "family": family.key, "model_name": model_name, "model_version": version, "mlflow_run_id": run.info.run_id,
            "best_params": dg.MetadataValue.json(params), "cv_ic": best["ic"], "cv_mase": best["mase"],
            "cv_rmse": best["rmse"], "cv_naive_rmse": best["naive_rmse"],
            **{key: dg.MetadataValue.md(table) for key, table in tables.items()},
            "layout": layout.describe(data), "dagster/row_count": len(data.y),
            "excluded_partitions": excluded_metadata(excluded),
            "trials_complete": f"{len(complete)} of {len(trials)}",
        })

    return _asset


family_models = [family_asset(f) for f in FAMILIES.values()]


@dg.asset(
    partitions_def=model_weeks,
    deps=family_models,
    group_name="ml",
    kinds={"mlflow"},
    check_specs=[dg.AssetCheckSpec(
        LEAKAGE_CHECK, asset="tuned_model", blocking=True,
        description="No feature's daily IC with the next-day return is implausibly high (|IC| > 0.3): a feature "
        "built from tomorrow's price fails this, blocks downstream predictions and keeps the champion.")],
    description="The week's model decision: every family's candidate and the current champion are refitted on the "
    "sessions before a held-out final window and scored on it beside the naive random walk (RMSE, IC, "
    "Diebold-Mariano); the candidate with the best IC among those that beat the naive walk becomes `champion` if it "
    "also beats the champion's IC. At most one is promoted; the decision table is in the metadata, the MLflow run "
    "and the lake table `model_selection`.",
)
def tuned_model(context: dg.AssetExecutionContext, lake: LakeResource, tuning: TuningResource,
                tracking: TrackingResource) -> dg.MaterializeResult:
    import json

    import mlflow

    from stock_platform.lib import modeling as m
    from stock_platform.lib import selection as sel
    from stock_platform.registry import served_versions, set_promoted

    end = week_end(context)
    excluded: list[str] = []
    datasets = load_training_sets(lake, end, FAMILIES.values(),
                                  exclude=lambda days: failed_feature_days(context, days, excluded))
    every = datasets["lightgbm"]  # every model input: the leakage check's data
    ics = m.feature_ics(every)
    served = served_versions(lake)
    contenders = sel.contenders(served, end, lambda name, version: tracking.version_params(name, version))
    if not any(c.role == "candidate" for c in contenders):
        raise dg.Failure(f"no candidate trained up to {end}: materialize the family assets "
                         f"({', '.join(f'{k}_model' for k in FAMILIES)}) for week {context.partition_key} first")
    try:
        holdout_first, gap = sel.holdout(every.sessions)
    except ValueError as exc:
        raise dg.Failure(f"tuned_model up to {end}: {exc}") from exc
    verdict = sel.gate(datasets, holdout_first, gap, contenders, ics, threads=tuning.num_cpus)
    for c in contenders:  # every candidate carries the gate's words; at most one is promoted
        if c.role == "candidate":
            set_promoted(lake, tracking, c.model_name, c.version, c is verdict.promoted, gate=verdict.reasons[c.label])
    candidates = {(c.model_name, c.version) for c in contenders}
    for name, version in sel.superseded(served, end, candidates):  # a re-run of the week replaces its decision
        set_promoted(lake, tracking, name, version, False, gate=f"superseded by run {context.run.run_id[:8]} of "
                     f"week {context.partition_key}")
    table = sel.decision_table(verdict)
    lake.replace_dates(MODEL_SELECTION_TABLE, sel.decision_frame(verdict, end, context.run.run_id), end, end,
                       date_column="train_end")
    with tracking.asset_run(context, f"gate week {context.partition_key}") as run:
        mlflow.log_metrics({f"{k}_{r['family']}": r[k] for r in verdict.rows for k in ("ic", "rmse", "dm_stat")
                            if r["role"] != "champion" and r[k] == r[k]})
        mlflow.set_tags({"promoted": verdict.promoted.label if verdict.promoted else "none",
                         "gate": verdict.reason[:5000]})
        mlflow.log_text(table, "decision.md")
    context.log.info(f"gate, week {context.partition_key}: {verdict.reason}")
    return dg.MaterializeResult(
        metadata={
            "promoted": verdict.promoted.label if verdict.promoted else None,
            "model_name": verdict.promoted.model_name if verdict.promoted else None,
            "model_version": verdict.promoted.version if verdict.promoted else None,
            "gate": verdict.reason, "decision": dg.MetadataValue.md(table), "mlflow_run_id": run.info.run_id,
            "holdout": f"{sel.HOLDOUT_SESSIONS} sessions {every.dates[holdout_first]}..{every.dates[-1]}, "
                       f"{len(every.rows(holdout_first, every.sessions - 1)):,} rows; refitted on sessions up to "
                       f"{every.dates[holdout_first - gap - 1]}",
            "dagster/row_count": len(every.y),
            "excluded_partitions": excluded_metadata(excluded),
            "leaky_features": json.dumps({k: round(v, 3) for k, v in verdict.leaks.items()}),
        },
        check_results=[dg.AssetCheckResult(
            check_name=LEAKAGE_CHECK, passed=not verdict.leaks, severity=dg.AssetCheckSeverity.ERROR,
            metadata={"suspects": dg.MetadataValue.json({k: round(v, 4) for k, v in verdict.leaks.items()}),
                      "threshold_abs_ic": m.LEAKAGE_IC, "max_abs_ic": max(abs(v) for v in ics.values())})],
    )
