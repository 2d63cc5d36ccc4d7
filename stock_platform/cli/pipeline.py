"""`stock-platform backfill`, `train` and `status`: the pipeline run by hand, in the home's Dagster instance (the one
`dagster dev` shows: its runs, partitions, materializations and check results). `demo` is their composition on the
offline market.

Runs execute in this process, as one run each: a backfill is one single-run backfill of a partition range (the
assets' `BackfillPolicy.single_run()`), tagged with its range as the UI's backfills are. A partition is up to date
when every asset asked for is materialized for it and no blocking check failed on it since; a rerun runs nothing
new (`--force` runs everything again).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import threading
import time
import uuid

from stock_platform.cli.common import (QUIET_LOGS, CommandError, date_option, open_instance, settings_environment,
                                       settings_from, step_errors, tickers_option)
from stock_platform.settings import DEFAULT_START, Settings, SettingsError, use_settings

DATA_ASSETS = ("prices", "price_snapshots", "features")
FORECAST_ASSETS = ("predictions", "prediction_evaluation")
ASSET_SETS = {"data": DATA_ASSETS, "forecasts": FORECAST_ASSETS, "all": DATA_ASSETS + FORECAST_ASSETS}


# ------------------------------------------------------------------------------------------------ running
class Progress:
    """Prints a run's asset steps as they start and end, its checks' results and any failed step, from the instance's
    event log (read by a thread every `every` seconds while the run executes in this process)."""

    def __init__(self, instance, run_id: str, *, out=None, every: float = 0.5):
        self.instance, self.run_id, self.out, self.every = instance, run_id, out or sys.stdout, every
        self.check_steps: set[str] = set()  # steps that evaluate a check: shown by their result
        self.cursor, self.started = None, time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - a busy event log is read again on the next tick
                pass

    def poll(self) -> None:
        import dagster as dg

        kinds = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE,
                 dg.DagsterEventType.ASSET_CHECK_EVALUATION}
        found = self.instance.get_records_for_run(self.run_id, cursor=self.cursor, of_type=kinds)
        for record in found.records:
            entry = record.event_log_entry
            event = entry.dagster_event
            at = f"  {entry.timestamp - self.started:7.1f} s  "
            if event.event_type == dg.DagsterEventType.STEP_START and event.step_key not in self.check_steps:
                print(f"{at}{event.step_key}: started", file=self.out, flush=True)
            elif event.event_type == dg.DagsterEventType.STEP_SUCCESS and event.step_key not in self.check_steps:
                took = event.event_specific_data.duration_ms / 1000
                print(f"{at}{event.step_key}: done in {took:.1f} s", file=self.out, flush=True)
            elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
                print(f"{at}{event.step_key}: FAILED", file=self.out, flush=True)
            elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
                check = event.event_specific_data
                verdict = "passed" if check.passed else f"FAILED ({check.severity.value})"
                print(f"{at}check {check.asset_key.to_user_string()}/{check.check_name}: {verdict}", file=self.out,
                      flush=True)
        self.cursor = found.cursor


def execute(instance, defs, job: str, *, assets=None, tags: dict[str, str] | None = None,
            run_config: dict | None = None, progress: bool = False, launched_by: str = "cli", **kwargs):
    """Execute `job` in this process in the instance (`assets`: those assets with their blocking checks, not their
    freshness checks, which are the freshness sensor's); `progress` prints its steps as they go. A failed run raises
    RuntimeError with its step errors."""
    import dagster as dg

    definition = defs.resolve_job_def(job)
    if assets is not None:
        definition = definition.get_subset(asset_selection={dg.AssetKey(a) for a in assets},
                                           asset_check_selection=set(run_checks(defs, assets)))
    run_id = str(uuid.uuid4())

    def run():
        return definition.execute_in_process(
            instance=instance, run_config=QUIET_LOGS | (run_config or {}), raise_on_error=False, run_id=run_id,
            tags={"stock_platform/launched_by": launched_by, **(tags or {})}, **kwargs)

    if not progress:
        result = run()
    else:
        with Progress(instance, run_id) as shown:
            graph = defs.resolve_asset_graph()
            shown.check_steps = {f"{k.asset_key.path[-1]}_{k.name}" for k in graph.asset_check_keys}
            result = run()
    if not result.success:
        raise RuntimeError(step_errors(result))
    return result


def run_checks(defs, assets) -> list:
    """The checks of `assets` that their runs evaluate: all but the freshness checks (the freshness sensor's)."""
    from stock_platform.alerts import FRESHNESS_CHECK

    return [k for k in defs.resolve_asset_graph().asset_check_keys
            if k.asset_key.to_user_string() in assets and k.name != FRESHNESS_CHECK]


def range_tags(first: str, last: str) -> dict[str, str]:
    """The tags of a single-run backfill of [first, last] (what the UI's "Materialize" of a range sets)."""
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


# ---------------------------------------------------------------------------------------------- backfill
def session_keys(start: dt.date, end: dt.date) -> list[str]:
    import dagster as dg

    from stock_platform.partitions import trading_days

    keys = trading_days.get_partition_keys_in_range(dg.PartitionKeyRange(start.isoformat(), end.isoformat()))
    if not keys:
        raise SettingsError(f"{start} .. {end}: no trading day in the range")
    return keys


def stale_partitions(instance, defs, keys: list[str], assets, tickers) -> list[str]:
    """Of `keys`, those some asset of `assets` lacks, or whose latest blocking check failed; all of them when the
    stored prices of the range miss a ticker of the universe (the universe grew)."""
    import dagster as dg

    from stock_platform.gates import FEATURES_CHECK, PREDICTIONS_CHECK, PRICES_CHECK, check_status
    from stock_platform.lib.tables import PRICES_TABLE

    stale = set()
    for asset in assets:
        stale |= set(keys) - instance.get_materialized_partitions(dg.AssetKey(asset))
    for check in (PRICES_CHECK, FEATURES_CHECK, PREDICTIONS_CHECK):
        if check.asset_key.to_user_string() in assets:
            stale |= set(check_status(instance, check, keys).failed)
    lake = defs.resources["lake"]
    if "prices" in assets:
        start, end = dt.date.fromisoformat(keys[0]), dt.date.fromisoformat(keys[-1])
        stored = set()
        if lake.exists(PRICES_TABLE):
            stored = set(lake.read(PRICES_TABLE, start, end, columns=["ticker"])["ticker"].unique())
        if not set(tickers) <= stored:
            return list(keys)
    return [k for k in keys if k in stale]


@dataclasses.dataclass
class Backfill:
    keys: list[str]  # the range's sessions
    todo: list[str]  # those that were not up to date (the run covered todo[0] .. todo[-1])
    result: object | None  # the run's result; None: nothing to do
    seconds: float


def backfill(instance, defs, start: dt.date, end: dt.date, tickers, *, assets=ASSET_SETS["all"], force: bool = False,
             progress: bool = False, launched_by: str = "cli") -> Backfill:
    """Materialize `assets` for the sessions of [start, end] as one single-run backfill of the stale partitions."""
    keys = session_keys(start, end)
    todo = list(keys) if force else stale_partitions(instance, defs, keys, assets, tickers)
    started = time.perf_counter()
    result = None
    if todo:
        result = execute(instance, defs, "daily_assets", assets=assets, tags=range_tags(todo[0], todo[-1]),
                         progress=progress, launched_by=launched_by)
    return Backfill(keys, todo, result, time.perf_counter() - started)


def start_follows_the_range(settings: Settings, start: dt.date) -> Settings:
    """The partitions begin at the range: the settings' start becomes the range's first session when it is the
    default and the range starts earlier. An explicit later STOCK_PLATFORM_START is the user's: say how to fix."""
    if start >= settings.start:
        return settings
    if settings.start != DEFAULT_START:
        raise SettingsError(f"the range starts {start}, before STOCK_PLATFORM_START={settings.start}: run "
                            f"`export STOCK_PLATFORM_START={start}` (or `unset STOCK_PLATFORM_START`) and retry")
    return dataclasses.replace(settings, start=start)


def ui_command(settings: Settings) -> str:
    """The command that opens this home's Dagster UI with the settings (and partitions) the command used."""
    import shlex

    env = dict(settings_environment(settings))
    if settings.start == DEFAULT_START:
        del env["STOCK_PLATFORM_START"]
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " dagster dev"


def default_end(settings, *, now: dt.datetime | None = None) -> tuple[dt.date, str]:
    """The end of a range when `--end` is not given, and why: the last session before New York's today at `now` (by
    default the clock); for the `files` source no later than the last day every file covers (history a user brought
    ends where it ends)."""
    from stock_platform.lib.calendar import exchange_date
    from stock_platform.resources.sources import SourceError, files_last_common_date

    yesterday = exchange_date(now) - dt.timedelta(days=1)
    if settings.source != "files":
        return yesterday, ""
    try:
        covered = files_last_common_date(settings.files_dir, list(settings.tickers))
    except SourceError as exc:
        raise SettingsError(str(exc)) from None
    if covered >= yesterday:
        return yesterday, ""
    return covered, " (the last day every ticker's file covers; --end to change)"


def prepare(settings: Settings, start: dt.date) -> Settings:
    """The process's settings for a range from `start`, before anything builds the partitions from them; the home's
    folder made and the warehouse reached (a clear error at start, not in the middle of a run)."""
    settings = use_settings(start_follows_the_range(settings, start))
    settings.home.mkdir(parents=True, exist_ok=True)  # the default warehouse and the instance live in it
    settings.check_warehouse_reachable()
    return settings


def cmd_backfill(args: argparse.Namespace) -> int:
    tickers = tickers_option(args.tickers)
    settings = settings_from(args, STOCK_PLATFORM_TICKERS=",".join(tickers) if tickers else None,
                             STOCK_PLATFORM_SOURCE=args.source, STOCK_PLATFORM_FILES_DIR=args.files_dir)
    end, why = (date_option(args.end, "--end"), "") if args.end else default_end(settings)
    start = date_option(args.start, "--start") or settings.start
    if start > end:
        raise SettingsError(f"--start {start} is after the end {end}{why}")
    settings = prepare(settings, start)
    from stock_platform.definitions import defs

    assets = ASSET_SETS[args.assets]
    print(f"stock-platform backfill: {', '.join(assets)} for {len(settings.tickers)} tickers, {start} .. {end}{why}, "
          f"source={settings.source}")
    print(f"  Dagster instance: {settings.dagster_home}  (open the UI: {ui_command(settings)})")
    with open_instance(settings) as instance:
        try:
            done = backfill(instance, defs, start, end, settings.tickers, assets=assets, force=args.force,
                            progress=True)
        except RuntimeError as exc:
            raise CommandError(f"the backfill run failed:\n{exc}") from None
    if not done.todo:
        print(f"up to date: {len(done.keys)} session(s), nothing to run (--force runs them again)")
    else:
        print(f"{len(done.todo)} of {len(done.keys)} session(s) ({done.todo[0]} .. {done.todo[-1]}) in one run "
              f"{done.result.run_id}, {done.seconds:.1f} s")
    return 0


# ------------------------------------------------------------------------------------------------ train
def model_week(end: dt.date) -> str:
    """The Monday of the last model week (Monday .. Sunday, `model_weeks`' weeks) finished on or before `end`. Plain
    calendar arithmetic: commands call it before their settings fix the partitions' start."""
    sunday = end - dt.timedelta(days=(end.weekday() + 1) % 7)
    return (sunday - dt.timedelta(days=6)).isoformat()


def model_asset_names() -> tuple[str, ...]:
    from stock_platform.lib.families import FAMILIES

    return (*(f"{family}_model" for family in FAMILIES), "tuned_model")


def train(instance, defs, week: str, trials: int | None = None, *, force: bool = False, progress: bool = False,
          launched_by: str = "cli"):
    """Materialize every model family's asset and `tuned_model` (the gate) for `week` (`trials` per family, within
    the settings' seconds: STOCK_PLATFORM_TUNING_TRIALS / _SECONDS by default); (None, 0.0) when the gate already is
    and its leakage check did not fail."""
    import dagster as dg

    from stock_platform.gates import LEAKAGE_CHECK, check_status
    from stock_platform.lib.families import FAMILIES

    if trials is not None and trials < 1:
        raise SettingsError(f"--trials {trials}: at least one trial per family")
    done = all(week in instance.get_materialized_partitions(dg.AssetKey(key)) for key in model_asset_names())
    if not force and done and not check_status(instance, LEAKAGE_CHECK, [week]).failed:
        return None, 0.0
    started = time.perf_counter()
    config = {}
    if trials is not None:
        config = {"ops": {f"{family}_model": {"config": {"trials": trials}} for family in FAMILIES}}
    result = execute(instance, defs, "weekly_retrain", partition_key=week, run_config=config, progress=progress,
                     launched_by=launched_by)
    return result, time.perf_counter() - started


def gate_report(instance) -> tuple[dict, str]:
    """The latest `tuned_model` (gate) materialization's metadata and a text of it: every family's holdout scores
    beside the naive random walk and the champion, and the gate's choice."""
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey("tuned_model"))
    md = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    text = (f"model families, week {event.asset_materialization.partition}, on the held-out window "
            f"({md['holdout']}), beside the naive random walk:\n{md['decision']}\n"
            f"gate: {md['gate']}")
    return md, text


def cmd_train(args: argparse.Namespace) -> int:
    from stock_platform.lib.calendar import exchange_date

    settings = settings_from(args)
    week = args.week or model_week(exchange_date() - dt.timedelta(days=1))
    try:
        week_start = dt.date.fromisoformat(week)
    except ValueError:
        raise SettingsError(f"--week {week!r}: not a date (a model week's Monday, YYYY-MM-DD)") from None
    if week_start.weekday() != 0:
        raise SettingsError(f"--week {week}: a model week starts on a Monday (that week's: "
                            f"{week_start - dt.timedelta(days=week_start.weekday())})")
    settings = prepare(settings, min(settings.start, week_start))
    from stock_platform.definitions import defs

    print(f"stock-platform train: every model family and the gate, week {week} ("
          f"{args.trials or settings.tuning_trials} trials per family on Ray Tune)")
    with open_instance(settings) as instance:
        try:
            result, seconds = train(instance, defs, week, args.trials, force=args.force, progress=True)
        except RuntimeError as exc:
            raise CommandError(f"the training run failed:\n{exc}") from None
        if result is None:
            print(f"up to date: week {week} is trained (--force trains it again)")
        else:
            print(f"trained in one run {result.run_id}, {seconds:.1f} s")
        _, text = gate_report(instance)
    first = week_start + dt.timedelta(days=7)
    print(f"{text}\nforecasts from {first} on use the champion: stock-platform backfill --assets forecasts --start "
          f"{first} --force")
    return 0


# ----------------------------------------------------------------------------------------------- status
def status_report(instance, defs, settings: Settings, *, now: dt.datetime | None = None) -> str:
    """What is materialized (each asset's partitions, their span and the gaps in it), the latest result of every
    check, how far the daily assets are behind the last session, and the champion."""
    import dagster as dg

    from stock_platform.lib.calendar import exchange_date
    from stock_platform.lib.markdown import markdown_table
    from stock_platform.lib.tables import PRICES_TABLE
    from stock_platform.partitions import model_weeks, trading_days
    from stock_platform.registry import promoted_versions, served_versions

    expected = (trading_days.get_partition_keys(current_time=now or dt.datetime.now(dt.UTC)) or [None])[-1]
    today = exchange_date(now)
    rows = []
    for asset in (*ASSET_SETS["all"], *model_asset_names()):
        partitions = sorted(instance.get_materialized_partitions(dg.AssetKey(asset)))
        if not partitions:
            rows.append((asset, "0", "-", "-", "-", "-"))
            continue
        definition = trading_days if asset in ASSET_SETS["all"] else model_weeks
        span = definition.get_partition_keys_in_range(dg.PartitionKeyRange(partitions[0], partitions[-1]))
        gaps = len(set(span) - set(partitions))
        behind = "-"
        if asset in ASSET_SETS["all"] and expected:
            behind = str(len(definition.get_partition_keys_in_range(
                dg.PartitionKeyRange(partitions[-1], expected))) - 1) if partitions[-1] <= expected else "0"
        rows.append((asset, f"{len(partitions):,}", partitions[0], partitions[-1], str(gaps), behind))
    lake = defs.resources["lake"]
    lines = []
    if lake.exists(PRICES_TABLE) and rows[0][3] != "-":
        last = dt.date.fromisoformat(rows[0][3])
        tickers = sorted(lake.read(PRICES_TABLE, last, last, columns=["ticker"])["ticker"].unique())
        lines.append(f"universe on {last}: {len(tickers)} ticker(s) ({', '.join(tickers[:12])}"
                     f"{', ...' if len(tickers) > 12 else ''})")
    lines += [f"materialized (instance {settings.dagster_home}; sessions behind {expected}, the latest session "
              f"partition at this hour, New York's today being {today}):",
              markdown_table(rows, ["asset", "partitions", "first", "last", "gaps", "sessions behind"]), "",
              "checks (latest evaluation; the freshness checks are evaluated by the daemon's sensor):"]
    checks = []
    for key in sorted(defs.resolve_asset_graph().asset_check_keys, key=lambda k: (k.asset_key.to_user_string(),
                                                                                   k.name)):
        record = instance.get_latest_asset_check_evaluation_record(key)
        evaluation = record.event.asset_check_evaluation if record and record.event else None
        if evaluation is None:
            checks.append((key.asset_key.to_user_string(), key.name, "never evaluated", "-", "-"))
            continue
        when = dt.datetime.fromtimestamp(record.create_timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        verdict = "passed" if evaluation.passed else f"FAILED ({evaluation.severity.value})"
        checks.append((key.asset_key.to_user_string(), key.name, verdict, _checked_partitions(instance, record), when))
    lines += [markdown_table(checks, ["asset", "check", "result", "partition", "when"]), ""]
    served = served_versions(lake)
    champions = promoted_versions(served) if served.height else []
    if champions:
        name, version, train_end, registered = champions[-1]
        lines.append(f"champion: {name} v{version} (trained on data to {train_end}, registered "
                     f"{registered:%Y-%m-%d}); {served.height} registered version(s) (`stock-platform models`)")
    else:
        lines.append(f"champion: none: the naive random walk serves ({served.height} registered version(s); "
                     "`stock-platform train` trains and gates the families)")
    return "\n".join(lines)


def _checked_partitions(instance, record) -> str:
    """The partition a check evaluation covered: its own, or the range of the run that evaluated it once."""
    if record.partition:
        return record.partition
    run = instance.get_run_by_id(record.run_id)
    tags = run.tags if run else {}
    first, last = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    return f"{first} .. {last}" if first else (tags.get("dagster/partition") or "-")


def cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if not (settings.dagster_home / "dagster.yaml").exists() and not settings.dagster_home.is_dir():
        raise CommandError(f"no Dagster instance at {settings.dagster_home}: nothing has run in this home yet "
                           "(`stock-platform backfill` or `stock-platform demo`)")
    import dagster as dg

    print(f"stock-platform status: {settings.home} (lake {settings.lake_uri})")
    with open_instance(settings) as instance:
        # the partitions begin where the home's history does (a demo or backfill may have moved the start earlier)
        days = instance.get_materialized_partitions(dg.AssetKey("prices"))
        first = min((dt.date.fromisoformat(d) for d in days), default=settings.start)
        use_settings(dataclasses.replace(settings, start=min(settings.start, first)))
        from stock_platform.definitions import defs

        print(status_report(instance, defs, settings))
    return 0
