"""Bad input: each case ends in a clear error or a quarantine reason naming the problem; valid rows survive."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from stock_platform.lib.prices import PriceDataError, conform
from stock_platform.schemas import prices_schema, split_valid

UNIVERSE = ["AAPL", "MSFT"]
DATES = [dt.date(2024, 1, 2), dt.date(2024, 1, 3), dt.date(2024, 1, 4), dt.date(2024, 1, 5), dt.date(2024, 1, 8)]
GOOD = {"ticker": "MSFT", "date": "2024-01-02", "open": "10", "high": "11", "low": "9", "close": "10.5",
        "volume": "1000"}


def run(rows: list[dict]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Conform raw string rows (as a CSV gives them) and validate them; return (valid, quarantined)."""
    raw = pl.DataFrame(rows, schema={k: pl.Utf8 for k in rows[0]})
    typed, parse_rejects = conform(raw, source="files", origin="test.csv")
    valid, schema_rejects, _ = split_valid(prices_schema(UNIVERSE, DATES), typed)
    return valid, pl.concat([parse_rejects, schema_rejects])


def bad_row(**changes) -> dict:
    return {**GOOD, "ticker": "AAPL", "date": "2024-01-03", **changes}


CASES = {
    "nan_close": (bad_row(close="NaN"), "close"),
    "empty_close": (bad_row(close=None), "close: not_nullable"),
    "zero_price": (bad_row(open="0"), "open: price must be > 0"),
    "negative_price": (bad_row(low="-1"), "low: price must be > 0"),
    "infinite_price": (bad_row(high="inf"), "high: must be finite (value: inf)"),
    "high_below_low": (bad_row(high="8", low="9"), "high < max(open, close)"),
    "low_above_open": (bad_row(low="10.2"), "low > min(open, close)"),
    "negative_volume": (bad_row(volume="-5"), "volume must be >= 0"),
    "huge_volume": (bad_row(volume="99999999999999999999999"), "overflows int64"),
    "fractional_volume": (bad_row(volume="10.5"), "volume=10.5 is not a whole number"),
    "text_in_price": (bad_row(open="abc"), "open='abc' is not a number"),
    "text_in_volume": (bad_row(volume="12k"), "volume='12k' is not a number"),
    "unparseable_date": (bad_row(date="2024-13-45"), "date='2024-13-45' is not a date"),
    "date_outside_partition": (bad_row(date="2024-01-10"), "not a trading day of the partition"),
    "weekend_date": (bad_row(date="2024-01-06"), "not a trading day of the partition"),
    "holiday_date": (bad_row(date="2024-01-01"), "not a trading day of the partition"),
    # a bar stamped at midnight UTC is the evening before in New York: Monday's bar becomes a Sunday
    "tz_shifted_timestamp": (bad_row(date="2024-01-08T00:00:00Z"), "not a trading day of the partition"),
    "ticker_with_path": (bad_row(ticker="../AAPL"), "malformed ticker"),
    "ticker_with_sql": (bad_row(ticker="AAPL'; DROP TABLE stock_price;--"), "malformed ticker"),
    "ticker_not_in_universe": (bad_row(ticker="ZZZZ"), "ticker not in the universe"),
    "lowercase_ticker": (bad_row(ticker="aapl"), "malformed ticker"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_row_is_quarantined_with_its_reason_and_good_rows_survive(case):
    row, reason = CASES[case]
    valid, quarantined = run([GOOD, row])
    assert valid.height == 1 and valid["ticker"].to_list() == ["MSFT"], "the valid row must survive"
    assert quarantined.height == 1
    got = quarantined["reason"][0]
    assert reason in got, got
    # the quarantine keeps the offending record as it came in
    assert row["ticker"] in quarantined["record"][0] or row["ticker"].replace("'", "") in quarantined["record"][0]


def test_conflicting_duplicate_keys_are_both_quarantined():
    valid, quarantined = run([GOOD, bad_row(), bad_row(close="10.7")])
    assert valid["ticker"].to_list() == ["MSFT"]
    assert quarantined.height == 2
    assert quarantined["reason"].str.contains("duplicate \\(ticker, date\\)").all()


def test_exact_duplicate_rows_collapse_to_one():
    valid, quarantined = run([GOOD, bad_row(), bad_row()])
    assert valid.height == 2 and quarantined.is_empty()


def test_several_problems_in_one_row_are_all_listed():
    _, quarantined = run([GOOD, bad_row(ticker="ZZZZ", open="-1", volume="-3")])
    reason = quarantined["reason"][0]
    for part in ("ticker not in the universe", "price must be > 0", "volume must be >= 0"):
        assert part in reason


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2024-01-03", dt.date(2024, 1, 3)),                  # plain date
        ("2024-01-03 00:00:00", dt.date(2024, 1, 3)),         # tz-naive timestamp: exchange-local
        ("2024-01-03T00:00:00-05:00", dt.date(2024, 1, 3)),   # New York midnight with its offset
        ("2024-01-03T05:00:00Z", dt.date(2024, 1, 3)),        # the same instant in UTC
    ],
)
def test_timestamps_resolve_to_the_exchange_date(stamp, expected):
    valid, quarantined = run([bad_row(date=stamp)])
    assert quarantined.is_empty()
    assert valid["date"].to_list() == [expected]


def test_missing_columns_fail_naming_them():
    raw = pl.DataFrame({"ticker": ["AAPL"], "date": ["2024-01-02"], "open": ["1"], "close": ["1"]})
    with pytest.raises(PriceDataError, match=r"test.csv: missing column\(s\) high, low, volume"):
        conform(raw, source="files", origin="test.csv")


def test_empty_frame_gives_empty_results():
    raw = pl.DataFrame(schema={c: pl.Utf8 for c in GOOD})
    typed, rejects = conform(raw, source="files", origin="test.csv")
    assert typed.is_empty() and rejects.is_empty()


def test_wrong_column_type_is_a_whole_frame_error():
    typed, _ = conform(pl.DataFrame([GOOD]), source="files", origin="t")
    broken = typed.with_columns(pl.col("volume").cast(pl.Utf8))
    with pytest.raises(ValueError, match="volume"):
        split_valid(prices_schema(UNIVERSE, DATES), broken)


def test_tz_aware_datetime_column_is_read_in_new_york_time():
    raw = pl.DataFrame({**{k: [v] for k, v in GOOD.items()},
                        "date": [dt.datetime(2024, 1, 3, 5, 0, tzinfo=dt.UTC)]})
    typed, rejects = conform(raw, source="x", origin="x")
    assert rejects.is_empty() and typed["date"].to_list() == [dt.date(2024, 1, 3)]
