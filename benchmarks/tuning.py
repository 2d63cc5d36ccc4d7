"""Benchmark: the same 32 LightGBM walk-forward trials under Ray Tune on 2 CPUs vs one after another; then every
model family's trial time (serial and under Ray Tune).

    python benchmarks/tuning.py [--tickers 500] [--years 5] [--trials 32] [--cpus 2]

Data: the demo market (500 tickers x 5 years, ~500k warm feature rows with labels), 3 walk-forward folds of
60 sessions. Both sides run identical parameter sets (random points of the search space, fixed seed), each
trial on one thread, with every fold; the Ray side includes starting and stopping Ray. Goal (LightGBM): >= 1.7x,
Ray run < 3 min. Also prints each family's best trial's out-of-sample IC beside the demo market's true signal's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tickers", type=int, default=500)
    ap.add_argument("--years", type=int, default=5)
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()

    from stock_platform.lib import modeling as m
    from stock_platform.lib.calendar import trading_days
    from stock_platform.lib.demo_market import generate, true_signal
    from stock_platform.lib.families import FAMILIES, sample_params
    from stock_platform.lib.indicators import compute_features
    from stock_platform.resources.tuning import TuningResource

    end = dt.date(2024, 12, 31)
    start = dt.date(end.year - args.years + 1, 1, 2)
    prices = generate([f"T{i:03d}" for i in range(args.tickers)], start, end)
    feats, labels = compute_features(prices), m.next_day_returns(prices, trading_days(start, end))
    datasets = {key: m.training_set(feats, labels, family.inputs) for key, family in FAMILIES.items()}
    data = datasets["lightgbm"]
    folds = m.walk_forward_folds(data.sessions, folds=3, test_sessions=60)
    print(f"data: {args.tickers} tickers x {args.years} years -> {len(data.y):,} labelled warm rows, "
          f"{data.sessions} sessions; {len(folds)} folds x 60 sessions; {args.trials} trials per family")
    test = np.concatenate([data.rows(f.test_first, f.test_last) for f in folds])
    signal = data.keys.join(true_signal(prices), on=["ticker", "date"], how="left")["true_signal"].to_numpy()
    true_ic = m.daily_ic(data.t[test], data.y[test], signal[test])
    tuning = TuningResource(num_cpus=args.cpus, storage_dir=tempfile.mkdtemp(prefix="bench_tuning_"))

    rows = {}
    for key, family in FAMILIES.items():
        rng = np.random.default_rng(7)
        points = [sample_params(family.space, rng) for _ in range(args.trials)]
        started = time.perf_counter()
        serial = [m.run_trial(family, p, datasets[key], folds) for p in points]
        t_serial = time.perf_counter() - started
        started = time.perf_counter()
        with tuning.ray_session():
            ray_up = time.perf_counter() - started
            trials = tuning.search(family, datasets[key], folds, trials=args.trials, time_budget_seconds=3600,
                                   seed=7, name=f"bench_{key}", searcher="random")
        t_ray = time.perf_counter() - started
        failed = [t["error"] for t in trials if t["error"]]
        if failed or len(trials) != args.trials:
            print(f"{key}: Ray trials failed: {failed[:3]}")
            return 1
        same = sorted(round(t["ic"], 9) for t in trials) == sorted(round(r["ic"], 9) for r in serial)
        best = max(serial, key=lambda r: r["ic"])
        rows[key] = (t_serial, statistics.median(r["seconds"] for r in serial), t_ray, ray_up, same, best)
        print(f"{key}: serial {t_serial:.1f} s, Ray {t_ray:.1f} s", flush=True)

    t_serial, per_trial, t_ray, ray_up, same, best = rows["lightgbm"]
    print()
    print(f"{'measure (LightGBM)':58} {'value':>10}   goal")
    print(f"{'serial, 1 process (s)':58} {t_serial:10.1f}")
    print(f"{f'Ray Tune, {args.cpus} CPUs, incl. start/stop (s)':58} {t_ray:10.1f}   < 180 s")
    print(f"{'  of which ray.init (s)':58} {ray_up:10.1f}")
    print(f"{'speed-up serial / Ray':58} {t_serial / t_ray:9.2f}x   >= 1.7x")
    print(f"{'same scores on both sides':58} {str(same):>10}")
    print(f"{'best trial MASE vs naive random walk':58} {best['mase']:10.4f}   < 1")
    print()
    print(f"true signal IC on the CV test rows: {true_ic:.4f}")
    print("| family | trial, serial (median s) | serial total (s) | Ray Tune total (s) | speed-up | same scores "
          "| best CV IC | of true |")
    print("|---|---|---|---|---|---|---|---|")
    for key, (t_serial, per_trial, t_ray, _, same, best) in rows.items():
        print(f"| {key} | {per_trial:.3f} | {t_serial:.1f} | {t_ray:.1f} | {t_serial / t_ray:.2f}x | {same} | "
              f"{best['ic']:.4f} | {best['ic'] / true_ic:.0%} |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
