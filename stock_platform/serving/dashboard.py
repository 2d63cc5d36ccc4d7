"""The market and prediction dashboard: one HTML page, served by the API at `/dashboard` (`stock-platform serve`).

Per ticker: candlesticks with SMA 50/200 and Bollinger bands, RSI and MACD panels (as `features` stored them),
predicted vs actual close beside the naive forecast, recent evaluation metrics (the ticker's and all tickers'), and
data quality (quarantined rows per day, the blocking checks' latest results), all read from the lake. Nothing is
recomputed, nothing loads Dagster, and the page needs no script and no chart library: the charts are SVG drawn
here (a candle's or a point's values show on hover), so the page is complete as soon as it arrives.
"""

from __future__ import annotations

import datetime as dt
import math
from html import escape
from typing import TYPE_CHECKING

import polars as pl

from stock_platform.serving import queries as q

if TYPE_CHECKING:
    from collections.abc import Sequence

    from stock_platform.serving.read_model import View

WIDTH = 1200
GRID, TEXT = "#e6e6e6", "#555"
UP, DOWN = "#26a69a", "#ef5350"


def ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round values for a y axis over [lo, hi] (steps of 1, 2, 2.5 or 5 times a power of ten)."""
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def number(value: float | None, pattern: str = "{:,.2f}") -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else pattern.format(value)


class Chart:
    """One SVG panel: a slot per row of `dates` on the x axis (sessions, no weekend gaps), y linear."""

    def __init__(self, dates: Sequence[dt.date], values: Sequence[pl.Series], *, height: int, title: str,
                 floor: float | None = None, width: int = WIDTH) -> None:
        self.dates, self.height, self.title, self.width = list(dates), height, title, width
        self.left, self.right, self.top, self.bottom = 64, 12, 22, 22
        finite = [v for s in values for v in s.to_list() if v is not None and math.isfinite(v)] or [0.0]
        lo, hi = min(finite), max(finite)
        lo = floor if floor is not None else lo
        pad = (hi - lo) * 0.04 or abs(hi) * 0.04 or 1.0
        self.lo, self.hi = (lo if floor is not None else lo - pad), hi + pad
        self.parts: list[str] = []
        self.legend: list[tuple[str, str]] = []

    @property
    def slot(self) -> float:
        return (self.width - self.left - self.right) / max(len(self.dates), 1)

    def x(self, i: int) -> float:
        return self.left + (i + 0.5) * self.slot

    def y(self, value: float) -> float:
        return self.top + (self.hi - value) / (self.hi - self.lo) * (self.height - self.top - self.bottom)

    @staticmethod
    def runs(values: list) -> list[list[int]]:
        """The positions of a series' values, split where it has none (a line is not drawn across a gap)."""
        out: list[list[int]] = [[]]
        for i, v in enumerate(values):
            if v is None or not math.isfinite(v):
                out.append([])
            else:
                out[-1].append(i)
        return [run for run in out if run]

    def line(self, values: pl.Series, color: str, label: str, *, dash: str = "", width: float = 1.5) -> None:
        self.legend.append((label, color))
        ys = values.to_list()
        for run in self.runs(ys):
            points = " ".join(f"{self.x(i):.1f},{self.y(ys[i]):.1f}" for i in run)
            self.parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="{width}"'
                              + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")

    def band(self, upper: pl.Series, lower: pl.Series, color: str, label: str) -> None:
        self.legend.append((label, color))
        up, low = upper.to_list(), lower.to_list()
        for run in self.runs([u if v is not None and math.isfinite(v) else None for u, v in zip(up, low, strict=True)]):
            points = [f"{self.x(i):.1f},{self.y(up[i]):.1f}" for i in run]
            points += [f"{self.x(i):.1f},{self.y(low[i]):.1f}" for i in reversed(run)]
            self.parts.append(f'<polygon points="{" ".join(points)}" fill="{color}" fill-opacity="0.15" '
                              f'stroke="{color}" stroke-width="0.8"/>')

    def candles(self, bars: pl.DataFrame) -> None:
        half = max(self.slot * 0.35, 0.5)
        for i, b in enumerate(bars.iter_rows(named=True)):
            color = UP if b["close"] >= b["open"] else DOWN
            top, bottom = self.y(max(b["open"], b["close"])), self.y(min(b["open"], b["close"]))
            self.parts.append(
                f'<g><title>{b["date"]}  O {number(b["open"])}  H {number(b["high"])}  L {number(b["low"])}  '
                f'C {number(b["close"])}  V {b["volume"]:,}</title>'
                f'<line x1="{self.x(i):.1f}" x2="{self.x(i):.1f}" y1="{self.y(b["high"]):.1f}" '
                f'y2="{self.y(b["low"]):.1f}" stroke="{color}"/>'
                f'<rect x="{self.x(i) - half:.1f}" y="{top:.1f}" width="{2 * half:.1f}" '
                f'height="{max(bottom - top, 0.8):.1f}" fill="{color}"/></g>')

    def bars(self, values: pl.Series, color: str, label: str) -> None:
        self.legend.append((label, color))
        base = self.y(min(max(0.0, self.lo), self.hi))
        half = max(self.slot * 0.35, 0.5)
        for i, v in enumerate(values.to_list()):
            if v and math.isfinite(v):  # no bar for 0
                top = min(self.y(v), base)
                self.parts.append(f'<rect x="{self.x(i) - half:.1f}" y="{top:.1f}" width="{2 * half:.1f}" '
                                  f'height="{max(abs(self.y(v) - base), 0.5):.1f}" fill="{color}">'
                                  f"<title>{self.dates[i]}: {number(v, '{:,.4g}')}</title></rect>")

    def level(self, value: float) -> None:
        self.parts.append(f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{self.y(value):.1f}" '
                          f'y2="{self.y(value):.1f}" stroke="#888" stroke-dasharray="2 3"/>')

    def svg(self) -> str:
        grid = []
        for v in ticks(self.lo, self.hi):
            grid.append(f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{self.y(v):.1f}" '
                        f'y2="{self.y(v):.1f}" stroke="{GRID}"/><text x="{self.left - 6}" y="{self.y(v) + 4:.1f}" '
                        f'text-anchor="end">{number(v, "{:,.6g}")}</text>')
        step = max(len(self.dates) // (self.width // 200), 1)  # a date label per ~200 units
        for i in range(0, len(self.dates), step):
            x = self.x(i)
            anchor = "start" if x < self.left + 35 else "end" if x > self.width - self.right - 35 else "middle"
            grid.append(f'<text x="{x:.1f}" y="{self.height - 6}" text-anchor="{anchor}">{self.dates[i]}</text>')
        legend, at = [f'<text x="{self.left}" y="14" font-weight="bold">{escape(self.title)}</text>'], self.left + 220
        for label, color in self.legend:
            legend.append(f'<rect x="{at}" y="5" width="14" height="8" fill="{color}"/>'
                          f'<text x="{at + 18}" y="13">{escape(label)}</text>')
            at += 26 + 7 * len(label)
        return (f'<svg viewBox="0 0 {self.width} {self.height}" role="img" aria-label="{escape(self.title)}" '
                f'font-size="11" fill="{TEXT}">{"".join(grid + legend + self.parts)}</svg>')


def price_charts(ticker: str, bars: pl.DataFrame, ind: pl.DataFrame) -> str:
    df = bars.join(ind, on="date", how="left")
    dates = df["date"].to_list()
    price = Chart(dates, [df["low"], df["high"], df["bb_upper"], df["bb_lower"]], height=420,
                  title=f"{ticker} daily")
    price.band(df["bb_upper"], df["bb_lower"], "#8aa", "Bollinger 20/2")
    price.candles(df)
    price.line(df["sma_50"], "#1f77b4", "SMA 50")
    price.line(df["sma_200"], "#d62728", "SMA 200")
    rsi = Chart(dates, [pl.Series([0.0, 100.0])], height=150, title="RSI 14")
    rsi.level(30)
    rsi.level(70)
    rsi.line(df["rsi_14"], "#8c564b", "RSI 14")
    macd = Chart(dates, [df["macd"], df["macd_signal"], df["macd_hist"]], height=170, title="MACD 12/26/9")
    macd.bars(df["macd_hist"], "#bbb", "histogram")
    macd.line(df["macd"], "#2ca02c", "MACD")
    macd.line(df["macd_signal"], "#ff7f0e", "signal")
    return price.svg() + rsi.svg() + macd.svg()


def forecast_chart(preds: pl.DataFrame) -> str:
    chart = Chart(preds["target_date"].to_list(), [preds["actual_close"], preds["pred_close"], preds["naive_close"]],
                  height=300, title="Close of the target day")
    chart.line(preds["actual_close"], "#222", "actual close")
    chart.line(preds["pred_close"], "#1f77b4", "predicted close")
    chart.line(preds["naive_close"], "#aaa", "naive (previous close)", dash="4 3")
    return chart.svg()


def quality_chart(dq: pl.DataFrame) -> str:
    chart = Chart(dq["date"].to_list(), [dq["quarantined"].cast(pl.Float64)], height=220, title="Quarantined rows",
                  floor=0.0, width=WIDTH // 2)
    chart.bars(dq["quarantined"].cast(pl.Float64), "#d62728", "rows per day")
    return chart.svg()


def metrics_row(label: str, ev: dict) -> str:
    m = ev["metrics"]
    cells = (f"{label}", f"{ev['first_target_date'] or '-'} .. {ev['last_target_date'] or '-'}",
             f"{int(m.get('rows') or 0):,}",
             f"{number(m.get('mae'), '{:.3f}')} ({number(m.get('naive_mae'), '{:.3f}')})",
             number(m.get("mase"), "{:.3f}"),
             f"{number(m.get('hit_rate'), '{:.1%}')} ({number(m.get('up_rate'), '{:.1%}')})",
             number(m.get("ic"), "{:.3f}"), number(m.get("dm_p_value"), "{:.2f}"))
    return "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>"


def table(frame: pl.DataFrame) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>" for row in frame.rows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


STYLE = """body{font:14px system-ui,sans-serif;margin:0 24px 24px;color:#222}h1{font-size:22px;margin:16px 0 8px}
h2{font-size:17px;margin:22px 0 6px}form{display:flex;gap:18px;align-items:end;flex-wrap:wrap;margin-bottom:8px}
label{display:flex;flex-direction:column;font-size:12px;color:#555}input,select{font-size:14px;width:9em}
svg{display:block;width:100%;height:auto}table{border-collapse:collapse;font-size:13px}
td,th{border-bottom:1px solid #ddd;padding:3px 10px;text-align:left}.note{color:#666;font-size:12px}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:24px}"""


def render(view: View, ticker: str | None, sessions: int, window: int) -> str:
    """The page for `ticker` (default the first), its last `sessions` sessions, metrics over `window` target days."""
    listed = view.tickers()
    head = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>stock_platform</title>'
            f"<style>{STYLE}</style></head><body><h1>stock_platform</h1>")
    if listed.is_empty():
        return head + ("<p>The lake holds no prices yet: run <code>stock-platform demo</code> (or materialize "
                       "<code>prices</code> and <code>price_snapshots</code>) first.</p></body></html>")
    ticker = ticker or listed["ticker"][0]
    last = listed.filter(pl.col("ticker") == ticker)["last_date"][0]
    start = last - dt.timedelta(days=math.ceil(sessions * 7 / 5))
    bars = view.prices_of(ticker, start, last)
    lake = view.lake
    options = "".join(f'<option{" selected" if t == ticker else ""}>{escape(t)}</option>' for t in listed["ticker"])
    out = [head, '<form method="get" action="">'
           f'<label>Ticker<select name="ticker" onchange="this.form.submit()">{options}</select></label>'
           f'<label>Sessions shown<input type="number" name="sessions" min="20" max="2520" step="10" '
           f'value="{sessions}"></label>'
           f'<label>Evaluation window (target days)<input type="number" name="window" min="1" max="2520" '
           f'value="{window}"></label><button>Show</button></form>',
           price_charts(ticker, bars, q.indicators(lake, ticker, start, last)), "<h2>Forecasts</h2>"]

    preds = view.predictions_of(ticker, start, last)
    if preds.is_empty():
        out.append("<p>No forecasts for this ticker in the range: materialize <code>predictions</code> for these "
                   "days (the naive random walk serves wherever no promoted model does).</p>")
    else:
        p = preds.row(-1, named=True)
        out.append(f'<p class="note">Latest: for {p["target_date"]} close {p["pred_close"]:,.2f} '
                   f'({p["pred_return"]:+.2%}) by {escape(p["model_name"])} v{p["model_version"]}</p>')
        out.append(forecast_chart(preds))
    out.append(f"<h2>Last {window} target days</h2><table><thead><tr><th></th><th>target days</th><th>forecasts</th>"
               "<th>MAE (naive)</th><th>MASE</th><th>hit rate (always up)</th><th>IC</th>"
               "<th>Diebold-Mariano p</th></tr></thead><tbody>"
               + metrics_row(ticker, view.evaluation(window, [ticker])) + metrics_row("all tickers",
                                                                                      view.evaluation(window))
               + "</tbody></table>")

    dq = q.quality(lake, start, last)
    flagged = dq.filter(pl.col("quarantined") > 0).height
    checks = q.check_results(lake)
    out.append('<h2>Data quality</h2><div class="cols"><div>' + quality_chart(dq)
               + f'<p class="note">{flagged} day(s) with quarantined rows, lowest DQ score '
               f'{number(dq["dq_score"].min() if dq.height else None, "{:.3f}")}</p></div><div>'
               + ("<p>No check results in the lake yet: the blocking checks record each evaluation when they "
                  "run.</p>" if checks.is_empty() else "<b>Asset check results (newest first)</b>"
                                    + table(checks.with_columns(pl.col("at").dt.strftime("%Y-%m-%d %H:%M:%S UTC"))))
               + f'</div></div><p class="note">Lake {escape(lake.uri)} at {escape(view.header)}</p></body></html>')
    return "".join(out)
