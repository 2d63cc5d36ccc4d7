"""Pure data logic (polars/numpy), no Dagster import: usable from notebooks and tests alike."""
