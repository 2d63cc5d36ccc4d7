"""Benchmark: how fast the API and its dashboard start on demo data (goal: under 3 s each).

    python benchmarks/serving_startup.py --home DIR [--repeat 3]     # DIR: a home `stock-platform demo` filled

Times, side by side in one run: `stock-platform serve` from launch to its first `GET /tickers` answer, and from
launch to the dashboard (`/dashboard`) fully drawn in headless Chromium (every panel: the five charts, the
forecast, the metrics, the check results; Debian `chromium` driven by Playwright, `pip install -e '.[docs]'`; the
browser is started before the clock); and the page opened on a running server until fully drawn (first visit of
a fresh browser page).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stock_platform_tests.deployment import free_port  # noqa: E402


def launch(port: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-W", "ignore", "-m", "stock_platform.cli", "serve", "--port",
                             str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def until_answered(proc: subprocess.Popen, url: str) -> None:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                answer.read()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited with {proc.returncode}") from None
            time.sleep(0.02)


def drawn(page, url: str) -> None:
    """Open the dashboard and wait until every panel shows."""
    page.goto(url)
    page.locator("svg").nth(4).wait_for(timeout=60_000)  # the last of the five charts
    page.locator("table").nth(1).wait_for(timeout=60_000)  # the check results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    home = Path(args.home).resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCK_PLATFORM_", "DAGSTER_"))}
    env |= {"STOCK_PLATFORM_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    rows: dict[str, list[float]] = {"API: launch -> first GET /tickers": [],
                                    "dashboard: launch -> page fully drawn": [],
                                    "dashboard: page opened -> fully drawn": []}
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    for _ in range(args.repeat):
        for name, path in (("API: launch -> first GET /tickers", "/tickers"),
                           ("dashboard: launch -> page fully drawn", "/dashboard")):
            port = free_port()
            page = browser.new_page(viewport={"width": 1440, "height": 2400})
            started = time.perf_counter()
            proc = launch(port, env)
            try:
                until_answered(proc, f"http://127.0.0.1:{port}/health")
                if path == "/tickers":
                    until_answered(proc, f"http://127.0.0.1:{port}/tickers")
                else:
                    drawn(page, f"http://127.0.0.1:{port}/dashboard")
                rows[name].append(time.perf_counter() - started)
                if path == "/dashboard":  # the server is up: a fresh page's first visit
                    fresh = browser.new_page(viewport={"width": 1440, "height": 2400})
                    opened = time.perf_counter()
                    drawn(fresh, f"http://127.0.0.1:{port}/dashboard?ticker=MSFT")
                    rows["dashboard: page opened -> fully drawn"].append(time.perf_counter() - opened)
                    fresh.close()
            finally:
                page.close()
                proc.terminate()
                proc.wait(20)
    browser.close()
    pw.stop()
    print(f"{'seconds (median of ' + str(args.repeat) + ')':48} {'median':>7} {'max':>7}   goal")
    for name, values in rows.items():
        print(f"{name:48} {statistics.median(values):7.2f} {max(values):7.2f}   < 3 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
