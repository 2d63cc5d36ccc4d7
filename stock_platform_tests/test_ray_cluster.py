"""`lightgbm_model` tuned on a real two-node Ray cluster (`ray start --head` and `ray start --address`, one CPU
each, separate processes): a cluster that goes away mid-search fails the run with the reason; the same run, once
the cluster is back, completes with its trials spread over both nodes and leaves the cluster running and idle; its
results equal a local Ray's with the same seed and searcher."""

from __future__ import annotations

import subprocess
import sys
import time

import dagster as dg
import pytest

from stock_platform.assets.model import family_models
from stock_platform.resources.tuning import TuningResource
from stock_platform_tests.helpers import build_lake, failure_message, materialization_metadata, model_resources
from stock_platform_tests.ray_cluster import RayCluster, ray_processes

pytestmark = pytest.mark.slow
WEEK = "2024-06-10"
CONFIG = {"ops": {"lightgbm_model": {"config": {"trials": 4, "time_budget_seconds": 300, "searcher": "random"}}}}
LIGHTGBM = [a for a in family_models if a.key.path[-1] == "lightgbm_model"]

RUN = """
import sys
import dagster as dg
from stock_platform.resources.lake import LakeResource
from stock_platform.resources.tuning import TuningResource
from stock_platform_tests.helpers import model_resources
from stock_platform_tests.test_ray_cluster import CONFIG, LIGHTGBM, WEEK
root, lake, address = sys.argv[1:4]
res = model_resources(__import__("pathlib").Path(root), LakeResource(uri=lake))
res["tuning"] = TuningResource(address=address, storage_dir=f"{root}/ray")
with dg.instance_for_test() as instance:
    result = dg.materialize(LIGHTGBM, partition_key=WEEK, resources=res, instance=instance, run_config=CONFIG,
                            raise_on_error=False)
print("success" if result.success else "failed", flush=True)
"""


def tune(res: dict, tuning: TuningResource) -> tuple[dict, list, float]:
    """Materialize lightgbm_model with `tuning`: its metadata, its trials' (node, params, IC) from MLflow, seconds."""
    started = time.perf_counter()
    with dg.instance_for_test() as instance:
        result = dg.materialize(LIGHTGBM, partition_key=WEEK, resources=res | {"tuning": tuning}, instance=instance,
                                run_config=CONFIG, raise_on_error=False)
    seconds = time.perf_counter() - started
    assert result.success, failure_message(result)
    md = materialization_metadata(result, "lightgbm_model")
    client = res["tracking"].client()
    run = client.get_run(md["mlflow_run_id"])
    nested = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    trials = sorted(((n.data.tags.get("ray_node_id"), n.data.params["num_leaves"], n.data.params["learning_rate"],
                      n.data.metrics["ic"]) for n in nested), key=lambda t: t[1:3])  # by parameters
    return md, trials, seconds


def test_tuning_on_a_two_node_cluster_spreads_trials_survives_a_lost_cluster_and_equals_local_ray(tmp_path):
    res = model_resources(tmp_path, build_lake(tmp_path))
    cluster = RayCluster(tmp_path / "cluster").start()
    groups = [p.pid for p in cluster.procs]
    try:
        # the cluster goes away mid-search: the run's process ends with the reason logged
        env = cluster.env | {"RAY_gcs_rpc_server_reconnect_timeout_s": "6"}
        run = subprocess.Popen([sys.executable, "-W", "ignore", "-c", RUN, str(tmp_path / "lost"), res["lake"].uri,
                                cluster.address], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while not list((tmp_path / "lost" / "ray").glob("*/*")):  # Tune's experiment started
            assert run.poll() is None and time.monotonic() < deadline, run.stdout.read()[-3000:]
            time.sleep(0.1)
        time.sleep(1)
        cluster.stop()
        assert not cluster.leftovers(groups), "the stopped cluster left processes"
        output = run.communicate(timeout=120)[0]
        assert run.returncode != 0 and "success" not in output
        assert f"the Ray cluster at {cluster.address} stopped answering during the search" in output, output[-3000:]

        # back (same address, new nodes): the run, retried, completes, its trials spread over both nodes
        cluster = RayCluster(tmp_path / "cluster", port=cluster.port).start()
        groups = [p.pid for p in cluster.procs]
        nodes = cluster.state()["nodes"]
        on_cluster, trials, cluster_seconds = tune(res, TuningResource(address=cluster.address,
                                                                       storage_dir=str(tmp_path / "ray")))
        assert on_cluster["trials_complete"] == "4 of 4"
        per_node = {node: sum(t[0] == node for t in trials) for node in nodes}
        assert set(t[0] for t in trials) == set(nodes) and min(per_node.values()) >= 1, per_node  # both nodes
        after = cluster.state()  # the run disconnected: the cluster runs on, idle (no actor or task holds a CPU)
        assert after["nodes"] == nodes and after["free_cpus"] == after["cpus"] == 2
    finally:
        cluster.stop()
    assert not cluster.leftovers(groups), "the cluster left processes"

    # the same seed and searcher on a local Ray (2 CPUs, started in the run): the same trials, scores and choice
    local, local_trials, local_seconds = tune(res, TuningResource(storage_dir=str(tmp_path / "ray")))
    assert not ray_processes(), "the local Ray left processes"
    assert [(t[1], t[2]) for t in local_trials] == [(t[1], t[2]) for t in trials]
    assert [t[3] for t in local_trials] == pytest.approx([t[3] for t in trials], rel=1e-9)
    assert local["best_params"] == on_cluster["best_params"]
    print(f"trials per node {sorted(per_node.values())}; cluster {cluster_seconds:.1f} s, local {local_seconds:.1f} s")
