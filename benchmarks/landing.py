"""Benchmark: one landing_zone_sensor tick over a landing zone of 100,000 files, most already in the ledger.

Prints, measured side by side in one run on this machine (alternating, median of --repeats):
  1. listing the zone (LandingResource.list: scandir locally, paginated list_objects_v2 on S3), whole and
     after the sensor's cursor (the greatest key listed before: what 11 ticks in 12 list)
  2. the ledger's part: reading it and taking the file versions it does not hold
  3. the whole tick (list, ledger, read and validate the new files, record them, mark the previous tick's
     rows submitted once their runs exist, the run requests), with a full listing and after the cursor
  4. today's code beside the code before the ledger: its mtime-watermark cursor over the same listing
     (the part the ledger replaced: `new_files` as it was)

    python benchmarks/landing.py [--files 100000] [--new 10] [--repeats 5] [--store local|s3]

`--store s3` lands the files on a moto server started on 127.0.0.1 (its own process), 16 uploads at a time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def watermark_new_files(files, cursor: str | None, margin: float = 120.0):
    """The cursor before the ledger (automation.new_files until 2026-12): newest mtime plus recent identities."""
    state = json.loads(cursor) if cursor else {"watermark": 0.0, "recent": []}
    seen = set(state["recent"])
    low = state["watermark"] - margin
    fresh = [f for f in files if f.modified > low and f"{f.key}@{f.version}" not in seen]
    watermark = max([state["watermark"], *(f.modified for f in fresh)])
    recent = sorted({f"{f.key}@{f.version}" for f in files if f.modified > watermark - margin})
    return fresh, json.dumps({"watermark": watermark, "recent": recent})


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    return proc, f"http://127.0.0.1:{port}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--new", type=int, default=10, help="files not yet in the ledger at each measured tick")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--store", choices=("local", "s3"), default="local")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_landing_"))
    os.environ["STOCK_PLATFORM_HOME"] = str(work)
    import dagster as dg
    import polars as pl

    from stock_platform.automation import landing_zone_sensor
    from stock_platform.definitions import defs
    from stock_platform.lib.events import encode
    from stock_platform.resources.lake import LakeResource
    from stock_platform.resources.landing import LandingResource, REQUESTED, ledger_schema, record_in_ledger

    moto = None
    if args.store == "s3":
        import boto3

        moto, endpoint = start_moto()
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
        landing = LandingResource(uri="s3://bench/landing", aws_endpoint_url=endpoint)
    else:
        landing = LandingResource(uri=str(work / "landing"))
    lake = LakeResource(uri=str(work / "lake"))

    def payload(i: int) -> bytes:
        ts = dt.datetime(2024, 6, 18, 14, 0, tzinfo=dt.UTC) + dt.timedelta(microseconds=i)
        return encode(pl.DataFrame({"ticker": ["AAPL"], "ts": [ts], "open": [100.0], "high": [101.0],
                                    "low": [99.0], "close": [100.5], "volume": [1000.0], "event_id": [f"e{i}"],
                                    "op": ["upsert"]}), "jsonl")

    def land(keys: list[str]) -> None:
        with ThreadPoolExecutor(16 if args.store == "s3" else 1) as pool:
            list(pool.map(lambda k: landing.write(k, payload(int(k.split("/")[-1].split(".")[0]))), keys))

    n_old = args.files - args.new
    keys = [f"quotes/2024/06/18/{i:07d}.jsonl" for i in range(args.files)]
    t_land, _ = timed(lambda: land(keys[:n_old]))
    print(f"landed {n_old:,} files ({args.store}) in {t_land:.0f} s", flush=True)
    # the ledger already holds them, as after the ticks that took them
    listed = landing.list()
    now = dt.datetime.now(dt.UTC)
    record_in_ledger(lake, pl.DataFrame([{
        "key": f.key, "version": f.version, "day": "2024-06-18", "size": f.size, "modified": f.modified,
        "status": "submitted", "run_key": "landing:2024-06-18:bench", "run_id": "bench", "reason": None,
        "recorded_at": now} for f in listed], schema={k: v for k, v in ledger_schema().items() if k != "_is_deleted"}))
    _, cursor = watermark_new_files(listed, None)
    assert REQUESTED  # (the measured ticks record `requested` rows for the new files)

    times = {"list the zone": [], "list after the cursor": [], "ledger: read + take new versions": [],
             "watermark cursor (before)": [], "whole tick, full listing": [], "whole tick, after the cursor": []}
    batch = 0
    job = defs.resolve_job_def("daily_assets")
    with dg.instance_for_test() as instance:
        for _ in range(args.repeats):
            new = [f"quotes/2024/06/18/{args.files + batch * args.new + i:07d}.jsonl" for i in range(args.new)]
            batch += 1
            land(new)
            t, files = timed(landing.list)
            times["list the zone"].append(t)
            after = max(f.key for f in files if f.key not in new)
            t, tail = timed(lambda: landing.list(after=after))
            times["list after the cursor"].append(t)
            assert sorted(f.key for f in tail) == new, len(tail)

            def ledger_part():
                from stock_platform.resources.landing import read_ledger

                ledger = read_ledger(lake)
                taken = set(zip(ledger["key"], ledger["version"]))
                return [f for f in files if (f.key, f.version) not in taken]

            t, fresh = timed(ledger_part)
            times["ledger: read + take new versions"].append(t)
            assert len(fresh) == args.new, len(fresh)
            t, (old_fresh, _) = timed(lambda: watermark_new_files(files, cursor))
            times["watermark cursor (before)"].append(t)
            for name, tick in (("whole tick, full listing", 0), ("whole tick, after the cursor", 1)):
                if tick:  # the same tick again, on another set of new files, listing after the cursor
                    new = [f"quotes/2024/06/18/{args.files + batch * args.new + i:07d}.jsonl" for i in range(args.new)]
                    batch += 1
                    land(new)
                context = dg.build_sensor_context(instance=instance, resources={"landing": landing, "lake": lake},
                                                  repository_def=defs.get_repository_def(),
                                                  sensor_name="landing_zone_sensor",
                                                  cursor=json.dumps({"after": after, "tick": tick}))
                t, result = timed(lambda: landing_zone_sensor.evaluate_tick(context))
                times[name].append(t)
                after = json.loads(result.cursor)["after"]
                asked = {k for r in result.run_requests
                         for k in r.run_config["ops"]["prices"]["config"]["landing_files"]}
                assert set(new) <= asked, asked
                for request in result.run_requests:  # what the daemon does with them (not timed)
                    instance.create_run_for_job(job, run_config=request.run_config, tags={
                        **request.tags, "dagster/run_key": request.run_key,
                        "dagster/partition": request.partition_key})
    if moto is not None:
        moto.terminate()

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{args.files:,} files in the zone ({args.store}), {args.new} new per tick, median of {args.repeats}:")
    print(f"{'measure':44} {'seconds':>9}")
    for k, v in med.items():
        print(f"{k:44} {v:9.3f}")
    print(f"{'ledger / watermark (deciding what is new)':44} {med['ledger: read + take new versions'] / med['watermark cursor (before)']:8.1f}x")
    print(f"{'whole listing / listing after the cursor':44} {med['list the zone'] / med['list after the cursor']:8.1f}x")
    print(f"{'tick full / tick after the cursor':44} "
          f"{med['whole tick, full listing'] / med['whole tick, after the cursor']:8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
