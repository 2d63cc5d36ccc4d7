"""Blocking across runs: which partitions a downstream reader must not consume.

Inside one run a failed blocking check stops the downstream steps (Dagster does that). Across runs it is up
to the readers: a later run, a backfill reading a window, or the demo must not consume a partition whose
latest blocking check evaluation failed. `check_status` answers per partition from the Dagster instance.

A single-run backfill evaluates a check once for its whole range: Dagster 1.13 then records one evaluation
without a partition and leaves each partition's record at "planned". `check_status` resolves those through
the evaluation of the run that planned them. It reads the event log storage (`get_asset_check_partition_info`,
`get_records_for_run`): Dagster has no public per-partition check-status API yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import dagster as dg

# The blocking checks, one place for their keys (the check definitions take their names from here).
PRICES_CHECK = dg.AssetCheckKey(dg.AssetKey("prices"), "prices_schema")
FEATURES_CHECK = dg.AssetCheckKey(dg.AssetKey("features"), "features_schema")
PREDICTIONS_CHECK = dg.AssetCheckKey(dg.AssetKey("predictions"), "predictions_complete_and_plausible")
LEAKAGE_CHECK = dg.AssetCheckKey(dg.AssetKey("tuned_model"), "no_leakage")


@dataclass(frozen=True)
class CheckStatus:
    """Partitions of one check by their latest evaluation: `failed` (with ERROR severity: a WARN does not
    block), and `unchecked` (never evaluated, or the latest run that planned it ended without evaluating it)."""

    check: dg.AssetCheckKey
    failed: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    def usable(self, days: Sequence) -> list:
        """`days` (dates) without the partitions that failed."""
        failed = set(self.failed)
        return [d for d in days if d.isoformat() not in failed]

    def describe(self) -> str:
        shown = ", ".join(self.failed[:5]) + (f" and {len(self.failed) - 5} more" if len(self.failed) > 5 else "")
        return (f"{len(self.failed)} partition(s) of `{self.check.asset_key.to_user_string()}` whose latest "
                f"blocking check `{self.check.name}` failed: {shown}")


def check_status(instance: dg.DagsterInstance, check: dg.AssetCheckKey, partition_keys: Sequence[str]) -> CheckStatus:
    """The latest evaluation of `check` for each of `partition_keys`."""
    # private: the status enum of the per-partition records (no public per-partition check-status API, above)
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as Status

    wanted = list(dict.fromkeys(partition_keys))
    if not wanted:
        return CheckStatus(check)
    infos = {i.partition_key: i for i in
             instance.event_log_storage.get_asset_check_partition_info([check], partition_keys=wanted)}
    evaluations: dict[str, object] = {}

    def run_evaluation(run_id: str):
        """The run's evaluation of the check (a range run evaluates it once, without a partition)."""
        if run_id not in evaluations:
            records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
            found = [r.event_log_entry.dagster_event.event_specific_data for r in records]
            found = [e for e in found if e.asset_check_key == check]
            evaluations[run_id] = found[-1] if found else None
        return evaluations[run_id]

    def blocks(evaluation) -> bool:
        """A failed evaluation blocks unless it was only a warning (WARN never blocks, in a run or after it)."""
        return evaluation is None or evaluation.severity != dg.AssetCheckSeverity.WARN

    failed, unchecked = [], []
    for key in wanted:
        info = infos.get(key)
        if info is None:
            unchecked.append(key)
        elif info.latest_execution_status == Status.FAILED:
            if blocks(run_evaluation(info.latest_planned_run_id)):
                failed.append(key)
        elif info.latest_execution_status == Status.PLANNED:
            evaluation = run_evaluation(info.latest_planned_run_id)
            if evaluation is None:
                unchecked.append(key)
            elif not evaluation.passed and blocks(evaluation) and key in failed_partitions(evaluation.metadata, key):
                failed.append(key)
    return CheckStatus(check, failed=sorted(failed), unchecked=sorted(unchecked))


FAILED_PARTITIONS = "failed_partitions"  # metadata of a range evaluation: the partitions whose rows failed


def failed_partitions(metadata, key: str) -> list[str]:
    """The partitions a failed evaluation names (our checks list them); all of them when it names none."""
    named = metadata.get(FAILED_PARTITIONS)
    return list(named.value) if named is not None else [key]


def refuse_failed(instance: dg.DagsterInstance, check: dg.AssetCheckKey, partition_keys: Sequence[str],
                  reader: str) -> None:
    """Raise a clear `dg.Failure` when any of `partition_keys` failed `check` in its latest evaluation."""
    status = check_status(instance, check, partition_keys)
    if status.failed:
        asset = check.asset_key.to_user_string()
        raise dg.Failure(f"`{reader}` refuses {status.describe()}. Fix the data and re-materialize `{asset}` "
                         "for them (its check runs with it), or re-run the check if the data is already fixed.",
                         metadata={"refused_partitions": dg.MetadataValue.json(status.failed)})
