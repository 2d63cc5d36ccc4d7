"""OpenLineage: the platform's runs, asset materializations and check evaluations as OpenLineage events.

The `openlineage` sensor walks the Dagster runs that finished since its cursor (as the alerts sensor does) and
emits, for each asset step of each run, a START and a COMPLETE (or FAIL) RunEvent of the job `<asset key>` in the
namespace `stock_platform`, through the `openlineage-python` client: HTTP to `OPENLINEAGE_URL` (Marquez:
`docker compose --profile lineage`), or a file (`OPENLINEAGE_FILE`, one JSON event per line) for local use.

- inputs and outputs are the asset's lake tables as in the Dagster graph: the output is the asset's own table,
  the inputs its upstream assets' (namespace: the lake's URI; name: the table);
- the output carries the schema facet from the materialization's `dagster/column_schema`, the column-lineage facet
  from the asset definition's `dagster/column_lineage`, and the data-quality-assertions facet from the run's check
  evaluations (one assertion per check, passed or not);
- the run facets name the parent Dagster run (`parent`: job = the Dagster job, run id = the Dagster run id) and,
  on FAIL, the error.

Each event's run id is derived from the Dagster run and the asset (uuid5), so re-emitting a run gives the same ids.
The cursor moves past a run only once all its events were emitted: an unreachable backend delays, never loses.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING

import dagster as dg

from stock_platform.alerts import RunFeed

if TYPE_CHECKING:
    from openlineage.client.event_v2 import RunEvent

NAMESPACE = "stock_platform"
PRODUCER = "https://github.com/stock-platform/stock_platform"


class LineageResource(dg.ConfigurableResource):
    """Where OpenLineage events go: `url` (HTTP transport) or `file` (one JSON event per line); neither: nowhere."""

    url: str | None = None
    file: str | None = None
    lake_uri: str = ""  # the datasets' namespace

    @property
    def enabled(self) -> bool:
        return bool(self.url or self.file)

    def client(self):
        from openlineage.client import OpenLineageClient
        from openlineage.client.transport.file import FileConfig, FileTransport
        from openlineage.client.transport.http import HttpConfig, HttpTransport

        if self.url:
            return OpenLineageClient(transport=HttpTransport(HttpConfig(url=self.url, timeout=10.0,
                                                                        retry={"total": 0})))
        return OpenLineageClient(transport=FileTransport(FileConfig(log_file_path=self.file, append=True)))


def _time(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat()


def _dataset_facets(metadata: dict, checks: list) -> dict:
    from openlineage.client.facet_v2 import column_lineage_dataset as cl
    from openlineage.client.facet_v2 import data_quality_assertions_dataset as dq
    from openlineage.client.facet_v2 import schema_dataset

    facets = {}
    schema = metadata.get("dagster/column_schema")
    if schema is not None:
        facets["schema"] = schema_dataset.SchemaDatasetFacet(fields=[
            schema_dataset.SchemaDatasetFacetFields(name=c.name, type=c.type, description=c.description)
            for c in schema.columns])
    lineage = metadata.get("dagster/column_lineage")
    if lineage is not None:
        facets["columnLineage"] = cl.ColumnLineageDatasetFacet(fields={
            column: cl.Fields(inputFields=[cl.InputField(namespace=NAMESPACE, name=d.asset_key.to_user_string(),
                                                         field=d.column_name) for d in deps])
            for column, deps in lineage.deps_by_column.items()})
    if checks:
        facets["dataQualityAssertions"] = dq.DataQualityAssertionsDatasetFacet(assertions=[
            dq.Assertion(assertion=e.check_name, success=e.passed, severity=e.severity.value.lower()) for e in checks])
    return facets


def run_events(instance: dg.DagsterInstance, run: dg.DagsterRun, graph, lineage: LineageResource) -> list[RunEvent]:
    """The OpenLineage events of one finished Dagster run: START and COMPLETE/FAIL per asset step."""
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import error_message_run, job_type_job, parent_run

    logs = instance.all_logs(run.run_id)
    started = {e.step_key: e.timestamp for e in logs if e.dagster_event and e.dagster_event.is_step_start}
    failed = {e.step_key: e for e in logs if e.dagster_event and e.dagster_event.is_step_failure}
    materialized: dict[str, tuple[float, dict, str]] = {}
    checks: dict[str, list] = {}
    for entry in logs:
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            m = event.step_materialization_data.materialization
            metadata = {k: v.value for k, v in m.metadata.items()}
            materialized[m.asset_key.to_user_string()] = (entry.timestamp, metadata, entry.step_key)
        elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            checks.setdefault(evaluation.asset_key.to_user_string(), []).append(evaluation)
    # the assets whose step failed before materializing them (op name = asset name here)
    unfinished = {step for step in failed if graph.has(dg.AssetKey(step)) and step not in materialized}
    for step in unfinished:
        materialized[step] = (failed[step].timestamp, {}, step)

    def dataset(key: str) -> dict:  # a table asset's table is named like the asset
        return {"namespace": lineage.lake_uri or NAMESPACE, "name": key}

    parent = parent_run.ParentRunFacet(run=parent_run.Run(runId=run.run_id),
                                       job=parent_run.Job(namespace=NAMESPACE, name=run.job_name))
    out = []
    for asset, (at, metadata, step) in sorted(materialized.items()):
        node = graph.get(dg.AssetKey(asset))
        # what the definition declares (the column lineage), then what the run recorded (the column schema)
        metadata = {k: getattr(v, "value", v) for k, v in node.metadata.items()} | metadata
        run_id = str(uuid.uuid5(uuid.UUID(run.run_id), asset))
        job = Job(namespace=NAMESPACE, name=asset, facets={"jobType": job_type_job.JobTypeJobFacet(
            processingType="BATCH", integration="DAGSTER", jobType="ASSET")})
        inputs = [InputDataset(**dataset(p.to_user_string()))
                  for p in sorted(node.parent_keys, key=lambda k: k.to_user_string())]
        start = started.get(step, at)
        out.append(RunEvent(eventType=RunState.START, eventTime=_time(start), producer=PRODUCER, job=job,
                            run=Run(runId=run_id, facets={"parent": parent}), inputs=inputs))
        facets = {"parent": parent}
        state = RunState.COMPLETE
        if asset in unfinished:
            state = RunState.FAIL
            error = failed[step].dagster_event.step_failure_data.error
            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=(error.message or "").strip()[:2000], programmingLanguage="python")
        output = OutputDataset(**dataset(asset), facets=_dataset_facets(metadata, checks.get(asset, [])))
        out.append(RunEvent(eventType=state, eventTime=_time(at), producer=PRODUCER, job=job,
                            run=Run(runId=run_id, facets=facets), inputs=inputs,
                            outputs=[output] if state == RunState.COMPLETE else []))
    return out


@dg.sensor(name="openlineage", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Emits every finished run's asset steps as OpenLineage events (inputs/outputs as in the asset "
           "graph, schema, column-lineage and data-quality facets) to OPENLINEAGE_URL or OPENLINEAGE_FILE.")
def openlineage_sensor(context: dg.SensorEvaluationContext, lineage: LineageResource):
    if not lineage.enabled:
        return dg.SkipReason("OPENLINEAGE_URL / OPENLINEAGE_FILE unset: no lineage to emit")
    feed = RunFeed(context)
    if feed.start():
        return dg.SkipReason("lineage starts from now")
    records = feed.runs(limit=100)
    client = lineage.client()
    graph = context.repository_def.asset_graph
    emitted = 0
    for record in records:
        events = run_events(context.instance, record.dagster_run, graph, lineage)
        try:
            for event in events:
                client.emit(event)
        except Exception as exc:  # noqa: BLE001 - any transport error: retry the whole run next tick (same run ids)
            context.log.warning(f"OpenLineage events of run {record.dagster_run.run_id} not emitted: {exc}")
            return dg.SkipReason(f"backend unreachable: {exc}")
        emitted += len(events)
        feed.done(record)
    return None if emitted else dg.SkipReason(f"{len(records)} finished run(s), no asset steps")
