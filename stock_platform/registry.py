"""The model registry: MLflow (runs, one registered model per model family, the `champion` alias) and the serving
copy of every registered version in the lake table `model_versions` (the model's text in `booster`: LightGBM's
model string, JSON for the linear families; training end, promoted flag, the gate's words).

`predictions` reads the serving copy, not MLflow, so a landing run needs neither the MLflow import nor a
registry round trip (~3 s). MLflow stays the record of runs, trials and the `champion` alias;
`register_version` and `set_promoted` write both, in that order.
"""

from __future__ import annotations

import datetime as dt

from typing import TYPE_CHECKING

import dagster as dg

from stock_platform.lib.tables import MODELS_KEYS, MODELS_TABLE
from stock_platform.resources.lake import LakeResource
from stock_platform.resources.tracking import TrackingResource

if TYPE_CHECKING:
    from stock_platform.lib.families import Family


def register_version(lake: LakeResource, tracking: TrackingResource, family: Family, model, example, *,
                     params: dict, train_end: dt.date, promoted: bool, gate: str) -> tuple[str, int]:
    """Log and register a family's fitted `model` (fitted with `params`) in MLflow (inside an open MLflow run), tag
    it, move `champion` if promoted, and publish its serving copy to `model_versions`; return (model name,
    version)."""
    import json

    name = tracking.model_name(family)
    version = tracking.log_model(family, model, example)
    # predictions pick, for each day d, the newest promoted version trained on data before d; the gate refits
    # a version with its `params`
    tracking.tag_version(name, version, {"train_end": str(train_end), "promoted": str(promoted).lower(),
                                         "gate": gate, "family": family.key, "params": json.dumps(params)})
    if promoted:
        tracking.promote(name, version)
    registered = tracking.client().get_model_version(name, version).creation_timestamp
    _publish(lake, name, int(version), booster=family.dumps(model), train_end=train_end, promoted=promoted,
             gate=gate, registered_at=dt.datetime.fromtimestamp(registered / 1000, dt.UTC))
    return name, int(version)


def _models_schema() -> dict:
    import polars as pl

    return {"model_name": pl.String, "version": pl.Int32, "train_end": pl.Date, "promoted": pl.Boolean,
            "gate": pl.String, "registered_at": pl.Datetime("us", "UTC"), "booster": pl.String,
            "updated_at": pl.Datetime("us", "UTC"), "_is_deleted": pl.Boolean}


def _publish(lake: LakeResource, model_name: str, version: int, **values) -> None:
    import polars as pl

    schema = _models_schema()
    lake.ensure_table(MODELS_TABLE, schema, description="serving copies of registered model versions")
    row = {"model_name": model_name, "version": version, "updated_at": dt.datetime.now(dt.UTC), "_is_deleted": False}
    lake.upsert(MODELS_TABLE, pl.DataFrame([row | values], schema=schema), keys=MODELS_KEYS, order_by="updated_at")


def served_versions(lake: LakeResource):
    """Every registered version's serving row (model_name, version, train_end, promoted, gate, registered_at,
    booster), by model and version; an empty frame before the first registration."""
    import polars as pl

    if not lake.exists(MODELS_TABLE):
        return pl.DataFrame(schema=_models_schema()).drop("updated_at", "_is_deleted")
    return lake.snapshot(MODELS_TABLE).drop("updated_at").sort("model_name", "version")


def promoted_versions(served) -> list[tuple[str, int, dt.date, dt.datetime]]:
    """(model name, version, last day of its training data, registration) of every version the gate promoted
    and nobody demoted, from `served_versions` rows, oldest training end first."""
    rows = served.filter("promoted").sort("train_end", "registered_at")
    return list(rows.select("model_name", "version", "train_end", "registered_at").iter_rows())


def newest_promoted(served) -> tuple[str, int] | None:
    """The promoted version with the latest training end (of two, the one registered later): the champion."""
    rows = promoted_versions(served)
    return tuple(rows[-1][:2]) if rows else None


def set_promoted(lake: LakeResource, tracking: TrackingResource, model_name: str, version: int, promoted: bool,
                 gate: str | None = None) -> tuple[str, int] | None:
    """Promote or demote `version` of `model_name`, in MLflow (tag) and in the serving copy, with the gate's
    words (default: an operator's decision, overruling the gate); `champion` moves to the newest promoted version
    of any family (returned; None: no champion left, the naive random walk serves)."""
    import polars as pl

    row = served_versions(lake).filter((pl.col("model_name") == model_name) & (pl.col("version") == version))
    if row.is_empty():
        raise ValueError(f"model {model_name} has no registered version {version}")
    gate = gate or f"{'promoted' if promoted else 'demoted'} by an operator {dt.datetime.now(dt.UTC):%F %T} UTC"
    tracking.tag_version(model_name, str(version), {"promoted": str(promoted).lower(), "gate": gate})
    _publish(lake, model_name, version, **{k: v for k, v in row.row(0, named=True).items()
                                           if k not in MODELS_KEYS} | {"promoted": promoted, "gate": gate})
    champion = newest_promoted(served_versions(lake))
    if champion is None:
        tracking.remove_champion()
    else:
        tracking.promote(champion[0], str(champion[1]))
    return champion


def load_model(served, model_name: str, version: int):
    """(family, fitted model) of a registered version, from its serving copy (`served_versions` rows)."""
    import polars as pl

    from stock_platform.lib.families import family_of

    text = served.filter((pl.col("model_name") == model_name) & (pl.col("version") == version))["booster"]
    if text.is_empty():
        raise dg.Failure(f"model {model_name} v{version} has no serving copy in the lake table {MODELS_TABLE}")
    family = family_of(model_name)
    return family, family.loads(text[0])
