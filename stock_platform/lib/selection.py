"""Choosing a model without Dagster: the validation layout, the best trial, the holdout gate, the report tables.

The family assets (`<family>_model`) and the gate (`tuned_model`) wire these to their resources (Ray Tune
searches, MLflow remembers runs and the champion); everything that decides something is here and unit-tested on
plain arrays.

Layout, in sessions: `[ train ... | fold 1 | ... | fold k ] gap [ holdout ]`. Each family's search scores trials on
the walk-forward folds and never sees the holdout; the gate refits every family's best parameters and the
champion's on the same sessions before the holdout and compares them there, beside the naive random walk.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from stock_platform.lib import modeling as m
from stock_platform.lib.families import Family
from stock_platform.lib.markdown import markdown_table

LEAST_TRAINING_SESSIONS = 60
LEAST_TEST_SESSIONS = 20
# The held-out final window the gate scores on, and the sessions between it and the data refitted before it (the
# label's horizon plus an embargo, as before each CV test block). Fixed, so no family's search can see it.
HOLDOUT_SESSIONS = 60
EMBARGO_SESSIONS = 5
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


def holdout(sessions: int, holdout_sessions: int = HOLDOUT_SESSIONS,
            embargo: int = EMBARGO_SESSIONS) -> tuple[int, int]:
    """(first session of the held-out window, the gap before it) for `sessions` sessions of labelled features."""
    return sessions - holdout_sessions, m.LABEL_HORIZON + embargo


def validation_layout(sessions: int, *, folds: int, test_sessions: int, holdout_sessions: int = HOLDOUT_SESSIONS,
                      embargo: int = EMBARGO_SESSIONS) -> Layout:
    """Folds of `test_sessions` (shrunk, not below LEAST_TEST_SESSIONS, when the history is short) before a gap and
    the holdout; ValueError when `sessions` cannot hold them."""
    holdout_first, gap = holdout(sessions, holdout_sessions, embargo)
    room = holdout_first - 2 * gap - LEAST_TRAINING_SESSIONS  # a gap before the holdout and before each fold
    test_sessions = min(test_sessions, room // folds)
    if test_sessions < LEAST_TEST_SESSIONS:
        raise ValueError(f"{sessions} sessions of labelled features are too few for {folds} folds of >= "
                         f"{LEAST_TEST_SESSIONS} sessions and a {holdout_sessions}-session holdout: materialize "
                         "more history of `features`")
    return Layout(m.walk_forward_folds(sessions, folds=folds, test_sessions=test_sessions, embargo=embargo,
                                       end=holdout_first - gap),
                  test_sessions, gap, holdout_first, holdout_sessions)


def best_trial(family: Family, trials: Sequence[dict], folds: int) -> tuple[dict, dict, list[dict]]:
    """The trial with the best IC among those that finished every fold without error, the parameters a final model
    is fitted with (LightGBM: the rounds early stopping found) and the complete trials; ValueError when none
    finished."""
    complete = [t for t in trials if t.get("folds_done") == folds and not t["error"]]
    if not complete:
        raise ValueError(f"no {family.key} trial finished all {folds} folds within the budget; errors: "
                         f"{[t['error'] for t in trials if t['error']][:3]}")
    best = max(complete, key=lambda t: t["ic"])
    return best, family.final_params(best), complete


@dataclass(frozen=True)
class Contender:
    """A model the gate scores on the holdout: a family's candidate of the week, or the current champion. Its
    parameters are refitted on the sessions before the holdout, so every contender sees the same data."""

    role: str  # "candidate" or "champion"
    model_name: str
    version: int
    family: Family
    params: dict

    @property
    def label(self) -> str:
        return f"{self.model_name} v{self.version}"


def contenders(served: pl.DataFrame, end: dt.date,
               params_of: Callable[[str, int], dict[str, str]]) -> list[Contender]:
    """The gate's contenders for the week ending `end`, from the registry's serving rows: each family's newest
    version trained up to `end` (its candidate) and the champion of that week (the newest promoted version trained
    before `end`), if any. `params_of(name, version)` gives a version's parameters as MLflow stores them."""
    from stock_platform.lib.families import family_of

    def contender(role: str, name: str, version: int) -> Contender:
        family = family_of(name)
        return Contender(role, name, version, family, family.params_from_strings(params_of(name, version)))

    week = served.filter(pl.col("train_end") == end).group_by("model_name").agg(pl.col("version").max()).sort(
        "model_name")
    out = [contender("candidate", name, version) for name, version in week.iter_rows()]
    before = served.filter(pl.col("promoted") & (pl.col("train_end") < end)).sort("train_end", "registered_at")
    if before.height:
        out.append(contender("champion", before["model_name"][-1], before["version"][-1]))
    return out


def superseded(served: pl.DataFrame, end: dt.date, candidates: set[tuple[str, int]]) -> list[tuple[str, int]]:
    """Versions trained up to `end` that an earlier run of the gate promoted and that are no longer the week's
    candidates (the family was re-tuned since): a re-run of the week's gate demotes them."""
    rows = served.filter(pl.col("promoted") & (pl.col("train_end") == end)).select("model_name", "version")
    return [key for key in rows.iter_rows() if key not in candidates]


def choose(scores: dict[str, dict[str, float]], champion: str | None,
           leaks: dict[str, float]) -> tuple[str | None, dict[str, str]]:
    """The gate's rule, on holdout scores by contender label (the champion's among them, labelled `champion`).
    A candidate is eligible when it beats the naive random walk on the squared error it is trained for (RMSE) and
    in ranking (IC > 0); the eligible one with the best IC is promoted if it also beats the champion's IC (an
    equal IC never displaces a champion), and nothing is promoted when a feature looks leaky. Returns the
    promoted label (None: keep what serves) and a reason for every label."""
    reasons: dict[str, str] = {}
    eligible = []
    for label, s in scores.items():
        skill = f"RMSE {s['rmse']:.6f} vs naive {s['naive_rmse']:.6f}, IC {s['ic']:.4f}"
        if label == champion:
            reasons[label] = f"current champion ({skill})"
        elif not s["rmse"] < s["naive_rmse"]:
            reasons[label] = f"{skill}: no better than the naive random walk's squared error"
        elif not s["ic"] > 0:
            reasons[label] = f"{skill}: no better than the naive random walk's ranking (IC <= 0)"
        else:
            reasons[label] = f"{skill}: beats the naive random walk"
            eligible.append(label)
    if not eligible:
        return None, reasons
    best = max(eligible, key=lambda label: (scores[label]["ic"], -scores[label]["rmse"]))
    for label in eligible:
        if label != best:
            reasons[label] += f"; IC below {best}'s {scores[best]['ic']:.4f}"
    if leaks:
        reasons[best] += f"; not promoted: leakage suspected in {sorted(leaks)}"
        return None, reasons
    if champion is not None and not scores[best]["ic"] > scores[champion]["ic"]:
        reasons[best] += f"; not promoted: IC not above the champion's {scores[champion]['ic']:.4f}"
        return None, reasons
    reasons[best] += "; promoted" + ("" if champion is None else f": IC above the champion's "
                                                                    f"{scores[champion]['ic']:.4f}")
    return best, reasons


@dataclass(frozen=True)
class Verdict:
    """The gate's decision: one row per contender and one for the naive walk (scores on the same holdout rows,
    Diebold-Mariano against the naive walk), the promoted contender (None: none) and why."""

    rows: list[dict]
    promoted: Contender | None
    reason: str
    reasons: dict[str, str]  # by contender label
    leaks: dict[str, float]


def gate(datasets: dict[str, m.TrainingSet], holdout_first: int, gap: int, contenders: Sequence[Contender],
         ics: dict[str, float], *, threads: int) -> Verdict:
    """Refit every contender's parameters on the sessions before the holdout (each on its family's inputs of the
    same rows), score all on the holdout beside the naive random walk, and promote at most one (`choose`)."""
    from stock_platform.lib.evaluation import diebold_mariano

    first = next(iter(datasets.values()))
    holdout = first.rows(holdout_first, first.sessions - 1)
    t, y = first.t[holdout], first.y[holdout]
    naive_loss = _daily_mean(t, y**2)
    scores, rows = {}, []
    for c in contenders:
        data = datasets[c.family.key]
        if len(data.y) != len(first.y):
            raise ValueError(f"{c.family.key}'s training set has {len(data.y)} rows, not {len(first.y)}")
        model = c.family.fit(c.params, data, (0, holdout_first - gap - 1), threads=threads)
        pred = c.family.predict(model, data, holdout)
        scores[c.label] = m.scores(t, y, pred)
        dm, p = diebold_mariano(_daily_mean(t, (pred - y) ** 2), naive_loss)
        rows.append({"model": c.label, "model_name": c.model_name, "version": c.version, "family": c.family.key,
                     "role": c.role, **scores[c.label], "days": float(len(np.unique(t))), "dm_stat": dm,
                     "dm_p_value": p})
    champion = next((c.label for c in contenders if c.role == "champion"), None)
    leaks = {k: v for k, v in ics.items() if abs(v) > m.LEAKAGE_IC}
    winner, reasons = choose(scores, champion, leaks)
    for row in rows:
        row["decision"] = reasons[row["model"]]
    naive = _naive(scores[rows[0]["model"]]) if rows else {}
    rows.append({"model": NAIVE_MODEL, "model_name": NAIVE_MODEL, "version": NAIVE_VERSION, "family": "naive",
                 "role": "baseline", **naive, "rows": float(len(y)), "days": float(len(np.unique(t))),
                 "dm_stat": math.nan, "dm_p_value": math.nan, "decision": "serves wherever no promoted model does"})
    promoted = next((c for c in contenders if c.label == winner), None)
    if winner:
        reason = f"{winner} promoted: {reasons[winner]}"
    else:
        reason = "none promoted" + (f" ({'the champion stays' if champion else 'the naive random walk serves'}): "
                                    + "; ".join(f"{k}: {v}" for k, v in reasons.items() if k != champion))
    return Verdict(rows, promoted, reason, reasons, leaks)


def _daily_mean(t: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per session (in order), the mean of `values` over its rows: the Diebold-Mariano loss series."""
    frame = pl.DataFrame({"t": t, "v": values}).group_by("t").agg(pl.col("v").mean()).sort("t")
    return frame["v"].to_numpy()


def _table(rows: list[dict], columns: list[str]) -> str:
    return markdown_table([[r.get(c, "") for c in columns] for r in rows], columns)


def _naive(scores: dict[str, float]) -> dict[str, float]:
    """The naive random walk's row beside a model's scores on the same rows."""
    return {"mae": scores["naive_mae"], "rmse": scores["naive_rmse"], "naive_rmse": scores["naive_rmse"],
            "mase": 1.0, "hit_rate": scores["up_rate"], "ic": 0.0}


DECISION_COLUMNS = ["model", "role", "days", "rows", "rmse", "mase", "hit_rate", "ic", "dm_stat", "dm_p_value",
                    "decision"]


def decision_table(verdict: Verdict) -> str:
    """The gate's decision table (markdown): every contender beside the naive walk."""
    return _table(verdict.rows, DECISION_COLUMNS)


def decision_frame(verdict: Verdict, train_end: dt.date, run_id: str) -> pl.DataFrame:
    """The decision table's rows for the lake table `model_selection` (the report reads it)."""
    schema = {"train_end": pl.Date, "model": pl.String, "model_name": pl.String, "version": pl.Int32,
              "family": pl.String, "role": pl.String, "days": pl.Int32, "rows": pl.Int64, "rmse": pl.Float64,
              "naive_rmse": pl.Float64, "mae": pl.Float64, "mase": pl.Float64, "hit_rate": pl.Float64,
              "ic": pl.Float64, "dm_stat": pl.Float64, "dm_p_value": pl.Float64, "promoted": pl.Boolean,
              "decision": pl.String, "run_id": pl.String}
    promoted = verdict.promoted.label if verdict.promoted else None
    rows = [{k: r.get(k) for k in schema} | {"train_end": train_end, "promoted": r["model"] == promoted,
                                             "run_id": run_id} for r in verdict.rows]
    return pl.DataFrame(rows, schema=schema, strict=False)


def tuning_tables(family: Family, best: dict, trials: Sequence[dict],
                  importance: Sequence[tuple[str, float]]) -> dict[str, str]:
    """The markdown tables of a family's search: the best trial's CV scores beside the naive walk, the trials,
    the inputs' weights in the final model."""
    extras = [k for k in ("rounds",) if k in best]
    return {
        "cv_scores": _table([{"": f"{family.key} (CV)", **cv_scores(best)}, {"": "naive random walk", **_naive(best)}],
                            ["", *SCORE_COLUMNS]),
        "trials": _table(sorted(trials, key=lambda t: -t.get("ic", -1)),
                         ["trial", "ic", "mase", "folds_done", *extras, *family.space]),
        "importance": _table([{"input": f, "weight": float(g)} for f, g in importance[:15]], ["input", "weight"]),
    }


def cv_scores(best: dict) -> dict[str, float]:
    return {k: best[k] for k in ("ic", "mae", "rmse", "naive_mae", "naive_rmse", "mase", "hit_rate", "up_rate")}


Served = tuple[str, int]  # (model name, version)


def model_for_each_day(days: Sequence[dt.date],
                       promoted: Sequence[tuple[str, int, dt.date, dt.datetime]]) -> dict[dt.date, Served | None]:
    """For each day d, the promoted model version (name, version) whose training data ends latest before d (of
    two with the same end, the one registered later); None where there is none: the naive random walk serves."""
    plan = {}
    for day in days:
        usable = [(train_end, registered, (name, version)) for name, version, train_end, registered in promoted
                  if train_end < day]
        plan[day] = max(usable)[2] if usable else None
    return plan


def forecast_frame(features, closes, sessions: Sequence[dt.date], plan: dict[dt.date, Served | None],
                   predict: Callable[[Served, object], object], registered: dict[Served, dt.datetime]):
    """The predictions table's rows. On a day with a model version: for each warm feature row, the version's
    predicted next-session return and implied close, stamped when the forecast could first exist (the day's
    close, or the model's registration if later: a backfill); `predict((name, version), rows)` gives a version's
    predictions. On a day without one (None): the naive random walk for every ticker with a close that day
    (a zero return; it needs no features), stamped at the day's close."""
    from stock_platform.lib.calendar import following_sessions, session_close_utc
    from stock_platform.lib.tables import predictions_schema

    served = pl.Datetime("us", "UTC")
    parts = [closes.filter(pl.col("date").is_in([d for d, v in plan.items() if v is None])).select(
        "ticker", "date", pred_return=pl.lit(0.0), model_name=pl.lit(NAIVE_MODEL),
        model_version=pl.lit(NAIVE_VERSION, pl.Int32), registered_at=pl.lit(None, served))]
    for model in sorted({v for v in plan.values() if v is not None}):
        rows = features.filter(pl.col("date").is_in([d for d, v in plan.items() if v == model]))
        if rows.is_empty():
            continue
        parts.append(rows.select("ticker", "date").with_columns(
            pred_return=pl.Series(predict(model, rows), dtype=pl.Float64),
            model_name=pl.lit(model[0]),
            model_version=pl.lit(model[1], pl.Int32),
            registered_at=pl.lit(registered[model], served),
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
