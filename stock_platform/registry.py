"""The model registry: MLflow (runs, registered versions, the `champion` alias) and the serving copy of every
registered version in the lake table `model_versions` (booster text, training end, promoted flag).

`predictions` reads the serving copy, not MLflow, so a landing run needs neither the MLflow import nor a
registry round trip (~3 s). MLflow stays the record of runs, trials and the `champion` alias;
`register_version` and `set_promoted` write both, in that order.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from stock_platform.lib.tables import MODELS_KEYS, MODELS_TABLE
from stock_platform.resources.lake import LakeResource
from stock_platform.resources.tracking import TrackingResource


def register_version(lake: LakeResource, tracking: TrackingResource, booster, example, *, train_end: dt.date,
                     promoted: bool, gate: str) -> str:
    """Log and register `booster` in MLflow (inside an open `tracking.run`), tag it, move `champion` if promoted,
    and publish its serving copy to `model_versions`; return the version."""
    version = tracking.log_model(booster, example)
    # predictions pick, for each day d, the newest promoted version trained on data before d
    tracking.tag_version(version, {"train_end": str(train_end), "promoted": str(promoted).lower(), "gate": gate})
    if promoted:
        tracking.promote(version)
    registered = tracking.client().get_model_version(tracking.model_name, version).creation_timestamp
    _publish(lake, tracking.model_name, int(version), booster=booster.model_to_string(), train_end=train_end,
             promoted=promoted, gate=gate, registered_at=dt.datetime.fromtimestamp(registered / 1000, dt.UTC))
    return version


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


def served_versions(lake: LakeResource, model_name: str):
    """Every registered version's serving row (model_name, version, train_end, promoted, gate, registered_at,
    booster), oldest first; an empty frame before the first registration."""
    import polars as pl

    if not lake.exists(MODELS_TABLE):
        return pl.DataFrame(schema=_models_schema()).drop("updated_at", "_is_deleted")
    return (lake.snapshot(MODELS_TABLE).filter(pl.col("model_name") == model_name)
            .drop("updated_at").sort("version"))


def promoted_versions(served) -> list[tuple[int, dt.date]]:
    """(version, last day of its training data) of every version the gate promoted and nobody demoted, from
    `served_versions` rows."""
    rows = served.filter("promoted")
    return list(zip(rows["version"].to_list(), rows["train_end"].to_list(), strict=True))


def set_promoted(lake: LakeResource, tracking: TrackingResource, version: int, promoted: bool) -> int | None:
    """An operator's decision over the gate's: demote (roll back) or promote `version`, in MLflow (tag) and in
    the serving copy; `champion` moves to the newest promoted version (returned; None: no champion left)."""
    import polars as pl

    rows = served_versions(lake, tracking.model_name)
    row = rows.filter(pl.col("version") == version)
    if row.is_empty():
        raise ValueError(f"model {tracking.model_name} has no registered version {version}")
    gate = f"{'promoted' if promoted else 'demoted'} by an operator {dt.datetime.now(dt.UTC):%F %T} UTC"
    tracking.tag_version(str(version), {"promoted": str(promoted).lower(), "gate": gate})
    _publish(lake, tracking.model_name, version, **{k: v for k, v in row.row(0, named=True).items()
                                                     if k not in MODELS_KEYS} | {"promoted": promoted, "gate": gate})
    left = [v for v, _ in promoted_versions(served_versions(lake, tracking.model_name))]
    if not left:
        tracking.remove_champion()
        return None
    tracking.promote(str(left[-1]))
    return left[-1]


def load_booster(served, version: int):
    """The LightGBM booster of a registered version, from its serving copy (`served_versions` rows)."""
    import lightgbm as lgb
    import polars as pl

    text = served.filter(pl.col("version") == version)["booster"]
    if text.is_empty():
        raise dg.Failure(f"model version {version} has no serving copy in the lake table {MODELS_TABLE}")
    return lgb.Booster(model_str=text[0])
