"""Out-of-sample evaluation of next-day forecasts against the naive random walk (no Dagster).

A prediction made at d's close targets the next session t: `pred_close = close(d) * (1 + pred_return)`.
The truth is t's close expressed in d's share basis, `close(d) * (1 + total return of t)`: equal to t's
as-traded close except across a split or dividend on t, which neither forecast can know. The naive forecast
is `close(d)` (the random walk).
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from stock_platform.lib.markdown import markdown_table

TRADING_DAYS_PER_YEAR = 252
DEFAULT_COST_BPS = 5.0  # per side: every unit of notional traded costs this many basis points


def evaluate(predictions: pl.DataFrame, closes: pl.DataFrame) -> pl.DataFrame:
    """One row per prediction whose target day's close is known (the others are pending).

    predictions: ticker, date, target_date, pred_return, pred_close, model_name, model_version;
    closes: ticker, date, close, dividends, splits (as traded; rows of both the as-of and the target days).
    """
    from stock_platform.lib.corporate_actions import total_returns

    asof = closes.select("ticker", "date", base_close="close")
    target = total_returns(closes).select("ticker", target_date="date", date="prev_date", true_return="total_return")
    # the target's return is measured from d's close: d must be the ticker's previous bar
    rows = predictions.join(asof, on=["ticker", "date"]).join(target, on=["ticker", "target_date", "date"])
    return (
        rows.with_columns(true_close=pl.col("base_close") * (1 + pl.col("true_return")), naive_close=pl.col("base_close"))
        .with_columns(
            abs_error=(pl.col("pred_close") - pl.col("true_close")).abs(),
            naive_abs_error=(pl.col("naive_close") - pl.col("true_close")).abs(),
            # a flat day, or a flat forecast (the naive walk's), has no direction: null, not a miss
            direction_hit=pl.when((pl.col("true_return") != 0) & (pl.col("pred_return") != 0))
            .then(pl.col("pred_return").sign() == pl.col("true_return").sign()),
        )
        .select("ticker", "target_date", "date", "pred_close", "true_close", "abs_error", "naive_close",
                "naive_abs_error", "direction_hit", "pred_return", "true_return", "model_name", "model_version")
        .sort("target_date", "ticker")
    )


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return math.nan, math.nan
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def diebold_mariano(loss_model: np.ndarray, loss_naive: np.ndarray, horizon: int = 1) -> tuple[float, float]:
    """Diebold-Mariano test of equal accuracy with the Harvey-Leybourne-Newbold small-sample correction.

    Loss series are per period (here per target day). The long-run variance of d = model - naive uses the
    autocovariances up to lag horizon-1 (Newey-West weights). Returns (statistic, two-sided p-value against
    Student's t with T-1 degrees of freedom); a negative statistic means the model's loss is lower.
    """
    from scipy.special import stdtr  # Student's t CDF; scipy.stats would cost 0.9 s to import, this 0.3 s

    d = np.asarray(loss_model, dtype=float) - np.asarray(loss_naive, dtype=float)
    t = len(d)
    if t < 3:
        return math.nan, math.nan
    dev = d - d.mean()
    variance = dev @ dev / t
    for lag in range(1, horizon):
        variance += 2 * (1 - lag / horizon) * (dev[lag:] @ dev[:-lag]) / t
    if variance <= 0:
        return math.nan, math.nan
    dm = d.mean() / math.sqrt(variance / t)
    hln = dm * math.sqrt((t + 1 - 2 * horizon + horizon * (horizon - 1) / t) / t)
    return float(hln), float(2 * stdtr(t - 1, -abs(hln)))


def _drawdown(returns: np.ndarray) -> float:
    equity = np.cumprod(1 + returns)
    return float(np.max(1 - equity / np.maximum.accumulate(equity))) if len(equity) else math.nan


def _sharpe(returns: np.ndarray) -> float:
    sd = returns.std(ddof=1) if len(returns) > 1 else 0.0
    return float(returns.mean() / sd * math.sqrt(TRADING_DAYS_PER_YEAR)) if sd > 0 else math.nan


def daily_series(evaluation: pl.DataFrame) -> pl.DataFrame:
    """Per target day: long/short-by-sign and buy-and-hold returns (equal weight), mean errors, squared
    return errors of model and naive (the DM loss), daily IC."""
    return (
        evaluation.group_by("target_date")
        .agg(
            strategy=(pl.col("pred_return").sign() * pl.col("true_return")).mean(),
            buy_and_hold=pl.col("true_return").mean(),
            mae=pl.col("abs_error").mean(),
            naive_mae=pl.col("naive_abs_error").mean(),
            loss_model=((pl.col("pred_return") - pl.col("true_return")) ** 2).mean(),
            loss_naive=(pl.col("true_return") ** 2).mean(),
            ic=pl.corr("pred_return", "true_return", method="spearman"),
            n=pl.len(),
        )
        .sort("target_date")
    )


def summarize(evaluation: pl.DataFrame, *, top_k: int | None = None,
              cost_bps: float = DEFAULT_COST_BPS) -> dict[str, float]:
    """Aggregates over all rows: errors beside the naive forecast's, hit rate with its 95% interval,
    IC, Diebold-Mariano, the long/short-by-sign backtest beside buy-and-hold, and Qlib's measures
    (`signal_and_portfolio`)."""
    if evaluation.is_empty():
        return {"rows": 0}
    err = (evaluation["pred_close"] - evaluation["true_close"]).to_numpy()
    naive = (evaluation["naive_close"] - evaluation["true_close"]).to_numpy()
    hits = evaluation["direction_hit"].drop_nulls()
    lo, hi = wilson_interval(int(hits.sum()), hits.len())
    days = daily_series(evaluation)
    dm, p = diebold_mariano(days["loss_model"].to_numpy(), days["loss_naive"].to_numpy())
    strat, hold = days["strategy"].to_numpy(), days["buy_and_hold"].to_numpy()
    ic = days.filter(pl.col("n") >= 3)["ic"].fill_nan(None).drop_nulls()
    moved = evaluation.filter(pl.col("true_return") != 0)
    return {
        "rows": float(evaluation.height),
        "days": float(days.height),
        "mae": float(np.mean(np.abs(err))),
        "naive_mae": float(np.mean(np.abs(naive))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "naive_rmse": float(np.sqrt(np.mean(naive**2))),
        "mase": float(np.mean(np.abs(err)) / np.mean(np.abs(naive))) if np.any(naive) else math.nan,
        "hit_rate": float(hits.mean()) if hits.len() else math.nan,
        "hit_rate_ci_low": lo,
        "hit_rate_ci_high": hi,
        "up_rate": float((moved["true_return"] > 0).mean()) if moved.height else math.nan,
        "ic": float(ic.mean()) if ic.len() else math.nan,
        "dm_stat": dm,
        "dm_p_value": p,
        "strategy_return": float(np.prod(1 + strat) - 1),
        "buy_and_hold_return": float(np.prod(1 + hold) - 1),
        "strategy_sharpe": _sharpe(strat),
        "buy_and_hold_sharpe": _sharpe(hold),
        "strategy_max_drawdown": _drawdown(strat),
        "buy_and_hold_max_drawdown": _drawdown(hold),
    } | signal_and_portfolio(evaluation, top_k=top_k, cost_bps=cost_bps)


def _ir(series: pl.Series) -> tuple[float, float, float]:
    """(mean, mean / std, t-statistic) of a daily series (NaN where undefined)."""
    x = series.fill_nan(None).drop_nulls().to_numpy()
    if len(x) < 2 or x.std(ddof=1) == 0:
        return (float(x.mean()) if len(x) else math.nan), math.nan, math.nan
    ir = x.mean() / x.std(ddof=1)
    return float(x.mean()), float(ir), float(ir * math.sqrt(len(x)))


def long_short_weights(evaluation: pl.DataFrame, top_k: int | None = None) -> pl.DataFrame:
    """Per target day and ticker, the weight of a top-k / bottom-k long-short portfolio rebalanced daily: +1/k on
    the k highest predicted returns, -1/k on the k lowest (each leg fully invested), 0 elsewhere; ties by ticker.
    k is `top_k` or a fifth of the day's tickers (at least 1, at most half). A day whose forecasts are all equal
    (the naive walk's) has no signal: no position."""
    day = pl.col("target_date")
    n = pl.len().over(day)
    k = pl.min_horizontal(pl.lit(top_k) if top_k else pl.max_horizontal(n // 5, 1), n // 2)
    rank = pl.col("pred_return").rank("ordinal", descending=True).over(day)
    flat = pl.col("pred_return").n_unique().over(day) == 1
    return (
        evaluation.sort("target_date", "ticker")
        .with_columns(k=k)
        .with_columns(w=pl.when(flat | (pl.col("k") < 1)).then(0.0)
                      .when(rank <= pl.col("k")).then(1 / pl.col("k"))
                      .when(rank > n - pl.col("k")).then(-1 / pl.col("k"))
                      .otherwise(0.0))
        .select("target_date", "ticker", "w")
    )


def signal_and_portfolio(evaluation: pl.DataFrame, *, top_k: int | None = None,
                         cost_bps: float = DEFAULT_COST_BPS) -> dict[str, float]:
    """Qlib's measures of a forecast: per-day IC (Pearson) and Rank IC (Spearman) across tickers, with their means,
    IRs (mean / std) and t-statistics; the top-k / bottom-k long-short portfolio (`long_short_weights`) before and
    after costs (turnover, the sum of absolute weight changes, times `cost_bps` per side; the first day buys in),
    its annualised return (mean x 252) and volatility, information ratio against equal-weight buy-and-hold, and
    max drawdown (compounded). Days with fewer than 3 tickers have no IC."""
    day = pl.col("target_date")
    daily = (evaluation.group_by("target_date")
             .agg(ic=pl.corr("pred_return", "true_return"),
                  rank_ic=pl.corr("pred_return", "true_return", method="spearman"),
                  n=pl.len(), benchmark=pl.col("true_return").mean())
             .sort("target_date"))
    ranked = daily.filter(pl.col("n") >= 3)
    ic, icir, ic_t = _ir(ranked["ic"])
    rank_ic, rank_icir, rank_ic_t = _ir(ranked["rank_ic"])

    weights = long_short_weights(evaluation, top_k)
    days = daily["target_date"].to_list()
    held = weights.with_columns(  # each day's weights, as the next day's starting position
        day.replace_strict(dict(zip(days[:-1], days[1:])), default=None, return_dtype=pl.Date)
    ).drop_nulls("target_date").rename({"w": "w0"})
    trades = (weights.join(held, on=["target_date", "ticker"], how="full", coalesce=True)
              .with_columns(pl.col("w", "w0").fill_null(0.0))
              .group_by("target_date").agg(turnover=(pl.col("w") - pl.col("w0")).abs().sum()))
    book = (evaluation.join(weights, on=["target_date", "ticker"])
            .group_by("target_date").agg(gross=(pl.col("w") * pl.col("true_return")).sum())
            .join(trades, on="target_date", how="left").join(daily.select("target_date", "benchmark"), on="target_date")
            .with_columns(net=pl.col("gross") - pl.col("turnover") * cost_bps / 1e4)
            .sort("target_date"))
    out = {"pearson_ic": ic, "pearson_icir": icir, "pearson_ic_t": ic_t,
           "rank_ic": rank_ic, "rank_icir": rank_icir, "rank_ic_t": rank_ic_t, "ic_days": float(ranked.height),
           "ls_turnover": float(book["turnover"].mean()) if book.height else math.nan, "cost_bps": cost_bps,
           "benchmark_annual_return": float(book["benchmark"].mean() * TRADING_DAYS_PER_YEAR) if book.height
           else math.nan}
    for tag, col in (("", "gross"), ("_net", "net")):
        r = book[col].to_numpy()
        active = r - book["benchmark"].to_numpy()
        sd = active.std(ddof=1) if len(r) > 1 else 0.0
        out |= {f"ls_annual_return{tag}": float(r.mean() * TRADING_DAYS_PER_YEAR) if len(r) else math.nan,
                f"ls_annual_volatility{tag}": float(r.std(ddof=1) * math.sqrt(TRADING_DAYS_PER_YEAR))
                if len(r) > 1 else math.nan,
                f"ls_information_ratio{tag}": float(active.mean() / sd * math.sqrt(TRADING_DAYS_PER_YEAR))
                if sd > 0 else math.nan,
                f"ls_max_drawdown{tag}": _drawdown(r)}
    return out


def summary_markdown(s: dict[str, float]) -> str:
    """Model beside the naive baseline, as a markdown table (Dagster metadata, the report command)."""
    if not s.get("rows"):
        return "no evaluated predictions in this window"
    f = "{:.4g}".format
    rows = [
        ("MAE (price)", f(s["mae"]), f(s["naive_mae"])),
        ("RMSE (price)", f(s["rmse"]), f(s["naive_rmse"])),
        ("MASE", f(s["mase"]), "1"),
        ("hit rate [95% CI]", f"{s['hit_rate']:.3f} [{s['hit_rate_ci_low']:.3f}, {s['hit_rate_ci_high']:.3f}]",
         f"{s['up_rate']:.3f} (always up)"),
        ("IC (daily Spearman)", f(s["ic"]), "0"),
        ("long/short vs buy-and-hold: return", f"{s['strategy_return']:+.2%}", f"{s['buy_and_hold_return']:+.2%}"),
        ("Sharpe (annualised)", f(s["strategy_sharpe"]), f(s["buy_and_hold_sharpe"])),
        ("max drawdown", f"{s['strategy_max_drawdown']:.2%}", f"{s['buy_and_hold_max_drawdown']:.2%}"),
    ]
    table = markdown_table(rows, ["measure", "model", "naive / baseline"])
    pct = "{:+.2%}".format
    signal = markdown_table([
        ("IC (Pearson)", f(s["pearson_ic"]), f(s["pearson_icir"]), f(s["pearson_ic_t"]), int(s["ic_days"])),
        ("Rank IC (Spearman)", f(s["rank_ic"]), f(s["rank_icir"]), f(s["rank_ic_t"]), int(s["ic_days"])),
    ], ["daily cross-section", "mean", "IR (mean / std)", "t", "days"])
    portfolio = markdown_table([
        ("annual return", pct(s["ls_annual_return"]), pct(s["ls_annual_return_net"]), pct(s["benchmark_annual_return"])),
        ("annual volatility", f"{s['ls_annual_volatility']:.2%}", f"{s['ls_annual_volatility_net']:.2%}", ""),
        ("information ratio vs buy-and-hold", f(s["ls_information_ratio"]), f(s["ls_information_ratio_net"]), ""),
        ("max drawdown", f"{s['ls_max_drawdown']:.2%}", f"{s['ls_max_drawdown_net']:.2%}", ""),
        ("turnover per day", f"{s['ls_turnover']:.2f}", f"{s['ls_turnover']:.2f}", ""),
    ], ["top/bottom-k long-short, daily", "before costs", f"after {s['cost_bps']:g} bps per side",
        "equal-weight buy-and-hold"])
    return (table + f"\n\nDiebold-Mariano (squared return errors, HLN-corrected): {s['dm_stat']:.3f}, "
            f"p = {s['dm_p_value']:.3g} over {int(s['days'])} days, {int(s['rows'])} predictions\n\n"
            + signal + "\n\n" + portfolio + f"\n\n({int(s['rows'])} forecasts over {int(s['days'])} target days)")


def plot_png(evaluation: pl.DataFrame) -> bytes:
    """Equity curves (long/short by sign vs buy-and-hold) and daily MAE of model vs naive, as a PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = daily_series(evaluation)
    x = days["target_date"].to_list()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    top.plot(x, np.cumprod(1 + days["strategy"].to_numpy()), label="long/short by predicted sign")
    top.plot(x, np.cumprod(1 + days["buy_and_hold"].to_numpy()), label="buy and hold (equal weight)")
    top.set_ylabel("equity")
    top.legend(loc="best", fontsize=8)
    bottom.plot(x, days["mae"].to_numpy(), label="model")
    bottom.plot(x, days["naive_mae"].to_numpy(), label="naive random walk", alpha=0.7)
    bottom.set_ylabel("mean |error| (price)")
    bottom.legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
