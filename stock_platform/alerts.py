"""Alerts and freshness: a failed run, a failed blocking check or a missed freshness deadline is posted once to a
webhook (Slack-compatible JSON: `STOCK_PLATFORM_ALERT_WEBHOOK`), with the asset, the partition, the reason and a
link to the run in the Dagster UI (`STOCK_PLATFORM_DAGSTER_URL`).

Freshness: the daily assets have a partition-aware freshness check each (the day's partition materialized by 18:30
New York on trading days: `build_time_partition_freshness_checks`, which knows the NYSE holidays from the
partitions), evaluated by `freshness_checks_sensor`; `tuned_model` has one for its finished week by Monday noon.
Freshness policies (the UI's freshness status) say the same without partitions: daily assets updated for 18:30 on
weekdays, the models within two weeks. A check that fails is a WARN: it tells, it does not block.

`alerts` is one sensor over the instance's event log: after its cursor (the last event it handled), every
RUN_FAILURE and every failed check evaluation (ERROR severity: a blocking check; or a freshness check) becomes one
alert. The cursor moves past an event only once its alert was posted, so an unreachable webhook delays alerts
(retried next tick), never loses them, and no event is posted twice.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass

import dagster as dg

from stock_platform.lib.calendar import EXCHANGE_TIMEZONE

DAILY_DEADLINE = "30 18 * * 1-5"  # the day's partition is due 18:30 New York (the close schedule runs at 18:00)
MODEL_MAX_AGE = dt.timedelta(days=14)  # the gate (and so the champion) must be re-decided within two weeks
FRESHNESS_CHECK = "freshness_check"  # the name Dagster gives the checks it builds
FRESHNESS_ASSETS = ("prices", "price_snapshots", "features", "predictions", "tuned_model")  # with a freshness check


class _FreshnessChecks(dg.AssetSelection):
    """Every freshness check the graph has (none where a graph has none, as in a test's own Definitions).

    Private API: a subclass of AssetSelection. `AssetSelection.checks(...)` raises when a named check is absent from
    the graph, and no public selection picks checks by name."""

    def resolve_inner(self, asset_graph, allow_missing):
        return set()

    def resolve_checks_inner(self, asset_graph, allow_missing):
        return {key for key in asset_graph.asset_check_keys if key.name == FRESHNESS_CHECK}

    def to_serializable_asset_selection(self, asset_graph):
        return dg.AssetSelection.checks(*self.resolve_checks_inner(asset_graph, True))


def without_freshness(selection: dg.AssetSelection) -> dg.AssetSelection:
    """`selection` without the freshness checks of its assets: they run from `freshness_checks_sensor`, never inside
    the jobs that materialize the assets (a backfill of old days would find today's partition late)."""
    return selection - _FreshnessChecks()


class AlertResource(dg.ConfigurableResource):
    """Posts alerts to `webhook_url` (None: alerts are only logged); links point at `dagster_url`."""

    webhook_url: str | None = None
    dagster_url: str = "http://localhost:3000"
    timeout_seconds: float = 10.0

    def run_link(self, run_id: str) -> str:
        return f"{self.dagster_url.rstrip('/')}/runs/{run_id}"

    def post(self, alert: Alert) -> None:
        """POST the alert as Slack's incoming-webhook JSON (`text` plus a markdown section); raises on failure."""
        import urllib.request

        if not self.webhook_url:
            return
        body = {"text": alert.text(self), "blocks": [{"type": "section", "text": {"type": "mrkdwn",
                                                                                  "text": alert.text(self)}}]}
        request = urllib.request.Request(self.webhook_url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:  # noqa: S310 - http(s) only
            response.read()


@dataclass(frozen=True)
class Alert:
    kind: str  # "run failed", "check failed", "freshness"
    assets: tuple[str, ...]
    partition: str | None
    reason: str
    run_id: str

    def text(self, alerts: AlertResource) -> str:
        where = ", ".join(self.assets) or "(no asset)"
        part = f" partition {self.partition}" if self.partition else ""
        return (f":rotating_light: stock_platform {self.kind}: {where}{part}\n{self.reason}\n"
                f"run: <{alerts.run_link(self.run_id)}|{self.run_id[:8]}>")


def _partition(run: dg.DagsterRun) -> str | None:
    tags = run.tags
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    first, last = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    return f"{first}..{last}" if first else None


def run_alerts(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[Alert]:
    """The alerts of one finished run: each failed check evaluation that matters (a blocking ERROR check, or a
    freshness check), and the run's failure unless blocking checks alone failed it (their alerts say it: one
    alert per incident)."""
    out = []
    for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.dagster_event.event_specific_data
        freshness = evaluation.check_name == FRESHNESS_CHECK
        if evaluation.passed or not (freshness or evaluation.severity == dg.AssetCheckSeverity.ERROR):
            continue
        metadata = {k: v.value for k, v in evaluation.metadata.items()}
        if freshness:
            reason = "not fresh: the expected partition was not materialized by its deadline " + ", ".join(
                f"{k.removeprefix('dagster/')}={v}" for k, v in metadata.items() if "timestamp" not in k)[:300]
        else:
            shown = {k: v for k, v in metadata.items() if k in ("failed_rows", "failed_partitions", "missing",
                                                                "implausible", "suspects", "dq_score")}
            reason = f"blocking check `{evaluation.check_name}` failed: {json.dumps(shown, default=str)[:400]}"
        out.append(Alert("freshness" if freshness else "check failed", (evaluation.asset_key.to_user_string(),),
                         _partition(run), reason, run.run_id))
    if run.status == dg.DagsterRunStatus.FAILURE:
        failures = [e.dagster_event for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)]
        if not (failures and all(f.step_failure_data.error.cls_name == "DagsterAssetCheckFailedError"
                                 for f in failures)):
            if failures:
                error = failures[0].step_failure_data.error
                last = (error.message.strip().splitlines() or ["?"])[-1]
                reason = f"step {failures[0].step_key} failed: " + re.sub(r"^[\w.]+(Error|Failure|Exception): ", "",
                                                                           last)
            else:
                reason = "the run failed before any step did (see the run's logs)"
            assets = (tuple(sorted(k.to_user_string() for k in (run.asset_selection or [])))
                      or tuple(f.step_key for f in failures) or (run.job_name,))
            out.append(Alert("run failed", assets, _partition(run), reason[:500], run.run_id))
    return out


FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


class RunFeed:
    """The runs that finished since a sensor's cursor, oldest first, from run storage (any instance storage, SQLite's
    per-run event shards included): what the alerts and OpenLineage sensors walk. The cursor, {after: update time,
    seen: the runs handled at that time}, starts at the newest finished run (not the instance's history) and moves
    past a run only when the sensor says it is done with it."""

    def __init__(self, context: dg.SensorEvaluationContext):
        self.context = context
        self.cursor = json.loads(context.cursor) if context.cursor else None

    def start(self) -> bool:
        """On a sensor's first tick, set the cursor at the newest finished run and say so (True)."""
        if self.cursor is not None:
            return False
        latest = list(self.context.instance.get_run_records(dg.RunsFilter(statuses=FINISHED), limit=1,
                                                            order_by="update_timestamp"))
        self.cursor = {"after": latest[0].update_timestamp.timestamp() if latest else 0.0,
                       "seen": [r.dagster_run.run_id for r in latest]}
        self.context.update_cursor(json.dumps(self.cursor))
        return True

    def runs(self, limit: int = 200) -> list:
        since = dt.datetime.fromtimestamp(self.cursor["after"] - 0.001, dt.UTC)
        return [r for r in self.context.instance.get_run_records(
                    dg.RunsFilter(statuses=FINISHED, updated_after=since), limit=limit, order_by="update_timestamp",
                    ascending=True)
                if r.dagster_run.run_id not in self.cursor["seen"]]

    def done(self, record) -> None:
        at = record.update_timestamp.timestamp()
        seen = (self.cursor["seen"] if at == self.cursor["after"] else []) + [record.dagster_run.run_id]
        self.cursor = {"after": at, "seen": seen}
        self.context.update_cursor(json.dumps(self.cursor))

    def partly(self, record, done: int) -> None:
        """A run some of whose alerts were posted: the next tick resumes after the first `done`."""
        self.context.update_cursor(json.dumps(self.cursor | {"run": record.dagster_run.run_id, "done": done}))


@dg.sensor(name="alerts", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Posts one alert per failed run, failed blocking check and missed freshness deadline to "
           "STOCK_PLATFORM_ALERT_WEBHOOK (Slack-compatible), with a link to the run.")
def alerts_sensor(context: dg.SensorEvaluationContext, alerts: AlertResource):
    """Posts the alerts of each run finished since the cursor (`RunFeed`), which moves only past posted alerts."""
    feed = RunFeed(context)
    if feed.start():
        return dg.SkipReason("alerts start from now")
    records = feed.runs()
    posted = 0
    for record in records:
        run = record.dagster_run
        done = feed.cursor.get("done", 0) if feed.cursor.get("run") == run.run_id else 0
        for alert in run_alerts(context.instance, run)[done:]:
            try:
                alerts.post(alert)
            except OSError as exc:  # the webhook is unreachable: keep the cursor here, try again next tick
                context.log.warning(f"alert not posted ({exc}); retrying next tick")
                feed.partly(record, done)
                return dg.SkipReason(f"webhook unreachable: {exc}")
            context.log.info(alert.text(alerts))
            done, posted = done + 1, posted + 1
        feed.done(record)
    return None if posted else dg.SkipReason(f"{len(records)} finished run(s), nothing to alert")


MODEL_DEADLINE = "0 12 * * 1"  # a finished week's gate is due Monday noon (the retrain schedule runs at 06:00)


def freshness_policy(spec: dg.AssetSpec) -> dg.FreshnessPolicy | None:
    """The freshness policy the UI shows for an asset: the daily assets updated for 18:30 New York on weekdays
    (the policy cannot see holidays: the partition checks below can), the weekly models within two weeks."""
    from stock_platform.partitions import CADENCE_TAG, DAILY_CADENCE

    if spec.tags.get(CADENCE_TAG) == DAILY_CADENCE:
        return dg.FreshnessPolicy.cron(deadline_cron=DAILY_DEADLINE, lower_bound_delta=dt.timedelta(hours=24),
                                       timezone=EXCHANGE_TIMEZONE)
    if spec.group_name == "ml":
        return dg.FreshnessPolicy.time_window(fail_window=MODEL_MAX_AGE, warn_window=dt.timedelta(days=8))
    return None


def freshness_checks(daily_assets, model_asset) -> list:
    """Partition-aware freshness checks: each daily asset's latest trading day by 18:30 New York, the model's
    latest finished week by Monday noon (WARN: they tell, they do not block)."""
    names = {a.key.to_user_string() for a in (*daily_assets, model_asset)}
    assert names == set(FRESHNESS_ASSETS), names
    return [*dg.build_time_partition_freshness_checks(assets=daily_assets, deadline_cron=DAILY_DEADLINE,
                                                      timezone=EXCHANGE_TIMEZONE),
            *dg.build_time_partition_freshness_checks(assets=[model_asset], deadline_cron=MODEL_DEADLINE,
                                                      timezone=EXCHANGE_TIMEZONE)]
