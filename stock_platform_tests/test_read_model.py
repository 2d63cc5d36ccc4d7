"""The API's read model: answers are the lake at the versions the headers name, before and after a commit; an
unchanged version answers 304; a lake over the memory cap is served by scans with the same answers."""

from __future__ import annotations

import datetime as dt
import time

import polars as pl
import pytest
from fastapi.testclient import TestClient

from stock_platform.assets.lake import ensure_snapshot_table
from stock_platform.lib.tables import EVALUATION_TABLE, PRECOMBINE, PREDICTIONS_TABLE, SNAPSHOT_KEYS, SNAPSHOT_TABLE
from stock_platform.resources.lake import LakeResource
from stock_platform.serving import queries as q
from stock_platform.serving.api import MAX_LIMIT, create_app
from stock_platform_tests.helpers import serving
from stock_platform_tests.lake_writer import batch, predictions

START, END = dt.date(2024, 7, 1), dt.date(2024, 9, 30)


@pytest.fixture
def lake(tmp_path) -> LakeResource:
    lake = LakeResource(uri=str(tmp_path / "lake"))
    ensure_snapshot_table(lake)
    lake.upsert(SNAPSHOT_TABLE, batch(3, START, END), keys=SNAPSHOT_KEYS, order_by=PRECOMBINE)
    lake.replace_dates(PREDICTIONS_TABLE, predictions(batch(3, START, END), 1), START, END, change_data_feed=True)
    return lake


def versions(response) -> dict[str, int]:
    return {k: int(v) for k, v in (p.split("=") for p in response.headers["x-table-version"].split(", "))}


def expected_prices(lake: LakeResource, version: int, ticker: str) -> list[dict]:
    return q.records(q.prices(lake, ticker, None, None, version=version))


def expected_predictions(lake: LakeResource, at: dict[str, int], ticker: str) -> list[dict]:
    return q.records(q.predictions(lake, ticker, None, None, version=at[PREDICTIONS_TABLE],
                                   snapshot_version=at[SNAPSHOT_TABLE]))


def same(items: list[dict], rows: list[dict]) -> bool:
    """The API's items equal the lake's rows (timestamps compared as instants)."""
    def norm(row):
        return {k: dt.datetime.fromisoformat(v).timestamp() if k in ("ingested_at", "created_at") else v
                for k, v in row.items()}

    return [norm(i) for i in items] == [norm(r) for r in rows]


def test_answers_are_the_lake_at_the_headers_versions_before_and_after_a_commit(lake):
    with TestClient(create_app(lake, refresh_seconds=0.05)) as client:
        first = client.get("/prices/T001", params={"limit": MAX_LIMIT})
        at = versions(first)
        assert at == {t: lake.table(t).version() for t in (SNAPSHOT_TABLE, PREDICTIONS_TABLE)} | {EVALUATION_TABLE: -1}
        assert same(first.json()["items"], expected_prices(lake, at[SNAPSHOT_TABLE], "T001"))
        forecasts = client.get("/predictions/T001", params={"limit": MAX_LIMIT})
        assert same(forecasts.json()["items"], expected_predictions(lake, at, "T001"))
        assert forecasts.json()["items"][0]["naive_close"] is not None

        # unchanged: 304 with the same ETag, no body
        again = client.get("/prices/T001", params={"limit": MAX_LIMIT}, headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304 and again.headers["etag"] == first.headers["etag"] and not again.content

        # a commit (a later record of every T001 bar, close + 1, a new ticker and a soft delete of one T002 bar)
        # becomes visible with its version
        later = batch(4, START, END, hours_later=1, close_bump=1.0)
        gone = later.filter((pl.col("ticker") == "T002") & (pl.col("date") == dt.date(2024, 8, 1)))
        later = pl.concat([later.filter(pl.col("ticker").is_in(["T001", "T003"])),
                           gone.with_columns(_is_deleted=pl.lit(True))])
        before_t002 = client.get("/prices/T002", params={"limit": MAX_LIMIT}).json()["total"]
        lake.upsert(SNAPSHOT_TABLE, later, keys=SNAPSHOT_KEYS, order_by=PRECOMBINE)
        deadline = time.monotonic() + 30
        while (now := client.get("/prices/T001", params={"limit": MAX_LIMIT})).headers["etag"] == first.headers["etag"]:
            assert time.monotonic() < deadline, "the commit never reached the API"
            time.sleep(0.02)
        assert versions(now)[SNAPSHOT_TABLE] == at[SNAPSHOT_TABLE] + 1
        assert same(now.json()["items"], expected_prices(lake, at[SNAPSHOT_TABLE] + 1, "T001"))
        assert now.json()["items"][0]["close"] == pytest.approx(first.json()["items"][0]["close"] + 1.0)
        assert "T003" in {t["ticker"] for t in client.get("/tickers").json()}
        assert client.get("/tickers").json() == q.records(q.tickers(lake, version=at[SNAPSHOT_TABLE] + 1))
        t002 = client.get("/prices/T002", params={"limit": MAX_LIMIT}).json()
        assert t002["total"] == before_t002 - 1 and "2024-08-01" not in {i["date"] for i in t002["items"]}
        assert same(t002["items"], expected_prices(lake, at[SNAPSHOT_TABLE] + 1, "T002"))
        # the forecasts' actual closes follow the new snapshot version too
        moved = client.get("/predictions/T001", params={"limit": MAX_LIMIT})
        assert same(moved.json()["items"], expected_predictions(lake, versions(moved), "T001"))
        # the old ETag no longer matches
        assert client.get("/prices/T001", headers={"If-None-Match": first.headers["etag"]}).status_code == 200


def test_a_lake_over_the_memory_cap_is_served_by_scans_with_the_same_answers(lake):
    urls = ["/tickers", "/prices/T000?limit=7&offset=3", "/prices/T002?start=2024-08-01&end=2024-08-31",
            "/predictions/T001?start=2024-09-02", "/evaluation?window=5", "/prices/NOPE", "/dashboard?ticker=T001"]
    with TestClient(create_app(lake)) as memory, TestClient(create_app(lake, max_rows=10)) as scans:
        assert not memory.app.state.read_model.view().scan and scans.app.state.read_model.view().scan
        for url in urls:
            a, b = memory.get(url), scans.get(url)
            assert (a.status_code, a.headers.get("etag")) == (b.status_code, b.headers.get("etag")), url
            assert a.content == b.content, url


def test_the_dashboard_draws_a_lake_without_features_evaluation_or_checks(lake):
    """Prices and forecasts only (no `features`, `prediction_evaluation`, quarantine or check results yet): every
    panel is drawn, the missing parts say so, and no value the lake lacks is made up."""
    import re

    with TestClient(create_app(lake)) as client:
        html = client.get("/dashboard", params={"ticker": "T002", "sessions": 20}).text
    assert re.findall(r'aria-label="([^"]+)"', html) == ["T002 daily", "RSI 14", "MACD 12/26/9",
                                                         "Close of the target day", "Quarantined rows"]
    bars = q.prices(lake, "T002", END - dt.timedelta(days=28), END)
    assert len(re.findall(r"<g><title>", html)) == bars.height > 0
    assert "<polyline" in html and "nan" not in html.lower()  # the forecasts' lines; no indicator is drawn
    assert "Latest: for " in html
    assert re.findall(r"<tr><td>(T002|all tickers)</td><td>- .. -</td><td>0</td>", html) == ["T002", "all tickers"]
    assert "No check results in the lake yet" in html and "0 day(s) with quarantined rows" in html


def test_the_read_model_serves_an_empty_lake_and_then_its_first_table(tmp_path):
    lake = LakeResource(uri=str(tmp_path / "lake"))
    with TestClient(create_app(lake, refresh_seconds=0.05)) as client:
        assert client.get("/tickers").json() == [] and client.get("/prices/T000").status_code == 404
        ensure_snapshot_table(lake)
        lake.upsert(SNAPSHOT_TABLE, batch(1, START, END), keys=SNAPSHOT_KEYS, order_by=PRECOMBINE)
        deadline = time.monotonic() + 30
        while client.get("/prices/T000").status_code == 404:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        latest = lake.table(SNAPSHOT_TABLE).version()
        assert client.get("/prices/T000").json()["total"] == len(expected_prices(lake, latest, "T000")) > 0
        assert client.get("/predictions/T000").json()["items"] == []


def test_concurrent_clients_of_every_endpoint_all_get_answers(tmp_path):
    """Eight clients at once on a real server, every endpoint, 400 tickers (polars deadlocked when two threads
    wrote and read one frame, the ticker index, at once: see read_model.json_rows)."""
    import threading

    import httpx

    lake = LakeResource(uri=str(tmp_path / "lake"))
    ensure_snapshot_table(lake)
    bars = batch(400, dt.date(2024, 9, 2), dt.date(2024, 9, 30))
    lake.upsert(SNAPSHOT_TABLE, bars, keys=SNAPSHOT_KEYS, order_by=PRECOMBINE)
    lake.replace_dates(PREDICTIONS_TABLE, predictions(bars, 1), dt.date(2024, 9, 2), dt.date(2024, 9, 30))

    urls = ["/tickers", "/prices/T000?limit=50", "/predictions/T001", "/evaluation?window=5"]
    statuses: list[int] = []
    with serving(lake) as address:
        def client() -> None:
            with httpx.Client(base_url=f"http://{address}", timeout=20) as http:
                statuses.extend(http.get(url).status_code for _ in range(25) for url in urls)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert statuses == [200] * (8 * 25 * len(urls))


def test_a_lake_that_goes_away_after_loading_is_served_at_its_last_versions(lake, tmp_path):
    """Once loaded, a lake that cannot be followed (here: moved away) leaves the API answering from its last view,
    with its versions; a request before any view answers 503 (test_serving)."""
    import shutil

    with TestClient(create_app(lake, refresh_seconds=0.05)) as client:
        first = client.get("/prices/T000")
        shutil.move(lake.uri, tmp_path / "elsewhere")
        time.sleep(0.5)  # ten polls of the refresher, all failing
        again = client.get("/prices/T000")
        assert again.status_code == 200 and again.json() == first.json()
        assert again.headers["etag"] == first.headers["etag"]
