"""`stock-platform demo`: every asset for a universe on the offline demo market (or the configured source),
materialized inside a real Dagster instance under STOCK_PLATFORM_HOME (runs, materializations and checks show in
`dagster dev` afterwards), then a summary. Partitions already materialized for the same universe are not run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import time
from dataclasses import dataclass

from stock_platform.cli.operate import forecast_report
from stock_platform.cli.common import (QUIET_LOGS, CommandError, date_option, open_instance, settings_environment,
                                       settings_from, step_errors, tickers_option)
from stock_platform.settings import DEFAULT_START, Settings, SettingsError, use_settings

# A model needs a year of indicator warm-up, then walk-forward folds and a held-out window.
MIN_MODEL_YEARS = 1.75


@dataclass
class StageReport:
    asset: str
    rows: int
    partitions: str
    checks: str
    seconds: float
    note: str = ""


def demo_range(years: float, end: dt.date | None = None, *, now: dt.datetime | None = None) -> tuple[dt.date, dt.date]:
    """The last `years` of trading days ending at `end` (default: the last session before New York's today at
    `now`, by default the clock)."""
    from stock_platform.lib.calendar import exchange_date, trading_days

    end = end or exchange_date(now) - dt.timedelta(days=1)
    sessions = trading_days(end - dt.timedelta(days=int(round(years * 365.25))), end)
    if not sessions:
        raise SettingsError(f"--years {years}: no trading day in range")
    return sessions[0], sessions[-1]


def default_end(settings, *, now: dt.datetime | None = None) -> tuple[dt.date | None, str]:
    """The demo's end when `--end` is not given, and why: the last day every file covers for the `files`
    source (history a user brought ends where it ends), no later than the last session before New York's
    today; None (that session) for the other sources."""
    from stock_platform.lib.calendar import exchange_date
    from stock_platform.resources.sources import SourceError, files_last_common_date

    if settings.source != "files":
        return None, ""
    try:
        covered = files_last_common_date(settings.files_dir, list(settings.tickers))
    except SourceError as exc:
        raise SettingsError(str(exc)) from None
    yesterday = exchange_date(now) - dt.timedelta(days=1)
    if covered >= yesterday:
        return None, ""
    return covered, " (the last day every ticker's file covers; --end to change)"


def start_follows_the_range(settings: Settings, start: dt.date) -> Settings:
    """The demo's partitions begin at its range: the settings' start becomes the range's first session when it is
    the default and the range starts earlier. An explicit later STOCK_PLATFORM_START is the user's: say how to fix."""
    if start >= settings.start:
        return settings
    if settings.start != DEFAULT_START:
        raise SettingsError(f"the range starts {start}, before STOCK_PLATFORM_START={settings.start}: run "
                            f"`export STOCK_PLATFORM_START={start}` (or `unset STOCK_PLATFORM_START`) and retry")
    return dataclasses.replace(settings, start=start)


def ui_command(settings: Settings) -> str:
    """The command that opens this home's Dagster UI with the settings (and partitions) the demo used."""
    import shlex

    env = dict(settings_environment(settings))
    if settings.start == DEFAULT_START:
        del env["STOCK_PLATFORM_START"]
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " dagster dev"


def _daily_assets() -> list[tuple[str, str]]:
    """(asset key, lake table) of the daily assets the demo materializes, in dependency order."""
    from stock_platform.lib.tables import PRICES_TABLE
    from stock_platform.lib.tables import SNAPSHOT_TABLE
    from stock_platform.lib.tables import FEATURES_TABLE

    return [("prices", PRICES_TABLE), ("price_snapshots", SNAPSHOT_TABLE), ("features", FEATURES_TABLE)]


def _run_demo_job(instance, defs, job: str, *, tags: dict[str, str] | None = None, run_config: dict | None = None,
                  asset_selection=None, **kwargs):
    """Execute one of the demo's runs in-process (`asset_selection`: those assets with their blocking checks, not
    their freshness checks, which are the freshness sensor's); a failed run raises RuntimeError with its step
    errors."""
    from stock_platform.alerts import FRESHNESS_CHECK

    definition = defs.resolve_job_def(job)
    if asset_selection is not None:
        checks = {k for k in defs.resolve_asset_graph().asset_check_keys
                  if k.asset_key in asset_selection and k.name != FRESHNESS_CHECK}
        definition = definition.get_subset(asset_selection=set(asset_selection), asset_check_selection=checks)
    result = definition.execute_in_process(
        instance=instance, run_config=QUIET_LOGS | (run_config or {}), raise_on_error=False,
        tags={"stock_platform/launched_by": "demo", **(tags or {})}, **kwargs)
    if not result.success:
        raise RuntimeError(step_errors(result))
    return result


def _range_tags(first: str, last: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


def run_daily_stage(instance, defs, start: dt.date, end: dt.date, tickers: list[str], *, force: bool = False):
    """Materialize the daily assets for [start, end] as one single-run backfill; skip when up to date."""
    import dagster as dg

    from stock_platform.lib.tables import PRICES_TABLE
    from stock_platform.gates import FEATURES_CHECK, PRICES_CHECK, check_status
    from stock_platform.partitions import trading_days

    keys = trading_days.get_partition_keys_in_range(dg.PartitionKeyRange(start.isoformat(), end.isoformat()))
    lake = defs.resources["lake"]
    missing = set()
    for asset, _ in _daily_assets():
        missing |= set(keys) - instance.get_materialized_partitions(dg.AssetKey(asset))
    # a partition whose latest blocking check failed is not up to date: run it again
    for check in (PRICES_CHECK, FEATURES_CHECK):
        missing |= set(check_status(instance, check, keys).failed)
    stored = set()
    if lake.exists(PRICES_TABLE):
        stored = set(lake.read(PRICES_TABLE, start, end, columns=["ticker"])["ticker"].unique())
    todo = keys if force or not set(tickers) <= stored else [k for k in keys if k in missing]
    started = time.perf_counter()
    result = None
    if todo:
        result = _run_demo_job(instance, defs, "daily_assets", tags=_range_tags(todo[0], todo[-1]),
                               asset_selection=[dg.AssetKey(asset) for asset, _ in _daily_assets()])
    seconds = time.perf_counter() - started
    return keys, todo, result, seconds


def _step_seconds(result, asset: str) -> float | None:
    """Wall time of the asset's step in the run (None when the run did not run it). From the run's events in
    memory: the instance's step stats would read back every event of the run (6,000+ for a ten-year backfill)."""
    if result is None:
        return None
    return next((e.event_specific_data.duration_ms / 1000 for e in result.all_events
                 if e.is_step_success and e.step_key == asset), None)


def _check_summary(instance, asset: str, result) -> str:
    import dagster as dg

    check_keys = instance_check_keys(asset)
    if not check_keys:
        return "-"
    if result is not None:
        evals = [e for e in result.get_asset_check_evaluations() if e.asset_key == dg.AssetKey(asset)]
        passed = sum(e.passed for e in evals)
        return f"{passed}/{len(evals)} passed" if evals else "-"
    records = [instance.get_latest_asset_check_evaluation_record(k) for k in check_keys]
    if any(r is None for r in records):
        return "-"
    ok = all(r.event.asset_check_evaluation.passed for r in records)
    return "passed (earlier run)" if ok else "FAILED (earlier run)"


def instance_check_keys(asset: str):
    """The asset's checks that its runs evaluate (not the freshness check: the freshness sensor's)."""
    from stock_platform.alerts import FRESHNESS_CHECK
    from stock_platform.definitions import defs

    return [k for k in defs.resolve_asset_graph().asset_check_keys
            if k.asset_key.to_user_string() == asset and k.name != FRESHNESS_CHECK]


def print_summary(reports: list[StageReport], total: float) -> None:
    header = ("asset", "rows", "partitions", "checks", "time")
    rows = [(r.asset, f"{r.rows:,}", r.partitions, r.checks, f"{r.seconds:.1f} s" + (f" ({r.note})" if r.note else ""))
            for r in reports]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join("{:<%d}" % w for w in widths)
    print()
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for r in rows:
        print(line.format(*r))
    print(f"\ntotal {total:.1f} s")


def model_week(end: dt.date) -> str:
    """The last finished model week that ends on or before `end`."""
    from stock_platform.partitions import model_weeks

    keys = [k for k in model_weeks.get_partition_keys() if dt.date.fromisoformat(k) + dt.timedelta(days=6) <= end]
    if not keys:
        raise SettingsError(f"no finished model week up to {end}")
    return keys[-1]


def run_model_stage(instance, defs, week: str, trials: int, *, force: bool = False):
    """Materialize every model family's asset and `tuned_model` (the gate) for `week` with a small tuning budget;
    skip when the gate already is."""
    import dagster as dg

    from stock_platform.gates import LEAKAGE_CHECK, check_status
    from stock_platform.lib.families import FAMILIES

    done = all(week in instance.get_materialized_partitions(dg.AssetKey(key))
               for key in ("tuned_model", *(f"{family}_model" for family in FAMILIES)))
    if not force and done and not check_status(instance, LEAKAGE_CHECK, [week]).failed:
        return None, 0.0
    started = time.perf_counter()
    config = {"ops": {f"{family}_model": {"config": {"trials": trials, "time_budget_seconds": 60.0}}
                      for family in FAMILIES}}
    return (_run_demo_job(instance, defs, "weekly_retrain", partition_key=week, run_config=config),
            time.perf_counter() - started)


def run_forecast_stage(instance, defs, first: dt.date, end: dt.date):
    """Materialize `predictions` and `prediction_evaluation` for the sessions first..end in one run."""
    import dagster as dg

    from stock_platform.partitions import trading_days

    keys = trading_days.get_partition_keys_in_range(dg.PartitionKeyRange(first.isoformat(), end.isoformat()))
    started = time.perf_counter()
    result = _run_demo_job(instance, defs, "daily_assets", tags=_range_tags(keys[0], keys[-1]),
                           asset_selection=[dg.AssetKey("predictions"), dg.AssetKey("prediction_evaluation")])
    return keys, result, time.perf_counter() - started


def model_report(instance) -> tuple[dict, str]:
    """The latest `tuned_model` (gate) materialization's metadata and a text of it: every family's holdout scores
    beside the naive random walk and the champion, and the gate's choice."""
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey("tuned_model"))
    md = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    text = (f"model families, week {event.asset_materialization.partition}, on the held-out window "
            f"({md['holdout']}), beside the naive random walk:\n{md['decision']}\n"
            f"gate: {md['gate']}")
    return md, text


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    tickers = tickers_option(args.tickers)
    settings = settings_from(args, STOCK_PLATFORM_TICKERS=",".join(tickers) if tickers else None,
                             STOCK_PLATFORM_SOURCE=args.source, STOCK_PLATFORM_FILES_DIR=args.files_dir)
    end, why = (date_option(args.end, "--end"), "") if args.end else default_end(settings)
    start, end = demo_range(args.years, end)
    # the process's settings before anything builds the partitions from them
    settings = use_settings(start_follows_the_range(settings, start))
    settings.home.mkdir(parents=True, exist_ok=True)  # the default warehouse and the instance live in it
    settings.check_warehouse_reachable()
    import dagster as dg

    from stock_platform.definitions import defs

    tickers = list(settings.tickers)
    print(f"stock-platform demo: {len(tickers)} tickers ({', '.join(tickers)}), {start} .. {end}{why}, "
          f"source={settings.source}")
    print(f"  Dagster instance: {settings.dagster_home}  (open the UI: {ui_command(settings)})")
    print(f"  lake: {settings.lake_uri}")

    try:
        with open_instance(settings) as instance:
            names = ", ".join(asset for asset, _ in _daily_assets())
            print(f"[1/3] daily assets: {names} (+ blocking checks) ...", end=" ", flush=True)
            keys, todo, result, seconds = run_daily_stage(instance, defs, start, end, tickers, force=args.force)
            print(f"{len(todo)} partition(s) in one run, {seconds:.1f} s" if todo else "up to date")
            lake = defs.resources["lake"]
            reports = []
            for asset, table in _daily_assets():
                done = instance.get_materialized_partitions(dg.AssetKey(asset))
                step = _step_seconds(result, asset)
                reports.append(StageReport(
                    asset, lake.read(table, start, end, columns=["ticker"]).height,
                    f"{sum(k in done for k in keys)}/{len(keys)}", _check_summary(instance, asset, result),
                    step or 0.0, "" if todo else "skipped: up to date"))

            need = MIN_MODEL_YEARS + args.out_of_sample_weeks / 52
            if args.years < need:
                print(f"[2/3] tuned_model: skipped: --years {args.years:g} is too short (it needs >= {need:.2f} years: "
                      "one of indicator warm-up, walk-forward folds, a held-out window, then the forecast weeks)")
                print_summary(reports, time.perf_counter() - started)
                return 0
            # The model is trained up to `--out-of-sample-weeks` before the end; the days after it are forecast.
            week = model_week(end - dt.timedelta(weeks=args.out_of_sample_weeks))
            print(f"[2/3] model families and tuned_model, week {week}: Ray Tune, {args.trials} trials per family ...",
                  end=" ", flush=True)
            result, seconds = run_model_stage(instance, defs, week, args.trials, force=args.force)
            print(f"{seconds:.1f} s" if result else "up to date")
            md, text = model_report(instance)
            reports.append(StageReport(
                "tuned_model", md["dagster/row_count"], f"week {week}", _check_summary(instance, "tuned_model", result),
                seconds, (f"promoted {md['promoted']}" if md["promoted"] else "none promoted")
                + ("" if result else ", skipped: up to date")))

            first = dt.date.fromisoformat(week) + dt.timedelta(days=7)
            print(f"[3/3] predictions, prediction_evaluation: {first} .. {end} ...", end=" ", flush=True)
            keys, result, seconds = run_forecast_stage(instance, defs, first, end)
            print(f"{len(keys)} partition(s) in one run, {seconds:.1f} s")
            for asset in ("predictions", "prediction_evaluation"):
                [event] = result.asset_materializations_for_node(asset)[:1] or [None]
                rows = event.metadata["dagster/row_count"].value if event else 0
                reports.append(StageReport(asset, rows, f"{len(keys)}/{len(keys)}",
                                           _check_summary(instance, asset, result),
                                           _step_seconds(result, asset) or 0.0))
    except RuntimeError as exc:  # a stage's run failed: its progress line ends with FAILED
        print("FAILED")
        raise CommandError(str(exc)) from None
    print_summary(reports, time.perf_counter() - started)
    print()
    print(text)
    print()
    print(forecast_report(lake, first, end))
    return 0


