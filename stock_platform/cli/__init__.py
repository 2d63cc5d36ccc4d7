"""The `stock-platform` command.

    stock-platform backfill [--start D] [--end D] [--assets data|forecasts|all] [--tickers] [--source] [--force]
    stock-platform train [--week YYYY-MM-DD] [--trials N] [--force]
    stock-platform status                           # what is materialized, the checks, freshness, the champion
    stock-platform demo [--tickers AAPL,MSFT] [--years 3] [--trials 8] [--source demo] [--home DIR]
    stock-platform snapshot [--tickers AAPL] [--as-of VERSION|TIMESTAMP] [--history] [--changes-since V]
    stock-platform report [--start YYYY-MM-DD] [--end YYYY-MM-DD] [--plot FILE.png]
    stock-platform models [--demote FAMILY/VERSION] [--promote FAMILY/VERSION]
    stock-platform sql "SELECT ..." [--csv]
    stock-platform replay --start D --end D [--tickers] [--source demo|files|sql] [--format jsonl] [--speed N]
    stock-platform serve [--host H] [--port P]      # the API, and the dashboard at /dashboard
    stock-platform token                            # a bearer token for the API, and its hash

Every command takes `--home` (STOCK_PLATFORM_HOME) and builds its settings from the environment with its
options over them (`common.settings_from`); the pipeline's commands live in `pipeline.py`, the demo (their
composition) in `demo.py`, the operator's commands in `operate.py`. A bad option or setting exits with status 2, a
command that could not do its work with 1.
"""

from __future__ import annotations

import argparse
import sys

from stock_platform.cli.common import SHARED, CommandError
from stock_platform.settings import SOURCES, SettingsError


def build_parser() -> argparse.ArgumentParser:
    from stock_platform.cli import demo, operate, pipeline

    parser = argparse.ArgumentParser(prog="stock-platform", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str) -> argparse.ArgumentParser:  # noqa: A002 - argparse's own word
        child = sub.add_parser(name, help=help, parents=[SHARED])
        child.set_defaults(func=func)
        return child

    fill = command("backfill", pipeline.cmd_backfill, "materialize the daily assets for a range of sessions as one "
                   "single-run backfill in the home's Dagster instance, with progress; up-to-date sessions are skipped")
    fill.add_argument("--start", help="first day, YYYY-MM-DD (default: STOCK_PLATFORM_START)")
    fill.add_argument("--end", help="last day, YYYY-MM-DD (default: the last session before New York's today)")
    fill.add_argument("--assets", choices=tuple(pipeline.ASSET_SETS), default="all",
                      help="data: prices, price_snapshots, features; forecasts: predictions, prediction_evaluation; "
                      "all (default)")
    fill.add_argument("--tickers", help="comma-separated tickers (default: STOCK_PLATFORM_TICKERS)")
    fill.add_argument("--source", choices=SOURCES, help="price source (default: STOCK_PLATFORM_SOURCE or demo)")
    fill.add_argument("--files-dir", help="directory of per-ticker CSV/Parquet files for --source files")
    fill.add_argument("--force", action="store_true", help="run every session of the range again")

    fit = command("train", pipeline.cmd_train, "tune every model family on Ray Tune and run the gate for a model week, "
                  "in the home's Dagster instance")
    fit.add_argument("--week", help="the week's Monday, YYYY-MM-DD (default: the last finished week)")
    fit.add_argument("--trials", type=int, help="trials per family (default: STOCK_PLATFORM_TUNING_TRIALS)")
    fit.add_argument("--force", action="store_true", help="train the week again")

    command("status", pipeline.cmd_status, "what is materialized, the latest check results, how far behind the "
            "daily assets are, and the champion")

    run = command("demo", demo.cmd_demo, "materialize every asset on the offline demo market and print a summary")
    run.add_argument("--tickers", help="comma-separated tickers (default: STOCK_PLATFORM_TICKERS or 10 large caps)")
    run.add_argument("--years", type=float, default=3.0,
                     help="years of history ending yesterday (default 3: the model needs a year of indicator warm-up)")
    run.add_argument("--trials", type=int, default=8, help="Ray Tune trials for the model (default 8)")
    run.add_argument("--out-of-sample-weeks", type=int, default=12,
                     help="weeks at the end that the model does not see and forecasts (default 12)")
    run.add_argument("--end", help="last day of the range, YYYY-MM-DD (default: yesterday)")
    run.add_argument("--source", choices=SOURCES, help="price source (default: STOCK_PLATFORM_SOURCE or demo)")
    run.add_argument("--files-dir", help="directory of per-ticker CSV/Parquet files for --source files")
    run.add_argument("--force", action="store_true", help="re-run partitions even when up to date")

    snap = command("snapshot", operate.cmd_snapshot, "print the price snapshot table, its history or its changes")
    snap.add_argument("--tickers", help="comma-separated tickers to show")
    snap.add_argument("--start", help="first date, YYYY-MM-DD")
    snap.add_argument("--end", help="last date, YYYY-MM-DD")
    snap.add_argument("--as-of", help="time travel: a table version number or an ISO timestamp")
    snap.add_argument("--include-deleted", action="store_true", help="show soft-deleted rows too")
    snap.add_argument("--history", action="store_true", help="list the table's commits instead")
    snap.add_argument("--changes-since", type=int, metavar="VERSION", help="keys changed after VERSION")
    snap.add_argument("--rows", type=int, default=20, help="rows to print (default 20)")

    replay = command("replay", operate.cmd_replay, "stream historical bars into the landing zone as quote events")
    replay.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    replay.add_argument("--end", required=True, help="last day, YYYY-MM-DD")
    replay.add_argument("--tickers", help="comma-separated tickers (default: the universe)")
    replay.add_argument("--source", choices=("demo", "files", "sql"), default="demo",
                        help="where the bars come from (sql: STOCK_PLATFORM_SOURCE_URL and _TABLE or _QUERY)")
    replay.add_argument("--files-dir", help="per-ticker CSV/Parquet files for --source files")
    replay.add_argument("--landing", help="landing zone (default STOCK_PLATFORM_LANDING_URI): a directory or s3://")
    replay.add_argument("--format", choices=("jsonl", "csv", "parquet"), default="jsonl")
    replay.add_argument("--speed", type=float, default=86400.0,
                        help="N x real time: 86400 (default) lands a day's file per second; 0: no waiting")

    report = command("report", operate.cmd_report, "out-of-sample forecasts beside the naive random walk over a window")
    report.add_argument("--start", help="first target day, YYYY-MM-DD")
    report.add_argument("--end", help="last target day, YYYY-MM-DD")
    report.add_argument("--plot", help="write the equity / error plot to this PNG file")
    report.add_argument("--top-k", type=int, help="tickers per leg of the long-short portfolio (default: a fifth)")
    report.add_argument("--cost-bps", type=float, help="transaction costs per side in basis points (default 5)")

    models = command("models", operate.cmd_models, "list registered model versions; --demote rolls a champion back, "
                     "--promote overrules the gate")
    models.add_argument("--demote", metavar="FAMILY/VERSION",
                        help="stop using a version (e.g. lightgbm/3) for predictions; champion moves to the newest "
                        "promoted one left")
    models.add_argument("--promote", metavar="FAMILY/VERSION",
                        help="overrule the gate: the version (e.g. ridge/2) may serve predictions (champion: the "
                        "newest promoted)")

    sql = command("sql", operate.cmd_sql, "run a read-only SQL query (DuckDB) over the lake's Delta tables, each a "
                  "view of its name (prices, price_snapshots, features, predictions, ...)")
    sql.add_argument("query", help='one SELECT, e.g. "SELECT ticker, count(*) FROM prices GROUP BY 1"')
    sql.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    sql.add_argument("--rows", type=int, default=50, help="rows of a table to show (default 50)")

    command("maintain", operate.cmd_maintain, "compact, checkpoint and vacuum the lake's tables (the lake_maintenance "
            "job; migrates tables of the earlier per-date layout)")

    command("token", operate.cmd_token, "make a bearer token for the API and the hash STOCK_PLATFORM_API_TOKENS "
            "lists (the token is shown once)")
    server = command("serve", operate.cmd_serve, "the prediction API (GET /tickers, /prices, /predictions, "
                     "/evaluation, WebSocket /ws/updates) and the dashboard (/dashboard)")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8000)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    import dagster as dg

    # single-run backfill policies and partitioned checks are deliberate choices (see the README)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    # the partition-aware freshness checks have no FreshnessPolicy equivalent yet (see alerts.py)
    warnings.filterwarnings("ignore", category=dg.SupersessionWarning)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:  # a bad setting or option, wherever a command reads it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
