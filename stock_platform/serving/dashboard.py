"""The market and prediction dashboard (`stock-platform dashboard` runs `streamlit run` on this file).

Per ticker: candlesticks with SMA 50/200 and Bollinger bands, RSI and MACD panels (as `features` stored them),
predicted vs actual close beside the naive forecast, recent evaluation metrics, and data quality (the blocking
checks' results and quarantined rows per day, both from the lake). Nothing is recomputed here, and nothing loads
Dagster: the lake is read through `stock_platform.lake.Lake`.
"""

from __future__ import annotations

import datetime as dt

import polars as pl
import streamlit as st

from stock_platform.lake import Lake
from stock_platform.lib.tables import CHECKS_TABLE
from stock_platform.serving import queries as q


@st.cache_resource
def _lake(uri: str, endpoint: str | None) -> Lake:
    return Lake(uri=uri, aws_endpoint_url=endpoint)


@st.cache_data(ttl=30)
def check_history(_store, uri: str, limit: int = 20) -> pl.DataFrame:
    """The latest evaluations of each blocking check (at most `limit` each), from the lake's `check_results` table
    (the checks append every evaluation there: no Dagster instance to open)."""
    schema = {"check": pl.String, "status": pl.String, "partition": pl.String, "at": pl.Datetime("us", "UTC"),
              "details": pl.String}
    if not _store.exists(CHECKS_TABLE):
        return pl.DataFrame(schema=schema)
    return (_store.scan(CHECKS_TABLE).sort("evaluated_at", descending=True).group_by("check", maintain_order=True)
            .head(limit)
            .select("check", status=pl.when("passed").then(pl.lit("SUCCEEDED")).otherwise(pl.lit("FAILED")),
                    partition=pl.when(pl.col("partition_start") == pl.col("partition_end"))
                    .then(pl.col("partition_end").cast(pl.String))
                    .otherwise(pl.format("{}..{}", "partition_start", "partition_end")),
                    at="evaluated_at", details="details")
            .collect())


def price_figure(bars: pl.DataFrame, ind: pl.DataFrame, ticker: str):
    from plotly.subplots import make_subplots

    df = bars.join(ind, on="date", how="left")
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, row_heights=[0.6, 0.2, 0.2], vertical_spacing=0.03,
                        subplot_titles=(f"{ticker} daily", "RSI 14", "MACD 12/26/9"))
    x = df["date"]
    fig.add_candlestick(x=x, open=df["open"], high=df["high"], low=df["low"], close=df["close"], name="OHLC",
                        row=1, col=1)
    fig.add_scatter(x=x, y=df["bb_upper"], name="Bollinger upper", line={"width": 1, "color": "#9aa"}, row=1, col=1)
    fig.add_scatter(x=x, y=df["bb_lower"], name="Bollinger lower", line={"width": 1, "color": "#9aa"},
                    fill="tonexty", fillcolor="rgba(150,170,170,0.12)", row=1, col=1)
    fig.add_scatter(x=x, y=df["sma_50"], name="SMA 50", line={"width": 1.5, "color": "#1f77b4"}, row=1, col=1)
    fig.add_scatter(x=x, y=df["sma_200"], name="SMA 200", line={"width": 1.5, "color": "#d62728"}, row=1, col=1)
    fig.add_scatter(x=x, y=df["rsi_14"], name="RSI 14", line={"color": "#8c564b"}, row=2, col=1)
    for level in (30, 70):
        fig.add_hline(y=level, line={"dash": "dot", "width": 1, "color": "#888"}, row=2, col=1)
    fig.add_bar(x=x, y=df["macd_hist"], name="MACD histogram", marker_color="#bbb", row=3, col=1)
    fig.add_scatter(x=x, y=df["macd"], name="MACD", line={"color": "#2ca02c"}, row=3, col=1)
    fig.add_scatter(x=x, y=df["macd_signal"], name="signal", line={"color": "#ff7f0e"}, row=3, col=1)
    fig.update_layout(height=720, margin={"t": 40, "b": 10, "l": 10, "r": 10}, xaxis_rangeslider_visible=False,
                      legend={"orientation": "h", "y": -0.05})
    return fig


def forecast_figure(preds: pl.DataFrame):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_scatter(x=preds["target_date"], y=preds["actual_close"], name="actual close", line={"color": "#222"})
    fig.add_scatter(x=preds["target_date"], y=preds["pred_close"], name="predicted close",
                    line={"color": "#1f77b4"})
    fig.add_scatter(x=preds["target_date"], y=preds["naive_close"], name="naive (previous close)",
                    line={"color": "#aaa", "dash": "dot"})
    fig.update_layout(height=340, margin={"t": 10, "b": 10, "l": 10, "r": 10}, legend={"orientation": "h"})
    return fig


def quality_figure(dq: pl.DataFrame):
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=dq["date"], y=dq["quarantined"], name="quarantined rows", marker_color="#d62728"))
    fig.update_layout(height=240, margin={"t": 10, "b": 10, "l": 10, "r": 10}, yaxis={"rangemode": "tozero"})
    return fig


def fmt(value, pattern: str = "{:.4f}") -> str:
    return "-" if value is None else pattern.format(value)


def main() -> None:
    st.set_page_config(page_title="stock_platform", layout="wide")
    st.title("stock_platform")
    from stock_platform.settings import load_settings

    settings = load_settings()  # per script run: cheap, and a changed environment is seen
    store = _lake(settings.lake_uri, settings.aws_endpoint_url)
    listed = q.tickers(store)
    if listed.is_empty():
        st.warning("The lake holds no prices yet: run `stock-platform demo` (or materialize `prices` and "
                   "`price_snapshots`) first.")
        st.stop()
    ticker = st.sidebar.selectbox("Ticker", listed["ticker"].to_list())
    sessions = st.sidebar.slider("Sessions shown", min_value=60, max_value=750, value=250, step=10)
    window = st.sidebar.slider("Evaluation window (target days)", min_value=5, max_value=250, value=20, step=5)
    last = listed.filter(pl.col("ticker") == ticker)["last_date"][0]
    start = last - dt.timedelta(days=int(sessions * 7 / 5))

    st.plotly_chart(price_figure(q.prices(store, ticker, start, last), q.indicators(store, ticker, start, last),
                                 ticker), width="stretch")

    st.subheader("Forecasts")
    preds = q.predictions(store, ticker, start, last)
    if preds.is_empty():
        st.info("No forecasts for this ticker in the range: materialize `predictions` for these days (the naive "
                "random walk serves wherever no promoted model does).")
    else:
        latest = preds.row(-1, named=True)
        st.caption(f"Latest: for {latest['target_date']} close {latest['pred_close']:.2f} "
                   f"({latest['pred_return']:+.2%}) by {latest['model_name']} v{latest['model_version']}")
        st.plotly_chart(forecast_figure(preds), width="stretch")
    for label, scope in ((ticker, [ticker]), ("all tickers", None)):
        ev = q.evaluation(store, window, scope)
        m = ev["metrics"]
        st.markdown(f"**Last {window} target days, {label}** ({ev['first_target_date']} .. "
                    f"{ev['last_target_date']}, {int(m.get('rows') or 0)} forecasts)")
        cols = st.columns(5)
        cols[0].metric("MAE (naive)", fmt(m.get("mae"), "{:.3f}"), fmt(m.get("naive_mae"), "naive {:.3f}"),
                       delta_color="off")
        cols[1].metric("MASE", fmt(m.get("mase"), "{:.3f}"))
        cols[2].metric("hit rate (always up)", fmt(m.get("hit_rate"), "{:.1%}"), fmt(m.get("up_rate"), "up {:.1%}"),
                       delta_color="off")
        cols[3].metric("IC", fmt(m.get("ic"), "{:.3f}"))
        cols[4].metric("Diebold-Mariano p", fmt(m.get("dm_p_value"), "{:.2f}"))

    st.subheader("Data quality")
    dq = q.quality(store, start, last)
    left, right = st.columns(2)
    left.markdown("Quarantined rows per day")
    left.plotly_chart(quality_figure(dq), width="stretch")
    flagged = dq.filter(pl.col("quarantined") > 0)
    left.caption(f"{flagged.height} day(s) with quarantined rows, lowest DQ score "
                 f"{fmt(dq['dq_score'].min() if dq.height else None, '{:.3f}')}")
    right.markdown("Asset check results (newest first)")
    checks = check_history(store, settings.lake_uri)
    if checks.is_empty():
        right.info("No check results in the lake yet: the blocking checks record each evaluation when they run.")
    else:
        right.dataframe(checks.sort("at", descending=True).to_pandas(), hide_index=True, height=220)


main()
