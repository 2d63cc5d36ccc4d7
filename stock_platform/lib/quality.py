"""Data-quality figures: the share of rows that passed, per partition date."""

from __future__ import annotations

import polars as pl


def dq_by_date(valid_dates: pl.Series, quarantined_dates: pl.Series) -> pl.DataFrame:
    """Rows stored, rows quarantined and DQ score (stored / (stored + quarantined)) per date."""
    stored = valid_dates.alias("date").value_counts(name="stored")
    bad = quarantined_dates.alias("date").value_counts(name="quarantined")
    return (
        stored.join(bad, on="date", how="full", coalesce=True)
        .with_columns(pl.col("stored", "quarantined").fill_null(0).cast(pl.Int64))
        .with_columns(dq_score=pl.col("stored") / (pl.col("stored") + pl.col("quarantined")))
        .sort("date")
    )


def dq_score(stored: int, quarantined: int) -> float:
    total = stored + quarantined
    return 1.0 if total == 0 else stored / total
