"""Small helpers for tests that run jobs through a real Dagster instance."""

from __future__ import annotations

import dagster as dg


def run_range(defs: dg.Definitions, instance: dg.DagsterInstance, start: str, end: str, job: str = "daily_assets"):
    """Execute `job` for the partition range [start, end] as one run (a single-run backfill)."""
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, raise_on_error=False,
        tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end},
    )


def failure_message(result) -> str:
    return "\n".join(e.event_specific_data.error.message for e in result.all_events
                     if e.event_type_value == "STEP_FAILURE")


def materialization_metadata(result, asset: str) -> dict:
    """Metadata values of the asset's (first) materialization in a run."""
    [event, *_] = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in event.metadata.items()}
