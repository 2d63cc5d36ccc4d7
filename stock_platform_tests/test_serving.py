"""The prediction API and the dashboard on a lake and warehouse built by `stock-platform demo`."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from stock_platform.registry import newest_promoted, served_versions
from stock_platform.resources.lake import LakeResource
from stock_platform.resources.warehouse import WarehouseResource
from stock_platform.serving.api import MAX_LIMIT, create_app
from stock_platform_tests.conftest import DEMO_ARGS, DEMO_END, DEMO_TICKERS, user_env
from stock_platform_tests.helpers import serving
from stock_platform_tests.deployment import free_port

pytestmark = pytest.mark.slow
TICKERS = DEMO_TICKERS
END = dt.date.fromisoformat(DEMO_END)
NEXT = dt.date(2025, 7, 1)


def demo_env(home: Path) -> dict[str, str]:
    return user_env() | {"STOCK_PLATFORM_HOME": str(home), "STOCK_PLATFORM_TICKERS": ",".join(TICKERS),
                  "DAGSTER_HOME": str(home / "dagster")}


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-W", "ignore", "-m", "stock_platform.cli", *args], env=demo_env(home),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def home(demo_run, tmp_path_factory) -> Path:
    """The demo's lake, warehouse and instance (a copy of the session's demo home), with forecasts: when the gate
    kept every family's model out, an operator promotes LightGBM's (`models --promote lightgbm/1`) and the demo's
    second run forecasts with it."""
    home = demo_run.copy_to(tmp_path_factory.mktemp("serving") / "home")
    if "none promoted" in next(line for line in demo_run.stdout.splitlines() if line.startswith("tuned_model")):
        cli(home, "models", "--promote", "lightgbm/1")
        cli(home, "demo", *DEMO_ARGS)
    return home


@pytest.fixture(scope="module")
def lake(home) -> LakeResource:
    return LakeResource(uri=str(home / "lake"))


@pytest.fixture(scope="module")
def client(lake):
    from fastapi.testclient import TestClient

    return TestClient(create_app(lake))


def test_prices_and_tickers_match_the_warehouse(client, home):
    assert client.get("/health").json()["status"] == "ok"
    listed = client.get("/tickers").json()
    assert [t["ticker"] for t in listed] == sorted(TICKERS) and {t["last_date"] for t in listed} == {str(END)}
    warehouse = WarehouseResource(url=f"sqlite:///{home}/warehouse.db").read("stock_price", {"ticker": "AAPL"})
    june = warehouse.filter(pl.col("date").is_between(dt.date(2025, 6, 1), END)).sort("date")
    body = client.get("/prices/AAPL", params={"start": "2025-06-01", "end": str(END)}).json()
    assert body["total"] == june.height and body["next_offset"] is None
    assert [i["date"] for i in body["items"]] == [str(d) for d in june["date"]]
    assert [i["close"] for i in body["items"]] == pytest.approx(june["close"].to_list())
    # pages: limit/offset/next_offset walk the same rows
    first = client.get("/prices/AAPL", params={"start": "2025-06-01", "end": str(END), "limit": 5}).json()
    second = client.get("/prices/AAPL", params={"start": "2025-06-01", "end": str(END), "limit": 5,
                                                "offset": first["next_offset"]}).json()
    assert first["items"] + second["items"] == body["items"][:10] and first["next_offset"] == 5


def test_predictions_carry_the_model_version_and_the_naive_forecast(client, lake):
    champion = newest_promoted(served_versions(lake))  # the gate's choice (or the operator's)
    body = client.get("/predictions/MSFT", params={"start": "2025-06-02", "end": str(END)}).json()
    items = body["items"]
    assert items and body["total"] == len(items)
    closes = dict(lake.snapshot("price_snapshots", tickers=["MSFT"]).select("date", "close").iter_rows())
    stored = lake.read("predictions", dt.date(2025, 6, 2), END, tickers=["MSFT"])
    assert [i["date"] for i in items] == [str(d) for d in stored["date"]]
    for item in items:
        day, target = dt.date.fromisoformat(item["date"]), dt.date.fromisoformat(item["target_date"])
        assert item["naive_close"] == pytest.approx(closes[day])
        assert item["actual_close"] == (pytest.approx(closes[target]) if target in closes else None)
        assert (item["model_name"], item["model_version"]) == champion
        assert item["pred_close"] == pytest.approx(closes[day] * (1 + item["pred_return"]))
    assert items[-1]["target_date"] == str(NEXT) and items[-1]["actual_close"] is None  # not known yet


def test_evaluation_aggregates_the_last_window_of_target_days(client, lake):
    body = client.get("/evaluation", params={"window": 10}).json()
    stored = lake.read("prediction_evaluation", date_column="target_date")
    days = sorted(stored["target_date"].unique())[-10:]
    assert (body["first_target_date"], body["last_target_date"]) == (str(days[0]), str(days[-1]))
    m = body["metrics"]
    assert m["rows"] == stored.filter(pl.col("target_date").is_in(days)).height == 10 * len(TICKERS)
    assert m["mase"] == pytest.approx(m["mae"] / m["naive_mae"])
    assert 0 <= m["hit_rate_ci_low"] <= m["hit_rate"] <= m["hit_rate_ci_high"] <= 1


@pytest.mark.parametrize(("url", "status", "says"), [
    ("/prices/aapl", 422, "String should match pattern"),
    ("/prices/AAPL;DROP", 422, "String should match pattern"),
    ("/prices/NOPE", 404, "ticker 'NOPE' is not in the lake"),
    ("/prices/AAPL?start=2025-13-01", 422, "valid date"),
    ("/prices/AAPL?start=2025-06-30&end=2025-06-01", 422, "end 2025-06-01 is before start 2025-06-30"),
    (f"/prices/AAPL?limit={MAX_LIMIT + 1}", 422, f"less than or equal to {MAX_LIMIT}"),
    ("/predictions/AAPL?offset=-1", 422, "greater than or equal to 0"),
    ("/evaluation?window=0", 422, "greater than or equal to 1"),
])
def test_bad_requests_get_a_clear_answer(client, url, status, says):
    answer = client.get(url)
    assert answer.status_code == status and says in answer.text, answer.text


def test_schemathesis_finds_no_server_error_or_schema_violation(lake):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(lake))
    operations = list(schema.get_all_operations())
    assert len(operations) == 6  # health, tickers, prices, predictions, evaluation, dashboard
    failures, calls = [], []
    for result in operations:
        operation = result.ok()

        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case):
            calls.append(case.operation.label)
            query = case.query or {}
            # start > end is refused with 422, a rule OpenAPI cannot state: the one schema-valid request refused
            backwards = "start" in query and "end" in query and str(query["start"]) > str(query["end"])
            try:
                response = case.call_and_validate(excluded_checks=[positive_data_acceptance] if backwards else None)
                if backwards:
                    assert response.status_code == 422 and "is before start" in response.text, response.text
            except Exception as exc:  # noqa: BLE001 - collect every operation's failures, then report them
                failures.append(f"{operation.label}: {exc}")
                raise

        try:
            run()
        except Exception:  # noqa: BLE001 - reported below
            pass
    assert not failures, "\n\n".join(failures[:3])
    assert set(calls) == {op.ok().label for op in operations}  # every operation was exercised
    assert len(calls) > 50


@pytest.fixture
def served(lake):
    with serving(lake) as address:
        yield address


def closed_with(ws) -> tuple[int, str]:
    """The close code and reason the server sent (the next receive fails with them)."""
    from websockets.exceptions import ConnectionClosed

    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    return closed.value.rcvd.code, closed.value.rcvd.reason


@pytest.mark.parametrize(("query", "says"), [
    ("price_snapshots=-5", "price_snapshots: version cursor -5 is below -1"),
    ("price_snapshots=abc", "price_snapshots: version cursor 'abc' is not an integer"),
    ("predictions=999999", "predictions: version cursor 999999 is ahead of the table (latest version "),
    ("predictions=" + "9" * 200, "predictions: version cursor 9999"),  # a reason is cut to 123 bytes
])
def test_a_bad_websocket_cursor_is_refused_with_a_reason(served, query, says):
    from websockets.sync.client import connect

    with connect(f"ws://{served}/ws/updates?{query}") as ws:
        code, reason = closed_with(ws)
    assert code == 1008 and reason.startswith(says) and len(reason.encode()) <= 123


def test_a_cursor_whose_history_is_gone_is_closed_with_where_to_resume(tmp_path):
    """The change feed after the cursor no longer exists (its files removed, as a vacuum past the retention
    would): the client is told, with the version to resume from after re-reading the table."""
    import shutil

    from websockets.sync.client import connect

    from stock_platform.assets.lake import ensure_snapshot_table

    from stock_platform.lib.tables import PRECOMBINE, SNAPSHOT_KEYS, SNAPSHOT_TABLE
    from stock_platform.serving.api import CURSOR_GONE
    from stock_platform_tests.lake_writer import batch

    small = LakeResource(uri=str(tmp_path / "lake"))
    ensure_snapshot_table(small)
    day = dt.date(2024, 3, 4)
    for hours in (0, 1):
        small.upsert(SNAPSHOT_TABLE, batch(2, day, day, hours_later=hours, close_bump=hours), keys=SNAPSHOT_KEYS,
                     order_by=PRECOMBINE)
    shutil.rmtree(tmp_path / "lake" / SNAPSHOT_TABLE / "_change_data")
    with serving(small) as address, connect(f"ws://{address}/ws/updates?price_snapshots=0") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "cursor"
        code, reason = closed_with(ws)
    assert code == CURSOR_GONE
    assert reason.startswith("price_snapshots: changes after version 0 are gone (retention); re-read the table")


def test_serve_stops_on_sigterm_with_websocket_clients_connected(home):
    """uvicorn waits for open connections on shutdown; the feed's clients never close theirs."""
    import signal

    from websockets.sync.client import connect

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-W", "ignore", "-m", "stock_platform.cli", "serve", "--port", str(port)],
                            env=demo_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with connect(f"ws://127.0.0.1:{port}/ws/updates"):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        with contextlib.ExitStack() as clients:
            for query in ("", "?price_snapshots=-1"):
                ws = clients.enter_context(connect(f"ws://127.0.0.1:{port}/ws/updates{query}"))
                assert json.loads(ws.recv(timeout=10))["type"] == "cursor"
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            assert time.monotonic() - started < 8
    finally:
        if proc.poll() is None:
            proc.kill()


def receive_until(ws, want, timeout: float = 180) -> list[dict]:
    """Messages until `want(messages)` holds."""
    messages, deadline = [], time.monotonic() + timeout
    while not want(messages):
        messages.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
    return messages


def test_a_websocket_client_receives_the_new_day_after_a_materialization(served, home, lake):
    from websockets.sync.client import connect

    before = lake.table("price_snapshots").version()
    with connect(f"ws://{served}/ws/updates") as ws:
        cursor = json.loads(ws.recv(timeout=10))
        assert cursor["type"] == "cursor" and cursor["versions"]["price_snapshots"] == before
        # a new session lands: the daily job for NEXT, in a process of its own, on the demo's instance
        script = ("import dagster as dg; from stock_platform.definitions import defs\n"
                  "with dg.DagsterInstance.get() as i:\n"
                  f"    assert defs.resolve_job_def('daily_assets').execute_in_process(instance=i, partition_key="
                  f"'{NEXT}').success")
        done = subprocess.run([sys.executable, "-W", "ignore", "-c", script], env=demo_env(home), capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

        def both(messages):
            tables = {m["table"] for m in messages if m["type"] == "changes"}
            return {"price_snapshots", "predictions"} <= tables

        changes = [m for m in receive_until(ws, both) if m["type"] == "changes"]
    snap = [r for m in changes if m["table"] == "price_snapshots" for r in m["rows"]]
    preds = [r for m in changes if m["table"] == "predictions" for r in m["rows"]]
    assert sorted(r["ticker"] for r in snap if r["date"] == str(NEXT)) == sorted(TICKERS)
    assert sorted(r["ticker"] for r in preds if r["date"] == str(NEXT)) == sorted(TICKERS)
    assert all(r["version"] > before for r in snap)

    # a client that resumes from an old cursor gets what it missed at once; a bad cursor is refused
    with connect(f"ws://{served}/ws/updates?price_snapshots={before}") as ws:
        missed = receive_until(ws, lambda ms: any(m["type"] == "changes" for m in ms), timeout=30)
    assert {r["date"] for m in missed if m["type"] == "changes" for r in m["rows"]} >= {str(NEXT)}
    with connect(f"ws://{served}/ws/updates?predictions=latest") as ws, pytest.raises(Exception, match="1008"):
        ws.recv(timeout=10)


def test_the_dashboard_shows_every_panel_as_the_lake_holds_it(client):
    import re
    from html import unescape

    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["x-table-version"] == client.get("/tickers").headers["x-table-version"]
    html = page.text
    assert "<script" not in html  # complete as it arrives: nothing to load or run
    assert re.findall(r"<option(?: selected)?>([A-Z.]+)</option>", html) == sorted(TICKERS)
    ticker = sorted(TICKERS)[0]
    assert f"<option selected>{ticker}</option>" in html
    charts = re.findall(r'<svg [^>]*aria-label="([^"]+)"', html)
    assert charts == [f"{ticker} daily", "RSI 14", "MACD 12/26/9", "Close of the target day", "Quarantined rows"]

    # the candles are the ticker's bars (250 sessions back from its last day), each with its values on hover
    last = dt.date.fromisoformat(client.get("/tickers").json()[0]["last_date"])
    bars = client.get(f"/prices/{ticker}", params={"start": str(last - dt.timedelta(days=350)), "end": str(last),
                                                   "limit": 1000}).json()["items"]
    candles = re.findall(r"<g><title>(\d{4}-\d\d-\d\d)  O ([\d,.]+)  H [\d,.]+  L [\d,.]+  C ([\d,.]+)", html)
    assert [c[0] for c in candles] == [b["date"] for b in bars]
    assert [float(c[2].replace(",", "")) for c in candles] == pytest.approx([b["close"] for b in bars], abs=0.005)
    # the latest forecast, as /predictions has it
    pred = client.get(f"/predictions/{ticker}", params={"start": str(last - dt.timedelta(days=350)),
                                                        "limit": 1000}).json()["items"][-1]
    assert (f"Latest: for {pred['target_date']} close {pred['pred_close']:,.2f} ({pred['pred_return']:+.2%}) by "
            f"{pred['model_name']} v{pred['model_version']}") in unescape(html)
    # the metrics of all tickers are /evaluation's; the ticker's its own subset
    m = client.get("/evaluation", params={"window": 20}).json()["metrics"]
    rows = re.findall(r"<tr><td>([^<]+)</td><td>[^<]+</td><td>([\d,]+)</td><td>[^<]+</td><td>([^<]+)</td>", html)
    assert [r[0] for r in rows] == [ticker, "all tickers"]
    assert (int(rows[1][1].replace(",", "")), rows[1][2]) == (int(m["rows"]), f"{m['mase']:.3f}")
    assert 0 < int(rows[0][1].replace(",", "")) < int(m["rows"])
    # data quality: the quarantine's days and the blocking checks' results, from the lake
    assert re.search(r"\d+ day\(s\) with quarantined rows, lowest DQ score \d\.\d{3}", html)
    checks = re.findall(r"<tr><td>([a-z_]+:[a-z_]+)</td><td>(SUCCEEDED|FAILED)</td>", html)
    assert {"prices:prices_schema", "features:features_schema"} <= {c[0] for c in checks}
    assert "SUCCEEDED" in {c[1] for c in checks}

    # another ticker, range and window; a bad one is refused with the reason
    other = client.get("/dashboard", params={"ticker": "XOM", "sessions": 60, "window": 5}).text
    assert "<option selected>XOM</option>" in other and "Last 5 target days" in other
    assert len(re.findall(r"<g><title>", other)) == len(client.get("/prices/XOM", params={
        "start": str(last - dt.timedelta(days=84)), "end": str(last)}).json()["items"])
    assert client.get("/dashboard", params={"ticker": "ZZZZ"}).status_code == 404
    assert client.get("/dashboard", params={"ticker": "../etc"}).status_code == 422
    assert client.get("/dashboard", params={"sessions": 5}).status_code == 422
    home = client.get("/", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "dashboard"


def test_the_api_and_its_dashboard_answer_without_loading_dagster(home):
    """They read the lake through `stock_platform.lake.Lake`: Dagster, a second of start-up in imports, stays out
    of the process (a fresh interpreter: the page drawn, the API answering)."""
    code = ("import sys\nfrom fastapi.testclient import TestClient\n"
            "from stock_platform.serving.api import app_from_settings\n"
            "with TestClient(app_from_settings()) as client:\n"  # its lifespan stops the read model's thread
            "    assert client.get('/tickers').json() and client.get('/dashboard').text.count('<svg ') == 5\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster'))\n")
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=demo_env(home), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "[]"


def test_serve_starts_from_the_cli_with_its_dashboard_on_loopback_without_tokens(home):
    """No STOCK_PLATFORM_API_TOKENS: asked for every interface, it binds to loopback only and says so."""
    import socket
    import urllib.request

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-W", "ignore", "-m", "stock_platform.cli", "serve", "--host", "0.0.0.0",
                             "--port", str(port)], env=demo_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:  # -> /dashboard
                    assert answer.status == 200 and answer.url.endswith("/dashboard")
                    assert answer.read().decode().count("<svg ") == 5
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "serve did not answer"
                time.sleep(0.2)
        others = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
        for address in [a for a in others if "." in a and not a.startswith("127.")]:  # this host's other interfaces
            with socket.socket() as s, pytest.raises(OSError):
                s.settimeout(5)
                s.connect((address, port))
    finally:
        proc.terminate()
        proc.wait(20)
    printed = proc.stdout.read().decode()
    assert "the dashboard at /dashboard" in printed and f"http://127.0.0.1:{port}" in printed
    assert "no STOCK_PLATFORM_API_TOKENS: open to anyone who reaches it, so on loopback only (not 0.0.0.0)" in printed


def test_an_empty_or_unreachable_lake_is_answered_with_a_reason(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    empty = TestClient(create_app(LakeResource(uri=str(tmp_path / "nothing-yet"))))
    health = empty.get("/health")
    assert health.status_code == 503 and "has no price_snapshots table yet" in health.json()["detail"]
    assert empty.get("/tickers").json() == []
    for path in ("/prices/AAPL", "/predictions/AAPL"):
        answer = empty.get(path)
        assert answer.status_code == 404 and "'AAPL' is not in the lake" in answer.json()["detail"]
    assert empty.get("/evaluation").json()["metrics"] == {"rows": 0}
    assert "The lake holds no prices yet" in empty.get("/dashboard").text

    # S3 that refuses connections (an outage): 503 with the storage's reason and Retry-After, never a 500
    for name, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}.items():
        monkeypatch.setenv(name, value)
    down = TestClient(create_app(LakeResource(uri="s3://lake/down", aws_endpoint_url="http://127.0.0.1:9")))
    for path in ("/health", "/prices/AAPL"):
        answer = down.get(path)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5", (path, answer.text)
        assert answer.json()["detail"].startswith("the lake at s3://lake/down cannot be read: ")
        assert "\x1b" not in answer.json()["detail"] and "\n" not in answer.json()["detail"]
    with down.websocket_connect("/ws/updates") as ws, pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_json()
    assert closed.value.code == 1013 and closed.value.reason.startswith("the lake at s3://lake/down cannot be read")


LOAD_SECONDS = 12


def test_reads_during_concurrent_commits_never_fail_and_never_tear(tmp_path):
    """2 writer processes commit whole-table versions (snapshot upserts; prediction replacements), each
    marking every row it writes with its commit number, while 4 clients read /prices and /predictions
    from a served API: no 5xx, and every answer holds one commit's rows (one mark). The range fits one commit
    (`dates_per_commit`): a longer write is committed in chunks, and a reader may see its first chunk only."""
    import httpx

    from stock_platform.lib.tables import PREDICTIONS_TABLE
    from stock_platform.assets.lake import ensure_snapshot_table
    from stock_platform.lib.tables import PRECOMBINE, SNAPSHOT_KEYS, SNAPSHOT_TABLE
    from stock_platform_tests.lake_writer import batch, predictions

    start, end, tickers = dt.date(2024, 7, 1), dt.date(2024, 12, 27), 4
    lake = LakeResource(uri=str(tmp_path / "lake"))
    ensure_snapshot_table(lake)
    base = batch(tickers, start, end)
    assert base["date"].n_unique() <= lake.dates_per_commit
    lake.upsert(SNAPSHOT_TABLE, base, keys=SNAPSHOT_KEYS, order_by=PRECOMBINE)
    lake.replace_dates(PREDICTIONS_TABLE, predictions(base, 0), start, end, change_data_feed=True)
    base_close = {(r["ticker"], r["date"].isoformat()): r["close"] for r in base.iter_rows(named=True)}

    writer = [sys.executable, "-W", "ignore", "-m", "stock_platform_tests.lake_writer", "--uri", lake.uri,
              "--start", start.isoformat(), "--end", end.isoformat(), "--tickers", str(tickers),
              "--for-seconds", str(LOAD_SECONDS)]
    answers: list[tuple[str, int, set]] = []

    def client(ticker: str) -> None:
        with httpx.Client(base_url=f"http://{address}", timeout=30) as http:
            while time.monotonic() < deadline:
                for route in ("prices", "predictions"):
                    r = http.get(f"/{route}/{ticker}", params={"limit": MAX_LIMIT})
                    marks = set()
                    if r.status_code == 200:
                        items = r.json()["items"]
                        marks = ({round(i["close"] - base_close[ticker, i["date"]], 6) for i in items}
                                 if route == "prices" else {i["model_version"] for i in items})
                    answers.append((route, r.status_code, marks))

    with serving(lake) as address:
        writers = [subprocess.Popen(writer + extra, stdout=subprocess.PIPE, text=True)
                   for extra in ([], ["--predictions"])]
        deadline = time.monotonic() + LOAD_SECONDS
        readers = [threading.Thread(target=client, args=(f"T{i:03d}",)) for i in range(4)]
        for t in readers:
            t.start()
        for t in readers:
            t.join(LOAD_SECONDS + 60)
        outputs = [w.communicate(timeout=120)[0] for w in writers]
    assert all(w.returncode == 0 for w in writers)
    commits = [json.loads(out.strip().splitlines()[-1])["commits"] for out in outputs]
    statuses = {status for _, status, _ in answers}
    assert statuses == {200}, statuses
    torn = [(route, sorted(marks)) for route, _, marks in answers if len(marks) != 1]
    assert not torn, torn[:5]  # one commit's rows per answer: no torn read
    seen = {route: {m for r, _, marks in answers if r == route for m in marks} for route in ("prices", "predictions")}
    assert min(commits) >= 3 and all(len(marks) >= 3 for marks in seen.values()), (commits, seen)
    assert len(answers) >= 40, len(answers)
    print(f"load: {len(answers)} answers in {LOAD_SECONDS} s, writer commits {commits}, all 200, none torn")
