"""Benchmark: `stock-platform backfill` against the equivalent `dagster asset materialize`, side by side in one run.

Both materialize prices -> price_snapshots -> features (with their blocking checks) for every session of a demo market
of `--tickers` tickers x `--years` years, as one single-run backfill, each on a fresh home (its own lake, SQLite
instance and warehouse) in a fresh process, the two alternating for `--rounds` rounds:

  cli:     stock-platform backfill --assets data --start S --end E          (progress shown as the steps go)
  dagster: dagster asset materialize -m stock_platform.definitions --select prices,price_snapshots,features
           --partition-range S...E                                       (Dagster's own CLI, same instance kind)

Wall time of each command from launch to exit (definitions loading included), its rows, and the ratio cli/dagster.
(`dagster asset materialize` also runs the assets' freshness checks, which the CLI leaves to the freshness sensor:
three cheap checks.)

    python benchmarks/backfill_cli.py [--tickers 500] [--years 10] [--rounds 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
END = dt.date(2024, 12, 31)


def environment(home: Path, tickers: int, start: dt.date) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCK_PLATFORM_", "DAGSTER_", "MLFLOW_"))}
    return env | {"STOCK_PLATFORM_HOME": str(home), "STOCK_PLATFORM_START": start.isoformat(),
                  "STOCK_PLATFORM_TICKERS": ",".join(f"T{i:04d}" for i in range(tickers)),
                  "DAGSTER_HOME": str(home / "dagster"), "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true"}


def command(variant: str, start: dt.date) -> list[str]:
    if variant == "cli":
        return [sys.executable, "-W", "ignore", "-m", "stock_platform.cli", "backfill", "--assets", "data",
                "--start", start.isoformat(), "--end", END.isoformat()]
    return [str(Path(sys.executable).with_name("dagster")), "asset", "materialize", "-m", "stock_platform.definitions",
            "--select", "prices,price_snapshots,features", "--partition-range", f"{start}...{END}"]


def measure(variant: str, work: Path, tickers: int, start: dt.date) -> tuple[float, int]:
    """Seconds from launch to exit on a fresh home, and the features rows it wrote."""
    import polars as pl

    home = work / variant
    shutil.rmtree(home, ignore_errors=True)
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    started = time.perf_counter()
    done = subprocess.run(command(variant, start), env=environment(home, tickers, start), cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, pl.scan_delta(str(home / "lake" / "features")).select(pl.len()).collect().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=500)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    start = dt.date(END.year - args.years + 1, 1, 2)
    times: dict[str, list[float]] = {"cli": [], "dagster": []}
    with tempfile.TemporaryDirectory(prefix="bench_backfill_") as tmp:
        for round_ in range(args.rounds):
            order = ("cli", "dagster") if round_ % 2 == 0 else ("dagster", "cli")
            for variant in order:
                seconds, rows = measure(variant, Path(tmp), args.tickers, start)
                times[variant].append(seconds)
                print(f"round {round_ + 1}: {variant:8s} {seconds:7.1f} s  ({rows:,} feature rows)", flush=True)
    cli, dagster = statistics.median(times["cli"]), statistics.median(times["dagster"])
    print(f"\n{args.tickers} tickers x {args.years} years ({start} .. {END}), median of {args.rounds} round(s):")
    print(f"  stock-platform backfill     {cli:7.1f} s")
    print(f"  dagster asset materialize   {dagster:7.1f} s")
    print(f"  ratio cli / dagster         {cli / dagster:7.3f}")


if __name__ == "__main__":
    main()
