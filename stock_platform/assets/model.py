"""Stage `ml`: `tuned_model` (weekly; LightGBM tuned by Ray Tune in the materialization, tracked in MLflow)."""

import datetime as dt

import dagster as dg

from stock_platform.assets.ml import features
from stock_platform.gates import FEATURES_CHECK, LEAKAGE_CHECK as LEAKAGE_CHECK_KEY, check_status
from stock_platform.lib.markdown import markdown_table
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


def _table(rows: list[dict], columns: list[str]) -> str:
    return markdown_table([[r.get(c, "") for c in columns] for r in rows], columns)


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

    end = week_end(context)
    excluded = []  # blocking across runs: feature days whose latest features_schema evaluation failed, and say so

    def failed_days(days: list[dt.date]) -> list[dt.date]:
        status = check_status(context.instance, FEATURES_CHECK, [d.isoformat() for d in days])
        if status.failed:
            context.log.warning(f"training leaves out {status.describe()}")
        excluded.extend(status.failed)
        return [dt.date.fromisoformat(k) for k in status.failed]

    data = load_training_set(lake, end, exclude=failed_days)
    ics = m.feature_ics(data)
    leaks = {k: v for k, v in ics.items() if abs(v) > m.LEAKAGE_IC}

    # Layout: [ train ... | fold 1 | ... | fold k ] gap [ holdout ]; every block in sessions.
    gap = m.LABEL_HORIZON + config.embargo_sessions
    holdout_first = data.sessions - config.holdout_sessions
    room = holdout_first - 2 * gap - 60  # a gap before the holdout and before each fold; 60: least training
    test_sessions = min(config.test_sessions, room // config.folds)
    if test_sessions < 20:
        raise dg.Failure(f"{data.sessions} sessions of labelled features up to {end} are too few for {config.folds} "
                         f"folds of >= 20 sessions and a {config.holdout_sessions}-session holdout: "
                         "materialize more history of `features`")
    folds = m.walk_forward_folds(data.sessions, folds=config.folds, test_sessions=test_sessions,
                                 embargo=config.embargo_sessions, end=holdout_first - gap)
    name = f"tuned_model_{context.partition_key}_{context.run.run_id[:8]}"
    with tuning.ray_session():
        trials = tuning.search(data, folds, trials=config.trials, time_budget_seconds=config.time_budget_seconds,
                               seed=config.seed, name=name)
    complete = [t for t in trials if t.get("folds_done") == len(folds) and not t["error"]]
    if not complete:
        raise dg.Failure(f"no trial finished all {len(folds)} folds within the budget; errors: "
                         f"{[t['error'] for t in trials if t['error']][:3]}")
    best = max(complete, key=lambda t: t["ic"])
    params = {k: best[k] for k in m.SEARCH_SPACE} | {"n_estimators": max(1, int(best["rounds"]))}

    # The gate: candidate and champion parameters refit on the same sessions before the holdout, scored on it.
    holdout = data.rows(holdout_first, data.sessions - 1)

    def holdout_scores(p: dict) -> dict:
        booster = m.fit(p, data, (0, holdout_first - gap - 1), threads=tuning.num_cpus)
        return m.scores(data.t[holdout], data.y[holdout], booster.predict(data.x[holdout]))

    candidate = holdout_scores(params)
    champion_version = tracking.champion()
    champion = None
    if champion_version is not None:
        champion = holdout_scores(m.params_from_strings(tracking.run_params(champion_version.run_id)))
    promote, reason = m.should_promote(candidate, champion)
    if leaks:
        promote, reason = False, f"leakage suspected in {sorted(leaks)}: {reason}"

    final = m.fit(params, data, (0, data.sessions - 1), threads=tuning.num_cpus)
    importance = sorted(zip(data.feature_names, final.feature_importance("gain")), key=lambda kv: -kv[1])[:15]
    cv = {k: best[k] for k in ("ic", "mae", "rmse", "naive_mae", "naive_rmse", "mase", "hit_rate", "up_rate")}
    with tracking.run(name, tags={"dagster_run_id": context.run.run_id, "partition": context.partition_key}) as run:
        import mlflow
        import pandas as pd

        mlflow.log_params(params | {"features": len(data.feature_names), "train_end": str(end)})
        mlflow.log_metrics({f"cv_{k}": v for k, v in cv.items()}
                           | {f"holdout_{k}": v for k, v in candidate.items()}
                           | ({f"champion_holdout_{k}": v for k, v in champion.items()} if champion else {})
                           | {"promoted": float(promote)})
        mlflow.set_tags({"gate": reason})
        tracking.log_trials(trials, list(m.SEARCH_SPACE))
        version = register_version(lake, tracking, final, pd.DataFrame(data.x[-5:], columns=data.feature_names),
                                   train_end=end, promoted=promote, gate=reason)
    context.log.info(f"model version {version}: {'promoted' if promote else 'not promoted'} ({reason})")

    holdout_rows = [{"model": "candidate", **candidate}] + ([{"model": f"champion v{champion_version.version}",
                                                             **champion}] if champion else [])
    holdout_rows.append({"model": "naive random walk", "mae": candidate["naive_mae"], "rmse": candidate["naive_rmse"],
                         "mase": 1.0, "hit_rate": candidate["up_rate"], "ic": 0.0})
    return dg.MaterializeResult(
        metadata={
            "model_name": tracking.model_name,
            "model_version": version,
            "promoted": promote,
            "gate": reason,
            "mlflow_run_id": run.info.run_id,
            "best_params": dg.MetadataValue.json(params),
            "cv_ic": best["ic"], "cv_mase": best["mase"],
            "holdout_ic": candidate["ic"], "holdout_mase": candidate["mase"],
            "holdout_rmse": candidate["rmse"], "holdout_naive_rmse": candidate["naive_rmse"],
            "champion_holdout_ic": champion["ic"] if champion else None,
            "cv_scores": dg.MetadataValue.md(_table(
                [{"": "model (CV)", **cv}, {"": "naive random walk", "mae": cv["naive_mae"], "rmse": cv["naive_rmse"],
                                             "mase": 1.0, "hit_rate": cv["up_rate"], "ic": 0.0}],
                ["", "mae", "rmse", "mase", "hit_rate", "ic"])),
            "holdout_scores": dg.MetadataValue.md(_table(holdout_rows, ["model", "mae", "rmse", "mase", "hit_rate",
                                                                        "ic"])),
            "trials": dg.MetadataValue.md(_table(sorted(trials, key=lambda t: -t.get("ic", -1)),
                                                 ["trial", "ic", "mase", "folds_done", "rounds", *m.SEARCH_SPACE])),
            "feature_importance": dg.MetadataValue.md(_table(
                [{"feature": f, "gain": float(g)} for f, g in importance], ["feature", "gain"])),
            "layout": f"{data.sessions} sessions ({data.dates[0]}..{data.dates[-1]}), {len(data.y):,} rows; "
                      f"{len(folds)} folds x {test_sessions} sessions, gap {gap}, holdout {config.holdout_sessions}",
            "dagster/row_count": len(data.y),
            "excluded_partitions": dg.MetadataValue.json({"check": FEATURES_CHECK.to_user_string(),
                                                          "count": len(excluded), "first": excluded[:20]}),
            "trials_complete": f"{len(complete)} of {len(trials)}",
            "leaky_features": json.dumps({k: round(v, 3) for k, v in leaks.items()}),
        },
        check_results=[dg.AssetCheckResult(
            check_name=LEAKAGE_CHECK, passed=not leaks, severity=dg.AssetCheckSeverity.ERROR,
            metadata={"suspects": dg.MetadataValue.json({k: round(v, 4) for k, v in leaks.items()}),
                      "threshold_abs_ic": m.LEAKAGE_IC,
                      "max_abs_ic": max(abs(v) for v in ics.values())})],
    )
