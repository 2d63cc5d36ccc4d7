"""Choosing a model without Dagster: the validation layout, the best trial, the holdout gate, the report tables.

`tuned_model` wires these to its resources (Ray Tune searches, MLflow remembers the champion); everything that
decides something is here and unit-tested on plain arrays.

Layout, in sessions: `[ train ... | fold 1 | ... | fold k ] gap [ holdout ]`. The search scores trials on the
walk-forward folds; the gate refits the best trial's parameters and the champion's on the same sessions before
the holdout and compares them there, beside the naive random walk.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stock_platform.lib import modeling as m
from stock_platform.lib.markdown import markdown_table

LEAST_TRAINING_SESSIONS = 60
LEAST_TEST_SESSIONS = 20
SCORE_COLUMNS = ["mae", "rmse", "mase", "hit_rate", "ic"]
# The baseline champion: tomorrow's close is today's (a zero return). It needs no training and serves every day
# no promoted model covers (before the first promotion, after the last one is demoted): a forecast is always made,
# and saying it is the naive one is an honest answer.
NAIVE_MODEL = "naive_random_walk"
NAIVE_VERSION = 1


@dataclass(frozen=True)
class Layout:
    folds: list[m.Fold]
    test_sessions: int  # per fold
    gap: int  # label horizon + embargo, before each test block and before the holdout
    holdout_first: int
    holdout_sessions: int

    def describe(self, data: m.TrainingSet) -> str:
        return (f"{data.sessions} sessions ({data.dates[0]}..{data.dates[-1]}), {len(data.y):,} rows; "
                f"{len(self.folds)} folds x {self.test_sessions} sessions, gap {self.gap}, "
                f"holdout {self.holdout_sessions}")


def validation_layout(sessions: int, *, folds: int, test_sessions: int, holdout_sessions: int,
                      embargo: int) -> Layout:
    """Folds of `test_sessions` (shrunk, not below LEAST_TEST_SESSIONS, when the history is short) before a gap and
    the holdout; ValueError when `sessions` cannot hold them."""
    gap = m.LABEL_HORIZON + embargo
    holdout_first = sessions - holdout_sessions
    room = holdout_first - 2 * gap - LEAST_TRAINING_SESSIONS  # a gap before the holdout and before each fold
    test_sessions = min(test_sessions, room // folds)
    if test_sessions < LEAST_TEST_SESSIONS:
        raise ValueError(f"{sessions} sessions of labelled features are too few for {folds} folds of >= "
                         f"{LEAST_TEST_SESSIONS} sessions and a {holdout_sessions}-session holdout: materialize "
                         "more history of `features`")
    return Layout(m.walk_forward_folds(sessions, folds=folds, test_sessions=test_sessions, embargo=embargo,
                                       end=holdout_first - gap),
                  test_sessions, gap, holdout_first, holdout_sessions)


def best_trial(trials: Sequence[dict], folds: int) -> tuple[dict, dict, list[dict]]:
    """The trial with the best IC among those that finished every fold without error, its parameters (boosting
    rounds as early stopping found them) and the complete trials; ValueError when none finished."""
    complete = [t for t in trials if t.get("folds_done") == folds and not t["error"]]
    if not complete:
        raise ValueError(f"no trial finished all {folds} folds within the budget; errors: "
                         f"{[t['error'] for t in trials if t['error']][:3]}")
    best = max(complete, key=lambda t: t["ic"])
    params = {k: best[k] for k in m.SEARCH_SPACE} | {"n_estimators": max(1, int(best["rounds"]))}
    return best, params, complete


@dataclass(frozen=True)
class Verdict:
    """The gate's decision on the holdout: the candidate's scores, the champion's (None: no champion)."""

    candidate: dict[str, float]
    champion: dict[str, float] | None
    promote: bool
    reason: str
    leaks: dict[str, float]


def gate(data: m.TrainingSet, layout: Layout, params: dict, champion_params: dict | None,
         ics: dict[str, float], *, threads: int) -> Verdict:
    """Refit the candidate's and the champion's parameters on the sessions before the holdout, score both on it:
    promote by `modeling.should_promote`, never with a feature whose IC suggests leakage."""
    holdout = data.rows(layout.holdout_first, data.sessions - 1)

    def scores(p: dict) -> dict[str, float]:
        booster = m.fit(p, data, (0, layout.holdout_first - layout.gap - 1), threads=threads)
        return m.scores(data.t[holdout], data.y[holdout], booster.predict(data.x[holdout]))

    candidate = scores(params)
    champion = scores(champion_params) if champion_params is not None else None
    promote, reason = m.should_promote(candidate, champion)
    leaks = {k: v for k, v in ics.items() if abs(v) > m.LEAKAGE_IC}
    if leaks:
        promote, reason = False, f"leakage suspected in {sorted(leaks)}: {reason}"
    return Verdict(candidate, champion, promote, reason, leaks)


def _table(rows: list[dict], columns: list[str]) -> str:
    return markdown_table([[r.get(c, "") for c in columns] for r in rows], columns)


def _naive(scores: dict[str, float]) -> dict[str, float]:
    """The naive random walk's row beside a model's scores on the same rows."""
    return {"mae": scores["naive_mae"], "rmse": scores["naive_rmse"], "mase": 1.0, "hit_rate": scores["up_rate"],
            "ic": 0.0}


def report_tables(best: dict, verdict: Verdict, champion_label: str | None, trials: Sequence[dict],
                  importance: Sequence[tuple[str, float]]) -> dict[str, str]:
    """The markdown tables of a tuning run: CV and holdout scores beside the naive walk, trials, feature gains."""
    holdout = [{"model": "candidate", **verdict.candidate}]
    if verdict.champion is not None:
        holdout.append({"model": champion_label, **verdict.champion})
    holdout.append({"model": "naive random walk", **_naive(verdict.candidate)})
    return {
        "cv_scores": _table([{"": "model (CV)", **cv_scores(best)}, {"": "naive random walk", **_naive(best)}],
                            ["", *SCORE_COLUMNS]),
        "holdout_scores": _table(holdout, ["model", *SCORE_COLUMNS]),
        "trials": _table(sorted(trials, key=lambda t: -t.get("ic", -1)),
                         ["trial", "ic", "mase", "folds_done", "rounds", *m.SEARCH_SPACE]),
        "feature_importance": _table([{"feature": f, "gain": float(g)} for f, g in importance], ["feature", "gain"]),
    }


def cv_scores(best: dict) -> dict[str, float]:
    return {k: best[k] for k in ("ic", "mae", "rmse", "naive_mae", "naive_rmse", "mase", "hit_rate", "up_rate")}


def top_importance(names: Sequence[str], gains: Sequence[float], n: int = 15) -> list[tuple[str, float]]:
    return sorted(zip(names, gains), key=lambda kv: -kv[1])[:n]


def model_for_each_day(days: Sequence[dt.date], promoted: Sequence[tuple[int, dt.date]]) -> dict[dt.date, int | None]:
    """For each day d, the newest promoted model version whose training data ends before d; None where there is
    none: the naive random walk serves that day."""
    plan = {}
    for day in days:
        usable = [version for version, train_end in promoted if train_end < day]
        plan[day] = max(usable) if usable else None
    return plan


def forecast_frame(features, closes, sessions: Sequence[dt.date], plan: dict[dt.date, int | None],
                   predict: Callable[[int, object], object], registered: dict[int, dt.datetime],
                   model_name: str):
    """The predictions table's rows. On a day with a model version: for each warm feature row, the version's
    predicted next-session return and implied close, stamped when the forecast could first exist (the day's
    close, or the model's registration if later: a backfill); `predict(version, rows)` gives a version's
    predictions. On a day without one (None): the naive random walk for every ticker with a close that day
    (a zero return; it needs no features), stamped at the day's close."""
    import polars as pl

    from stock_platform.lib.calendar import following_sessions, session_close_utc
    from stock_platform.lib.tables import predictions_schema

    served = pl.Datetime("us", "UTC")
    parts = [closes.filter(pl.col("date").is_in([d for d, v in plan.items() if v is None])).select(
        "ticker", "date", pred_return=pl.lit(0.0), model_name=pl.lit(NAIVE_MODEL),
        model_version=pl.lit(NAIVE_VERSION, pl.Int32), registered_at=pl.lit(None, served))]
    for version in sorted({v for v in plan.values() if v is not None}):
        rows = features.filter(pl.col("date").is_in([d for d, v in plan.items() if v == version]))
        if rows.is_empty():
            continue
        parts.append(rows.select("ticker", "date").with_columns(
            pred_return=pl.Series(predict(version, rows), dtype=pl.Float64),
            model_name=pl.lit(model_name),
            model_version=pl.lit(version, pl.Int32),
            registered_at=pl.lit(registered[version], served),
        ))
    return (
        pl.concat(parts)
        .join(closes.select("ticker", "date", "close"), on=["ticker", "date"])
        .join(following_sessions(sessions), on="date")
        .with_columns(
            pred_close=pl.col("close") * (1 + pl.col("pred_return")),
            created_at=pl.max_horizontal(session_close_utc(pl.col("date")), pl.col("registered_at")),
        )
        .select(list(predictions_schema()))
        .sort("ticker", "date")
    )
