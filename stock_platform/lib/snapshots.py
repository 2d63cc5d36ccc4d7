"""Hudi-like upsert semantics for a keyed snapshot table, as pure logic.

A record is `key columns + value columns + precombine column + _is_deleted`. Merging a batch into the
table follows Hudi's "upsert with precombine":

- within a batch, the newest record per key wins (`precombine`): duplicate source keys make MERGE fail;
- a batch record replaces the stored one only if it is newer *and* says something new (other values, or
  an undelete): a replayed or older record changes nothing and writes no commit;
- a delete record (`_is_deleted = true`) only flags the stored row, keeping its last values; a newer
  upsert of the key undeletes it; deleting an unknown key does nothing.

`merge_clauses` renders these rules as the predicates of a delta-rs MERGE (`s` = source, `t` = target).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

DELETED = "_is_deleted"


def precombine(batch: pl.DataFrame, keys: Sequence[str], order_by: str) -> pl.DataFrame:
    """Keep the newest record per key (the last one among equal `order_by` values)."""
    return (
        batch.with_row_index("_arrival")
        .sort(order_by, "_arrival")
        .unique(subset=list(keys), keep="last", maintain_order=True)
        .drop("_arrival")
    )


@dataclass(frozen=True)
class MergeClauses:
    on: str
    delete_when: str
    update_when: str
    insert_when: str
    delete_sets: dict[str, str]


def merge_clauses(keys: Sequence[str], values: Sequence[str], order_by: str, *, prune: str | None = None) -> MergeClauses:
    """The MERGE predicates for Hudi-like upserts. `prune` (SQL on `t`) limits the files scanned."""
    on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    if prune:
        on = f"{on} AND {prune}"
    newer = f"s.{order_by} > t.{order_by}"
    changed = " OR ".join([f"(s.{c} IS DISTINCT FROM t.{c})" for c in values] + [f"t.{DELETED}"])
    return MergeClauses(
        on=on,
        delete_when=f"s.{DELETED} AND {newer} AND NOT t.{DELETED}",
        update_when=f"NOT s.{DELETED} AND {newer} AND ({changed})",
        insert_when=f"NOT s.{DELETED}",
        delete_sets={DELETED: "true", order_by: f"s.{order_by}"},
    )


@dataclass(frozen=True)
class MergeCounts:
    inserted: int
    updated: int
    deleted: int
    undeleted: int
    unchanged: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def count_changes(commit_cdf: pl.DataFrame, source_rows: int) -> MergeCounts:
    """Classify one commit's change-data-feed rows; source rows that changed nothing are `unchanged`."""
    if commit_cdf.is_empty():
        return MergeCounts(0, 0, 0, 0, source_rows)
    post = commit_cdf.filter(pl.col("_change_type") == "update_postimage")
    pre = commit_cdf.filter(pl.col("_change_type") == "update_preimage")
    inserted = commit_cdf.filter(pl.col("_change_type") == "insert").height
    deleted = post.filter(pl.col(DELETED)).height
    undeleted = pre.filter(pl.col(DELETED)).height
    updated = post.height - deleted
    return MergeCounts(inserted, updated - undeleted, deleted, undeleted,
                       source_rows - inserted - updated - deleted)
