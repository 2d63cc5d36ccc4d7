"""Forecasting without Dagster: labels, walk-forward folds, scores against the naive baseline, LightGBM trials.

The target is the next trading day's total return (the platform's own split/dividend adjustment). It is computed from prices *after* d and
joined to the features *at* d; nothing in a feature row may look past d's close (`features` guarantees it,
`feature_ics` helps catch accidents).

Validation is walk-forward: each fold trains on sessions before its test block, minus a purge (the label's
horizon: a training row whose label reaches into the test block) and an embargo (more sessions, since
multi-day features overlap). Every score stands beside the naive random-walk forecast on the same rows
(tomorrow's close = today's close, i.e. a predicted return of 0).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

KEYS = ("ticker", "date")
LABEL_HORIZON = 1  # sessions
# The search space, library-neutral: (kind, low, high, log scale). Ray Tune / the benchmark sample from it.
SEARCH_SPACE: dict[str, tuple[str, float, float, bool]] = {
    "num_leaves": ("int", 7, 63, True),
    "learning_rate": ("float", 0.02, 0.2, True),
    "min_data_in_leaf": ("int", 50, 2000, True),
    "feature_fraction": ("float", 0.3, 1.0, False),
    "bagging_fraction": ("float", 0.5, 1.0, False),
    "lambda_l1": ("float", 1e-3, 10.0, True),
    "lambda_l2": ("float", 1e-3, 10.0, True),
    "n_estimators": ("int", 50, 300, False),  # the most boosting rounds; early stopping picks fewer
}
EARLY_STOPPING_ROUNDS = 20
# An honest daily feature has |IC| of a few hundredths; one built from tomorrow's price has ~1.
LEAKAGE_IC = 0.3


# ------------------------------------------------------------------------------------------- labels
def next_day_returns(prices: pl.DataFrame, sessions: Sequence[dt.date]) -> pl.DataFrame:
    """`ticker, date, target_date, label`: the total return from d's close to the next session's (splits and
    dividends of the next session included, see `lib/corporate_actions.py`).

    prices: ticker, date, close, dividends, splits (as traded). Only where the ticker has a bar on the very
    next session: a gap gives no label, not a multi-day return.
    """
    from stock_platform.lib.calendar import following_sessions
    from stock_platform.lib.corporate_actions import total_returns

    return (
        total_returns(prices.select("ticker", "date", "close", "dividends", "splits"))
        .rename({"date": "target_date", "prev_date": "date"})
        .join(following_sessions(sessions), on=["date", "target_date"])
        .select("ticker", "date", "target_date", label="total_return")
        .sort(KEYS)
    )


def demeaned(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """y minus the mean of y over the rows of the same session (the market's move that day)."""
    frame = pl.DataFrame({"t": t, "y": y})
    return frame.select(pl.col("y") - pl.col("y").mean().over("t")).to_series().to_numpy()


@dataclass(frozen=True)
class TrainingSet:
    """Rows sorted by date: features `x`, labels `y`, each row's session number `t` (0 = first session).

    Models learn `target`, the label minus that session's cross-sectional mean: the market's common move
    is not predictable from a ticker's own indicators, and fitting it only adds noise (measured on the demo
    market: RMSE above the naive forecast's with raw labels, below it with demeaned ones). Every score is
    still taken against the raw next-day return `y`.
    """

    x: np.ndarray
    y: np.ndarray
    t: np.ndarray
    dates: list[dt.date]  # session number -> date
    feature_names: list[str]
    keys: pl.DataFrame  # ticker, date of each row
    target: np.ndarray | None = None

    def __post_init__(self):
        if self.target is None:
            object.__setattr__(self, "target", demeaned(self.t, self.y))

    @property
    def fingerprint(self) -> tuple:
        """Identifies the data across processes (Ray hands each trial its own copy)."""
        return (self.x.shape, str(self.dates[0]), str(self.dates[-1]), float(self.y.sum()), float(self.x[-1].sum()))

    @property
    def sessions(self) -> int:
        return len(self.dates)

    def rows(self, first: int, last: int) -> np.ndarray:
        """Row indices of sessions first..last (inclusive); rows are sorted by session."""
        return np.arange(np.searchsorted(self.t, first, "left"), np.searchsorted(self.t, last, "right"))


def training_set(features: pl.DataFrame, labels: pl.DataFrame, feature_names: Sequence[str]) -> TrainingSet:
    """Warm feature rows with a known label, as float32 arrays sorted by date."""
    rows = (
        features.filter(pl.col("warm"))
        .join(labels.select(*KEYS, "label"), on=list(KEYS))
        .sort("date", "ticker")
    )
    if rows.is_empty():
        raise ValueError("no warm feature rows with a known next-day return")
    dates = rows["date"].unique().sort()
    session = {d: i for i, d in enumerate(dates.to_list())}
    return TrainingSet(
        x=rows.select(pl.col(list(feature_names)).cast(pl.Float32)).to_numpy(),
        y=rows["label"].to_numpy().astype(np.float64),
        t=rows["date"].replace_strict(session, return_dtype=pl.Int32).to_numpy(),
        dates=dates.to_list(),
        feature_names=list(feature_names),
        keys=rows.select(*KEYS),
    )


# ------------------------------------------------------------------------------------------- folds
@dataclass(frozen=True)
class Fold:
    """Session numbers: train on 0..train_last, test on test_first..test_last."""

    train_last: int
    test_first: int
    test_last: int


def walk_forward_folds(sessions: int, *, folds: int, test_sessions: int, purge: int = LABEL_HORIZON,
                       embargo: int = 5, min_train_sessions: int = 60, end: int | None = None) -> list[Fold]:
    """Expanding-window folds whose test blocks tile the last folds*test_sessions sessions before `end`.

    A fold's training rows stop `purge + embargo` sessions before its test block: a row at the test block's
    doorstep has a label made of the block's first close, and multi-day features overlap the block.
    """
    end = sessions if end is None else end
    gap = purge + embargo
    first_test = end - folds * test_sessions
    if first_test - gap < min_train_sessions:
        raise ValueError(f"{sessions} sessions of labelled features cannot hold {folds} folds of {test_sessions} "
                         f"test sessions after {min_train_sessions} training sessions and a gap of {gap}")
    return [Fold(train_last=s - gap - 1, test_first=s, test_last=s + test_sessions - 1)
            for s in range(first_test, end, test_sessions)]


# ------------------------------------------------------------------------------------------- scores
def daily_ic(t: np.ndarray, label: np.ndarray, pred: np.ndarray) -> float:
    """Mean over sessions of the cross-sectional Spearman correlation of prediction and outcome."""
    frame = pl.DataFrame({"t": t, "y": label, "p": pred})
    per_day = (
        frame.group_by("t")
        .agg(ic=pl.corr("p", "y", method="spearman"), n=pl.len())
        .filter((pl.col("n") >= 3) & pl.col("ic").is_not_nan() & pl.col("ic").is_not_null())
    )
    return float(per_day["ic"].mean()) if per_day.height else 0.0


def scores(t: np.ndarray, label: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Model scores beside the naive random walk's (predicted return 0) on the same rows."""
    err, naive_err = pred - label, label  # naive forecast: return 0
    mae, naive_mae = float(np.mean(np.abs(err))), float(np.mean(np.abs(naive_err)))
    moved = label != 0
    return {
        "mae": mae,
        "rmse": float(np.sqrt(np.mean(err**2))),
        "naive_mae": naive_mae,
        "naive_rmse": float(np.sqrt(np.mean(naive_err**2))),
        "mase": mae / naive_mae if naive_mae > 0 else math.nan,
        "hit_rate": float(np.mean(np.sign(pred[moved]) == np.sign(label[moved]))) if moved.any() else math.nan,
        "up_rate": float(np.mean(label[moved] > 0)) if moved.any() else math.nan,  # always-up baseline
        "ic": daily_ic(t, label, pred),
        "rows": float(len(label)),
    }


def feature_ics(data: TrainingSet) -> dict[str, float]:
    """Each feature's daily IC with the label. |IC| > LEAKAGE_IC is implausible for information known at d's
    close: the feature most likely peeks at the label."""
    return {name: daily_ic(data.t, data.y, data.x[:, j]) for j, name in enumerate(data.feature_names)}


def params_from_strings(stored: dict[str, str]) -> dict[str, float | int]:
    """Parameters as MLflow stores them (strings) back to SEARCH_SPACE's types."""
    return {k: (int(float(stored[k])) if kind == "int" else float(stored[k]))
            for k, (kind, *_rest) in SEARCH_SPACE.items()}


def should_promote(candidate: dict[str, float], champion: dict[str, float] | None) -> tuple[bool, str]:
    """The champion gate, on one held-out window: beat the naive random walk on the squared error the model
    is trained for (RMSE) and in ranking (IC > 0), then beat the champion's IC."""
    skill = f"RMSE {candidate['rmse']:.6f} vs naive {candidate['naive_rmse']:.6f}"
    if not candidate["rmse"] < candidate["naive_rmse"]:
        return False, f"{skill}: no better than the naive random walk"
    if not candidate["ic"] > 0:
        return False, f"IC {candidate['ic']:.4f} <= 0: no better than the naive random walk's ranking"
    if champion is None:
        return True, f"first model that beats the naive baseline ({skill}, IC {candidate['ic']:.4f})"
    if candidate["ic"] > champion["ic"]:
        return True, f"IC {candidate['ic']:.4f} > champion's {champion['ic']:.4f}; {skill}"
    return False, f"IC {candidate['ic']:.4f} <= champion's {champion['ic']:.4f}"


# ------------------------------------------------------------------------------------------- LightGBM
def sample_params(rng: np.random.Generator) -> dict[str, float | int]:
    """One random point of SEARCH_SPACE (the benchmark's serial runs and tests use it)."""
    out: dict[str, float | int] = {}
    for name, (kind, low, high, log) in SEARCH_SPACE.items():
        u = rng.uniform(math.log(low), math.log(high)) if log else rng.uniform(low, high)
        value = math.exp(u) if log else u
        out[name] = int(round(value)) if kind == "int" else float(value)
    return out


# Binning is fixed for all trials (feature_pre_filter off, so min_data_in_leaf may vary per trial).
DATASET_PARAMS = {"max_bin": 63, "feature_pre_filter": False, "verbosity": -1}


def lgb_params(params: dict, threads: int = 1, seed: int = 7) -> dict:
    keep = {k: v for k, v in params.items() if k != "n_estimators"}
    return {"objective": "regression", "num_threads": threads, "seed": seed, "bagging_freq": 1,
            "deterministic": True, "force_row_wise": True, **DATASET_PARAMS, **keep}


# Binned LightGBM datasets of the latest training set, by row range: building one (binning 500k rows) costs
# more than a trial's boosting, and every trial of a search bins the same fold rows. Per process.
_BINNED: dict[tuple, object] = {}


def _binned(data: TrainingSet, first: int, last: int, reference=None):
    import lightgbm as lgb

    key = (data.fingerprint, first, last, reference is not None)
    if key not in _BINNED:
        if _BINNED and next(iter(_BINNED))[0] != data.fingerprint:
            _BINNED.clear()  # another training set: drop the old one's
        rows = data.rows(first, last)
        _BINNED[key] = lgb.Dataset(data.x[rows], data.target[rows], feature_name=data.feature_names,
                                   params=DATASET_PARAMS, reference=reference, free_raw_data=False).construct()
    return _BINNED[key]


def fit(params: dict, data: TrainingSet, sessions: tuple[int, int], *, valid: tuple[int, int] | None = None,
        rounds: int | None = None, threads: int = 1):
    """A LightGBM booster on sessions (first, last); with `valid` sessions, early stopping picks the rounds."""
    import lightgbm as lgb

    train = _binned(data, *sessions)
    kwargs: dict = {"num_boost_round": int(rounds or params["n_estimators"])}
    if valid is not None:
        kwargs["valid_sets"] = [_binned(data, *valid, reference=train)]
        kwargs["callbacks"] = [lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)]
    return lgb.train(lgb_params(params, threads), train, **kwargs)


def run_trial(params: dict, data: TrainingSet, folds: Sequence[Fold], *,
              report: Callable[[dict], None] | None = None, threads: int = 1) -> dict:
    """Walk-forward CV of one parameter set. After each fold, `report` gets the scores so far (ASHA stops
    poor trials early on them). Early stopping uses the last fifth of each fold's training sessions (after
    the same purge/embargo gap), never the test block."""
    started = time.perf_counter()
    t, y, p, rounds = [], [], [], []
    for k, fold in enumerate(folds, start=1):
        gap = fold.test_first - fold.train_last - 1
        es_first = fold.train_last - max(5, (fold.train_last + 1) // 5) + 1
        booster = fit(params, data, (0, es_first - gap - 1), valid=(es_first, fold.train_last), threads=threads)
        rounds.append(booster.best_iteration or booster.current_iteration())
        test = data.rows(fold.test_first, fold.test_last)
        t.append(data.t[test]), y.append(data.y[test]), p.append(booster.predict(data.x[test]))
        result = scores(np.concatenate(t), np.concatenate(y), np.concatenate(p))
        result |= {"folds_done": k, "rounds": float(np.median(rounds)), "seconds": time.perf_counter() - started}
        if report is not None:
            report(result)
    return result


def ray_trainable(config: dict, data: TrainingSet, folds: Sequence[Fold]) -> None:
    """Ray Tune's function trainable (lives in the package: Ray workers import it by name)."""
    from ray import tune

    run_trial(config.get("point", config), data, folds, report=tune.report)
