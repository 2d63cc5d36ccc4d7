"""Ray Tune, inside an asset's materialization: a local Ray started for the run, or a cluster joined."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import PrivateAttr

if TYPE_CHECKING:
    from stock_platform.lib.families import Family
    from stock_platform.lib.modeling import Fold, TrainingSet


def ray_space(family: Family) -> dict:
    """A family's search space as Ray Tune distributions."""
    from ray import tune

    space = {}
    for name, (kind, low, high, log) in family.space.items():
        if kind == "int":
            space[name] = tune.lograndint(int(low), int(high) + 1) if log else tune.randint(int(low), int(high) + 1)
        else:
            space[name] = tune.loguniform(low, high) if log else tune.uniform(low, high)
    return space


def cluster_endpoint(address: str) -> tuple[str, int] | None:
    """The host and port a RAY_ADDRESS names (`host:port`, `ray://host:port`); None for "auto"/"local"."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


def answers(endpoint: tuple[str, int], timeout: float) -> str | None:
    """None if a TCP connection to `endpoint` opens within `timeout`, else why not."""
    import socket

    try:
        socket.create_connection(endpoint, timeout=timeout).close()
    except OSError as exc:
        return str(exc) or type(exc).__name__
    return None


@contextmanager
def cluster_watch(address: str, every: float = 1.0, after: float = 3.0) -> Iterator[None]:
    """While the block runs, check every `every` s that the cluster at `address` still answers; once it has not for
    `after` s, log why the run is about to end (Ray's core ends a driver that cannot reach its cluster's GCS for
    RAY_gcs_rpc_server_reconnect_timeout_s, 60 s by default, before any Python code could report it)."""
    import threading
    import time

    endpoint = cluster_endpoint(address)
    stop = threading.Event()

    def watch() -> None:
        since = None
        while not stop.wait(every):
            reason = answers(endpoint, timeout=every)
            if reason is None:
                since = None
            elif since is None:
                since = time.monotonic()
            elif time.monotonic() - since >= after:
                dg.get_dagster_logger().error(
                    f"the Ray cluster at {address} stopped answering during the search ({reason}): Ray ends this "
                    "run's process unless the cluster is back within RAY_gcs_rpc_server_reconnect_timeout_s (60 s "
                    "by default); retry the run once the cluster is up")
                return

    thread = threading.Thread(target=watch, name="ray-cluster-watch", daemon=True)
    if endpoint:
        thread.start()
    try:
        yield
    finally:
        stop.set()


class TuningResource(dg.ConfigurableResource):
    """Starts a local Ray with `num_cpus`, or joins the cluster at `address` (RAY_ADDRESS). One trial per CPU;
    `storage_dir` (absolute) keeps Ray Tune's trial records.

    In a Dagster run, Ray starts at the first search and stops when the run's resources are torn down (also after
    a failed step): the weekly run's three family searches share one Ray instead of starting three (each start
    and stop costs seconds). Outside a run, `ray_session()` brackets Ray around its block."""

    num_cpus: int = 2
    address: str | None = None
    storage_dir: str
    _run_scoped: bool = PrivateAttr(default=False)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._run_scoped = True

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        import sys

        if "ray" in sys.modules:  # only if a step started it (an import of ray alone costs a second)
            import ray

            ray.shutdown()

    @contextmanager
    def ray_session(self) -> Iterator[None]:
        """Ray up for the block: shut down after it (also when the block raises: no stray workers), or, in a
        Dagster run, when the run ends."""
        import ray

        if self._run_scoped and ray.is_initialized():  # an earlier search of this run started it
            yield
            return
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no ~/.ray/auth_token for a local, private Ray
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no progress tables on stdout; Dagster logs the result
        # no per-result CSV/JSON/TensorBoard files: the trials' scores go to MLflow (and stay in the ResultGrid)
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        common = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if self.address:
            endpoint = cluster_endpoint(self.address)
            # ray.init waits minutes on an address where nothing answers: say so at once instead
            if endpoint and (reason := answers(endpoint, timeout=5)):
                raise dg.Failure(f"RAY_ADDRESS={self.address}: the Ray cluster does not answer ({reason}); start it, "
                                 "or unset RAY_ADDRESS to tune on a Ray started in the run")
            ray.init(address=self.address, **common)
        else:  # "local" also overrides a RAY_ADDRESS left in the environment (with num_cpus that would raise)
            ray.init(address="local", num_cpus=self.num_cpus, **common)
        try:
            yield
        finally:
            if not self._run_scoped:  # in a run, `teardown_after_execution` stops it
                ray.shutdown()

    def search(self, family: Family, data: TrainingSet, folds: Sequence[Fold], *, trials: int,
               time_budget_seconds: float, seed: int, name: str, searcher: str = "optuna") -> list[dict]:
        """Run the walk-forward CV of `trials` parameter sets of `family` under Ray Tune; returns one dict per trial
        (its params, scores so far, folds done). Call inside `ray_session()`.

        searcher "optuna": Optuna's TPE proposes parameters and ASHA stops trials that score poorly after a
        fold. searcher "random": random points, every trial runs every fold (the benchmark's fixed workload).
        """
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
        from ray.tune.search.optuna import OptunaSearch

        from stock_platform.lib.modeling import ray_trainable

        light = replace(data, keys=data.keys.head(0))  # trials need the arrays only
        trainable = tune.with_resources(
            tune.with_parameters(ray_trainable, data=light, folds=list(folds), family=family.key), {"cpu": 1})
        if searcher == "optuna":
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            search_alg = OptunaSearch(seed=seed)
            scheduler = ASHAScheduler(time_attr="folds_done", max_t=len(folds), grace_period=1, reduction_factor=2)
        else:
            search_alg, scheduler = None, FIFOScheduler()
        tuner = tune.Tuner(
            trainable,
            param_space=ray_space(family) if searcher == "optuna" else _fixed_space(family, trials, seed),
            tune_config=tune.TuneConfig(metric="ic", mode="max", num_samples=trials if searcher == "optuna" else 1,
                                        time_budget_s=time_budget_seconds, search_alg=search_alg,
                                        scheduler=scheduler,
                                        # on a cluster, a reused actor would take the next trial on its node while
                                        # another node's actor is still starting: trials would pile on one node
                                        reuse_actors=not self.address),
            run_config=tune.RunConfig(name=name, storage_path=str(Path(self.storage_dir).resolve()), verbose=0),
        )
        with cluster_watch(self.address) if self.address else nullcontext():
            results = tuner.fit()
        out = []
        for i, result in enumerate(results):
            config = result.config.get("point", result.config)
            params = {k: config[k] for k in family.space}
            out.append({"trial": i, **params, **(result.metrics or {}),
                        "error": str(result.error) if result.error else None})
        return out


def _fixed_space(family: Family, trials: int, seed: int) -> dict:
    """`trials` random points of the family's search space as a grid of points (same points as `sample_params`)."""
    import numpy as np
    from ray import tune

    from stock_platform.lib.families import sample_params

    rng = np.random.default_rng(seed)
    points = [sample_params(family.space, rng) for _ in range(trials)]
    return {"point": tune.grid_search(points)}
