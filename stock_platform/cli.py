"""The `stock-platform` command.

    stock-platform demo [--tickers AAPL,MSFT] [--years 3] [--trials 8] [--source demo] [--home DIR]
    stock-platform snapshot [--tickers AAPL] [--as-of VERSION|TIMESTAMP] [--history] [--changes-since V]
    stock-platform report [--start YYYY-MM-DD] [--end YYYY-MM-DD] [--plot FILE.png]
    stock-platform replay --start D --end D [--tickers] [--source demo|files] [--format jsonl] [--speed N]

`demo` materializes every asset for a universe on the offline demo market inside a real Dagster
instance under STOCK_PLATFORM_HOME (runs, materializations and checks show in `dagster dev` afterwards),
then prints a summary. Partitions already materialized for the same universe are not run again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from stock_platform.settings import SOURCES, SettingsError, parse_tickers

# A model needs a year of indicator warm-up, then walk-forward folds and a held-out window.
MIN_MODEL_YEARS = 1.75
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@dataclass
class StageReport:
    asset: str
    rows: int
    partitions: str
    checks: str
    seconds: float
    note: str = ""


def _use_home(args: argparse.Namespace) -> None:
    """`--home` becomes STOCK_PLATFORM_HOME, before anything reads the settings."""
    if args.home:
        os.environ["STOCK_PLATFORM_HOME"] = str(Path(args.home).expanduser().resolve())


def _apply_demo_environment(args: argparse.Namespace):
    """Turn the demo's options into the environment settings.py reads (before anything loads it); return the
    settings they give (the demo's range may still move STOCK_PLATFORM_START)."""
    _use_home(args)
    if args.tickers:
        os.environ["STOCK_PLATFORM_TICKERS"] = ",".join(parse_tickers(args.tickers, where="--tickers"))
    if args.source:
        os.environ["STOCK_PLATFORM_SOURCE"] = args.source
    if args.files_dir:
        os.environ["STOCK_PLATFORM_FILES_DIR"] = args.files_dir
    from stock_platform.settings import load_settings

    settings = load_settings()
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    instance_yaml = settings.dagster_home / "dagster.yaml"
    if not instance_yaml.exists():
        # The embedded instance: SQLite storage in this folder (the default), no telemetry.
        instance_yaml.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    # One "planned" event per asset for a single-run backfill instead of one per partition.
    os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")
    return settings


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


def _start_follows_the_range(start: dt.date) -> None:
    """The demo's partitions begin at its range: STOCK_PLATFORM_START becomes the range's first session when it
    is unset (or the default) and the range starts earlier. An explicit later value is the user's: say how to fix."""
    from stock_platform.settings import DEFAULT_START

    raw = os.environ.get("STOCK_PLATFORM_START")
    configured = dt.date.fromisoformat(raw.strip()) if raw else DEFAULT_START
    if start >= configured:
        return
    if raw and configured != DEFAULT_START:
        raise SettingsError(f"the range starts {start}, before STOCK_PLATFORM_START={raw}: run "
                            f"`export STOCK_PLATFORM_START={start}` (or `unset STOCK_PLATFORM_START`) and retry")
    os.environ["STOCK_PLATFORM_START"] = start.isoformat()


def ui_command(settings) -> str:
    """The command that opens this home's Dagster UI with the partitions the demo used."""
    import shlex

    from stock_platform.settings import DEFAULT_START

    env = {"DAGSTER_HOME": settings.dagster_home, "STOCK_PLATFORM_HOME": settings.home}
    if settings.start != DEFAULT_START:
        env["STOCK_PLATFORM_START"] = settings.start
    for variable in ("STOCK_PLATFORM_SOURCE", "STOCK_PLATFORM_TICKERS", "STOCK_PLATFORM_FILES_DIR"):
        if os.environ.get(variable):
            env[variable] = os.environ[variable]
    return " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items()) + " dagster dev"


def _step_errors(result) -> str:
    messages = [e.event_specific_data.error.message.strip() for e in result.all_events
                if e.event_type_value == "STEP_FAILURE" and e.event_specific_data.error]
    return "\n".join(messages) or "run failed (see the run in the Dagster UI)"


def _daily_assets() -> list[tuple[str, str]]:
    """(asset key, lake table) of the daily assets the demo materializes, in dependency order."""
    from stock_platform.lib.tables import PRICES_TABLE
    from stock_platform.lib.tables import SNAPSHOT_TABLE
    from stock_platform.lib.tables import FEATURES_TABLE

    return [("prices", PRICES_TABLE), ("price_snapshots", SNAPSHOT_TABLE), ("features", FEATURES_TABLE)]


def _run_demo_job(instance, defs, job: str, *, tags: dict[str, str] | None = None, run_config: dict | None = None,
                  **kwargs):
    """Execute one of the demo's runs in-process; a failed run raises RuntimeError with its step errors."""
    result = defs.resolve_job_def(job).execute_in_process(
        instance=instance, run_config=QUIET_LOGS | (run_config or {}), raise_on_error=False,
        tags={"stock_platform/launched_by": "demo", **(tags or {})}, **kwargs)
    if not result.success:
        raise RuntimeError(_step_errors(result))
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


def _step_seconds(instance, result, asset: str) -> float | None:
    """Wall time of the asset's step in the run (None when the run did not include it)."""
    if result is None:
        return None
    stats = instance.get_run_step_stats(result.run_id)
    return next((s.end_time - s.start_time for s in stats if s.step_key == asset and s.end_time), None)


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
    from stock_platform.definitions import defs

    return [k for k in defs.resolve_asset_graph().asset_check_keys if k.asset_key.to_user_string() == asset]


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
    """Materialize `tuned_model` for `week` with a small tuning budget; skip when it already is."""
    import dagster as dg

    from stock_platform.gates import LEAKAGE_CHECK, check_status

    if (not force and week in instance.get_materialized_partitions(dg.AssetKey("tuned_model"))
            and not check_status(instance, LEAKAGE_CHECK, [week]).failed):
        return None, 0.0
    started = time.perf_counter()
    config = {"ops": {"tuned_model": {"config": {"trials": trials, "time_budget_seconds": 60.0}}}}
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
    """The latest `tuned_model` materialization's metadata and a short text of it."""
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey("tuned_model"))
    md = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    text = (f"model {md['model_name']} v{md['model_version']} (week {event.asset_materialization.partition}): "
            f"{'promoted to champion' if md['promoted'] else 'not promoted'} - {md['gate']}\n"
            f"held-out final window, model beside the naive random walk:\n{md['holdout_scores']}")
    return md, text


def forecast_report(lake, start: dt.date | None, end: dt.date | None, plot: Path | None = None) -> str:
    """Out-of-sample forecasts over [start, end] beside the naive random walk (text; optional PNG plot)."""
    from stock_platform.lib.tables import EVALUATION_TABLE
    from stock_platform.lib.evaluation import plot_png, summarize, summary_markdown

    if not lake.exists(EVALUATION_TABLE):
        return "no evaluated predictions yet (is there a champion model? see tuned_model's gate)"
    table = lake.read(EVALUATION_TABLE, start, end, date_column="target_date")
    if table.is_empty():
        return f"no evaluated predictions for {start or '...'} .. {end or '...'} (is there a champion model?)"
    lines = [f"out-of-sample forecasts {table['target_date'].min()} .. {table['target_date'].max()}, "
             f"model versions {sorted(table['model_version'].unique().to_list())}:", summary_markdown(summarize(table))]
    if plot is not None:
        plot.write_bytes(plot_png(table))
        lines.append(f"plot: {plot}")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    """Print the evaluation's aggregates over a window (and write the plot)."""
    _use_home(args)
    from stock_platform.resources.lake import LakeResource
    from stock_platform.settings import get_settings

    try:
        settings = get_settings()
        start = dt.date.fromisoformat(args.start) if args.start else None
        end = dt.date.fromisoformat(args.end) if args.end else None
    except (SettingsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lake = LakeResource(uri=settings.lake_uri, aws_endpoint_url=settings.aws_endpoint_url)
    print(forecast_report(lake, start, end, Path(args.plot) if args.plot else None))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Stream historical bars (demo or files source) into the landing zone as quote events, a file per day."""
    _use_home(args)
    import polars as pl

    from stock_platform.lib.events import bars_to_events, encode
    from stock_platform.resources import PriceSourceResource
    from stock_platform.resources.landing import LandingResource
    from stock_platform.settings import get_settings, validate_storage_uri

    try:
        settings = get_settings()
        tickers = list(parse_tickers(args.tickers, where="--tickers")) if args.tickers else list(settings.tickers)
        start, end = dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)
        uri = validate_storage_uri(args.landing, where="--landing") if args.landing else settings.landing_uri
        if args.speed < 0:
            raise SettingsError(f"--speed {args.speed}: must be >= 0")
    except (SettingsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    source = PriceSourceResource(source=args.source, files_dir=args.files_dir)
    landing = LandingResource(uri=uri, aws_endpoint_url=settings.aws_endpoint_url)
    bars = source.fetch(tickers, start, end).prices
    days = bars["date"].unique().sort().to_list()
    print(f"replaying {bars.height:,} bars of {len(tickers)} tickers, {len(days)} days, into {uri} "
          f"({args.format}, speed {args.speed:g}x)")
    previous = None
    for day in days:
        if previous is not None and args.speed > 0:
            time.sleep((day - previous).days * 86400 / args.speed)
        events = bars_to_events(bars.filter(pl.col("date") == day), args.source)
        key = f"replay/{day:%Y/%m/%d}/bars.{args.format}"
        landing.write(key, encode(events, args.format))
        print(f"  {key}: {events.height} events", flush=True)
        previous = day
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        options = _apply_demo_environment(args)
        end, why = (dt.date.fromisoformat(args.end), "") if args.end else default_end(options)
        start, end = demo_range(args.years, end)
        _start_follows_the_range(start)  # before anything builds the partitions or caches the settings
        import dagster as dg

        from stock_platform.definitions import defs
        from stock_platform.settings import get_settings

        settings = get_settings()
        settings.check_warehouse_reachable()
    except (SettingsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    tickers = list(settings.tickers)
    print(f"stock-platform demo: {len(tickers)} tickers ({', '.join(tickers)}), {start} .. {end}{why}, "
          f"source={settings.source}")
    print(f"  Dagster instance: {settings.dagster_home}  (open the UI: {ui_command(settings)})")
    print(f"  lake: {settings.lake_uri}")

    try:
        with dg.DagsterInstance.get() as instance:
            names = ", ".join(asset for asset, _ in _daily_assets())
            print(f"[1/3] daily assets: {names} (+ blocking checks) ...", end=" ", flush=True)
            keys, todo, result, seconds = run_daily_stage(instance, defs, start, end, tickers, force=args.force)
            print(f"{len(todo)} partition(s) in one run, {seconds:.1f} s" if todo else "up to date")
            lake = defs.resources["lake"]
            reports = []
            for asset, table in _daily_assets():
                done = instance.get_materialized_partitions(dg.AssetKey(asset))
                step = _step_seconds(instance, result, asset)
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
            print(f"[2/3] tuned_model, week {week}: Ray Tune, {args.trials} trials ...", end=" ", flush=True)
            result, seconds = run_model_stage(instance, defs, week, args.trials, force=args.force)
            print(f"{seconds:.1f} s" if result else "up to date")
            md, text = model_report(instance)
            reports.append(StageReport(
                "tuned_model", md["dagster/row_count"], f"week {week}", _check_summary(instance, "tuned_model", result),
                seconds, f"model v{md['model_version']}" + ("" if result else ", skipped: up to date")))

            first = dt.date.fromisoformat(week) + dt.timedelta(days=7)
            print(f"[3/3] predictions, prediction_evaluation: {first} .. {end} ...", end=" ", flush=True)
            keys, result, seconds = run_forecast_stage(instance, defs, first, end)
            print(f"{len(keys)} partition(s) in one run, {seconds:.1f} s")
            for asset in ("predictions", "prediction_evaluation"):
                [event] = result.asset_materializations_for_node(asset)[:1] or [None]
                rows = event.metadata["dagster/row_count"].value if event else 0
                reports.append(StageReport(asset, rows, f"{len(keys)}/{len(keys)}",
                                           _check_summary(instance, asset, result),
                                           _step_seconds(instance, result, asset) or 0.0))
    except RuntimeError as exc:  # a stage's run failed: its progress line ends with FAILED
        print("FAILED")
        print(str(exc), file=sys.stderr)
        return 1
    print_summary(reports, time.perf_counter() - started)
    print()
    print(text)
    print()
    print(forecast_report(lake, first, end))
    return 0


def _as_of(value: str | None):
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        raise SettingsError(f"--as-of {value!r}: expected a version number or an ISO timestamp") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Print the price snapshot (optionally as of a version/timestamp), its history, or its changes."""
    _use_home(args)
    import polars as pl

    from stock_platform.lib.tables import SNAPSHOT_TABLE
    from stock_platform.resources.lake import LakeError, LakeResource
    from stock_platform.settings import get_settings

    try:
        settings = get_settings()
        tickers = list(parse_tickers(args.tickers, where="--tickers")) if args.tickers else None
        as_of = _as_of(args.as_of)
        start = dt.date.fromisoformat(args.start) if args.start else None
        end = dt.date.fromisoformat(args.end) if args.end else None
    except (SettingsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lake = LakeResource(uri=settings.lake_uri, aws_endpoint_url=settings.aws_endpoint_url)
    pl.Config.set_tbl_rows(args.rows)
    pl.Config.set_tbl_cols(14)
    pl.Config.set_tbl_width_chars(220)
    try:
        if args.history:
            print(lake.history(SNAPSHOT_TABLE, args.rows))
        elif args.changes_since is not None:
            print(lake.changed_keys(SNAPSHOT_TABLE, args.changes_since))
        else:
            snap = lake.snapshot(SNAPSHOT_TABLE, as_of=as_of, include_deleted=args.include_deleted,
                                 start=start, end=end, tickers=tickers)
            print(f"{SNAPSHOT_TABLE} @ {'latest' if as_of is None else as_of}: {snap.height:,} rows")
            print(snap.tail(args.rows))
    except LakeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """List the registered model versions (the lake's serving copies); `--demote`/`--promote` overrule the gate."""
    _use_home(args)
    import polars as pl

    from stock_platform.registry import served_versions, set_promoted
    from stock_platform.definitions import build_resources
    from stock_platform.settings import get_settings

    resources = build_resources(get_settings())
    lake, tracking = resources["lake"], resources["tracking"]
    for version, promoted in ((args.demote, False), (args.promote, True)):
        if version is None:
            continue
        try:
            champion = set_promoted(lake, tracking, version, promoted)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{'promoted' if promoted else 'demoted'} v{version}: predictions {'may' if promoted else 'no longer'} "
              f"use it; champion is now {f'v{champion}' if champion else 'none'} (re-materialize `predictions` "
              "for the days concerned)")
    served = served_versions(lake, tracking.model_name).drop("booster", "model_name")
    pl.Config.set_tbl_rows(50)
    pl.Config.set_tbl_width_chars(200)
    pl.Config.set_fmt_str_lengths(90)
    print(f"{tracking.model_name}: {served.height} registered version(s)")
    print(served)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The prediction API (FastAPI + uvicorn) over the configured lake."""
    _use_home(args)
    from stock_platform.serving.api import serve

    serve(args.host, args.port)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """The Streamlit dashboard over the configured lake (check results from the home's Dagster instance)."""
    _use_home(args)
    from stock_platform.settings import get_settings

    os.environ.setdefault("DAGSTER_HOME", str(get_settings().dagster_home))
    script = Path(__file__).resolve().parent / "serving" / "dashboard.py"
    # Streamlit replaces this process: signals (Ctrl-C, a supervisor's SIGTERM) reach the server itself.
    os.execv(sys.executable, [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
                              "--server.address", args.host, "--server.port", str(args.port),
                              "--browser.gatherUsageStats", "false"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stock-platform", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="materialize every asset on the offline demo market and print a summary")
    demo.add_argument("--tickers", help="comma-separated tickers (default: STOCK_PLATFORM_TICKERS or 10 large caps)")
    demo.add_argument("--years", type=float, default=3.0,
                      help="years of history ending yesterday (default 3: the model needs a year of indicator warm-up)")
    demo.add_argument("--trials", type=int, default=8, help="Ray Tune trials for the model (default 8)")
    demo.add_argument("--out-of-sample-weeks", type=int, default=12,
                      help="weeks at the end that the model does not see and forecasts (default 12)")
    demo.add_argument("--end", help="last day of the range, YYYY-MM-DD (default: yesterday)")
    demo.add_argument("--source", choices=SOURCES, help="price source (default: STOCK_PLATFORM_SOURCE or demo)")
    demo.add_argument("--files-dir", help="directory of per-ticker CSV/Parquet files for --source files")
    demo.add_argument("--home", help="STOCK_PLATFORM_HOME (default ./.stock_platform)")
    demo.add_argument("--force", action="store_true", help="re-run partitions even when up to date")
    demo.set_defaults(func=cmd_demo)

    snap = sub.add_parser("snapshot", help="print the price snapshot table, its history or its changes")
    snap.add_argument("--tickers", help="comma-separated tickers to show")
    snap.add_argument("--start", help="first date, YYYY-MM-DD")
    snap.add_argument("--end", help="last date, YYYY-MM-DD")
    snap.add_argument("--as-of", help="time travel: a table version number or an ISO timestamp")
    snap.add_argument("--include-deleted", action="store_true", help="show soft-deleted rows too")
    snap.add_argument("--history", action="store_true", help="list the table's commits instead")
    snap.add_argument("--changes-since", type=int, metavar="VERSION", help="keys changed after VERSION")
    snap.add_argument("--rows", type=int, default=20, help="rows to print (default 20)")
    snap.add_argument("--home", help="STOCK_PLATFORM_HOME (default ./.stock_platform)")
    snap.set_defaults(func=cmd_snapshot)

    replay = sub.add_parser("replay", help="stream historical bars into the landing zone as quote events")
    replay.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    replay.add_argument("--end", required=True, help="last day, YYYY-MM-DD")
    replay.add_argument("--tickers", help="comma-separated tickers (default: the universe)")
    replay.add_argument("--source", choices=("demo", "files"), default="demo", help="where the bars come from")
    replay.add_argument("--files-dir", help="per-ticker CSV/Parquet files for --source files")
    replay.add_argument("--landing", help="landing zone (default STOCK_PLATFORM_LANDING_URI): a directory or s3://")
    replay.add_argument("--format", choices=("jsonl", "csv", "parquet"), default="jsonl")
    replay.add_argument("--speed", type=float, default=86400.0,
                        help="N x real time: 86400 (default) lands a day's file per second; 0: no waiting")
    replay.add_argument("--home", help="STOCK_PLATFORM_HOME (default ./.stock_platform)")
    replay.set_defaults(func=cmd_replay)

    report = sub.add_parser("report", help="out-of-sample forecasts beside the naive random walk over a window")
    report.add_argument("--start", help="first target day, YYYY-MM-DD")
    report.add_argument("--end", help="last target day, YYYY-MM-DD")
    report.add_argument("--plot", help="write the equity / error plot to this PNG file")
    report.add_argument("--home", help="STOCK_PLATFORM_HOME (default ./.stock_platform)")
    report.set_defaults(func=cmd_report)

    models = sub.add_parser("models", help="list registered model versions; --demote rolls a champion back, "
                            "--promote overrules the gate")
    models.add_argument("--demote", type=int, metavar="VERSION",
                        help="stop using VERSION for predictions; champion moves to the newest promoted one left")
    models.add_argument("--promote", type=int, metavar="VERSION",
                        help="overrule the gate: VERSION may serve predictions (champion: the newest promoted)")
    models.add_argument("--home", help="STOCK_PLATFORM_HOME (default ./.stock_platform)")
    models.set_defaults(func=cmd_models)

    serve = sub.add_parser("serve", help="the prediction API (GET /tickers, /prices, /predictions, /evaluation, "
                           "WebSocket /ws/updates)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--home", help="STOCK_PLATFORM_HOME (default ./.stock_platform)")
    serve.set_defaults(func=cmd_serve)

    dash = sub.add_parser("dashboard", help="the market and prediction dashboard (Streamlit)")
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument("--port", type=int, default=8501)
    dash.add_argument("--home", help="STOCK_PLATFORM_HOME (default ./.stock_platform)")
    dash.set_defaults(func=cmd_dashboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    import dagster as dg

    # single-run backfill policies and partitioned checks are deliberate choices (DESIGN.md)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:  # a bad setting or option, wherever a command reads it
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
