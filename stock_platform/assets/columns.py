"""Column lineage declared on the asset definitions: which upstream columns each stored column is computed from.

The code fixes it, not a run, so it lives on the definition: the Dagster UI reads it there (when a materialization
carries none), shows it before the first run, and stores it once. As materialization metadata a single-run
backfill would copy it onto each of its partitions: features' 22 KB x 2,500 partitions for ten years, written twice
(the run's event log and the index). Measured side by side on the real-data demo (2,141 partitions), the daily
stage took 88.6 s with the copies and 66.1 s without. Column names only: loading the definitions imports no polars.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg


def column_lineage(deps: Mapping[str, Mapping[str, Sequence[str]]]) -> dict[str, dg.TableColumnLineage]:
    """An asset's `metadata=` entry `dagster/column_lineage` from {column: {upstream asset: [its columns]}}."""
    return {"dagster/column_lineage": dg.TableColumnLineage({
        column: [dg.TableColumnDep(asset_key=dg.AssetKey(asset), column_name=c)
                 for asset, cols in upstream.items() for c in cols]
        for column, upstream in deps.items()})}
