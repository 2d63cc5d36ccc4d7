"""The `alphavantage` source: Alpha Vantage's REST API (TIME_SERIES_DAILY_ADJUSTED / TIME_SERIES_DAILY) through the
`prices` asset, against a local HTTP server that answers as AV does (no network here).

The answers: AV's JSON shapes (numbered field names, strings with four decimals, newest day first), with real bars
in them: MSFT's (pmdarima's copy, see real_data.py) and AAPL around its 4:1 split of 2020-08-31 (its
as-traded prices as published, split coefficient 4.0 on the day). AV's refusals are quoted word for word as they
come back (HTTP 200 with a "Note", "Information" or "Error Message" body): the per-minute and per-second
throttles, the daily quota (one of them quoting the key), a premium-only function or outputsize, the demo key, an
unknown symbol and a missing key.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import polars as pl
import pytest

from stock_platform.lib.tables import PRICES_TABLE, QUARANTINE_TABLE
from stock_platform.resources import PriceSourceResource, build_resources
from stock_platform.resources.sources import AlphaVantageThrottle, SourceError, fetch_alphavantage
from stock_platform.settings import SettingsError, load_settings
from stock_platform_tests.helpers import failure_message, run_range as run
from stock_platform_tests.real_data import ohlcv
from stock_platform_tests.test_prices_asset import make_defs

KEY = "K3YAV0123456789Z"  # shaped like an AV key; must never show in a message, event or run record

NOTE_PER_MINUTE = ("Thank you for using Alpha Vantage! Our standard API call frequency is 5 calls per minute and 500 "
                   "calls per day. Please visit https://www.alphavantage.co/premium/ if you would like to target a "
                   "higher API call frequency.")
BURST = ("Thank you for using Alpha Vantage! Please consider spreading out your free API requests more sparingly (1 "
         "request per second). You may subscribe to any of the premium plans at https://www.alphavantage.co/premium/ "
         "to lift the free key rate limit (25 requests per day), raise the per-second burst limit, and instantly "
         "unlock all premium endpoints")
DAILY_QUOTA = ("Thank you for using Alpha Vantage! Our standard API rate limit is 25 requests per day. Please "
               "subscribe to any of the premium plans at https://www.alphavantage.co/premium/ to instantly remove all daily rate "
               "limits.")
DAILY_QUOTA_WITH_KEY = (f"We have detected your API key as {KEY} and our standard API rate limit is 25 requests per "
                        "day. Please subscribe to any of the premium plans at https://www.alphavantage.co/premium/ to "
                        "instantly remove all daily rate limits.")
PREMIUM = ("Thank you for using Alpha Vantage! This is a premium endpoint. You may subscribe to any of the premium "
           "plans at https://www.alphavantage.co/premium/ to instantly unlock all premium endpoints")
FULL_IS_PREMIUM = ("Thank you for using Alpha Vantage! The **outputsize=full** parameter value is a premium feature "
                   "for the TIME_SERIES_DAILY endpoint. You may subscribe to any of the premium plans at "
                   "https://www.alphavantage.co/premium/ to instantly unlock all premium features")
DEMO_KEY = ("The **demo** API key is for demo purposes only. Please claim your free API key at "
            "(https://www.alphavantage.co/support/#api-key) to explore our full API offerings. It takes fewer than 20 "
            "seconds.")
UNKNOWN_SYMBOL = ("Invalid API call. Please retry or visit the documentation (https://www.alphavantage.co/"
                  "documentation/) for TIME_SERIES_DAILY_ADJUSTED.")
NO_KEY = ("the parameter apikey is invalid or missing. Please claim your free API key on "
          "(https://www.alphavantage.co/support/#api-key). It should take less than 20 seconds.")

# AAPL as traded around its 4:1 split (2020-08-31) and its $0.82 dividend (ex 2020-08-07): O, H, L, C, volume,
# dividend, split coefficient
AAPL_SPLIT = {
    "2020-08-07": (452.82, 454.70, 441.17, 444.45, 49511403, 0.82, 1.0),
    "2020-08-26": (504.7165, 507.97, 500.33, 506.09, 40755567, 0.0, 1.0),
    "2020-08-27": (508.57, 509.94, 495.33, 500.04, 38888096, 0.0, 1.0),
    "2020-08-28": (504.05, 505.77, 498.31, 499.23, 46907479, 0.0, 1.0),
    "2020-08-31": (127.58, 131.0, 126.0, 129.04, 225702700, 0.0, 4.0),
    "2020-09-01": (132.76, 134.8, 130.53, 134.18, 151948100, 0.0, 1.0),
}


def adjusted_answer(symbol: str, days: dict[str, tuple], *, size: str = "Full size") -> dict:
    """A TIME_SERIES_DAILY_ADJUSTED answer as AV writes it: newest day first, every value a string; the adjusted
    close divides each close by the later splits (the dividends' part of AV's adjustment is left out)."""
    series, later_splits = {}, 1.0
    for day in sorted(days, reverse=True):
        o, h, low, c, v, div, coef = days[day]
        series[day] = {"1. open": f"{o:.4f}", "2. high": f"{h:.4f}", "3. low": f"{low:.4f}", "4. close": f"{c:.4f}",
                       "5. adjusted close": f"{c / later_splits:.4f}", "6. volume": str(int(v)),
                       "7. dividend amount": f"{div:.4f}", "8. split coefficient": f"{coef:.1f}"}
        later_splits *= coef
    return {"Meta Data": {"1. Information": "Daily Time Series with Splits and Dividend Events", "2. Symbol": symbol,
                          "3. Last Refreshed": max(days), "4. Output Size": size, "5. Time Zone": "US/Eastern"},
            "Time Series (Daily)": series}


def real_days(start: str, end: str, ticker: str = "MSFT") -> dict[str, tuple]:
    bars = ohlcv(ticker).loc[start:end]
    return {d.date().isoformat(): (r.Open, r.High, r.Low, r.Close, r.Volume, 0.0, 1.0) for d, r in bars.iterrows()}


class AlphaVantageServer:
    """A local HTTP server answering AV's /query: per symbol a queue of answers (a dict: JSON with HTTP 200; an int:
    that HTTP status), the last one repeated. `requests` records each request's parameters and its monotonic time."""

    def __init__(self):
        self.answers: dict[str, list] = {}
        self.requests: list[tuple[float, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                server.requests.append((time.monotonic(), params))
                queue = server.answers.get(params.get("symbol"), [{"Error Message": UNKNOWN_SYMBOL}])
                answer = queue.pop(0) if len(queue) > 1 else queue[0]
                if isinstance(answer, int):
                    self.send_response(answer)
                    self.end_headers()
                    return
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/query"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def av():
    server = AlphaVantageServer()
    yield server
    server.close()


def no_wait_throttle() -> AlphaVantageThrottle:
    return AlphaVantageThrottle(6000, sleep=lambda s: None)


def fetch(av: AlphaVantageServer, tickers, start: str, end: str, **kwargs):
    kwargs = {"api_key": KEY, "url": av.url, "retries": 2, "backoff": 0.001, "throttle": no_wait_throttle(),
              "now": dt.datetime(2020, 9, 2, 22, tzinfo=dt.UTC)} | kwargs
    return fetch_alphavantage(list(tickers), dt.date.fromisoformat(start), dt.date.fromisoformat(end), **kwargs)


def test_a_split_day_keeps_its_as_traded_bars_and_becomes_the_schemas_split(av):
    av.answers["AAPL"] = [adjusted_answer("AAPL", AAPL_SPLIT, size="Compact")]
    result = fetch(av, ["AAPL"], "2020-08-07", "2020-09-01")
    rows = result.prices.sort("date").filter(pl.col("date") >= dt.date(2020, 8, 27))
    assert rows["date"].cast(pl.Utf8).to_list() == ["2020-08-27", "2020-08-28", "2020-08-31", "2020-09-01"]
    assert rows["close"].to_list() == [500.04, 499.23, 129.04, 134.18]  # as traded: the split day's drop is real
    assert rows["adj_close"].to_list() == [125.01, 124.8075, 129.04, 134.18]  # AV's adjusted close, as it sends it
    assert rows["splits"].to_list() == [0.0, 0.0, 4.0, 0.0]  # coefficient 1 (no split) is the schema's 0
    assert rows["volume"].to_list() == [38888096, 46907479, 225702700, 151948100]
    dividend = result.prices.filter(pl.col("dividends") > 0)
    assert dividend.select("date", "dividends").rows() == [(dt.date(2020, 8, 7), 0.82)]  # the ex-date's cash
    assert set(rows["source"]) == {"alphavantage"} and result.rejects.is_empty()
    # the range lies in the latest 100 sessions at `now`: the compact answer, asked with the key as AV wants it
    [(_, params)] = av.requests
    assert params == {"function": "TIME_SERIES_DAILY_ADJUSTED", "symbol": "AAPL", "outputsize": "compact",
                      "datatype": "json", "apikey": KEY}


def test_real_bars_reach_the_prices_table_and_a_vendors_zero_price_is_quarantined(av, instance, lake, universe,
                                                                                monkeypatch):
    """Through the real settings -> resources path (the key an EnvVar, the endpoint in STOCK_PLATFORM_SOURCE_URL), a
    backfill run of the prices asset: MSFT's real bars (one day's open sent as 0.0000, as AV does for some days),
    and GOOG and XOM, which this server does not know ("Error Message"): missing tickers, not a failed run."""
    days = real_days("2017-10-02", "2017-10-09")
    days["2017-10-04"] = (0.0, *days["2017-10-04"][1:])
    av.answers["MSFT"] = [adjusted_answer("MSFT", days)]
    env = {"STOCK_PLATFORM_SOURCE": "alphavantage", "ALPHAVANTAGE_API_KEY": KEY, "STOCK_PLATFORM_SOURCE_URL": av.url,
           "STOCK_PLATFORM_ALPHAVANTAGE_CALLS_PER_MINUTE": "600"}
    for variable in ("ALPHAVANTAGE_API_KEY", "STOCK_PLATFORM_SOURCE_URL"):  # as a deployment's environment has them
        monkeypatch.setenv(variable, env[variable])
    source = build_resources(load_settings(env))["source"]
    assert isinstance(source.api_key, dg.EnvVar)  # Dagster shows the variable's name, never the key
    universe = type(universe)(tickers=["MSFT", "GOOG", "XOM"])
    result = run(make_defs(source, lake, universe), instance, "2017-10-02", "2017-10-09", job="everything")
    assert result.success, failure_message(result)
    stored = lake.read(PRICES_TABLE).sort("date")
    assert stored["ticker"].unique().to_list() == ["MSFT"] and stored.height == len(days) - 1
    expected = ohlcv("MSFT").loc["2017-10-02":"2017-10-09"].drop(pd_timestamp("2017-10-04"))
    assert stored["close"].to_list() == pytest.approx(expected["Close"].round(4).tolist(), abs=1e-9)
    [reason] = lake.read(QUARANTINE_TABLE, date_column="partition_date")["reason"].to_list()
    assert reason.startswith("open: price must be > 0 (value: 0.0)")
    # the history reaches back beyond the latest 100 sessions: outputsize=full; one request per ticker
    assert sorted(p["symbol"] for _, p in av.requests) == ["GOOG", "MSFT", "XOM"]
    assert {p["outputsize"] for _, p in av.requests} == {"full"}
    records = [str(e) for e in instance.all_logs(result.run_id)] + [str(instance.get_run_by_id(result.run_id))]
    assert any("GOOG" in r and "XOM" in r for r in records)  # the missing tickers are reported
    assert not any(KEY in r for r in records)


def pd_timestamp(day: str):
    import pandas as pd

    return pd.Timestamp(day)


def test_calls_are_spaced_to_the_keys_rate():
    """5 a minute (the free tier): one call every 12 s, never a burst; an idle gap is not saved up."""
    now, slept = [0.0], []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    throttle = AlphaVantageThrottle(5, clock=lambda: now[0], sleep=sleep)
    starts = []
    for gap in (0, 0, 0, 30, 0):
        now[0] += gap
        throttle.wait()
        starts.append(now[0])
    assert starts == [0.0, 12.0, 24.0, 54.0, 66.0]
    assert slept == [12.0, 12.0, 12.0]


def test_a_run_of_requests_keeps_the_rate_on_the_wire(av):
    """The real clock: at 600 calls a minute, four tickers' requests reach the server at least 0.1 s apart."""
    for t in ("AAPL", "MSFT", "GOOG", "XOM"):
        av.answers[t] = [adjusted_answer(t, AAPL_SPLIT)]
    fetch(av, ["AAPL", "MSFT", "GOOG", "XOM"], "2020-08-26", "2020-09-01", throttle=AlphaVantageThrottle(600))
    times = [t for t, _ in av.requests]
    assert len(times) == 4 and min(b - a for a, b in zip(times, times[1:])) >= 0.1 - 0.005


@pytest.mark.parametrize("refusal", [{"Note": NOTE_PER_MINUTE}, {"Information": BURST}, 503, 429])
def test_a_throttle_or_an_outage_is_retried_after_backoff(av, refusal):
    av.answers["AAPL"] = [refusal, refusal, adjusted_answer("AAPL", AAPL_SPLIT)]
    result = fetch(av, ["AAPL"], "2020-08-07", "2020-09-01", retries=2)
    assert result.prices.height == 6 and len(av.requests) == 3


@pytest.mark.parametrize(("refusal", "words"), [
    ({"Information": DAILY_QUOTA}, "daily quota is used up"),
    ({"Information": DAILY_QUOTA_WITH_KEY}, "daily quota is used up"),
    ({"Note": DAILY_QUOTA}, "daily quota is used up"),
    ({"Information": PREMIUM}, "TIME_SERIES_DAILY_ADJUSTED is not on this API key's plan"),
    ({"Information": FULL_IS_PREMIUM}, "(outputsize=full) needs a premium key"),
    ({"Information": DEMO_KEY}, "the demo API key serves demo symbols only"),
    ({"Error Message": NO_KEY}, "the API key is invalid or missing (ALPHAVANTAGE_API_KEY)"),
    (403, "HTTP 403"),
])
def test_a_refusal_that_waiting_cannot_mend_fails_at_once_with_avs_words_and_no_key(av, refusal, words):
    av.answers["AAPL"] = [refusal]
    with pytest.raises(SourceError) as err:
        fetch(av, ["AAPL"], "2020-08-26", "2020-09-01", retries=3)
    assert words in str(err.value) and not err.value.transient
    assert len(av.requests) == 1  # not retried: the quota does not come back in a minute
    assert KEY not in str(err.value)


def test_a_throttle_that_outlasts_the_retries_is_an_outage_and_an_unreachable_api_too(av):
    av.answers["AAPL"] = [{"Note": NOTE_PER_MINUTE}]
    with pytest.raises(SourceError, match=r"alphavantage: TIME_SERIES_DAILY_ADJUSTED AAPL failed after 3 attempt\(s\): "
                       r"alphavantage: throttled: Thank you") as err:
        fetch(av, ["AAPL"], "2020-08-26", "2020-09-01", retries=2)
    assert err.value.transient and len(av.requests) == 3
    url = av.url
    av.close()
    with pytest.raises(SourceError, match="failed after 2 attempt") as err:
        fetch(av, ["AAPL"], "2020-08-26", "2020-09-01", retries=1, url=url)
    assert err.value.transient and KEY not in str(err.value)
    av.close = lambda: None  # closed already


def test_the_daily_quota_fails_the_run_naming_it_and_no_event_holds_the_key(av, instance, lake, universe):
    av.answers["AAPL"] = [{"Information": DAILY_QUOTA_WITH_KEY}]
    source = PriceSourceResource(source="alphavantage", api_key=KEY, url=av.url, calls_per_minute=6000, retries=2,
                                 retry_backoff_seconds=0.001)
    result = run(make_defs(source, lake, type(universe)(tickers=["AAPL"])), instance, "2020-08-27", "2020-08-28",
                 job="everything")
    assert not result.success
    message = failure_message(result)
    assert "alphavantage: the API key's daily quota is used up" in message and "API key as ***" in message
    assert len(av.requests) == 1  # neither the adapter nor Dagster retried it
    records = [str(e) for e in instance.all_logs(result.run_id)] + [str(instance.get_run_by_id(result.run_id))]
    assert not any(KEY in r for r in records)
    assert not lake.exists(PRICES_TABLE)


def test_a_daily_only_answer_has_no_corporate_actions(av):
    """TIME_SERIES_DAILY (the free function): as-traded bars without adjusted close, dividends or splits."""
    answer = adjusted_answer("AAPL", AAPL_SPLIT)
    answer["Time Series (Daily)"] = {d: {"1. open": f["1. open"], "2. high": f["2. high"], "3. low": f["3. low"],
                                         "4. close": f["4. close"], "5. volume": f["6. volume"]}
                                     for d, f in answer["Time Series (Daily)"].items()}
    av.answers["AAPL"] = [answer]
    rows = fetch(av, ["AAPL"], "2020-08-07", "2020-09-01", function="TIME_SERIES_DAILY").prices.sort("date")
    assert rows["volume"].to_list()[-1] == 151948100 and rows["splits"].to_list() == [0.0] * 6
    assert rows["adj_close"].to_list() == rows["close"].to_list()
    assert {p["function"] for _, p in av.requests} == {"TIME_SERIES_DAILY"}


@pytest.mark.parametrize(("env", "words"), [
    ({"ALPHAVANTAGE_API_KEY": None}, "ALPHAVANTAGE_API_KEY is required"),
    ({"ALPHAVANTAGE_API_KEY": "not a key!"}, "ALPHAVANTAGE_API_KEY: not an Alpha Vantage key"),
    ({"STOCK_PLATFORM_ALPHAVANTAGE_FUNCTION": "TIME_SERIES_WEEKLY"}, "STOCK_PLATFORM_ALPHAVANTAGE_FUNCTION"),
    ({"STOCK_PLATFORM_ALPHAVANTAGE_CALLS_PER_MINUTE": "five"}, "STOCK_PLATFORM_ALPHAVANTAGE_CALLS_PER_MINUTE"),
    ({"STOCK_PLATFORM_ALPHAVANTAGE_CALLS_PER_MINUTE": "0"}, "STOCK_PLATFORM_ALPHAVANTAGE_CALLS_PER_MINUTE"),
    ({"STOCK_PLATFORM_SOURCE_URL": "ftp://proxy/query"}, "takes an http(s):// endpoint"),
])
def test_settings_errors_name_the_variable_and_never_the_key(env, words):
    base = {"STOCK_PLATFORM_SOURCE": "alphavantage", "ALPHAVANTAGE_API_KEY": KEY}
    with pytest.raises(SettingsError, match=words.replace("(", r"\(").replace(")", r"\)")) as err:
        load_settings({k: v for k, v in (base | env).items() if v is not None})
    assert KEY not in str(err.value) and "not a key!" not in str(err.value)


def test_settings_take_the_function_and_the_rate():
    settings = load_settings({"STOCK_PLATFORM_SOURCE": "alphavantage", "ALPHAVANTAGE_API_KEY": KEY,
                              "STOCK_PLATFORM_ALPHAVANTAGE_FUNCTION": "time_series_daily",
                              "STOCK_PLATFORM_ALPHAVANTAGE_CALLS_PER_MINUTE": "75"})
    assert (settings.alphavantage_function, settings.alphavantage_calls_per_minute) == ("TIME_SERIES_DAILY", 75.0)
    assert settings.source_url is None and "ALPHAVANTAGE_API_KEY" in settings.secrets_from_env
