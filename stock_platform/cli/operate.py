"""The operator's commands: `snapshot`, `report`, `models`, `sql`, `replay`, `maintain`, `serve` (the API and the
dashboard), `token`."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

from stock_platform.cli.common import (QUIET_LOGS, CommandError, date_option, open_instance, resources,
                                       settings_from, step_errors, tickers_option)
from stock_platform.settings import SettingsError


def selection_report(lake, end: dt.date | None = None) -> str | None:
    """The gate's decision table of the latest week up to `end`: every family's candidate and the champion beside
    the naive random walk on the held-out window, with Diebold-Mariano against it; None before the first gate."""
    import polars as pl

    from stock_platform.lib.markdown import markdown_table
    from stock_platform.lib.tables import MODEL_SELECTION_TABLE

    if not lake.exists(MODEL_SELECTION_TABLE):
        return None
    table = lake.read(MODEL_SELECTION_TABLE, end=end, date_column="train_end")
    if table.is_empty():
        return None
    week = table.filter(pl.col("train_end") == table["train_end"].max())
    columns = ["model", "role", "rmse", "mase", "hit_rate", "ic", "dm_stat", "dm_p_value", "promoted"]
    return (f"model selection, week ending {week['train_end'][0]}: held-out {week['days'][0]} sessions, "
            f"{week['rows'][0]:,} forecasts per model (DM: Diebold-Mariano against the naive random walk on daily "
            f"squared errors; negative = lower loss)\n" + markdown_table(week.select(columns).rows(), columns))


def forecast_report(lake, start: dt.date | None, end: dt.date | None, plot: Path | None = None, *,
                    top_k: int | None = None, cost_bps: float | None = None) -> str:
    """Out-of-sample forecasts over [start, end] beside the naive random walk, with Qlib's measures (the long-short
    portfolio's k and costs: see `lib.evaluation.signal_and_portfolio`), as text; optional PNG plot."""
    import polars as pl

    from stock_platform.lib.evaluation import plot_png, summarize, summary_markdown
    from stock_platform.lib.tables import EVALUATION_TABLE

    if not lake.exists(EVALUATION_TABLE):
        return "no evaluated predictions yet (materialize `predictions` and `prediction_evaluation`)"
    table = lake.read(EVALUATION_TABLE, start, end, date_column="target_date")
    if table.is_empty():
        return f"no evaluated predictions for {start or '...'} .. {end or '...'}"
    if "model_name" not in table.columns:  # evaluated before rows named their model (a lake of earlier code)
        table = table.with_columns(model_name=pl.lit(None, pl.String))
    served = table.group_by("model_name", "model_version").len().sort("model_name", "model_version", nulls_last=True)
    lines = [f"out-of-sample forecasts {table['target_date'].min()} .. {table['target_date'].max()}, served by "
             + ", ".join(f"{name or 'an unnamed model'} v{version} ({n:,})" for name, version, n in served.iter_rows())
             + ":", summary_markdown(summarize(table, top_k=top_k, **({} if cost_bps is None else
                                                                       {"cost_bps": cost_bps})))]
    if plot is not None:
        plot.write_bytes(plot_png(table))
        lines.append(f"plot: {plot}")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    """Print the evaluation's aggregates over a window (and write the plot)."""
    settings = settings_from(args)
    start, end = date_option(args.start, "--start"), date_option(args.end, "--end")
    if args.top_k is not None and args.top_k < 1 or args.cost_bps is not None and args.cost_bps < 0:
        raise SettingsError(f"--top-k {args.top_k} / --cost-bps {args.cost_bps}: k must be >= 1, costs >= 0")
    lake = resources(settings)["lake"]
    selection = selection_report(lake, end)
    if selection:
        print(selection + "\n")
    print(forecast_report(lake, start, end, Path(args.plot) if args.plot else None, top_k=args.top_k,
                          cost_bps=args.cost_bps))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Stream historical bars (demo, files or sql source) into the landing zone as quote events, a file per day."""
    import polars as pl

    from stock_platform.lib.events import bars_to_events, encode
    from stock_platform.resources import PriceSourceResource
    from stock_platform.resources.landing import LandingResource
    from stock_platform.settings import validate_sql_source, validate_storage_uri

    settings = settings_from(args)
    tickers = tickers_option(args.tickers) or list(settings.tickers)
    start, end = date_option(args.start, "--start"), date_option(args.end, "--end")
    uri = validate_storage_uri(args.landing, where="--landing") if args.landing else settings.landing_uri
    if args.speed < 0:
        raise SettingsError(f"--speed {args.speed}: must be >= 0")
    sql = {}
    if args.source == "sql":  # the table or query of STOCK_PLATFORM_SOURCE_URL / _TABLE / _QUERY
        url, table, query = validate_sql_source(settings.source_url, settings.source_table, settings.source_query)
        sql = {"url": url, "table": table, "query": query}
    source = PriceSourceResource(source=args.source, files_dir=args.files_dir, **sql)
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


def as_of_option(value: str | None):
    """`--as-of`: a table version (digits) or an ISO timestamp (UTC when it names no zone)."""
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
    import polars as pl

    from stock_platform.lib.tables import SNAPSHOT_TABLE
    from stock_platform.lake import LakeError

    settings = settings_from(args)
    tickers, as_of = tickers_option(args.tickers), as_of_option(args.as_of)
    start, end = date_option(args.start, "--start"), date_option(args.end, "--end")
    lake = resources(settings)["lake"]
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
        raise CommandError(str(exc)) from None
    return 0


def model_reference(text: str, tracking) -> tuple[str, int]:
    """`FAMILY/VERSION` or `MODEL_NAME/VERSION` (e.g. `ridge/3`, `stock_platform_lgbm/2`) as (model name, version)."""
    from stock_platform.lib.families import FAMILIES

    name, _, version = text.rpartition("/")
    name = tracking.model_name(FAMILIES[name]) if name in FAMILIES else name
    if not version.isdigit() or name not in tracking.model_names():
        raise CommandError(f"model {text!r}: name a version as FAMILY/VERSION, FAMILY one of {', '.join(FAMILIES)} "
                           f"(or a registered model: {', '.join(tracking.model_names())}), e.g. lightgbm/1")
    return name, int(version)


def cmd_models(args: argparse.Namespace) -> int:
    """List the registered model versions of every family (the lake's serving copies); `--demote`/`--promote`
    overrule the gate."""
    import polars as pl

    from stock_platform.registry import served_versions, set_promoted

    built = resources(settings_from(args))
    lake, tracking = built["lake"], built["tracking"]
    for ref, promoted in ((args.demote, False), (args.promote, True)):
        if ref is None:
            continue
        name, version = model_reference(ref, tracking)
        try:
            champion = set_promoted(lake, tracking, name, version, promoted)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        print(f"{'promoted' if promoted else 'demoted'} {name} v{version}: predictions "
              f"{'may' if promoted else 'no longer'} use it; champion is now "
              f"{'{} v{}'.format(*champion) if champion else 'none: the naive random walk serves'} "
              "(re-materialize `predictions` for the days concerned)")
    served = served_versions(lake).drop("booster")
    pl.Config.set_tbl_rows(50)
    pl.Config.set_tbl_width_chars(200)
    pl.Config.set_fmt_str_lengths(90)
    print(f"{served.height} registered version(s) of {', '.join(tracking.model_names())}")
    print(served)
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    """Run one read-only query over the lake (DuckDB's delta extension) and print the result."""
    import polars as pl

    from stock_platform.resources.sql import SQLError, query

    try:
        result = query(resources(settings_from(args))["lake"], args.query)
    except SQLError as exc:
        raise CommandError(f"sql: {exc}") from None
    if args.csv:
        sys.stdout.write(result.write_csv())
        return 0
    pl.Config.set_tbl_rows(args.rows)
    pl.Config.set_tbl_width_chars(200)
    print(result)
    print(f"{result.height:,} row(s)")
    return 0


def cmd_maintain(args: argparse.Namespace) -> int:
    """Run the `lake_maintenance` job in the home's Dagster instance (it shows in the UI) and print what it did."""
    from stock_platform.automation import lake_maintenance

    settings = settings_from(args)
    with open_instance(settings) as instance:
        result = lake_maintenance.execute_in_process(instance=instance, resources={"lake": resources(settings)["lake"]},
                                                     run_config=QUIET_LOGS, raise_on_error=False,
                                                     tags={"stock_platform/launched_by": "cli"})
    if not result.success:
        raise CommandError(f"lake_maintenance run {result.run_id} failed: {step_errors(result)}")
    for event in result.all_events:
        if event.event_type_value == "STEP_OUTPUT":
            print(event.event_specific_data.metadata["tables"].value)
    print(f"lake_maintenance run {result.run_id}: done")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The prediction API (FastAPI + uvicorn) over the configured lake."""
    from stock_platform.serving.api import serve

    serve(args.host, args.port, settings_from(args))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """A new API token (shown once) and its hash, for STOCK_PLATFORM_API_TOKENS."""
    from stock_platform.serving.auth import new_token

    token, digest = new_token()
    print(f"token (give it to the client; it is not stored anywhere): {token}")
    print(f"hash (add it to STOCK_PLATFORM_API_TOKENS, comma-separated): {digest}")
    return 0
