"""What the Dagster UI shows about the tables: column schemas from the contracts and column lineage (which price
columns each indicator uses), both on the asset definitions and checked against the tables a real run stored; owners
and code references."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import polars as pl
import pytest

from stock_platform.definitions import OWNERS, defs
from stock_platform.lib.evaluation import evaluate
from stock_platform.lib.contracts import EVALUATION, FEATURES, PREDICTIONS, PRICES, SNAPSHOTS, polars_schema
from stock_platform.lib.prices import PRICES_SCHEMA
from stock_platform.lib.tables import FEATURES_TABLE, PRICES_TABLE, SNAPSHOT_TABLE, predictions_schema
from stock_platform_tests.helpers import daily_definitions, failure_message, run_range


def stored(instance: dg.DagsterInstance, asset: str) -> dict:
    """The metadata of the asset's latest materialization, as the UI reads it from the instance."""
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def declared(asset: str, key: str = "dagster/column_lineage"):
    """The column lineage (or schema) the asset's definition declares, as the UI reads it from the code location."""
    return defs.resolve_asset_graph().get(dg.AssetKey(asset)).metadata[key]


def declared_schema(asset: str) -> dg.TableSchema:
    return declared(asset, "dagster/column_schema")


def deps(lineage: dg.TableColumnLineage, column: str) -> set[tuple[str, str]]:
    return {(d.asset_key.to_user_string(), d.column_name) for d in lineage.deps_by_column[column]}


def test_the_daily_tables_carry_their_column_schema_and_lineage(demo_source, lake, universe, instance, tmp_path):
    daily = daily_definitions(demo_source, lake, universe, tmp_path)
    result = run_range(daily, instance, "2024-01-02", "2024-01-31")
    assert result.success, failure_message(result)

    for asset, table in (("prices", PRICES_TABLE), ("price_snapshots", SNAPSHOT_TABLE), ("features", FEATURES_TABLE)):
        schema = declared_schema(asset)
        frame = lake.read(table) if asset != "price_snapshots" else lake.snapshot(table, include_deleted=True)
        # every stored column, in order, with its type
        assert [c.name for c in schema.columns] == frame.columns, asset
        assert {c.name: c.type for c in schema.columns} == {k: str(v) for k, v in frame.schema.items()}, asset

    columns = {c.name: c for c in declared_schema("prices").columns}
    assert "malformed ticker" in columns["ticker"].constraints.other[0]
    assert columns["close"].constraints.other == ["price must be > 0 (min_value=0)", "must be finite"]
    assert not columns["close"].constraints.nullable and "shares traded" in columns["volume"].description
    table = declared_schema("prices").constraints.other
    assert table[0] == "unique (ticker, date)" and "low_le_open_close: fails when low > min(open, close)" in table
    feature_cols = {c.name: c for c in declared_schema("features").columns}
    assert feature_cols["rsi_14"].constraints.nullable  # null during its warm-up
    assert any("min_value=0, max_value=100" in o for o in feature_cols["rsi_14"].constraints.other)

    # schema and lineage are the definition's: a materialization (one per partition of a backfill) repeats neither
    assert not any({"dagster/column_lineage", "dagster/column_schema"} & set(stored(instance, a))
                   for a in ("prices", "price_snapshots", "features"))
    lineage = declared("features")
    closes = {("price_snapshots", c) for c in ("close", "dividends", "splits")}
    assert deps(lineage, "rsi_14") == closes  # the adjusted close only
    assert deps(lineage, "atr_14") == closes | {("price_snapshots", c) for c in ("open", "high", "low")}
    assert deps(lineage, "volume_z_20") == {("price_snapshots", "volume"), ("price_snapshots", "splits")}
    assert set(lineage.deps_by_column) == set(lake.read(FEATURES_TABLE).columns)
    snapshots = declared("price_snapshots")
    assert deps(snapshots, "close") == {("prices", "close")}
    # every stored column but the soft-delete flag comes from the same column of prices (all of them described)
    assert set(snapshots.deps_by_column) == set(PRICES.columns) == set(PRICES_SCHEMA)
    assert all(c.description for c in declared_schema("price_snapshots").columns)
    assert set(snapshots.deps_by_column) == set(lake.snapshot(SNAPSHOT_TABLE).columns) - {"_is_deleted"}


def test_the_forecast_tables_describe_every_column_they_store():
    assert [c.name for c in declared_schema("predictions").columns] == list(predictions_schema())
    assert set(declared("predictions").deps_by_column) <= set(predictions_schema())
    assert deps(declared("predictions"), "pred_close") >= {("price_snapshots", "close"), ("features", "rsi_14")}
    day, nxt = dt.date(2024, 1, 2), dt.date(2024, 1, 3)
    preds = pl.DataFrame({"ticker": ["A"], "date": [day], "target_date": [nxt], "pred_return": [0.01],
                          "pred_close": [10.1], "model_name": ["m"], "model_version": [1]})
    closes = pl.DataFrame({"ticker": ["A", "A"], "date": [day, nxt], "close": [10.0, 10.2], "dividends": [0.0, 0.0],
                           "splits": [0.0, 0.0]})
    table = evaluate(preds, closes)
    assert {c.name: c.type for c in declared_schema("prediction_evaluation").columns} == {
        k: str(v) for k, v in table.schema.items()}
    assert table.schema == pl.Schema(polars_schema(EVALUATION))
    assert set(declared("prediction_evaluation").deps_by_column) == set(table.columns)


@pytest.mark.parametrize("key", [k for k in defs.resolve_asset_graph().get_all_asset_keys()])
def test_every_asset_has_an_owner_and_a_code_reference(key):
    node = defs.resolve_asset_graph().get(key)
    assert node.owners == [OWNERS[node.group_name]]
    [reference] = node.metadata["dagster/code_references"].code_references
    assert reference.file_path.endswith(".py") and reference.line_number > 0


@pytest.mark.parametrize("contract", [PRICES, SNAPSHOTS, FEATURES, PREDICTIONS, EVALUATION], ids=lambda c: c.name)
def test_each_contract_names_polars_types_and_is_what_its_asset_declares(contract):
    # a type's name is polars' own (the UI shows what the frames hold), and the definition shows the contract
    assert {name: str(dtype) for name, dtype in polars_schema(contract).items()} == {
        name: c.dtype for name, c in contract.columns.items()}
    schema = declared_schema(contract.name)
    assert [(c.name, c.type, c.constraints.nullable) for c in schema.columns] == [
        (name, c.dtype, c.nullable) for name, c in contract.columns.items()]
    assert schema.constraints.other[0] == f"unique ({', '.join(contract.key)})"
