"""Benchmark: the API before the read model (git revision `--baseline`: every request reads the Delta tables) side
by side with today's (the read model: the served tables in memory per version), in one run, on two lakes: the
demo's size (10 tickers x 3 years, a year of forecasts) and `--tickers` x `--years` (default 500 x 10).

  single requests: p50 / p99 per endpoint, one client, `--requests` each;
  load: 4 and 16 concurrent clients (threads, one keep-alive connection each) for `--seconds`, mixed endpoints:
        requests/s, p50, p99, 5xx;
  commit -> visible: one new session upserted into price_snapshots, until `/prices` returns it (median of 3);
  memory: the API process's RSS after the first requests.

Each API runs in its own process (uvicorn, one worker), on loopback, one at a time; client and server share the
machine's cores, the same way for both.

    python benchmarks/serving.py [--tickers 500] [--years 10] [--seconds 30] [--requests 100] [--baseline b3b5dc1~1]
        [--lake DIR]   (also a copy of an existing lake, e.g. a demo home's: its many small commits and files)
    python benchmarks/serving.py --serve current|baseline --uri LAKE --port P   (what the benchmark starts)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------------------------- servers
def baseline_app(rev: str, lake):
    """`create_app` of git revision `rev` (api.py and queries.py as they were)."""
    def load(path: str, name: str, replace: tuple[str, str] | None = None) -> types.ModuleType:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], check=True, capture_output=True,
                                text=True).stdout
        if replace:
            source = source.replace(*replace)
        module = types.ModuleType(name)
        sys.modules[name] = module
        exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)  # noqa: S102
        return module

    load("stock_platform/serving/queries.py", "baseline_queries")
    api = load("stock_platform/serving/api.py", "baseline_api",
               ("from stock_platform.serving import queries as q", "import baseline_queries as q"))
    return api.create_app(lake)


def serve(kind: str, uri: str, port: int, rev: str) -> None:
    import uvicorn

    from stock_platform.resources.lake import LakeResource
    from stock_platform.serving.api import create_app

    lake = LakeResource(uri=uri)
    app = baseline_app(rev, lake) if kind == "baseline" else create_app(lake)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, kind: str, uri: str, rev: str):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-W", "ignore", __file__, "--serve", kind, "--uri", uri,
                                      "--port", str(self.port), "--baseline", rev])
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/health", timeout=30).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("the API did not start")

    def rss_mb(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/status").read_text().split("VmRSS:")[1].split()
        return int(fields[0]) / 1024

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(30)


# ------------------------------------------------------------------------------------------------- lakes
def build_lake(root: Path, tickers: int, years: int):
    """Snapshots of `tickers` x `years` (demo market), forecasts for the last year, their evaluation."""
    import polars as pl

    from stock_platform.assets.lake import ensure_snapshot_table
    from stock_platform.lib.demo_market import generate
    from stock_platform.lib.evaluation import evaluate
    from stock_platform.lib.tables import (EVALUATION_TABLE, PRECOMBINE, PREDICTIONS_TABLE, SNAPSHOT_KEYS,
                                           SNAPSHOT_TABLE)
    from stock_platform.resources.lake import LakeResource

    end = dt.date(2024, 12, 31)
    start = dt.date(end.year - years + 1, 1, 2)
    names = [f"T{i:03d}" for i in range(tickers)]
    bars = generate(names, start, end).with_columns(_is_deleted=pl.lit(False))
    lake = LakeResource(uri=str(root))
    ensure_snapshot_table(lake)
    lake.upsert(SNAPSHOT_TABLE, bars, keys=SNAPSHOT_KEYS, order_by=PRECOMBINE)
    year = bars.filter(pl.col("date") >= dt.date(end.year, 1, 1)).sort("ticker", "date")
    preds = (year.with_columns(target_date=pl.col("date").shift(-1).over("ticker")).drop_nulls("target_date")
             .select("ticker", "date", "target_date", pred_return=pl.lit(0.001), pred_close=pl.col("close") * 1.001,
                     model_name=pl.lit("bench"), model_version=pl.lit(1, pl.Int32),
                     created_at=pl.lit(dt.datetime(2025, 1, 1, tzinfo=dt.UTC)).cast(pl.Datetime("us", "UTC"))))
    lake.replace_dates(PREDICTIONS_TABLE, preds, preds["date"].min(), end, change_data_feed=True)
    table = evaluate(preds, year.select("ticker", "date", "close", "dividends", "splits"))
    lake.replace_dates(EVALUATION_TABLE, table, table["target_date"].min(), end, date_column="target_date")
    return lake, names, bars.height + preds.height + table.height


# ------------------------------------------------------------------------------------------------- clients
def endpoints(names: list[str], rng: random.Random) -> list[str]:
    t = rng.choice(names)
    return [f"/prices/{t}?limit=250", f"/predictions/{t}?limit=250", "/tickers", "/evaluation?window=20"]


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


def single(base: str, names: list[str], requests: int) -> dict[str, tuple[float, float]]:
    import httpx

    rng = random.Random(7)
    out = {}
    with httpx.Client(base_url=base, timeout=60) as http:
        for kind in ("prices", "predictions", "tickers", "evaluation"):
            times = []
            for _ in range(requests):
                url = next(u for u in endpoints(names, rng) if u.lstrip("/").startswith(kind))
                started = time.perf_counter()
                assert http.get(url).status_code == 200, url
                times.append((time.perf_counter() - started) * 1000)
            out[kind] = (statistics.median(times), percentile(times, 99))
    return out


def load(base: str, names: list[str], clients: int, seconds: float) -> tuple[float, float, float, int]:
    import httpx

    latencies: list[float] = []
    errors = [0]
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        rng = random.Random(i)
        with httpx.Client(base_url=base, timeout=60) as http:
            while time.monotonic() < deadline:
                url = rng.choice(endpoints(names, rng))
                started = time.perf_counter()
                status = http.get(url).status_code
                latencies.append((time.perf_counter() - started) * 1000)
                errors[0] += status >= 500

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    return len(latencies) / wall, statistics.median(latencies), percentile(latencies, 99), errors[0]


def visible_after_commit(base: str, lake, names: list[str], day: dt.date) -> float:
    """Seconds from a committed upsert of `day` to `/prices` returning it."""
    import httpx
    import polars as pl

    from stock_platform.lib.demo_market import generate
    from stock_platform.lib.tables import PRECOMBINE, SNAPSHOT_KEYS, SNAPSHOT_TABLE

    bars = generate(names, day, day).with_columns(_is_deleted=pl.lit(False))
    lake.upsert(SNAPSHOT_TABLE, bars, keys=SNAPSHOT_KEYS, order_by=PRECOMBINE)
    committed = time.perf_counter()
    with httpx.Client(base_url=base, timeout=60) as http:
        while True:
            body = http.get(f"/prices/{names[0]}", params={"start": day.isoformat()}).json()
            if body["total"]:
                return time.perf_counter() - committed
            time.sleep(0.01)


# ------------------------------------------------------------------------------------------------- main
def measure(label: str, lake, names: list[str], rows: int, args) -> None:
    from stock_platform.lib.calendar import trading_days

    print(f"\n## {label}: {len(names)} tickers, {rows:,} served rows", flush=True)
    days = iter(trading_days(dt.date(2025, 1, 2), dt.date(2025, 3, 31)))
    results = {}
    for kind in ("baseline", "current"):
        with Server(kind, lake.uri, args.baseline) as server:
            single(server.base, names, 3)  # warm: the read model loads, caches fill
            rss = server.rss_mb()
            one = single(server.base, names, args.requests)
            loads = {n: load(server.base, names, n, args.seconds) for n in (4, 16)}
            visible = statistics.median(visible_after_commit(server.base, lake, names, next(days)) for _ in range(3))
            results[kind] = (one, loads, visible, rss)
        print(f"  {kind} done", flush=True)
    print("\n| measure | before (every request reads the lake) | read model | ratio |\n|---|---|---|---|")
    (b1, bl, bv, brss), (c1, cl, cv, crss) = results["baseline"], results["current"]
    for kind in b1:
        for i, stat in enumerate(("p50", "p99")):
            print(f"| {kind} {stat} (ms), one client | {b1[kind][i]:.1f} | {c1[kind][i]:.2f} | "
                  f"{b1[kind][i] / c1[kind][i]:.0f}x |")
    for n in (4, 16):
        (br, bp50, bp99, be), (cr, cp50, cp99, ce) = bl[n], cl[n]
        print(f"| {n} clients: req/s | {br:.1f} | {cr:.1f} | {cr / br:.0f}x |")
        print(f"| {n} clients: p50 / p99 (ms) | {bp50:.0f} / {bp99:.0f} | {cp50:.1f} / {cp99:.1f} | |")
        print(f"| {n} clients: 5xx | {be} | {ce} | |")
    print(f"| commit -> visible (s) | {bv:.2f} | {cv:.2f} | |")
    print(f"| API process RSS (MB) | {brss:.0f} | {crss:.0f} | |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tickers", type=int, default=500)
    ap.add_argument("--years", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--baseline", default="b3b5dc1~1", help="git revision of the API before the read model")
    ap.add_argument("--serve", choices=("current", "baseline"))
    ap.add_argument("--uri")
    ap.add_argument("--port", type=int)
    ap.add_argument("--lake", help="also measure a copy of this local lake (e.g. HOME/lake of a demo home)")
    args = ap.parse_args()
    import warnings

    warnings.simplefilter("ignore")
    if args.serve:
        serve(args.serve, args.uri, args.port, args.baseline)
        return 0
    os.environ.setdefault("POLARS_MAX_THREADS", "2")
    with tempfile.TemporaryDirectory() as tmp:
        if args.lake:
            import shutil

            import polars as pl

            from stock_platform.lib.tables import SNAPSHOT_TABLE
            from stock_platform.resources.lake import LakeResource

            shutil.copytree(args.lake, Path(tmp) / "copy")
            lake = LakeResource(uri=str(Path(tmp) / "copy"))
            names = lake.snapshot(SNAPSHOT_TABLE).get_column("ticker").unique().sort().to_list()
            rows = sum(lake.scan(t).select(pl.len()).collect().item() for t in ("price_snapshots", "predictions",
                                                                                "prediction_evaluation"))
            measure(f"a copy of {args.lake}", lake, names, rows, args)
        for label, tickers, years in (("demo-sized lake", 10, 3), ("large lake", args.tickers, args.years)):
            started = time.perf_counter()
            lake, names, rows = build_lake(Path(tmp) / label.replace(" ", "_"), tickers, years)
            print(f"built the {label} in {time.perf_counter() - started:.0f} s", flush=True)
            measure(label, lake, names, rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
