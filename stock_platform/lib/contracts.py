"""The tables' contracts as plain data: each column's type, meaning, nullability and rules, each table's key and
row rules.

No polars and no pandera here, so the asset definitions can show the contracts in the Dagster UI's Columns tab
(`assets/columns.py`) when the code loads; `schemas.py` builds the pandera schemas that the asset checks and the
quarantine enforce from the same data, and `polars_schema` the frames' types. What the UI says is what is enforced.
Being code, a contract sits on the asset definition, not on each materialization: a single-run backfill would
otherwise copy it onto every partition's event (features' 12 KB x 2,500 partitions for ten years, written twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stock_platform.lib.feature_set import MODEL_FEATURES, feature_columns

TICKER_PATTERN = r"^[A-Z0-9][A-Z0-9.\-^=]{0,14}$"
# polars' names of the types the tables use (`str(dtype)`); `polars_schema` turns them into dtypes
STRING, DATE, FLOAT, INT8, INT32, INT64, BOOL = "String", "Date", "Float64", "Int8", "Int32", "Int64", "Boolean"
UTC_MICROS = "Datetime(time_unit='us', time_zone='UTC')"

_READABLE = {"gt": "> {}", "ge": ">= {}", "le": "<= {}", "in_range": "in [{}, {}]", "str_matches": "matches {}"}
_STATISTICS = {"gt": ("min_value",), "ge": ("min_value",), "le": ("max_value",),
               "in_range": ("min_value", "max_value"), "str_matches": ("pattern",)}


@dataclass(frozen=True)
class Rule:
    """A column rule: pandera's built-in check `check` (gt, ge, le, in_range, str_matches) with `args`; `isin` whose
    one arg names a set known when validating (`universe`, `partition`); or `finite` (no inf/NaN). `error` is what a
    failing value is reported as (None: pandera's own name of the check, e.g. `greater_than_or_equal_to(0)`)."""

    check: str
    args: tuple = ()
    error: str | None = None

    def describe(self) -> str:
        text = self.error or _READABLE[self.check].format(*self.args)
        stats = ", ".join(f"{name}={value}" for name, value in zip(_STATISTICS.get(self.check, ()), self.args))
        return f"{text} ({stats})" if stats else text


@dataclass(frozen=True)
class Column:
    dtype: str
    description: str | None = None
    rules: tuple[Rule, ...] = ()
    nullable: bool = False


@dataclass(frozen=True)
class Contract:
    name: str
    columns: dict[str, Column]
    key: tuple[str, ...]
    row_rules: dict[str, str] = field(default_factory=dict)  # name -> what a failing row breaks (see schemas.py)


def polars_schema(contract: Contract) -> dict:
    """The contract's columns as a polars schema (polars is imported here, when called)."""
    import polars as pl

    return {name: pl.Datetime("us", "UTC") if c.dtype == UTC_MICROS else getattr(pl, c.dtype)()
            for name, c in contract.columns.items()}


_MALFORMED = Rule("str_matches", (TICKER_PATTERN,), "malformed ticker")
_TRADING_DAY = Rule("isin", ("partition",), "not a trading day of the partition")
_PRICE = (Rule("gt", (0,), "price must be > 0"), Rule("finite", error="must be finite"))
_AMOUNT = (Rule("ge", (0,)), Rule("finite", error="must be finite"))

PRICES = Contract("prices", {
    "ticker": Column(STRING, "the listing's symbol (upper case)",
                     (_MALFORMED, Rule("isin", ("universe",), "ticker not in the universe"))),
    "date": Column(DATE, "the NYSE session (America/New_York)", (_TRADING_DAY,)),
    "open": Column(FLOAT, "as traded, in the share basis of its own day", _PRICE),
    "high": Column(FLOAT, "as traded", _PRICE),
    "low": Column(FLOAT, "as traded", _PRICE),
    "close": Column(FLOAT, "as traded (the platform adjusts for splits and dividends itself)", _PRICE),
    "adj_close": Column(FLOAT, "the vendor's adjusted close, kept for reference only", _PRICE),
    "volume": Column(INT64, "shares traded, as reported that day", (Rule("ge", (0,), "volume must be >= 0"),)),
    "dividends": Column(FLOAT, "cash dividend per share going ex that day (0: none)", _AMOUNT),
    "splits": Column(FLOAT, "split ratio effective that day (2.0: 2-for-1; 0: none)", _AMOUNT),
    "source": Column(STRING, "where the row came from (demo, yfinance, files, landing)"),
    "ingested_at": Column(UTC_MICROS, "when the platform received the record (UTC); of two records of a key in "
                                      "price_snapshots, the newer wins (the precombine field)"),
}, key=("ticker", "date"), row_rules={
    "low_le_open_close": "low > min(open, close)",
    "high_ge_open_close": "high < max(open, close)",
    # a dividend is paid out of the price: one at or above the day's close is a unit or parsing error
    "dividend_below_close": "dividend >= close",
})

# Every price record ever accepted: the prices columns as stored (the checks ran on the way in) and the soft delete.
SNAPSHOTS = Contract("price_snapshots", {
    **{name: Column(c.dtype, c.description) for name, c in PRICES.columns.items()},
    "_is_deleted": Column(BOOL, "soft delete: the record is hidden from readers, kept for time travel"),
}, key=PRICES.key)


def _features() -> Contract:
    bounded = dict.fromkeys(("rsi_14", "stoch_k_14", "stoch_d_3", "plus_di_14", "minus_di_14", "adx_14"), (0, 100))
    bounded["obv_ratio_20"] = (-1, 1)
    nonneg = ("atr_14", "atr_pct", "rvol_20", "bb_width", "dist_52w_low")
    columns = {"ticker": Column(STRING, rules=(_MALFORMED,)), "date": Column(DATE, rules=(_TRADING_DAY,))}
    for name in feature_columns():
        if name == "day_of_week":
            columns[name] = Column(INT8, "1 = Monday .. 5 = Friday", (Rule("in_range", (1, 5)),))
            continue
        rules = [Rule("finite", error="must be finite (no inf/NaN)")]
        rules += [Rule("in_range", bounded[name])] if name in bounded else []
        rules += [Rule("ge", (0,))] if name in nonneg else []
        rules += [Rule("le", (0,))] if name == "dist_52w_high" else []
        columns[name] = Column(FLOAT, rules=tuple(rules), nullable=True)  # null until its window is full
    columns["warm"] = Column(BOOL, f"every model input ({len(MODEL_FEATURES)} scale-free columns) is defined")
    return Contract("features", columns, key=("ticker", "date"), row_rules={
        "model_inputs_in_warm_rows": "a warm row has a null model input",
        "bands_ordered": "Bollinger bands out of order",
    })


FEATURES = _features()

PREDICTIONS = Contract("predictions", {
    "ticker": Column(STRING),
    "date": Column(DATE, "the session whose close the forecast is made at"),
    "target_date": Column(DATE, "the next session"),
    "pred_return": Column(FLOAT, "predicted total return from date's close to target_date's (0: the naive random "
                                 "walk)"),
    "pred_close": Column(FLOAT, "close(date) x (1 + pred_return), in date's share basis"),
    "model_name": Column(STRING, "the registered model that served it (naive_random_walk: the baseline champion)"),
    "model_version": Column(INT32, "its version"),
    "created_at": Column(UTC_MICROS, "when the forecast could first exist (UTC)"),
}, key=("ticker", "date"))

EVALUATION = Contract("prediction_evaluation", {
    "ticker": Column(STRING),
    "target_date": Column(DATE, "the session forecast"),
    "date": Column(DATE, "the session the forecast was made at"),
    "pred_close": Column(FLOAT),
    "true_close": Column(FLOAT, "target_date's close in date's share basis (a split or dividend is not an error)"),
    "abs_error": Column(FLOAT, "|pred_close - true_close|"),
    "naive_close": Column(FLOAT, "the naive random walk's forecast: date's close"),
    "naive_abs_error": Column(FLOAT, "|naive_close - true_close|"),
    "direction_hit": Column(BOOL, "the forecast's sign matched the outcome's (null: a flat forecast or day)",
                            nullable=True),
    "pred_return": Column(FLOAT),
    "true_return": Column(FLOAT, "total return from date's close to target_date's (split-adjusted, dividends "
                                  "included)"),
    "model_name": Column(STRING),
    "model_version": Column(INT64),
}, key=("ticker", "target_date"))
