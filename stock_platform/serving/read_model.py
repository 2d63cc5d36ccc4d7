"""The API's read model: what it serves, held in memory per version of the lake's tables.

A `View` is built from the tables at pinned Delta versions (prices and forecasts split by ticker, the ticker index,
the evaluation table) and never changes; `ReadModel.view()` hands out the current one. A background thread polls
the tables' versions (`poll_seconds`; a cached Delta table's `update_incremental` lists the log's new commits only)
and swaps in a new view when a commit lands, rebuilding only what the changed tables feed. So a request touches no
storage: it filters one ticker's frame and writes the page as JSON. Every answer is the lake at the view's versions
(`View.etag`, the `ETag` and `X-Table-Version` headers).

Memory: ~380 MB per million served rows (benchmarks/serving.py: the API's RSS 277 MB reading the lake per request,
862 MB holding 1.51 M rows of a 500-ticker x 10-year lake). A lake whose served tables hold more rows than
`max_rows` (STOCK_PLATFORM_API_MAX_ROWS, default 10 M) is not loaded: its views are `scan` views, answered by the
lake queries (`queries.py`) at the same pinned versions, with the same answers, at a scan's speed.
A new version rebuilds what the moved tables feed in full: 0.6 s on that lake, 0.84 s from a commit to the answer.
(Applying `price_snapshots`' change data feed to the previous frames instead was tried: correct, but no faster,
since a daily commit touches every ticker and their forecasts' closes.)
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass, field
from functools import cached_property

import polars as pl

from stock_platform.lake import Lake
from stock_platform.serving import queries as q
from stock_platform.settings import DEFAULT_API_MAX_ROWS as DEFAULT_MAX_ROWS

SERVED = (q.SNAPSHOTS, q.PREDICTIONS, q.EVALUATION)  # the tables the API reads, in `View.versions`' order
_log = logging.getLogger(__name__)


def json_rows(df: pl.DataFrame) -> bytes:
    """Rows as a JSON array of objects (dates ISO, NaN/inf as null), written by polars (~0.1 ms for 250 rows).
    Only ever a frame no other thread holds (a slice made for the request): polars 2.1 deadlocks when one thread
    writes a frame as JSON while another reads the same frame object (each waits for what the other holds, the
    frame's lock or the GIL)."""
    return df.write_json().encode() if df.height else b"[]"


@dataclass(frozen=True)
class View:
    """The served tables at fixed versions (-1: not created yet). `scan` views hold no rows: the queries read the
    lake at `versions`."""

    lake: Lake
    versions: dict[str, int]
    scan: bool = False
    prices: dict[str, pl.DataFrame] = field(default_factory=dict)  # ticker -> bars by date
    predictions: dict[str, pl.DataFrame] = field(default_factory=dict)  # ticker -> forecasts by date
    tickers_frame: pl.DataFrame | None = None
    evaluation_frame: pl.DataFrame | None = None
    _evaluations: dict = field(default_factory=dict)  # window -> answer, computed once per view

    @cached_property
    def etag(self) -> str:
        return '"' + ".".join(str(self.versions[t]) for t in SERVED) + '"'

    @cached_property
    def header(self) -> str:
        return ", ".join(f"{t}={self.versions[t]}" for t in SERVED)

    def _version(self, table: str) -> int | None:
        return self.versions[table] if self.versions[table] >= 0 else None

    @cached_property
    def tickers_json(self) -> bytes:
        """`/tickers`' answer, written once (built with the view, before any request thread shares it)."""
        return json_rows(self.tickers().clone())

    def tickers(self) -> pl.DataFrame:
        if self.tickers_frame is not None:
            return self.tickers_frame
        if self.versions[q.SNAPSHOTS] < 0:
            return q.ticker_index(q.empty_bars())
        return q.tickers(self.lake, version=self.versions[q.SNAPSHOTS])

    def knows(self, ticker: str) -> bool:
        if not self.scan:
            return ticker in self.prices
        return ticker in set(self.tickers()["ticker"])

    def prices_of(self, ticker: str, start: dt.date | None, end: dt.date | None) -> pl.DataFrame:
        if self.scan:
            return q.prices(self.lake, ticker, start, end, version=self._version(q.SNAPSHOTS))
        return _between(self.prices[ticker], start, end)

    def predictions_of(self, ticker: str, start: dt.date | None, end: dt.date | None) -> pl.DataFrame:
        if self.scan:
            return q.predictions(self.lake, ticker, start, end, version=self._version(q.PREDICTIONS),
                                 snapshot_version=self._version(q.SNAPSHOTS))
        frame = self.predictions.get(ticker)
        return _between(frame, start, end) if frame is not None else q.empty_predictions()

    def evaluation(self, window: int, tickers: list[str] | None = None) -> dict:
        """The metrics over the last `window` target days, of all tickers (computed once per view and window) or
        of `tickers`."""
        if self.versions[q.EVALUATION] < 0:
            return q.no_evaluation(window)
        if tickers:
            return q.evaluation(self.lake, window, tickers, table=self.evaluation_frame,
                                version=self._version(q.EVALUATION))
        if window not in self._evaluations:
            self._evaluations[window] = q.evaluation(self.lake, window, table=self.evaluation_frame,
                                                     version=self._version(q.EVALUATION))
        return self._evaluations[window]


def _between(frame: pl.DataFrame, start: dt.date | None, end: dt.date | None) -> pl.DataFrame:
    """Rows of a frame sorted by date within [start, end] (binary search, no scan)."""
    lo = 0 if start is None else frame["date"].search_sorted(start, side="left")
    hi = frame.height if end is None else frame["date"].search_sorted(end, side="right")
    return frame.slice(lo, max(hi - lo, 0))


def _by_ticker(df: pl.DataFrame) -> dict[str, pl.DataFrame]:
    return {key[0]: part for key, part in df.partition_by("ticker", as_dict=True, include_key=False).items()}


class ReadModel:
    """The current `View` of a lake, refreshed in the background when a served table gets a new version."""

    def __init__(self, lake: Lake, *, poll_seconds: float = 0.25, max_rows: int = DEFAULT_MAX_ROWS):
        self.lake, self.poll_seconds, self.max_rows = lake, poll_seconds, max_rows
        self._tables: dict = {}  # name -> DeltaTable, kept to follow its log incrementally
        self._view: View | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ versions
    def versions(self) -> dict[str, int]:
        """Each served table's latest version (-1: not created yet)."""
        out = {}
        for name in SERVED:
            table = self._tables.get(name)
            if table is None and self.lake.exists(name):
                table = self._tables[name] = self.lake.table(name)
            elif table is not None:
                table.update_incremental()
            out[name] = table.version() if table is not None else -1
        return out

    # ------------------------------------------------------------------------------------------ views
    def _rows(self, versions: dict[str, int]) -> int:
        """Rows the served tables hold at `versions` (from the Delta log's file statistics, nothing read)."""
        total = 0
        for name in SERVED:
            if versions[name] >= 0:
                table = self._tables.get(name)  # followed by `versions()`: at `versions[name]` unless it moved since
                if table is None or table.version() != versions[name]:
                    table = self.lake.table(name, versions[name])
                actions = table.get_add_actions(flatten=True)
                total += int(sum(v or 0 for v in actions.column("num_records").to_pylist()))
        return total

    def build(self, versions: dict[str, int], previous: View | None = None) -> View:
        """The view at `versions`, reusing what `previous` built from tables whose version did not move."""
        if self._rows(versions) > self.max_rows:
            return View(self.lake, versions, scan=True)
        same = previous is not None and not previous.scan
        moved = {t for t in SERVED if not same or previous.versions[t] != versions[t]}
        lake = self.lake
        if q.SNAPSHOTS in moved:
            live = (lake.snapshot(q.SNAPSHOTS, as_of=versions[q.SNAPSHOTS]).select("ticker", *q.BAR_COLUMNS)
                    if versions[q.SNAPSHOTS] >= 0 else q.empty_bars())
            prices, tickers, closes = _by_ticker(live), q.ticker_index(live), live.select("ticker", "date", "close")
        else:
            prices, tickers, closes = previous.prices, previous.tickers_frame, None
        if moved & {q.SNAPSHOTS, q.PREDICTIONS}:
            preds = (lake.read(q.PREDICTIONS, version=versions[q.PREDICTIONS]) if versions[q.PREDICTIONS] >= 0
                     else pl.DataFrame(schema=q.predictions_schema()))
            if closes is None and prices:  # the previous view's bars, back in one frame
                names = list(prices)
                closes = pl.concat([prices[t].select("date", "close") for t in names]).with_columns(
                    pl.Series("ticker", names).repeat_by(pl.Series([prices[t].height for t in names])).explode())
            predictions = _by_ticker(q.with_closes(preds, closes).sort("ticker", "date"))
        else:
            predictions = previous.predictions
        if q.EVALUATION in moved:
            evaluation = lake.read(q.EVALUATION, version=versions[q.EVALUATION],
                                   date_column="target_date") if versions[q.EVALUATION] >= 0 else None
        else:
            evaluation = previous.evaluation_frame
        view = View(lake, versions, prices=prices, predictions=predictions, tickers_frame=tickers,
                    evaluation_frame=evaluation)
        view.tickers_json  # noqa: B018 - written here, in one thread (see json_rows)
        return view

    def refresh(self) -> View:
        """Check the versions; build and swap in a new view if one moved. Errors propagate (the lake is down)."""
        with self._lock:
            versions = self.versions()
            if self._view is None or self._view.versions != versions:
                self._view = self.build(versions, self._view)
            return self._view

    def view(self) -> View:
        """The current view: built on the first call (errors propagate: the lake is unreachable), then kept
        current by the background refresher."""
        view = self._view
        if view is None:
            view = self.refresh()
            self._start()
        return view

    # ------------------------------------------------------------------------------------------ refresher
    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._follow, name="read-model", daemon=True)
                self._thread.start()

    def _follow(self) -> None:
        failing = False
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - the lake is unreachable: keep serving the last view
                if not failing:  # once per outage, not every poll
                    _log.warning(f"read model: cannot follow the lake at {self.lake.uri}, serving versions "
                                 f"{self._view.header if self._view else '-'} until it can: {exc}")
                failing = True
            else:
                if failing:
                    _log.warning(f"read model: following the lake at {self.lake.uri} again")
                failing = False

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
