"""Model families (no Dagster): what the search tunes, how each family fits, predicts and is stored.

Every family learns `TrainingSet.target` (the next-day return minus that session's cross-sectional mean) from
scale-free inputs only, and is scored against the raw next-day return beside the naive random walk:

- `lightgbm`: gradient-boosted trees on every model input (`MODEL_FEATURES`); in CV, early stopping on the end of
  each training window picks the boosting rounds.
- `ridge`: a linear model on the same inputs, standardised and clipped (closed-form ridge regression).
- `ar`: a per-ticker autoregression on the ticker's own past returns in Corsi's HAR form (1-, 5- and 20-day
  returns: an AR(20) with three coefficients), by least squares; each ticker's coefficients are shrunk toward the
  all-ticker fit, and only the latest `history_sessions` are used (a time-series model follows its ticker).

A family's search space is library-neutral, `{name: (kind, low, high, log scale)}`: Ray Tune and the benchmark's
serial runs sample from it. A fitted model is stored as text (`dumps`/`loads`): LightGBM's model string, JSON for
the linear families; `predict_frame` serves it on rows of the features table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the Dagster definitions import this module: numpy, polars and the indicators load when used
    import numpy as np
    import polars as pl

    from stock_platform.lib.modeling import TrainingSet

Space = dict[str, tuple[str, float, float, bool]]


def sample_params(space: Space, rng: np.random.Generator) -> dict[str, float | int]:
    """One random point of a search space (the benchmark's serial runs and tests use it)."""
    out: dict[str, float | int] = {}
    for name, (kind, low, high, log) in space.items():
        u = rng.uniform(math.log(low), math.log(high)) if log else rng.uniform(low, high)
        value = math.exp(u) if log else u
        out[name] = int(round(value)) if kind == "int" else float(value)
    return out


class Family:
    """The interface every family implements; `key` names its Dagster asset (`<key>_model`) and its registered
    model (`<prefix>_<short>`)."""

    key: str
    short: str
    title: str
    inputs: tuple[str, ...]
    space: Space

    def fit(self, params: dict, data: TrainingSet, sessions: tuple[int, int], *, early_stopping_gap: int | None = None,
            threads: int = 1):
        """A model fitted on sessions (first, last). With `early_stopping_gap` (inside CV) a family that stops
        early holds out the window's last fifth, after that many sessions, to pick its length."""
        raise NotImplementedError

    def predict(self, model, data: TrainingSet, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_frame(self, model, frame: pl.DataFrame) -> np.ndarray:
        """Predictions for rows of the features table (with `ticker` and the family's inputs)."""
        raise NotImplementedError

    def dumps(self, model) -> str:
        raise NotImplementedError

    def loads(self, text: str):
        raise NotImplementedError

    def trial_extras(self, model) -> dict[str, float]:
        """What a CV fold's model adds to the trial's record (LightGBM: the rounds early stopping kept)."""
        return {}

    def final_params(self, trial: dict) -> dict:
        """The parameters a final model is fitted with, from the best trial's record."""
        return {k: trial[k] for k in self.space}

    def params_from_strings(self, stored: dict[str, str]) -> dict:
        """Parameters as MLflow stores them (strings) back to their types."""
        return {k: (int(float(stored[k])) if kind == "int" else float(stored[k]))
                for k, (kind, *_rest) in self.space.items()}

    def importance(self, model, names: Sequence[str]) -> list[tuple[str, float]]:
        """Each input's weight in the model, largest first (the tuning run's metadata)."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------- LightGBM
# Binning is fixed for all trials (feature_pre_filter off, so min_data_in_leaf may vary per trial).
DATASET_PARAMS = {"max_bin": 63, "feature_pre_filter": False, "verbosity": -1}
EARLY_STOPPING_ROUNDS = 20
# Binned LightGBM datasets of the latest training set, by row range: building one (binning 500k rows) costs
# more than a trial's boosting, and every trial of a search bins the same fold rows. Per process.
_BINNED: dict[tuple, object] = {}


def lgb_params(params: dict, threads: int = 1, seed: int = 7) -> dict:
    keep = {k: v for k, v in params.items() if k != "n_estimators"}
    return {"objective": "regression", "num_threads": threads, "seed": seed, "bagging_freq": 1,
            "deterministic": True, "force_row_wise": True, **DATASET_PARAMS, **keep}


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


def _model_features() -> tuple[str, ...]:
    from stock_platform.lib.indicators import MODEL_FEATURES

    return MODEL_FEATURES


class LightGBM(Family):
    key, short, title = "lightgbm", "lgbm", "LightGBM (gradient-boosted trees)"
    inputs = property(lambda self: _model_features())
    space = {
        "num_leaves": ("int", 7, 63, True),
        "learning_rate": ("float", 0.02, 0.2, True),
        "min_data_in_leaf": ("int", 50, 2000, True),
        "feature_fraction": ("float", 0.3, 1.0, False),
        "bagging_fraction": ("float", 0.5, 1.0, False),
        "lambda_l1": ("float", 1e-3, 10.0, True),
        "lambda_l2": ("float", 1e-3, 10.0, True),
        "n_estimators": ("int", 50, 300, False),  # the most boosting rounds; early stopping picks fewer in CV
    }

    def fit(self, params, data, sessions, *, early_stopping_gap=None, threads=1):
        import lightgbm as lgb

        first, last = sessions
        kwargs: dict = {"num_boost_round": int(params["n_estimators"])}
        if early_stopping_gap is not None:
            valid_first = last - max(5, (last - first + 1) // 5) + 1
            train = _binned(data, first, valid_first - early_stopping_gap - 1)
            kwargs["valid_sets"] = [_binned(data, valid_first, last, reference=train)]
            kwargs["callbacks"] = [lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)]
        else:
            train = _binned(data, first, last)
        return lgb.train(lgb_params(params, threads), train, **kwargs)

    def predict(self, model, data, rows):
        return model.predict(data.x[rows])

    def predict_frame(self, model, frame):
        return model.predict(frame.select(model.feature_name()).to_numpy())

    def dumps(self, model):
        return model.model_to_string()

    def loads(self, text):
        import lightgbm as lgb

        return lgb.Booster(model_str=text)

    def trial_extras(self, model):
        return {"rounds": float(model.best_iteration or model.current_iteration())}

    def final_params(self, trial):
        return super().final_params(trial) | {"n_estimators": max(1, int(trial["rounds"]))}

    def importance(self, model, names):
        return sorted(zip(names, model.feature_importance("gain").tolist()), key=lambda kv: -kv[1])


# ------------------------------------------------------------------------------------------- linear families
@dataclass(frozen=True)
class Linear:
    """prediction = intercept + clip((x - mean) / scale, -clip, clip) @ coef, with per-ticker coefficients where
    `by_ticker` has the ticker (the AR family) and `coef` otherwise."""

    inputs: list[str]
    mean: list[float]
    scale: list[float]
    clip: float
    intercept: float
    coef: list[float]
    by_ticker: dict[str, list[float]]

    def predict(self, x: np.ndarray, tickers: Sequence[str]) -> np.ndarray:
        import numpy as np
        z = np.clip((np.asarray(x, dtype=np.float64) - self.mean) / self.scale, -self.clip, self.clip)
        if not self.by_ticker:
            return self.intercept + z @ np.asarray(self.coef)
        names = sorted(set(tickers))
        table = np.asarray([self.by_ticker.get(t, self.coef) for t in names])
        index = {t: i for i, t in enumerate(names)}
        return self.intercept + np.einsum("ij,ij->i", z, table[[index[t] for t in tickers]])


class _LinearFamily(Family):
    def predict(self, model, data, rows):
        return model.predict(data.x[rows], [data.tickers[c] for c in data.codes[rows]])

    def predict_frame(self, model, frame):
        return model.predict(frame.select(model.inputs).to_numpy(), frame["ticker"].to_list())

    def dumps(self, model):
        return json.dumps(model.__dict__)

    def loads(self, text):
        return Linear(**json.loads(text))

    def importance(self, model, names):
        import numpy as np
        weights = np.abs(np.asarray([model.coef, *model.by_ticker.values()])).mean(axis=0)
        return sorted(zip(model.inputs, weights.tolist()), key=lambda kv: -kv[1])


def _ridge_solve(z: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    import numpy as np
    return np.linalg.solve(z.T @ z + penalty * np.eye(z.shape[1]), z.T @ y)


class Ridge(_LinearFamily):
    key, short, title = "ridge", "ridge", "ridge regression (standardised inputs)"
    inputs = property(lambda self: _model_features())
    space = {
        "alpha": ("float", 1e-4, 1e2, True),  # penalty per training row, on standardised inputs
        "clip": ("float", 2.0, 10.0, False),  # standardised inputs beyond +-clip are clipped (outliers)
    }

    def fit(self, params, data, sessions, *, early_stopping_gap=None, threads=1):
        import numpy as np
        rows = data.rows(*sessions)
        x, y = data.x[rows].astype(np.float64), data.target[rows]
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale == 0] = 1.0
        z = np.clip((x - mean) / scale, -params["clip"], params["clip"])
        coef = _ridge_solve(z - z.mean(axis=0), y - y.mean(), params["alpha"] * len(y))
        return Linear(list(data.feature_names), mean.tolist(), scale.tolist(), float(params["clip"]),
                      float(y.mean() - z.mean(axis=0) @ coef), coef.tolist(), {})


class AutoRegression(_LinearFamily):
    key, short, title = "ar", "ar", "per-ticker autoregression (HAR form: 1-, 5-, 20-day returns)"
    inputs = ("ret_1d", "ret_5d", "ret_20d")
    space = {
        "lags": ("int", 1, 3, False),  # how many of the inputs (1: AR(1); 3: the full HAR form)
        "shrinkage": ("float", 1e-2, 1e3, True),  # a ticker's coefficients toward the all-ticker fit
        "history_sessions": ("int", 120, 2520, True),  # the latest sessions of the window used
    }

    def fit(self, params, data, sessions, *, early_stopping_gap=None, threads=1):
        import numpy as np
        first, last = sessions
        rows = data.rows(max(first, last - int(params["history_sessions"]) + 1), last)
        lags = int(params["lags"])
        x, y, codes = data.x[rows, :lags].astype(np.float64), data.target[rows], data.codes[rows]
        # pooled: ordinary least squares with an intercept (a whisker of ridge keeps it solvable)
        centred = x - x.mean(axis=0)
        pooled = _ridge_solve(centred, y - y.mean(), 1e-9 * len(y))
        intercept = float(y.mean() - x.mean(axis=0) @ pooled)
        residual = y - intercept - x @ pooled
        by_ticker = {}
        order = np.argsort(codes, kind="stable")
        for code, idx in zip(*_groups(codes[order]), strict=True):
            xk, rk = x[order[idx]], residual[order[idx]]
            gram = xk.T @ xk
            penalty = params["shrinkage"] * np.trace(gram) / lags
            if penalty > 0:  # a ticker's deviation from the pooled fit, shrunk toward none
                by_ticker[data.tickers[code]] = (pooled + _ridge_solve(xk, rk, penalty)).tolist()
        full = len(self.inputs)  # stored over every input (zeros past `lags`): serving reads the same columns
        pad = [0.0] * (full - lags)
        return Linear(list(self.inputs), [0.0] * full, [1.0] * full, math.inf, intercept, pooled.tolist() + pad,
                      {t: c + pad for t, c in by_ticker.items()})

    def dumps(self, model):
        return json.dumps(model.__dict__ | {"clip": None})  # JSON has no infinity

    def loads(self, text):
        values = json.loads(text)
        return Linear(**values | {"clip": math.inf if values["clip"] is None else values["clip"]})


def _groups(sorted_codes: np.ndarray) -> tuple[list[int], list[np.ndarray]]:
    """The distinct codes of a sorted array and, for each, the positions holding it."""
    import numpy as np
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    bounds = np.r_[starts, len(sorted_codes)]
    return sorted_codes[starts].tolist(), [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


FAMILIES: dict[str, Family] = {f.key: f for f in (LightGBM(), Ridge(), AutoRegression())}


def family_of(model_name: str) -> Family:
    """The family of a registered model name (`<prefix>_<short>`)."""
    for family in FAMILIES.values():
        if model_name.endswith(f"_{family.short}"):
            return family
    raise ValueError(f"model {model_name!r} belongs to no model family ({', '.join(FAMILIES)})")
