from __future__ import annotations

import contextlib
import datetime as dt

import pandas as pd
import polars as pl
import pytest
import yfinance

from stock_platform.lib.calendar import trading_days
from stock_platform.lib.prices import PRICES_SCHEMA
from stock_platform.resources import PriceSourceResource
from stock_platform.resources.sources import SourceError, yfinance_to_polars
from stock_platform.schemas import failure_cases, prices_schema
from stock_platform.settings import SettingsError
from stock_platform_tests import yf_fixtures

JAN = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]
START, END = dt.date(2024, 1, 2), dt.date(2024, 1, 5)


def assert_valid(df: pl.DataFrame, tickers: list[str]) -> None:
    assert dict(df.schema) == PRICES_SCHEMA
    cases = failure_cases(prices_schema(tickers, trading_days(START, END)), df)
    assert cases.is_empty(), cases


# ----------------------------------------------------------------------------------------------- demo
def test_demo_source_validates(demo_source):
    result = demo_source.fetch(["AAPL", "MSFT"], START, END)
    assert result.rejects.is_empty() and result.missing_tickers == []
    assert result.prices.height == 8
    assert_valid(result.prices, ["AAPL", "MSFT"])


# ---------------------------------------------------------------------------------------------- files
def _yahoo_csv(path, dates=JAN, adj=True, lower=False):
    header = ["Date", "Open", "High", "Low", "Close", *(["Adj Close"] if adj else []), "Volume"]
    if lower:
        header = [h.lower() for h in header]
    lines = [",".join(header)]
    for i, d in enumerate(dates):
        c = 100 + i
        lines.append(",".join(map(str, [d, c - 0.5, c + 1, c - 1, c, *([c * 0.99] if adj else []), 1000 + i])))
    path.write_text("\n".join(lines) + "\n")


def test_files_source_reads_csv_exports_and_parquet(tmp_path):
    _yahoo_csv(tmp_path / "AAPL.csv")                       # Yahoo export
    _yahoo_csv(tmp_path / "msft.CSV", adj=False, lower=True)  # lower-case names, no Adj Close
    pl.DataFrame({"Date": [dt.date(2024, 1, d) for d in (2, 3, 4, 5)], "Open": [1.0] * 4, "High": [2.0] * 4,
                  "Low": [0.5] * 4, "Close": [1.5] * 4, "Volume": [10] * 4}).write_parquet(tmp_path / "XOM.parquet")
    src = PriceSourceResource(source="files", files_dir=str(tmp_path))
    result = src.fetch(["AAPL", "MSFT", "XOM"], START, END)
    assert result.rejects.is_empty()
    assert_valid(result.prices, ["AAPL", "MSFT", "XOM"])
    assert result.prices.group_by("ticker").len().sort("ticker")["len"].to_list() == [4, 4, 4]
    msft = result.prices.filter(pl.col("ticker") == "MSFT")
    assert (msft["adj_close"] == msft["close"]).all()  # no Adj Close: the close is the adjusted price
    assert set(result.prices["source"]) == {"files"}


def test_files_source_reads_the_date_formats_real_exports_use(tmp_path):
    rows = "Open,High,Low,Close,Volume\n"
    # a pandas index written without a header (backtesting's GOOG.csv), US month-first dates (arch's Yahoo
    # exports: 1/13 proves it), day-first dates (13/1 proves it), and a file that proves neither
    (tmp_path / "AAA.csv").write_text("," + rows + "2024-01-02,1,2,0.5,1.5,10\n2024-01-03,1,2,0.5,1.5,10\n")
    (tmp_path / "BBB.csv").write_text("Date," + rows + "1/2/2024,1,2,0.5,1.5,10\n1/12/2024,1,2,0.5,1.5,10\n"
                                      "1/16/2024,1,2,0.5,1.5,10\n")
    (tmp_path / "CCC.csv").write_text("Date," + rows + "2/1/2024,1,2,0.5,1.5,10\n16/1/2024,1,2,0.5,1.5,10\n")
    (tmp_path / "DDD.csv").write_text("Date," + rows + "2/1/2024,1,2,0.5,1.5,10\n3/1/2024,1,2,0.5,1.5,10\n")
    got = PriceSourceResource(source="files", files_dir=str(tmp_path)).fetch(
        ["AAA", "BBB", "CCC", "DDD"], dt.date(2024, 1, 1), dt.date(2024, 2, 29))
    days = {t: sorted(got.prices.filter(pl.col("ticker") == t)["date"].to_list()) for t in ("AAA", "BBB", "CCC")}
    assert days == {"AAA": [dt.date(2024, 1, 2), dt.date(2024, 1, 3)],
                    "BBB": [dt.date(2024, 1, 2), dt.date(2024, 1, 12), dt.date(2024, 1, 16)],
                    "CCC": [dt.date(2024, 1, 2), dt.date(2024, 1, 16)]}
    # ambiguous: neither guessed nor dropped silently, each row quarantined with the reason
    assert got.rejects["ticker"].to_list() == ["DDD", "DDD"]
    assert "date='2/1/2024' is ambiguous: no date of the file shows whether the day or the month comes first" \
        in got.rejects["reason"].to_list()


def test_files_source_filters_the_range_and_reports_missing_tickers(tmp_path):
    _yahoo_csv(tmp_path / "AAPL.csv", dates=["2023-12-29", *JAN, "2024-01-08"])
    result = PriceSourceResource(source="files", files_dir=str(tmp_path)).fetch(["AAPL", "MSFT"], START, END)
    assert result.prices["date"].min() == START and result.prices["date"].max() == END
    assert result.missing_tickers == ["MSFT"]


def test_a_demo_on_files_ends_where_every_file_does_unless_told(tmp_path):
    """History a user brought ends where it ends: the demo's default range ends on the last day every ticker's
    file covers (never after the last session before New York's today), an explicit --end wins."""
    from stock_platform.cli.pipeline import default_end
    from stock_platform.settings import load_settings

    _yahoo_csv(tmp_path / "AAPL.csv", dates=JAN)
    _yahoo_csv(tmp_path / "MSFT.csv", dates=JAN[:3])
    (tmp_path / "XOM.csv").write_text("Date,Open,High,Low,Close,Volume\n2024-01-08,1,x,1,1,10\n")  # unreadable row only
    env = {"STOCK_PLATFORM_SOURCE": "files", "STOCK_PLATFORM_FILES_DIR": str(tmp_path), "STOCK_PLATFORM_HOME": str(tmp_path)}
    noon = dt.datetime(2026, 12, 2, 17, 0, tzinfo=dt.UTC)
    settings = load_settings(env | {"STOCK_PLATFORM_TICKERS": "AAPL,MSFT,IBM"}, now=noon)  # IBM has no file
    end, why = default_end(settings, now=noon)
    assert end == dt.date(2024, 1, 4) and "the last day every ticker's file covers" in why
    # files reaching New York's today: the usual end (the last session before today)
    settings = load_settings(env | {"STOCK_PLATFORM_TICKERS": "AAPL"}, now=noon)
    assert default_end(settings, now=dt.datetime(2024, 1, 5, 15, tzinfo=dt.UTC)) == (dt.date(2024, 1, 4), "")
    # nothing readable: the error names the directory
    with pytest.raises(SettingsError, match=f"no readable rows for XOM in {tmp_path}"):
        default_end(load_settings(env | {"STOCK_PLATFORM_TICKERS": "XOM"}, now=noon), now=noon)
    assert default_end(load_settings({"STOCK_PLATFORM_HOME": str(tmp_path)}, now=noon), now=noon) == (
        dt.date(2026, 12, 1), "")


def test_files_source_without_any_file_names_the_directory(tmp_path):
    with pytest.raises(SourceError, match=f"no CSV or Parquet file for any of AAPL in {tmp_path}"):
        PriceSourceResource(source="files", files_dir=str(tmp_path)).fetch(["AAPL"], START, END)


def test_files_source_unreadable_file_names_it(tmp_path):
    (tmp_path / "AAPL.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SourceError, match="cannot read .*AAPL.parquet"):
        PriceSourceResource(source="files", files_dir=str(tmp_path)).fetch(["AAPL"], START, END)


def test_files_source_missing_column_names_file_and_column(tmp_path):
    (tmp_path / "AAPL.csv").write_text("Date,Open,High,Close,Volume\n2024-01-02,1,2,1.5,10\n")
    with pytest.raises(ValueError, match=r"AAPL.csv: missing column\(s\) low"):
        PriceSourceResource(source="files", files_dir=str(tmp_path)).fetch(["AAPL"], START, END)


def test_files_source_refuses_unsafe_ticker_before_touching_the_path(tmp_path):
    with pytest.raises(ValueError, match="not a valid ticker"):
        PriceSourceResource(source="files", files_dir=str(tmp_path)).fetch(["../../etc/passwd"], START, END)


# ------------------------------------------------------------------------------------------- yfinance
@pytest.mark.parametrize("group_by", ["column", "ticker"])
def test_yfinance_multiindex_download_shapes(group_by):
    frame = yf_fixtures.download_frame(["AAPL", "MSFT"], JAN, group_by=group_by, missing={"MSFT": ["2024-01-05"]})
    assert list(frame.columns.names) == (["Price", "Ticker"] if group_by == "column" else ["Ticker", "Price"])
    long = yfinance_to_polars(frame, ["AAPL", "MSFT"])
    assert long.height == 7  # MSFT's NaN-padded day is absent, not a bad row
    assert set(long.columns) >= {"ticker", "date", "open", "high", "low", "close", "adj_close", "volume",
                                 "dividends", "splits"}


def test_yfinance_single_ticker_history_shape_is_tz_aware():
    frame = yf_fixtures.history_frame("AAPL", JAN)
    assert str(frame.index.tz) == "America/New_York"
    long = yfinance_to_polars(frame, ["AAPL"])
    assert long["date"].dt.date().to_list() == [dt.date.fromisoformat(d) for d in JAN]


@pytest.fixture
def fake_yf(monkeypatch):
    """Replace yfinance's network calls with fixture answers (its real output and failure shapes), recording
    the calls and the adapter's sleeps. `history[ticker]`: an answer, or a list of answers given in turn (an
    exception is raised); `download`: the frame yf.download returns (it never raises: a failed ticker is
    simply absent, `yf_fixtures.failed_download_frame`)."""
    from stock_platform.resources import sources

    state = {"download_calls": 0, "history": {}, "history_calls": [], "download": None, "sleeps": []}

    def download(tickers, **kwargs):
        state["download_calls"] += 1
        state["last_download"] = kwargs
        assert kwargs["auto_adjust"] is False and kwargs["actions"] is True
        return state["download"]

    class FakeTicker:
        def __init__(self, ticker):
            self.ticker = ticker

        def history(self, **kwargs):
            assert "raise_errors" not in kwargs  # deprecated in yfinance 1.x: exceptions are shown by config
            state["history_calls"].append((self.ticker, yfinance.config.debug.hide_exceptions))
            answer = state["history"].get(self.ticker)
            if isinstance(answer, list):
                answer = answer.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer if answer is not None else pd.DataFrame()

    monkeypatch.setattr(yfinance, "download", download)
    monkeypatch.setattr(yfinance, "Ticker", FakeTicker)
    monkeypatch.setattr(sources.time, "sleep", state["sleeps"].append)
    return state


def test_yfinance_source_validates_and_keeps_adjustment_columns(fake_yf):
    fake_yf["download"] = yf_fixtures.download_frame(["AAPL", "MSFT"], JAN)
    result = PriceSourceResource(source="yfinance").fetch(["AAPL", "MSFT"], START, END)
    assert_valid(result.prices, ["AAPL", "MSFT"])
    assert result.prices.height == 8 and set(result.prices["source"]) == {"yfinance"}
    aapl = result.prices.filter(pl.col("ticker") == "AAPL").sort("date")
    assert aapl["adj_close"].to_list() == pytest.approx([v * 0.98 for v in aapl["close"]])


def test_yfinance_is_asked_up_to_new_yorks_today_and_answers_only_the_range(fake_yf):
    """Yahoo's answer must reach today to hold every split it applied; the rows after the range are not kept.
    "Today" is New York's at the instant passed in: 02:00 UTC on 2024-01-10 is still January 9th there."""
    from stock_platform.resources.sources import fetch_yfinance

    fake_yf["download"] = yf_fixtures.download_frame(["AAPL"], [*JAN, "2024-01-08", "2024-01-09"])
    result = fetch_yfinance(["AAPL"], START, END, now=dt.datetime(2024, 1, 10, 2, 0, tzinfo=dt.UTC))
    assert fake_yf["last_download"]["start"] == START.isoformat()
    assert fake_yf["last_download"]["end"] == "2024-01-10"  # exclusive: through New York's January 9th
    assert result.prices["date"].max() == END and result.prices.height == len(JAN)


def test_an_outage_is_retried_with_backoff_until_yahoo_answers(fake_yf):
    """The real shape of a rate limit: download logs the failure and leaves the ticker out; the ticker is asked
    alone (exceptions shown, so the error is not mistaken for "no data"), retried after 1x, 2x the backoff
    (x 1-1.5 jitter), and the third answer is used."""
    fake_yf["download"] = yf_fixtures.failed_download_frame(["AAPL"])
    rate_limited = yfinance.exceptions.YFRateLimitError()
    fake_yf["history"]["AAPL"] = [rate_limited, rate_limited, yf_fixtures.history_frame("AAPL", JAN)]
    src = PriceSourceResource(source="yfinance", retry_backoff_seconds=0.5)
    assert src.fetch(["AAPL"], START, END).prices.height == 4
    assert fake_yf["history_calls"] == [("AAPL", False)] * 3
    assert yfinance.config.debug.hide_exceptions is True  # restored
    first, second = fake_yf["sleeps"]
    assert 0.5 <= first <= 0.75 and 1.0 <= second <= 1.5


def test_an_outage_longer_than_the_budget_names_the_source_and_ticker(monkeypatch):
    """Real yfinance, no fixture: its requests go to a proxy on 127.0.0.1 that refuses every connection (what
    an outage looks like to it: curl_cffi's ConnectionError). The adapter retries, then reports an outage,
    never "no data"."""
    from stock_platform.resources import sources

    sleeps = []
    monkeypatch.setattr(sources.time, "sleep", sleeps.append)
    src = PriceSourceResource(source="yfinance", retries=2, retry_backoff_seconds=0.01)
    with refused_by_proxy():
        with pytest.raises(SourceError, match=r"yfinance: history AAPL failed after 3 attempt\(s\): ConnectionError") as err:
            src.fetch(["AAPL"], START, END)
    assert err.value.transient and len(sleeps) == 2


@contextlib.contextmanager
def refused_by_proxy():
    """Real yfinance with every request sent to a proxy port on 127.0.0.1 where nothing listens."""
    yfinance.config.network.proxy = "http://127.0.0.1:9"
    try:
        yield
    finally:
        yfinance.config.network.proxy = None


def test_yfinance_missing_ticker_is_asked_alone_and_reported(fake_yf):
    fake_yf["download"] = yf_fixtures.download_frame(["AAPL"], JAN)
    fake_yf["history"]["NOPE"] = yfinance.exceptions.YFPricesMissingError("NOPE", "possibly delisted")
    fake_yf["history"]["MSFT"] = yf_fixtures.history_frame("MSFT", JAN)
    result = PriceSourceResource(source="yfinance").fetch(["AAPL", "MSFT", "NOPE"], START, END)
    assert result.missing_tickers == ["NOPE"]
    assert sorted(result.prices["ticker"].unique()) == ["AAPL", "MSFT"]


def test_yfinance_empty_answer_for_every_ticker_is_an_error(fake_yf):
    fake_yf["download"] = pd.DataFrame()
    with pytest.raises(SourceError, match="yfinance returned no data for AAPL between 2024-01-02 and 2024-01-05"):
        PriceSourceResource(source="yfinance").fetch(["AAPL"], START, END)


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="unknown source 'bloomberg'"):
        PriceSourceResource(source="bloomberg")


def test_an_outage_retries_the_prices_step_then_fails_naming_it_and_the_next_run_completes(fake_yf, tmp_path,
                                                                                          instance):
    """Dagster-level retries for an outage only: the step is retried `step_retries` times (RetryRequested,
    backoff with jitter), then fails with the source, ticker and error; once Yahoo answers, a run completes."""
    import dagster as dg

    from stock_platform.assets.ingestion import prices

    from stock_platform.lib.tables import PRICES_TABLE
    from stock_platform.automation import daily_assets_job
    from stock_platform.resources import UniverseResource
    from stock_platform.resources.landing import LandingResource
    from stock_platform.resources.lake import LakeResource
    from stock_platform_tests.helpers import failure_message, run_range

    lake = LakeResource(uri=str(tmp_path / "lake"))
    defs = dg.Definitions(assets=[prices], jobs=[daily_assets_job], resources={
        "source": PriceSourceResource(source="yfinance", retries=1, retry_backoff_seconds=0.01, step_retries=2,
                                      step_retry_seconds=0.01),
        "lake": lake, "universe": UniverseResource(tickers=["AAPL"]),
        "landing": LandingResource(uri=str(tmp_path / "landing"))})
    rate_limited = yfinance.exceptions.YFRateLimitError()
    fake_yf["download"] = yf_fixtures.failed_download_frame(["AAPL"])
    fake_yf["history"]["AAPL"] = [rate_limited] * 6  # two adapter attempts in each of three step attempts
    result = run_range(defs, instance, JAN[0], JAN[-1])
    assert not result.success
    assert "yfinance: history AAPL failed after 2 attempt(s): YFRateLimitError" in failure_message(result)
    restarts = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(restarts) == 2 and len(fake_yf["history_calls"]) == 6
    assert not lake.exists(PRICES_TABLE)  # nothing half-written

    fake_yf["history"]["AAPL"] = yf_fixtures.history_frame("AAPL", JAN)  # Yahoo is back
    again = run_range(defs, instance, JAN[0], JAN[-1])
    assert again.success, failure_message(again)
    assert lake.read(PRICES_TABLE).height == len(JAN)
