"""The lake as a Dagster resource."""

from __future__ import annotations

import dagster as dg

from stock_platform.lake import Lake


class LakeResource(dg.ConfigurableResource, Lake):
    """The lake (`stock_platform.lake.Lake`: Delta tables by name, their writes and reads) with its fields as the
    resource's config, for the assets, checks and jobs."""
