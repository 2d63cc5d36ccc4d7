"""Benchmark: how fast the API and the dashboard start on demo data (goal: under 3 s each).

    python benchmarks/serving_startup.py --home DIR [--repeat 3]     # DIR: a home `stock-platform demo` filled

Times, side by side in one run: `stock-platform serve` from launch to its first `GET /tickers` answer;
`stock-platform dashboard` from launch to Streamlit's health answer, and from launch (and from opening the page,
once the server answers) to the page fully drawn in headless Chromium (every panel: the three charts, forecasts, metrics, check results; Debian `chromium`
driven by Playwright, `pip install -e '.[docs]'`; the browser is started before the clock).
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

def until_answered(args: list[str], url: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-W", "ignore", "-m", "stock_platform.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    answer.read()
                return time.perf_counter() - started
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"{args[0]} exited with {proc.returncode}") from None
                time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(20)


def drawn(browser, env: dict[str, str]) -> tuple[float, float]:
    """Launch the dashboard, open it as soon as it answers, wait until every panel shows: seconds from the launch
    and from opening the page."""
    port = free_port()
    page = browser.new_page(viewport={"width": 1440, "height": 2400})
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-W", "ignore", "-m", "stock_platform.cli", "dashboard", "--port",
                             str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5)
                break
            except OSError:
                time.sleep(0.02)
        opened = time.perf_counter()
        page.goto(f"http://127.0.0.1:{port}")
        page.locator(".js-plotly-plot").nth(2).wait_for(timeout=60_000)
        page.locator("[data-testid=stDataFrame]").wait_for(timeout=60_000)  # the check results
        done = time.perf_counter()
        return done - started, done - opened
    finally:
        page.close()
        proc.terminate()
        proc.wait(20)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    home = Path(args.home).resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCK_PLATFORM_", "DAGSTER_"))}
    env |= {"STOCK_PLATFORM_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    rows: dict[str, list[float]] = {"API: launch -> first GET /tickers": [],
                                    "dashboard: launch -> health": [],
                                    "dashboard: launch -> page fully drawn": [],
                                    "dashboard: page opened -> fully drawn": []}
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    for _ in range(args.repeat):
        port = free_port()
        rows["API: launch -> first GET /tickers"].append(
            until_answered(["serve", "--port", str(port)], f"http://127.0.0.1:{port}/tickers", env))
        port = free_port()
        rows["dashboard: launch -> health"].append(
            until_answered(["dashboard", "--port", str(port)], f"http://127.0.0.1:{port}/_stcore/health", env))
        from_launch, from_open = drawn(browser, env)
        rows["dashboard: launch -> page fully drawn"].append(from_launch)
        rows["dashboard: page opened -> fully drawn"].append(from_open)
    browser.close()
    pw.stop()
    print(f"{'seconds (median of ' + str(args.repeat) + ')':48} {'median':>7} {'max':>7}   goal")
    for name, values in rows.items():
        print(f"{name:48} {statistics.median(values):7.2f} {max(values):7.2f}   < 3 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
