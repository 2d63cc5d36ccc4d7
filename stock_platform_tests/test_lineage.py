"""OpenLineage (stock_platform/lineage.py): a real daily run's asset steps reach a local HTTP receiver (standing in
for Marquez) through the openlineage-python client, with inputs and outputs as in the Dagster graph and the schema,
column-lineage and data-quality facets; a failed step is a FAIL event; the file transport writes the same events."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import dagster as dg
import pytest

from stock_platform.assets.ml import features
from stock_platform.lineage import NAMESPACE, LineageResource, openlineage_sensor
from stock_platform.resources.lake import LakeResource
from stock_platform_tests.helpers import daily_definitions, failure_message, run_range


@pytest.fixture
def marquez(http_receiver):
    """Marquez's stand-in: OpenLineage events arrive by POST /api/v1/lineage (and nowhere else)."""
    base, events, paths = http_receiver
    yield base, events
    assert set(paths) <= {"/api/v1/lineage"}


def tick(defs, instance, cursor, lineage):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"lineage": lineage},
                                      definitions=defs)
    openlineage_sensor(context)
    return context.cursor


def spec_valid(event: dict) -> None:
    """The OpenLineage RunEvent's required structure (spec 2-0-2): the client builds events from classes generated
    from the spec's JSON schema; its JSON schema files are not shipped with it, so the required fields are checked
    here."""
    assert event["eventType"] in ("START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER")
    datetime.fromisoformat(event["eventTime"])
    assert event["producer"].startswith("https://") and event["schemaURL"].startswith("https://openlineage.io/spec/")
    uuid.UUID(event["run"]["runId"])
    assert event["job"]["namespace"] and event["job"]["name"]
    for dataset in event.get("inputs", []) + event.get("outputs", []):
        assert dataset["namespace"] and dataset["name"]
        for facet in dataset.get("facets", {}).values():
            assert facet["_producer"] and facet["_schemaURL"].startswith("https://openlineage.io/spec/facets/")


def test_a_daily_run_arrives_as_openlineage_events_with_the_graphs_inputs_and_outputs(
        demo_source, lake, universe, instance, tmp_path, marquez):
    url, events = marquez
    defs = daily_definitions(demo_source, lake, universe, tmp_path)
    lineage = LineageResource(url=url, lake_uri=lake.uri)
    cursor = tick(defs, instance, None, lineage)  # starts from now
    result = run_range(defs, instance, "2024-01-02", "2024-01-31")
    assert result.success, failure_message(result)
    cursor = tick(defs, instance, cursor, lineage)
    assert tick(defs, instance, cursor, lineage) == cursor and len(events) == 6  # once: nothing new the 2nd time

    for event in events:
        spec_valid(event)
        assert event["job"]["namespace"] == NAMESPACE
        assert event["run"]["facets"]["parent"]["run"]["runId"] == result.run_id
    by_asset = {}
    for event in events:
        by_asset.setdefault(event["job"]["name"], []).append(event)
    assert set(by_asset) == {"prices", "price_snapshots", "features"}
    graph = defs.resolve_asset_graph()
    for asset, pair in by_asset.items():
        assert [e["eventType"] for e in pair] == ["START", "COMPLETE"]
        inputs = sorted(d["name"] for d in pair[1]["inputs"])
        assert inputs == sorted(k.to_user_string() for k in graph.get(dg.AssetKey(asset)).parent_keys)
        [output] = pair[1]["outputs"]
        assert output == output | {"namespace": lake.uri, "name": asset}
        stored = lake.read(asset) if asset != "price_snapshots" else lake.snapshot(asset, include_deleted=True)
        assert [f["name"] for f in output["facets"]["schema"]["fields"]] == stored.columns
    features_out = by_asset["features"][1]["outputs"][0]["facets"]
    rsi = features_out["columnLineage"]["fields"]["rsi_14"]["inputFields"]
    assert {(f["name"], f["field"]) for f in rsi} == {("price_snapshots", c) for c in ("close", "dividends", "splits")}
    [assertion] = features_out["dataQualityAssertions"]["assertions"]
    assert assertion | {"params": {}} == {"assertion": "features_schema", "success": True, "severity": "error",
                                          "params": {}}


def test_a_failed_step_is_a_fail_event_and_the_file_transport_writes_the_same(instance, tmp_path, marquez):
    url, events = marquez
    defs = dg.Definitions(assets=[features], resources={"lake": LakeResource(uri=str(tmp_path / "empty"))})
    lineage = LineageResource(url=url, lake_uri=str(tmp_path / "empty"))
    cursor = tick(defs, instance, None, lineage)
    failed = dg.materialize([features], partition_key="2024-03-01", resources={"lake": LakeResource(
        uri=str(tmp_path / "empty"))}, instance=instance, raise_on_error=False)
    assert not failed.success
    tick(defs, instance, cursor, lineage)
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    fail = events[1]
    assert "no price snapshots" in fail["run"]["facets"]["errorMessage"]["message"] and fail["outputs"] == []
    # the file transport: the same events, one JSON per line
    file = tmp_path / "lineage.jsonl"
    tick(defs, instance, cursor, LineageResource(file=str(file), lake_uri=str(tmp_path / "empty")))
    written = [json.loads(line) for line in file.read_text().splitlines()]
    assert [(e["eventType"], e["run"]["runId"]) for e in written] == [(e["eventType"], e["run"]["runId"])
                                                                      for e in events]
