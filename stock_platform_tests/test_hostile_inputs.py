"""One corpus of hostile input, across landing files, landed events, source files, settings and the API.

Every case asserts a clear answer that names the thing (an error, or a quarantine reason) AND that the rows
accepted before it are all still there, unchanged. The platform below is real: a local lake and landing zone,
a Dagster instance, the sensor and landing runs, the files source through the `prices` asset, FastAPI.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os

import dagster as dg
import polars as pl
import pytest

from stock_platform.assets.ingestion import prices

from stock_platform.assets.lake import price_snapshots
from stock_platform.automation import daily_assets_job, landing_zone_sensor
from stock_platform.checks import prices_schema_check
from stock_platform.lib.tables import PRICES_TABLE, QUARANTINE_TABLE, SNAPSHOT_TABLE
from stock_platform.resources import PriceSourceResource, UniverseResource
from stock_platform.resources.lake import LakeResource
from stock_platform.resources.landing import LandingResource, read_ledger
from stock_platform.resources.warehouse import WarehouseResource
from stock_platform.settings import SettingsError, load_settings
from stock_platform_tests.helpers import failure_message, run_range

TICKERS = ["AAPL", "MSFT"]
DAYS = ["2024-06-17", "2024-06-18", "2024-06-20"]  # 19 June: Juneteenth
DAY = dt.date(2024, 6, 18)
HEADER = "Date,Open,High,Low,Close,Volume\n"
GOOD = {"2024-06-17": (100, 102, 99, 101, 1000), "2024-06-18": (101, 103, 100, 102, 1100),
        "2024-06-20": (102, 104, 101, 103, 1200)}


def csv(rows: dict[str, tuple]) -> str:
    return HEADER + "".join(f"{d},{','.join(map(str, r))}\n" for d, r in rows.items())


class Platform:
    """A files-source platform with three accepted days for two tickers, shared by the cases."""

    def __init__(self, root):
        self.root, self.files = root, root / "files"
        self.files.mkdir()
        for ticker in TICKERS:
            self.write_file(ticker, csv(GOOD))
        self.lake = LakeResource(uri=str(root / "lake"))
        self.landing = LandingResource(uri=str(root / "landing"))
        self.defs = dg.Definitions(
            assets=[prices, price_snapshots], asset_checks=[prices_schema_check], jobs=[daily_assets_job],
            sensors=[landing_zone_sensor],
            resources={"source": PriceSourceResource(source="files", files_dir=str(self.files)), "lake": self.lake,
                       "landing": self.landing, "universe": UniverseResource(tickers=TICKERS),
                       "warehouse": WarehouseResource(url=f"sqlite:///{root}/warehouse.db")})

    def write_file(self, ticker: str, data: str | bytes) -> None:
        """A source file, stamped (mtime = its rows' ingested_at) at noon UTC of the middle day: earlier than
        the landed events of the cases, which must be newer to compete with the stored row at all."""
        path = self.files / f"{ticker}.csv"
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        noon = dt.datetime(2024, 6, 18, 12, tzinfo=dt.UTC).timestamp()
        os.utime(path, (noon, noon))

    def run_with_file(self, ticker: str, data: str | bytes):
        """A run of the whole range with `ticker`'s source file replaced by `data` (the good file back after)."""
        self.write_file(ticker, data)
        try:
            return run_range(self.defs, self.instance, DAYS[0], DAYS[-1])
        finally:
            self.write_file(ticker, csv(GOOD))

    def accepted(self) -> pl.DataFrame:
        """The accepted rows: prices and the live snapshot, as comparable values."""
        cols = ["ticker", "date", "open", "high", "low", "close", "volume"]
        return pl.concat([self.lake.read(PRICES_TABLE).select(cols).with_columns(table=pl.lit("prices")),
                          self.lake.snapshot(SNAPSHOT_TABLE).select(cols).with_columns(table=pl.lit("snapshot"))]
                         ).sort("table", "ticker", "date")


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    (root / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
        p = Platform(root)
        p.instance = instance
        assert run_range(p.defs, instance, DAYS[0], DAYS[-1]).success
        p.baseline = p.accepted()
        assert p.baseline.height == 2 * len(TICKERS) * len(DAYS)
        yield p


@pytest.fixture(autouse=True)
def nothing_accepted_is_lost(request):
    """After every case that touched the platform: every accepted row is still there, unchanged."""
    yield
    if "platform" in request.fixturenames:
        platform = request.getfixturevalue("platform")
        assert platform.accepted().equals(platform.baseline)


def tick(platform: Platform):
    context = dg.build_sensor_context(instance=platform.instance, repository_def=platform.defs.get_repository_def(),
                                      resources={"landing": platform.landing, "lake": platform.lake},
                                      sensor_name="landing_zone_sensor")
    return landing_zone_sensor.evaluate_tick(context)


def event(ticker="AAPL", close=150.0, high=None, low=None, ts="2024-06-18T20:30:00Z", event_id="h1", **extra) -> dict:
    high = max(close, 150.0) + 1 if high is None else high
    low = min(close, 150.0) - 1 if low is None else low
    return {"ticker": ticker, "ts": ts, "open": 150.0, "high": high, "low": low, "close": close, "volume": 500,
            "event_id": event_id, "op": "upsert"} | extra


def jsonl(*events: dict) -> bytes:
    return "\n".join(json.dumps(e) for e in events).encode()


def parquet(*events: dict) -> bytes:
    buf = io.BytesIO()
    pl.DataFrame(list(events)).with_columns(pl.col("ts").str.to_datetime(time_zone="UTC")).write_parquet(buf)
    return buf.getvalue()


EVENT_CSV_HEADER = "ticker,ts,open,high,low,close,volume,event_id,op\n"

# ------------------------------------------------------------ A. landing files: quarantined by the sensor
LANDING_FILES = [
    ("empty.jsonl", b"", "empty file"),
    ("empty.csv", b"", "empty file"),
    ("blank.jsonl", b"\n \n", "empty file"),
    ("zero-byte.parquet", b"", "empty file"),
    ("truncated.parquet", parquet(event())[:200], "unreadable parquet"),
    ("not-json.jsonl", b"\x00\x01\x02binary", "unreadable json"),
    ("nan-literal.jsonl", jsonl(event()).replace(b"150.0,", b"NaN,", 1), "unreadable json"),
    ("latin1.csv", (EVENT_CSV_HEADER + "AAPL,2024-06-18T20:30:00Z,150,151,149,150,5,\xe91,upsert\n").encode("latin-1"),
     "invalid utf-8"),
    ("renamed.csv", (EVENT_CSV_HEADER.replace("close", "Close_Price") + "AAPL,2024-06-18T20:30:00Z,1,1,1,1,1,e,upsert\n"
                     ).encode(), "missing column(s) close"),
    ("missing-op.jsonl", jsonl({k: v for k, v in event().items() if k != "op"}), "missing column(s) op"),
    ("bad-op.jsonl", jsonl(event(op="merge")), "unknown op(s) ['merge']"),
    ("bad-ts.jsonl", jsonl(event(ts="yesterday")), "1 event(s) with a missing or unreadable ts"),
    ("future.jsonl", jsonl(event(ts="2099-06-18T20:30:00Z")), "2099-06-18 outside the trading_days partitions"),
    ("before-start.jsonl", jsonl(event(ts="2001-06-18T20:30:00Z")), "2001-06-18 outside the trading_days partitions"),
    ("holiday.jsonl", jsonl(event(ts="2024-06-19T20:30:00Z")), "non-trading day(s) 2024-06-19"),
    ("conflicting-ids.jsonl", jsonl(event(close=150.0), event(close=151.0)), "event(s) ['AAPL/h1'] appear with different values"),
    ("notes.txt", b"hello", "unknown file type"),
]


@pytest.mark.parametrize(("key", "data", "reason"), LANDING_FILES, ids=[c[0] for c in LANDING_FILES])
def test_a_hostile_landing_file_is_quarantined_with_its_reason(platform, key, data, reason):
    key = f"hostile/{key}"
    platform.landing.write(key, data)
    result = tick(platform)  # never raises
    assert not any(key in str(r.run_config) for r in result.run_requests)
    ledger = read_ledger(platform.lake).filter(pl.col("key") == key)
    assert ledger["status"].to_list() == ["quarantined"] and reason in ledger["reason"][0], ledger["reason"][0]
    assert reason in (platform.root / "landing" / "_quarantine" / (key + ".reason.txt")).read_text()


def test_a_landing_file_with_an_unsafe_name_is_recorded_and_left_unread(platform):
    path = platform.root / "landing" / "hostile" / "quote file; rm -rf.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jsonl(event()))
    tick(platform)
    ledger = read_ledger(platform.lake).filter(pl.col("key") == "hostile/quote file; rm -rf.jsonl")
    assert ledger["status"].to_list() == ["quarantined"] and "is not a plain relative path" in ledger["reason"][0]
    assert path.exists()  # no path was built from it


def test_a_1_gb_landing_file_is_refused_by_its_size_unread(platform):
    path = platform.root / "landing" / "hostile" / "huge.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:  # sparse: 1 GB on paper, nothing on disk
        f.truncate(1024**3)
    tick(platform)
    ledger = read_ledger(platform.lake).filter(pl.col("key") == "hostile/huge.jsonl")
    assert "1,073,741,824 bytes is more than a landing file may hold" in ledger["reason"][0]


# ------------------------------------------- B. landed events with bad values: quarantined by the contract
BAD_EVENTS = [
    ("close NaN", "csv", "AAPL,2024-06-18T20:30:00Z,150,151,149,nan,500,h1,upsert\n", "AAPL", "close"),
    ("close inf", "csv", "AAPL,2024-06-18T20:30:00Z,150,inf,149,inf,500,h1,upsert\n", "AAPL", "close"),
    ("close negative", "jsonl", event(close=-1.0), "AAPL", "close: price must be > 0"),
    ("close zero", "jsonl", event(close=0.0, low=0.0), "AAPL", "close: price must be > 0"),
    ("high below low", "jsonl", event(high=140.0, low=160.0), "AAPL", "high < max(open, close)"),
    ("negative volume", "jsonl", event(volume=-5), "AAPL", "volume"),
    ("fractional volume", "jsonl", event(volume=1.5), "AAPL", "volume"),
    ("close not a number", "jsonl", event(close="abc", high=151.0, low=149.0), "AAPL", "close"),
    ("ticker outside the universe", "jsonl", event(ticker="ZZZZ"), "ZZZZ", "ticker"),
    ("SQL in the ticker", "jsonl", event(ticker="X'; DROP TABLE stock_price;--"), "X'; DROP TABLE stock_price;--",
     "malformed ticker"),
    ("a path as the ticker", "jsonl", event(ticker="../../etc/passwd"), "../../etc/passwd", "malformed ticker"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "payload", "ticker", "reason"), [c[1:] for c in BAD_EVENTS],
                         ids=[c[0] for c in BAD_EVENTS])
def test_a_landed_event_breaking_the_contract_is_quarantined_and_the_accepted_row_stays(
        platform, request, fmt, payload, ticker, reason):
    key = f"events/{request.node.callspec.id.replace(' ', '-')}.{fmt}"
    data = (EVENT_CSV_HEADER + payload).encode() if fmt == "csv" else jsonl(payload)
    platform.landing.write(key, data)
    [run] = [r for r in tick(platform).run_requests if key in str(r.run_config)]
    result = daily_assets_job_run(platform, run)
    assert result.success, failure_message(result)
    quarantine = platform.lake.read(QUARANTINE_TABLE, date_column="partition_date")
    new = quarantine.filter(pl.col("run_id") == result.run_id)  # what this run quarantined
    assert new.filter(pl.col("ticker") == ticker).height == 1, new.select("ticker", "reason").rows()
    assert reason in new.filter(pl.col("ticker") == ticker)["reason"][0]


def daily_assets_job_run(platform: Platform, request: dg.RunRequest):
    return platform.defs.resolve_job_def("daily_assets").execute_in_process(
        instance=platform.instance, partition_key=request.partition_key, run_config=request.run_config,
        raise_on_error=False)


# ------------------------------------------------ C. source files through `prices`: errors or quarantine
SOURCE_FILES = [
    ("NaN close", csv(GOOD | {"2024-06-18": (101, 103, 100, "nan", 1100)}), "close"),
    ("inf high", csv(GOOD | {"2024-06-18": (101, "inf", 100, 102, 1100)}), "high"),
    ("a date twice, different closes", csv(GOOD) + "2024-06-18,101,103,100,99,1100\n",
     "duplicate (ticker, date) with different values"),
    ("text in volume", csv(GOOD | {"2024-06-18": (101, 103, 100, 102, "lots")}), "volume"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("text", "reason"), [c[1:] for c in SOURCE_FILES], ids=[c[0] for c in SOURCE_FILES])
def test_a_bad_row_in_a_source_file_is_quarantined_and_the_accepted_row_stays(platform, text, reason):
    result = platform.run_with_file("AAPL", text)
    assert result.success, failure_message(result)
    quarantine = platform.lake.read(QUARANTINE_TABLE, date_column="partition_date")
    aapl = quarantine.filter((pl.col("ticker") == "AAPL") & (pl.col("date") == DAY))
    assert aapl.height >= 1 and any(reason in r for r in aapl["reason"]), aapl["reason"].to_list()
    # the check warns (DQ below 99%) and a warning blocks nothing, in this run or in later ones
    from stock_platform.gates import PRICES_CHECK, check_status

    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert check_status(platform.instance, PRICES_CHECK, DAYS).failed == []


UNREADABLE_FILES = [
    ("non-UTF-8", HEADER.encode() + "2024-06-18,1,2,1,2,\xe9\n".encode("latin-1"), "AAPL.csv"),
    ("a renamed column", csv(GOOD).replace("Close", "Closing Price").encode(), "missing column(s) close"),
    ("no columns at all", b"", "AAPL.csv"),
    ("a BOM and a header shorter than its rows", ("\ufeff" + csv(GOOD).replace(",Volume", "", 1)).encode(),
     "AAPL.csv: found more fields than defined"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("data", "says"), [c[1:] for c in UNREADABLE_FILES], ids=[c[0] for c in UNREADABLE_FILES])
def test_an_unusable_source_file_fails_the_run_naming_it_and_changes_nothing(platform, data, says):
    result = platform.run_with_file("AAPL", data)
    assert not result.success and says in failure_message(result), failure_message(result)


@pytest.mark.slow
def test_a_bom_at_the_start_of_a_source_file_is_read_like_any_export(platform):
    result = platform.run_with_file("AAPL", ("\ufeff" + csv(GOOD)).encode())
    assert result.success, failure_message(result)


# ------------------------------------------------------------------------- D. settings and the CLI
SETTINGS = [
    ({"STOCK_PLATFORM_TICKERS": ""}, "STOCK_PLATFORM_TICKERS is set but empty"),
    ({"STOCK_PLATFORM_SOURCE": " "}, "STOCK_PLATFORM_SOURCE is set but empty"),
    ({"STOCK_PLATFORM_TICKERS": "AAPL,X'; DROP TABLE stock_price;--"}, "is not a valid ticker"),
    ({"STOCK_PLATFORM_TICKERS": "AAPL,../../etc"}, "is not a valid ticker"),
    ({"STOCK_PLATFORM_LAKE_URI": "s3://bucket/../../other"}, "not a valid s3://bucket/prefix URI"),
    ({"STOCK_PLATFORM_LANDING_URI": "file:///etc"}, "only local paths and s3:// URIs"),
    ({"STOCK_PLATFORM_WAREHOUSE_URL": "mysql://root@localhost/x"}, "STOCK_PLATFORM_WAREHOUSE_URL"),
    ({"STOCK_PLATFORM_START": "2015-02-30"}, "not a date"),
    ({"AWS_ENDPOINT_URL": "http://evil.example.com/path?x=1"}, "expected http(s)://host[:port]"),
]


@pytest.mark.parametrize(("env", "says"), SETTINGS, ids=[next(iter(e)) + "=" + next(iter(e.values())) for e, _ in SETTINGS])
def test_a_hostile_setting_is_refused_naming_the_variable(tmp_path, env, says):
    with pytest.raises(SettingsError, match=None) as err:
        load_settings({"STOCK_PLATFORM_HOME": str(tmp_path), **env})
    assert says in str(err.value) and next(iter(env)) in str(err.value)


def test_a_hostile_ticker_on_the_command_line_is_refused_before_anything_runs(tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCK_PLATFORM_", "DAGSTER_HOME"))}
    out = subprocess.run([sys.executable, "-W", "ignore", "-m", "stock_platform.cli", "snapshot", "--home",
                          str(tmp_path), "--tickers", "AAPL,$(reboot)"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 2 and "--tickers: '$(REBOOT)' is not a valid ticker" in out.stderr
    assert not (tmp_path / "lake").exists()


# ------------------------------------------------------------------------------------------- E. API
API = [
    ("/prices/..%2F..%2Fetc%2Fpasswd", (404, 422)),
    ("/prices/X';DROP TABLE stock_price;--", (422,)),
    ("/prices/" + "A" * 500, (422,)),
    ("/prices/ZZZZ", (404,)),
    ("/prices/AAPL?start=2024-06-20&end=2024-06-17", (422,)),
    ("/prices/AAPL?limit=-1", (422,)),
    ("/predictions/AAPL?start=not-a-date", (422,)),
    ("/evaluation?window=0", (422,)),
]


@pytest.mark.parametrize(("url", "statuses"), API, ids=[u for u, _ in API])
def test_a_hostile_request_gets_a_4xx_with_a_reason(platform, url, statuses):
    from fastapi.testclient import TestClient

    from stock_platform.serving.api import create_app

    answer = TestClient(create_app(platform.lake)).get(url)
    assert answer.status_code in statuses, answer.text
    assert answer.json().get("detail"), answer.text


def test_the_corpus_is_large_enough():
    cases = (len(LANDING_FILES) + 2 + len(BAD_EVENTS) + len(SOURCE_FILES) + len(UNREADABLE_FILES) + 1 + len(SETTINGS)
             + 1 + len(API))
    assert cases >= 40, cases
