"""Forecasting without Dagster: labels, walk-forward folds, scores against the naive baseline, CV trials (the
model families themselves are in `lib/families.py`).

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
    codes: np.ndarray | None = None  # each row's ticker as a number: tickers[code] (per-ticker models use it)
    tickers: tuple[str, ...] = ()

    def __post_init__(self):
        if self.target is None:
            object.__setattr__(self, "target", demeaned(self.t, self.y))
        if self.codes is None:
            tickers = self.keys["ticker"].unique().sort()
            object.__setattr__(self, "tickers", tuple(tickers.to_list()))
            object.__setattr__(self, "codes", self.keys["ticker"].replace_strict(
                {k: i for i, k in enumerate(self.tickers)}, return_dtype=pl.Int32).to_numpy())

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


# ------------------------------------------------------------------------------------------- trials
def run_trial(family, params: dict, data: TrainingSet, folds: Sequence[Fold], *,
              report: Callable[[dict], None] | None = None, threads: int = 1) -> dict:
    """Walk-forward CV of one parameter set of a `lib.families` family. After each fold, `report` gets the scores
    so far (ASHA stops poor trials early on them). A family that stops early (LightGBM) holds out the end of each
    fold's training sessions for it, after the same purge/embargo gap, never the test block."""
    started = time.perf_counter()
    t, y, p, extras = [], [], [], []
    for k, fold in enumerate(folds, start=1):
        gap = fold.test_first - fold.train_last - 1
        model = family.fit(params, data, (0, fold.train_last), early_stopping_gap=gap, threads=threads)
        extras.append(family.trial_extras(model))
        test = data.rows(fold.test_first, fold.test_last)
        t.append(data.t[test]), y.append(data.y[test]), p.append(family.predict(model, data, test))
        result = scores(np.concatenate(t), np.concatenate(y), np.concatenate(p))
        result |= {key: float(np.median([e[key] for e in extras])) for key in extras[0]}
        result |= {"folds_done": k, "seconds": time.perf_counter() - started}
        if report is not None:
            report(result)
    return result


def ray_trainable(config: dict, data: TrainingSet, folds: Sequence[Fold], family: str) -> None:
    """Ray Tune's function trainable (lives in the package: Ray workers import it by name). `data` arrives from
    Ray's object store (put there once per search by `tune.with_parameters`); each report names the Ray node the
    trial ran on."""
    import ray
    from ray import tune

    from stock_platform.lib.families import FAMILIES

    node = ray.get_runtime_context().get_node_id()
    run_trial(FAMILIES[family], config.get("point", config), data, folds,
              report=lambda result: tune.report(result | {"node_id": node}))
