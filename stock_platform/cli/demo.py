"""`stock-platform demo`: every asset for a universe on the offline demo market (or the configured source),
materialized inside a real Dagster instance under STOCK_PLATFORM_HOME (runs, materializations and checks show in
`dagster dev` afterwards), then a summary. The composition of `backfill` (the data), `train` (a week some weeks
before the end) and `backfill --assets forecasts --force` (the weeks after it, out of sample, always run again: the
champion may have changed since): see `pipeline.py`. The data and the trained week are not run again when up to
date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from dataclasses import dataclass

from stock_platform.cli import pipeline
from stock_platform.cli.common import CommandError, date_option, open_instance, settings_from, tickers_option
from stock_platform.cli.operate import forecast_report
from stock_platform.settings import SettingsError

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


def _daily_tables() -> list[tuple[str, str]]:
    """(asset key, lake table) of the data assets the demo materializes, in dependency order."""
    from stock_platform.lib.tables import FEATURES_TABLE, PRICES_TABLE, SNAPSHOT_TABLE

    return list(zip(pipeline.DATA_ASSETS, (PRICES_TABLE, SNAPSHOT_TABLE, FEATURES_TABLE)))


def _step_seconds(result, asset: str) -> float | None:
    """Wall time of the asset's step in the run (None when the run did not run it). From the run's events in
    memory: the instance's step stats would read back every event of the run (6,000+ for a ten-year backfill)."""
    if result is None:
        return None
    return next((e.event_specific_data.duration_ms / 1000 for e in result.all_events
                 if e.is_step_success and e.step_key == asset), None)


def _check_summary(instance, asset: str, result) -> str:
    import dagster as dg

    from stock_platform.definitions import defs

    check_keys = pipeline.run_checks(defs, [asset])
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


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    tickers = tickers_option(args.tickers)
    settings = settings_from(args, STOCK_PLATFORM_TICKERS=",".join(tickers) if tickers else None,
                             STOCK_PLATFORM_SOURCE=args.source, STOCK_PLATFORM_FILES_DIR=args.files_dir)
    end, why = (date_option(args.end, "--end"), "") if args.end else pipeline.default_end(settings)
    start, end = demo_range(args.years, end)
    settings = pipeline.prepare(settings, start)
    import dagster as dg

    from stock_platform.definitions import defs

    tickers = list(settings.tickers)
    print(f"stock-platform demo: {len(tickers)} tickers ({', '.join(tickers)}), {start} .. {end}{why}, "
          f"source={settings.source}")
    print(f"  Dagster instance: {settings.dagster_home}  (open the UI: {pipeline.ui_command(settings)})")
    print(f"  lake: {settings.lake_uri}")

    try:
        with open_instance(settings) as instance:
            names = ", ".join(pipeline.DATA_ASSETS)
            print(f"[1/3] daily assets: {names} (+ blocking checks) ...", end=" ", flush=True)
            data = pipeline.backfill(instance, defs, start, end, tickers, assets=pipeline.DATA_ASSETS,
                                     force=args.force, launched_by="demo")
            print(f"{len(data.todo)} partition(s) in one run, {data.seconds:.1f} s" if data.todo else "up to date")
            lake = defs.resources["lake"]
            reports = []
            for asset, table in _daily_tables():
                done = instance.get_materialized_partitions(dg.AssetKey(asset))
                reports.append(StageReport(
                    asset, lake.read(table, start, end, columns=["ticker"]).height,
                    f"{sum(k in done for k in data.keys)}/{len(data.keys)}",
                    _check_summary(instance, asset, data.result), _step_seconds(data.result, asset) or 0.0,
                    "" if data.todo else "skipped: up to date"))

            need = MIN_MODEL_YEARS + args.out_of_sample_weeks / 52
            if args.years < need:
                print(f"[2/3] tuned_model: skipped: --years {args.years:g} is too short (it needs >= {need:.2f} years: "
                      "one of indicator warm-up, walk-forward folds, a held-out window, then the forecast weeks)")
                print_summary(reports, time.perf_counter() - started)
                return 0
            # The model is trained up to `--out-of-sample-weeks` before the end; the days after it are forecast.
            week = pipeline.model_week(end - dt.timedelta(weeks=args.out_of_sample_weeks))
            print(f"[2/3] model families and tuned_model, week {week}: Ray Tune, {args.trials} trials per family ...",
                  end=" ", flush=True)
            result, seconds = pipeline.train(instance, defs, week, args.trials, force=args.force, launched_by="demo")
            print(f"{seconds:.1f} s" if result else "up to date")
            md, text = pipeline.gate_report(instance)
            reports.append(StageReport(
                "tuned_model", md["dagster/row_count"], f"week {week}", _check_summary(instance, "tuned_model", result),
                seconds, (f"promoted {md['promoted']}" if md["promoted"] else "none promoted")
                + ("" if result else ", skipped: up to date")))

            # always run again: the champion may have changed since (a new week, `models --promote/--demote`)
            first = dt.date.fromisoformat(week) + dt.timedelta(days=7)
            print(f"[3/3] predictions, prediction_evaluation: {first} .. {end} ...", end=" ", flush=True)
            forecasts = pipeline.backfill(instance, defs, first, end, tickers, assets=pipeline.FORECAST_ASSETS,
                                          force=True, launched_by="demo")
            print(f"{len(forecasts.todo)} partition(s) in one run, {forecasts.seconds:.1f} s")
            for asset in pipeline.FORECAST_ASSETS:
                done = instance.get_materialized_partitions(dg.AssetKey(asset))
                reports.append(StageReport(
                    asset, _rows(lake, asset, first, end), f"{sum(k in done for k in forecasts.keys)}/"
                    f"{len(forecasts.keys)}", _check_summary(instance, asset, forecasts.result),
                    _step_seconds(forecasts.result, asset) or 0.0))
    except RuntimeError as exc:  # a stage's run failed: its progress line ends with FAILED
        print("FAILED")
        raise CommandError(str(exc)) from None
    print_summary(reports, time.perf_counter() - started)
    print()
    print(text)
    print()
    print(forecast_report(lake, first, end))
    return 0


def _rows(lake, asset: str, start: dt.date, end: dt.date) -> int:
    """Rows of a forecast asset's lake table over [start, end] (predictions by day, evaluations by target day)."""
    from stock_platform.lib.tables import EVALUATION_TABLE, PREDICTIONS_TABLE

    table, column = {"predictions": (PREDICTIONS_TABLE, "date"),
                     "prediction_evaluation": (EVALUATION_TABLE, "target_date")}[asset]
    if not lake.exists(table):
        return 0
    return lake.read(table, start, end, date_column=column, columns=["ticker"]).height
