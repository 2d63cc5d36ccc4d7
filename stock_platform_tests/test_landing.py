"""Landing zone: event files, the sensor (cursor, run keys, grouping, quarantine) and a landing run."""

from __future__ import annotations

import datetime as dt
import io
import json
import os

import dagster as dg
import polars as pl
import pytest

from stock_platform.automation import landing_zone_sensor
from stock_platform.definitions import defs
from stock_platform.lib.events import EventFileError, apply_events, deletes, events_to_bars, read_events
from stock_platform.lib.tables import PRICES_TABLE, SNAPSHOT_TABLE
from stock_platform.resources.lake import LakeResource
from stock_platform.resources.landing import LandingResource, read_ledger, validate_key

UTC = dt.UTC


def event(ticker="AAPL", ts="2024-06-18T19:55:00Z", close=101.0, op="upsert", event_id="e1", **kw):
    row = {"ticker": ticker, "ts": ts, "open": 100.0, "high": 102.0, "low": 99.0, "close": close,
           "volume": 1000, "event_id": event_id, "op": op}
    return row | kw


def jsonl(*rows) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


# ------------------------------------------------------------------------------------------ files
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_every_format_reads_to_the_same_events(fmt):
    rows = [event(), event(ticker="MSFT", close=410.5, event_id="e2")]
    frame = pl.DataFrame(rows)
    data = {"jsonl": jsonl(*rows), "csv": frame.write_csv().encode()}.get(fmt)
    if fmt == "parquet":
        buf = io.BytesIO()
        frame.with_columns(pl.col("ts").str.to_datetime(time_zone="UTC")).write_parquet(buf)
        data = buf.getvalue()
    events = read_events(f"quotes/x.{fmt}", data)
    assert events["ticker"].to_list() == ["AAPL", "MSFT"] and events["close"].to_list() == [101.0, 410.5]
    assert events["ts"][0] == dt.datetime(2024, 6, 18, 19, 55, tzinfo=UTC)


@pytest.mark.parametrize(("key", "data", "message"), [
    ("q/a.jsonl", b"{not json", "q/a.jsonl: unreadable json"),
    ("q/a.jsonl", jsonl({k: v for k, v in event().items() if k != "close"}), "missing column(s) close"),
    ("q/a.jsonl", jsonl(event(op="merge")), "unknown op(s) ['merge']"),
    ("q/a.jsonl", jsonl(event(ts="yesterday")), "1 event(s) with a missing or unreadable ts"),
    ("q/a.txt", b"x", "q/a.txt: unknown file type"),
])
def test_a_bad_file_is_refused_with_its_reason(key, data, message):
    with pytest.raises(EventFileError) as err:
        read_events(key, data)
    assert message in str(err.value)


def test_landing_keys_cannot_escape_the_zone():
    for bad in ("../x.jsonl", "/etc/passwd", "a//b.csv", "a/./b.csv", "a b.csv", "x;rm.csv"):
        with pytest.raises(ValueError, match="not a plain relative path"):
            validate_key(bad)
    assert validate_key("2024/06/18/quotes-1.jsonl") == "2024/06/18/quotes-1.jsonl"


def test_newest_event_wins_and_deletes_remove_older_rows():
    events = read_events("e.jsonl", jsonl(
        event(close=101.0, ts="2024-06-18T19:00:00Z", event_id="a"),
        event(close=102.0, ts="2024-06-18T19:30:00Z", event_id="b"),
        event(ticker="MSFT", op="delete", ts="2024-06-18T19:40:00Z", event_id="c"),
    ))
    bars = events_to_bars(events)
    assert bars.select("ticker", "date", "close").rows() == [("AAPL", dt.date(2024, 6, 18), 102.0)]
    gone = deletes(events)
    stored = pl.DataFrame({"ticker": ["MSFT", "XOM"], "date": [dt.date(2024, 6, 18)] * 2, "close": [400.0, 110.0],
                           "dividends": [0.0, 0.0], "splits": [0.0, 0.0],
                           "ingested_at": [dt.datetime(2024, 6, 18, 20, 0, tzinfo=UTC)] * 2})
    # MSFT's stored row arrived after the delete: it stays; an older row would go
    assert apply_events(stored, bars.select(stored.columns), gone)["ticker"].to_list() == ["AAPL", "MSFT", "XOM"]
    # a quote replacing the stored bar of a split day keeps the split (and the dividend): quotes carry none
    split_day = pl.DataFrame({"ticker": ["AAPL"], "date": [dt.date(2024, 6, 18)], "close": [99.0],
                              "dividends": [0.25], "splits": [4.0],
                              "ingested_at": [dt.datetime(2024, 6, 18, 10, 0, tzinfo=UTC)]})
    updated = apply_events(split_day, bars.select(stored.columns), gone)
    assert updated.select("close", "dividends", "splits").rows() == [(102.0, 0.25, 4.0)]
    older = stored.with_columns(ingested_at=pl.lit(dt.datetime(2024, 6, 18, 19, 0, tzinfo=UTC)))
    assert apply_events(older, bars.select(stored.columns), gone)["ticker"].to_list() == ["AAPL", "XOM"]


# ----------------------------------------------------------------------------------------- sensor
def sensor_tick(landing: LandingResource, lake: LakeResource, instance: dg.DagsterInstance | None = None,
                cursor: str | None = None):
    """One evaluation of the sensor (in a fresh instance unless given: one where no run was created)."""
    if instance is None:
        with dg.instance_for_test() as fresh:
            return sensor_tick(landing, lake, fresh, cursor)
    context = dg.build_sensor_context(instance=instance, resources={"landing": landing, "lake": lake},
                                      repository_def=defs.get_repository_def(), sensor_name="landing_zone_sensor",
                                      cursor=cursor)
    return landing_zone_sensor.evaluate_tick(context)


def create_runs(instance: dg.DagsterInstance, requests) -> None:
    """What the daemon does with a tick's run requests: a run per request, tagged with its sensor and run key."""
    job = defs.resolve_job_def("daily_assets")
    for request in requests:
        instance.create_run_for_job(job, run_config=request.run_config, tags={
            **request.tags, "dagster/sensor_name": "landing_zone_sensor", "dagster/run_key": request.run_key,
            "dagster/partition": request.partition_key})


def test_sensor_groups_by_trading_day_keys_runs_by_file_versions_and_quarantines_bad_files(tmp_path):
    landing = LandingResource(uri=str(tmp_path / "landing"))
    lake = LakeResource(uri=str(tmp_path / "lake"))
    landing.write("2024/06/18/a.jsonl", jsonl(event(), event(ticker="MSFT", ts="2024-06-17T20:00:00Z")))
    landing.write("2024/06/18/b.jsonl", jsonl(event(ticker="XOM")))
    landing.write("2024/06/18/broken.jsonl", b"{nope")
    landing.write("2024/06/18/weekend.jsonl", jsonl(event(ts="2024-06-15T15:00:00Z")))
    landing.write("2024/06/18/future.jsonl", jsonl(event(ts="2099-06-15T15:00:00Z")))
    landing.write("2024/06/18/before-start.jsonl", jsonl(event(ts="2010-06-15T15:00:00Z")))

    result = sensor_tick(landing, lake)
    by_day = {r.partition_key: r for r in result.run_requests}
    assert set(by_day) == {"2024-06-17", "2024-06-18"}  # a late event for a past day refreshes that day
    assert by_day["2024-06-18"].run_config["ops"]["prices"]["config"]["landing_files"] == [
        "2024/06/18/a.jsonl", "2024/06/18/b.jsonl"]
    assert by_day["2024-06-17"].run_config["ops"]["price_snapshots"]["config"]["landing_files"] == [
        "2024/06/18/a.jsonl"]
    assert all(r.run_key.startswith(f"landing:{day}:") for day, r in by_day.items())

    quarantine = tmp_path / "landing" / "_quarantine" / "2024" / "06" / "18"
    assert sorted(p.name for p in quarantine.iterdir()) == [
        "before-start.jsonl", "before-start.jsonl.reason.txt", "broken.jsonl", "broken.jsonl.reason.txt",
        "future.jsonl", "future.jsonl.reason.txt", "weekend.jsonl", "weekend.jsonl.reason.txt"]
    assert "unreadable json" in (quarantine / "broken.jsonl.reason.txt").read_text()
    assert "non-trading day(s) 2024-06-15" in (quarantine / "weekend.jsonl.reason.txt").read_text()
    assert "day(s) 2099-06-15 outside the trading_days partitions (2015-01-02 .. " in (
        quarantine / "future.jsonl.reason.txt").read_text()
    assert "day(s) 2010-06-15 outside the trading_days partitions" in (
        quarantine / "before-start.jsonl.reason.txt").read_text()
    assert not (tmp_path / "landing" / "2024" / "06" / "18" / "broken.jsonl").exists()
    ledger = read_ledger(lake).sort("key", "day")
    assert ledger.select("key", "day", "status").rows() == [
        ("2024/06/18/a.jsonl", "2024-06-17", "requested"), ("2024/06/18/a.jsonl", "2024-06-18", "requested"),
        ("2024/06/18/b.jsonl", "2024-06-18", "requested"), ("2024/06/18/before-start.jsonl", "", "quarantined"),
        ("2024/06/18/broken.jsonl", "", "quarantined"), ("2024/06/18/future.jsonl", "", "quarantined"),
        ("2024/06/18/weekend.jsonl", "", "quarantined")]

    # a rewritten file is a new version: a new run for its day, with a new key
    landing.write("2024/06/18/b.jsonl", jsonl(event(ticker="XOM", close=111.0)))
    with dg.instance_for_test() as instance:
        create_runs(instance, result.run_requests)
        [again] = sensor_tick(landing, lake, instance).run_requests
        assert again.partition_key == "2024-06-18" and again.run_key != by_day["2024-06-18"].run_key
        create_runs(instance, [again])
        assert not sensor_tick(landing, lake, instance).run_requests
    assert set(read_ledger(lake)["status"]) == {"submitted", "quarantined"}


def test_a_tick_that_ended_before_its_runs_were_created_is_asked_again_with_the_same_keys(tmp_path):
    """The ledger is written before the tick returns: if the runs were never created (the daemon died), the
    next tick asks for the same run keys; once the runs exist, nothing is asked again."""
    landing, lake = LandingResource(uri=str(tmp_path / "landing")), LakeResource(uri=str(tmp_path / "lake"))
    landing.write("q/a.jsonl", jsonl(event(), event(ticker="MSFT", ts="2024-06-17T20:00:00Z")))
    first = sensor_tick(landing, lake).run_requests  # its runs are lost with its instance
    with dg.instance_for_test() as instance:
        second = sensor_tick(landing, lake, instance).run_requests
        assert sorted((r.run_key, r.partition_key) for r in second) == sorted((r.run_key, r.partition_key) for r in first)
        assert [r.run_config for r in second] == [r.run_config for r in first]
        create_runs(instance, second)
        assert not sensor_tick(landing, lake, instance).run_requests
        runs = {r.tags["dagster/run_key"]: r.run_id for r in instance.get_runs()}
    ledger = read_ledger(lake)
    assert ledger.height == 2 and set(ledger["status"]) == {"submitted"}
    assert dict(zip(ledger["run_key"], ledger["run_id"])) == runs


def landing_zone(store: str, tmp_path, request, bucket: str) -> LandingResource:
    """A landing zone in a local folder, or under a new bucket of the local S3 server."""
    if store == "local":
        return LandingResource(uri=str(tmp_path / "landing"))
    import boto3

    endpoint = request.getfixturevalue("s3_endpoint")
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return LandingResource(uri=f"s3://{bucket}/quotes", aws_endpoint_url=endpoint)


@pytest.mark.parametrize("store", ["local", "s3"])
def test_file_times_never_decide_what_is_new(store, tmp_path, request):
    """Files stamped an hour ahead, copied in with their old times, or listed in any order are each taken once:
    the ledger holds file versions, no clock is compared (the mtime watermark skipped every file after one
    stamped in the future)."""
    landing = landing_zone(store, tmp_path, request, "landing-times")
    lake = LakeResource(uri=str(tmp_path / "lake"))

    def land(key: str, ticker: str, shift: float = 0.0):
        landing.write(key, jsonl(event(ticker=ticker)))
        if store == "local" and shift:  # a writer's clock an hour fast, or `cp -p` of an old file
            path = tmp_path / "landing" / key
            os.utime(path, (path.stat().st_atime + shift, path.stat().st_mtime + shift))

    def files_asked(result) -> set[str]:
        return {k for r in result.run_requests for k in r.run_config["ops"]["prices"]["config"]["landing_files"]}

    land("fast-clock.jsonl", "AAPL", shift=3600)
    with dg.instance_for_test() as instance:
        first = sensor_tick(landing, lake, instance)
        assert files_asked(first) == {"fast-clock.jsonl"}
        create_runs(instance, first.run_requests)
        land("later.jsonl", "MSFT")
        land("copied-old.jsonl", "XOM", shift=-20 * 365 * 86400)
        second = sensor_tick(landing, lake, instance)
        assert files_asked(second) == {"later.jsonl", "copied-old.jsonl"}
        create_runs(instance, second.run_requests)
        assert not sensor_tick(landing, lake, instance).run_requests
    assert sorted(read_ledger(lake)["key"]) == ["copied-old.jsonl", "fast-clock.jsonl", "later.jsonl"]


@pytest.mark.parametrize("store", ["local", "s3"])
def test_a_tick_lists_after_its_cursor_and_the_whole_zone_every_few_ticks(store, tmp_path, request):
    """Keys after the greatest key listed are found by the next tick; a file keyed before it (a late file for an
    earlier day, a rewritten file) by the next full listing, FULL_LISTING_EVERY ticks at most."""
    from stock_platform.automation import FULL_LISTING_EVERY

    landing = landing_zone(store, tmp_path, request, "landing-cursor")
    lake = LakeResource(uri=str(tmp_path / "lake"))
    for key in ("2024-06-18/a.jsonl", "2024-06-18/b.jsonl"):
        landing.write(key, jsonl(event()))
    with dg.instance_for_test() as instance:
        def tick(cursor):
            result = sensor_tick(landing, lake, instance, cursor)
            create_runs(instance, result.run_requests)
            keys = {k for r in result.run_requests for k in r.run_config["ops"]["prices"]["config"]["landing_files"]}
            return keys, result.cursor

        keys, cursor = tick(None)  # the first tick lists the whole zone
        assert keys == {"2024-06-18/a.jsonl", "2024-06-18/b.jsonl"}
        assert json.loads(cursor) == {"after": "2024-06-18/b.jsonl", "tick": 1}
        landing.write("2024-06-18/c.jsonl", jsonl(event(close=102.0)))
        keys, cursor = tick(cursor)
        assert keys == {"2024-06-18/c.jsonl"}
        landing.write("2024-06-17/late.jsonl", jsonl(event(ts="2024-06-17T20:00:00Z")))
        landing.write("2024-06-18/a.jsonl", jsonl(event(close=103.0)))  # rewritten: a new version
        keys, waited = set(), 0
        while not keys and waited <= FULL_LISTING_EVERY:
            keys, cursor = tick(cursor)
            waited += 1
        assert waited > 1  # not found by the tick right after them: keyed before the cursor
        assert waited <= FULL_LISTING_EVERY and keys == {"2024-06-17/late.jsonl", "2024-06-18/a.jsonl"}
        keys, cursor = tick(cursor)
        assert not keys


def test_sensor_reads_an_s3_landing_zone(s3_endpoint, s3_lake):
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="landing-test")
    landing = LandingResource(uri="s3://landing-test/quotes", aws_endpoint_url=s3_endpoint)
    landing.write("a.jsonl", jsonl(event()))
    landing.write("bad.csv", b"ticker,ts\nAAPL,2024-06-18T19:00:00Z\n")
    result = sensor_tick(landing, s3_lake)  # the ledger in an S3 lake
    [request] = result.run_requests
    assert request.partition_key == "2024-06-18"
    assert [f.key for f in landing.list()] == ["a.jsonl"]
    assert b"missing column(s)" in landing._s3().get_object(
        Bucket="landing-test", Key="quotes/_quarantine/bad.csv.reason.txt")["Body"].read()


# ------------------------------------------------------------------------------------ a landing run
@pytest.mark.slow
def test_a_landing_run_upserts_deletes_and_replays_harmlessly(tmp_path, instance):
    from stock_platform.assets.ingestion import prices
    from stock_platform.assets.lake import price_snapshots
    from stock_platform.automation import daily_assets_job
    from stock_platform.resources import PriceSourceResource, UniverseResource
    from stock_platform.resources.lake import LakeResource
    from stock_platform.resources.warehouse import WarehouseResource
    from stock_platform_tests.helpers import failure_message, run_range

    lake = LakeResource(uri=str(tmp_path / "lake"))
    landing = LandingResource(uri=str(tmp_path / "landing"))
    local = dg.Definitions(assets=[prices, price_snapshots], jobs=[daily_assets_job], resources={
        "source": PriceSourceResource(), "lake": lake, "landing": landing,
        "universe": UniverseResource(tickers=["AAPL", "MSFT", "XOM"]),
        "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path}/warehouse.db")})
    assert run_range(local, instance, "2024-06-14", "2024-06-18").success
    day = dt.date(2024, 6, 18)
    before = lake.snapshot(SNAPSHOT_TABLE, start=day, end=day)

    close = before.filter(pl.col("ticker") == "AAPL")["close"][0] * 1.01
    landing.write("q/1.jsonl", jsonl(event(close=close, open=close, high=close * 1.01, low=close * 0.99,
                                           ts="2024-06-18T21:00:00Z"),
                                     event(ticker="MSFT", op="delete", ts="2024-06-18T21:01:00Z", event_id="e2")))
    [request] = sensor_tick(landing, lake).run_requests

    def landing_run():
        return local.resolve_job_def("daily_assets").execute_in_process(
            instance=instance, partition_key=request.partition_key, run_config=request.run_config,
            raise_on_error=False)

    result = landing_run()
    assert result.success, failure_message(result)
    after = lake.snapshot(SNAPSHOT_TABLE, start=day, end=day, include_deleted=True).sort("ticker")
    aapl, msft, xom = after.rows(named=True)
    assert aapl["close"] == pytest.approx(before.sort("ticker")["close"][0] * 1.01) and aapl["source"] == "landing"
    factor = before.sort("ticker")["adj_close"][0] / before.sort("ticker")["close"][0]
    assert aapl["adj_close"] == pytest.approx(aapl["close"] * factor)  # the ticker's adjustment carried over
    assert msft["_is_deleted"] and not xom["_is_deleted"]
    assert xom == before.sort("ticker").with_columns(_is_deleted=pl.lit(False)).rows(named=True)[2]
    assert set(lake.read(PRICES_TABLE, day, day)["ticker"]) == {"AAPL", "XOM"}
    version = lake.table(SNAPSHOT_TABLE).version()

    replay = landing_run()  # the same files again: nothing changes, no snapshot commit
    assert replay.success, failure_message(replay)
    assert lake.table(SNAPSHOT_TABLE).version() == version
    assert lake.snapshot(SNAPSHOT_TABLE, start=day, end=day, include_deleted=True).sort("ticker").equals(after)

    # a landed update that breaks the contract: quarantined, and XOM's accepted row stays in both tables
    from stock_platform.lib.tables import QUARANTINE_TABLE

    landing.write("q/2.jsonl", jsonl(event(ticker="XOM", close=-1.0, low=-2.0, ts="2024-06-18T21:05:00Z",
                                           event_id="bad")))
    [request] = [r for r in sensor_tick(landing, lake).run_requests if "q/2.jsonl" in str(r.run_config)]
    xom_price = lake.read(PRICES_TABLE, day, day).filter(pl.col("ticker") == "XOM")
    for _ in range(2):  # and replaying the file adds no quarantine row
        result = landing_run()
        assert result.success, failure_message(result)
        assert lake.read(PRICES_TABLE, day, day).filter(pl.col("ticker") == "XOM").equals(xom_price)
        assert lake.snapshot(SNAPSHOT_TABLE, start=day, end=day, include_deleted=True).sort("ticker").equals(after)
        quarantine = lake.read(QUARANTINE_TABLE, day, day, date_column="partition_date")
        assert quarantine.select("ticker", "date").rows() == [("XOM", day)]
        assert "close: price must be > 0 (value: -1.0)" in quarantine["reason"][0]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_replay_lands_one_file_per_day_that_reads_back_as_the_bars(tmp_path, fmt):
    import subprocess
    import sys

    from stock_platform.lib.demo_market import generate

    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCK_PLATFORM_")}
    out = subprocess.run([sys.executable, "-W", "ignore", "-m", "stock_platform.cli", "replay", "--home",
                          str(tmp_path), "--start", "2024-06-17", "--end", "2024-06-20", "--tickers", "AAPL,MSFT",
                          "--speed", "0", "--format", fmt], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    landing = LandingResource(uri=str(tmp_path / "landing"))
    files = landing.list()
    assert [f.key for f in sorted(files, key=lambda f: f.key)] == [
        f"replay/2024/06/{d}/bars.{fmt}" for d in ("17", "18", "20")]  # 19 June: Juneteenth
    events = pl.concat([read_events(f.key, landing.read(f.key)) for f in files])
    bars = events_to_bars(events).sort("ticker", "date")
    demo = generate(["AAPL", "MSFT"], dt.date(2024, 6, 17), dt.date(2024, 6, 20)).sort("ticker", "date")
    assert bars.select("ticker", "date", "close", "volume").equals(demo.select("ticker", "date", "close", "volume"))
    assert (bars["ingested_at"] == demo["ingested_at"]).all()  # stamped at the session close, like the source
    bad = subprocess.run([sys.executable, "-W", "ignore", "-m", "stock_platform.cli", "replay", "--home",
                          str(tmp_path), "--start", "2024-06-17", "--end", "2024-06-20", "--landing", "ftp://x"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "--landing" in bad.stderr


def test_live_polling_lands_the_sessions_bars_only_during_market_hours(tmp_path):
    from stock_platform.automation import poll_live_quotes
    from stock_platform.resources import PriceSourceResource

    landing = LandingResource(uri=str(tmp_path / "landing"))
    source = PriceSourceResource()
    ny = dt.timezone(dt.timedelta(hours=-4))  # EDT
    assert poll_live_quotes(dt.datetime(2024, 6, 18, 8, 0, tzinfo=ny), source, ["AAPL"], landing) is None
    assert poll_live_quotes(dt.datetime(2024, 6, 19, 11, 0, tzinfo=ny), source, ["AAPL"], landing) is None  # holiday
    key = poll_live_quotes(dt.datetime(2024, 6, 18, 11, 0, tzinfo=ny), source, ["AAPL", "MSFT"], landing)
    assert key == "live/2024/06/18/110000.jsonl"
    events = read_events(key, landing.read(key))
    assert events["ticker"].to_list() == ["AAPL", "MSFT"]
    assert (events["ts"] == dt.datetime(2024, 6, 18, 15, 0, tzinfo=UTC)).all()
    later = poll_live_quotes(dt.datetime(2024, 6, 18, 11, 1, tzinfo=ny), source, ["AAPL"], landing)
    assert later != key and len(landing.list()) == 2
