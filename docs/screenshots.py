"""Capture the README's UI screenshots from a real deployment.

    python docs/screenshots.py [--postgres postgresql+psycopg2://postgres@127.0.0.1:5432/test]

Starts the production processes natively (as test_deployment.py does: code location gRPC server, webserver,
daemon, instance on a fresh Postgres database), backfills prices -> price_snapshots -> features for five
tickers over fifteen months through the webserver's GraphQL API, then photographs pages of the running UI with
headless Chromium (Debian package `chromium`, driven by Playwright: `pip install -e '.[docs]'`) into docs/.
The database is dropped afterwards. `dashboard` starts `stock-platform serve` on the demo's home and photographs
its dashboard page.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DOCS = Path(__file__).resolve().parent
TICKERS = ("AAPL", "MSFT", "NVDA", "JPM", "XOM")
FIRST, LAST = dt.date(2023, 1, 3), dt.date(2024, 3, 28)


def screenshot(page, url: str, out: Path, *, wait_for_text: str) -> None:
    """Open `url`, wait until `wait_for_text` shows, dismiss Dagster's newsletter prompt, save a PNG."""
    page.goto(url)
    page.get_by_text(wait_for_text).first.wait_for(timeout=30_000)
    try:  # the prompt appears a moment after the page, once per browser profile
        page.get_by_role("button", name="Skip").click(timeout=5_000)
    except Exception:  # noqa: BLE001 - no prompt this time
        pass
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out))
    print(f"wrote {out.relative_to(DOCS.parent)} ({out.stat().st_size:,} bytes)")


def browser_page(pw, chromium: str):
    browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
    return browser, browser.new_page(viewport={"width": 1440, "height": 860})


def dashboard(chromium: str, home: Path) -> None:
    """The dashboard of `stock-platform serve` on the demo's home (complete as it arrives: SVG, no script)."""
    import os
    import subprocess
    import urllib.request

    from playwright.sync_api import sync_playwright

    from stock_platform_tests.deployment import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCK_PLATFORM_", "DAGSTER_"))}
    proc = subprocess.Popen([sys.executable, "-m", "stock_platform.cli", "serve", "--home", str(home),
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as pw:
            browser, page = browser_page(pw, chromium)
            page.set_viewport_size({"width": 1440, "height": 1900})
            page.goto(f"http://127.0.0.1:{port}/dashboard")
            out = DOCS / "dashboard.png"
            page.screenshot(path=str(out), full_page=True)
            print(f"wrote {out.relative_to(DOCS.parent)} ({out.stat().st_size:,} bytes)")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(20)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("ui", "dashboard"))
    ap.add_argument("--postgres", default="postgresql+psycopg2://postgres@127.0.0.1:5432/test",
                    help="ui: a Postgres server where a temporary database may be created")
    ap.add_argument("--home", help="dashboard: a STOCK_PLATFORM_HOME the demo filled")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("error: no chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    if args.what == "dashboard":
        if not args.home:
            print("error: dashboard needs --home", file=sys.stderr)
            return 2
        dashboard(chromium, Path(args.home).resolve())
        return 0

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from stock_platform.lib.calendar import trading_days
    from stock_platform_tests.deployment import Deployment, launch_backfill, stack, wait_for_backfill

    name = f"sp_docs_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        home, env = stack(Path(tempfile.mkdtemp(prefix="sp_docs_")), make_url(args.postgres).set(database=name),
                          TICKERS, FIRST.isoformat())
        with Deployment(home, env) as deployment:
            sessions = [d.isoformat() for d in trading_days(FIRST, LAST)]
            backfill = launch_backfill(deployment, ["prices", "price_snapshots", "features"], sessions,
                                       title="prices -> features, 2023-01 .. 2024-03")
            done = wait_for_backfill(deployment, backfill)
            print(f"backfill {backfill}: {done['status']}, {done['numPartitions']} partitions")
            from playwright.sync_api import sync_playwright

            with sync_playwright() as pw:
                browser, page = browser_page(pw, chromium)
                ui = deployment.url
                screenshot(page, f"{ui}/assets/prediction_evaluation?view=lineage&lineageScope=upstream&lineageDepth=6",
                           DOCS / "asset-lineage.png", wait_for_text="price_snapshots")
                screenshot(page, f"{ui}/runs/b/{backfill}", DOCS / "backfill.png", wait_for_text="price_snapshots")
                screenshot(page, f"{ui}/assets/features?view=partitions", DOCS / "features-partitions.png",
                           wait_for_text="Partitions Selected")
                screenshot(page, f"{ui}/assets/prices?view=checks", DOCS / "prices-checks.png", wait_for_text="prices_schema")
                # the column schema (from the pandera contract) and column lineage of the latest materialization,
                # and the freshness policy's status, on the asset's overview
                screenshot(page, f"{ui}/assets/features?view=overview", DOCS / "features-columns.png",
                           wait_for_text="rsi_14")
                browser.close()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
