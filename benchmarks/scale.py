"""Benchmark: cost as the universe grows. Demo markets of `--sizes` tickers x `--years` years, measured side by
side in one run, each stage in a fresh child process (its peak RSS is its own):

  prices, price_snapshots, features: the single-run backfill of that asset over every session but the last
  daily: the whole daily job (forecasts and their evaluation included) for the last session, the "one new day"
  trial: one LightGBM tuning trial (3 walk-forward folds) on the warm feature rows, as a Ray worker runs it
  api: `stock-platform serve` on the lake: launch -> first /tickers, then /prices/{ticker} p50 / p99 (one client)

and the growth exponent k of each measure (time or RSS ~ tickers^k, least squares over the sizes).

    python benchmarks/scale.py [--sizes 500,2000,5000] [--years 10] [--requests 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
END = dt.date(2024, 12, 31)
STAGES = ("prices", "price_snapshots", "features", "daily", "trial")


def environment(work: Path, tickers: int, years: int) -> dict[str, str]:
    start = dt.date(END.year - years + 1, 1, 2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCK_PLATFORM_", "DAGSTER_", "MLFLOW_"))}
    return env | {"STOCK_PLATFORM_HOME": str(work), "STOCK_PLATFORM_START": start.isoformat(),
                  "STOCK_PLATFORM_TICKERS": ",".join(f"T{i:04d}" for i in range(tickers)),
                  "DAGSTER_HOME": str(work / "dagster"), "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true"}


def child(stage: str) -> dict:
    """One stage, in this process (the parent set the environment)."""
    import dagster as dg

    from stock_platform.definitions import defs
    from stock_platform.partitions import trading_days

    keys = trading_days.get_partition_keys_in_range(
        dg.PartitionKeyRange(os.environ["STOCK_PLATFORM_START"], END.isoformat()))
    started = time.perf_counter()
    if stage == "trial":
        from stock_platform.assets.model import load_training_set
        from stock_platform.lib import selection as sel
        from stock_platform.lib.families import FAMILIES
        from stock_platform.lib.modeling import run_trial

        family = FAMILIES["lightgbm"]
        data = load_training_set(defs.resources["lake"], dt.date.fromisoformat(keys[-1]), family)
        loaded = time.perf_counter()
        layout = sel.validation_layout(data.sessions, folds=3, test_sessions=60)
        params = {"num_leaves": 31, "learning_rate": 0.05, "min_data_in_leaf": 200, "feature_fraction": 0.8,
                  "bagging_fraction": 0.8, "lambda_l1": 0.1, "lambda_l2": 1.0, "n_estimators": 200}
        run_trial(family, params, data, layout.folds)
        return {"seconds": time.perf_counter() - loaded, "load_seconds": loaded - started, "rows": len(data.y),
                "rss_gb": rss_gb()}
    job = defs.resolve_job_def("daily_assets")
    first, last = (keys[0], keys[-2]) if stage != "daily" else (keys[-1], keys[-1])
    assets = None if stage == "daily" else [dg.AssetKey(stage)]
    (Path(os.environ["DAGSTER_HOME"])).mkdir(parents=True, exist_ok=True)
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance, raise_on_error=False, asset_selection=assets,
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last})
        if not result.success:
            raise SystemExit(f"{stage} failed")
        steps = {s.step_key: s.end_time - s.start_time for s in instance.get_run_step_stats(result.run_id)}
    return {"seconds": time.perf_counter() - started, "steps": steps, "sessions": len(keys) - 1 if stage != "daily"
            else 1, "rss_gb": rss_gb()}


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def api(env: dict[str, str], tickers: int, requests: int) -> dict:
    import httpx

    from stock_platform_tests.deployment import free_port

    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-W", "ignore", "-m", "stock_platform.cli", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as http:
            while True:
                try:
                    if http.get("/tickers").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            first = time.perf_counter() - started
            times = []
            for i in range(requests):
                t = time.perf_counter()
                assert http.get(f"/prices/T{(i * 7919) % tickers:04d}", params={"limit": 250}).status_code == 200
                times.append((time.perf_counter() - t) * 1000)
        rss = int(Path(f"/proc/{proc.pid}/status").read_text().split("VmHWM:")[1].split()[0]) / 1024**2
    finally:
        proc.terminate()
        proc.wait(30)
    times.sort()
    return {"first_s": first, "p50_ms": statistics.median(times), "p99_ms": times[int(0.99 * (len(times) - 1))],
            "rss_gb": rss}


def exponent(sizes: list[int], values: list[float]) -> float:
    """k of value ~ size^k (least squares on logs)."""
    xs, ys = [math.log(s) for s in sizes], [math.log(max(v, 1e-9)) for v in values]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="500,2000,5000")
    ap.add_argument("--years", type=int, default=10)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, dict[str, dict]] = {}
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"bench_scale_{n}_"))
        env = environment(work, n, args.years)
        results[n] = {}
        for stage in STAGES:
            done = subprocess.run([sys.executable, "-W", "ignore", __file__, "--child", stage], env=env,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{n} tickers, {stage}: failed\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
                return 1
            results[n][stage] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{n} tickers, {stage}: {results[n][stage]}", flush=True)
        results[n]["api"] = api(env, n, args.requests)
        print(f"{n} tickers, api: {results[n]['api']}", flush=True)
        disk = sum(f.stat().st_size for f in (work / "lake").rglob("*") if f.is_file()) / 1024**3
        results[n]["lake"] = {"gb": disk}

    rows = [(f"{stage} {'backfill' if stage in STAGES[:3] else ''} (s)".replace("  ", " "), stage, "seconds")
            for stage in STAGES] + [(f"{stage} peak RSS (GB)", stage, "rss_gb") for stage in STAGES]
    rows += [("trial: load the training set (s)", "trial", "load_seconds"), ("api: launch -> /tickers (s)", "api", "first_s"),
             ("api: /prices p50 (ms)", "api", "p50_ms"), ("api: /prices p99 (ms)", "api", "p99_ms"),
             ("api: peak RSS (GB)", "api", "rss_gb"), ("lake on disk (GB)", "lake", "gb")]
    print(f"\n{args.years} years; {'measure':38}" + "".join(f"{n:>10,}" for n in sizes) + "      k")
    for label, stage, key in rows:
        values = [results[n][stage][key] for n in sizes]
        k = f"{exponent(sizes, values):7.2f}" if len(sizes) > 1 else ""
        print(f"{'':{len(str(args.years)) + 8}}{label:38}" + "".join(f"{v:10.2f}" for v in values) + k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
