"""Snapshot tests of what Dagster loads: asset specs, partitions, checks, jobs; and load cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from stock_platform.definitions import defs
from stock_platform.partitions import model_weeks, trading_days

FAMILY_ASSETS = ("lightgbm_model", "ridge_model", "ar_model")
HEAVY = ("pandera", "deltalake", "ray", "lightgbm", "mlflow", "optuna", "yfinance", "pandas", "polars",
         "sqlalchemy", "numpy")


def test_asset_specs():
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "prices", "price_snapshots", "features", *FAMILY_ASSETS, "tuned_model", "predictions", "prediction_evaluation"}
    for key, group in [("prices", "ingestion"), ("price_snapshots", "lake"), ("features", "ml")]:
        node = graph.get(dg.AssetKey(key))
        assert node.group_name == group
        assert node.partitions_def == trading_days
        assert node.backfill_policy == dg.BackfillPolicy.single_run()
        assert "deltalake" in node.kinds
    assert graph.get(dg.AssetKey("price_snapshots")).parent_keys == {dg.AssetKey("prices")}
    assert graph.get(dg.AssetKey("features")).parent_keys == {dg.AssetKey("price_snapshots")}
    for key in FAMILY_ASSETS:  # each family tuned by Ray Tune, weekly, from the features
        model = graph.get(dg.AssetKey(key))
        assert model.group_name == "ml" and model.partitions_def == model_weeks
        assert model.parent_keys == {dg.AssetKey("features")} and {key[:-6], "ray", "mlflow"} <= model.kinds
        assert "stock_platform/cadence" not in model.tags  # the daily job must not select the weekly models
    gate = graph.get(dg.AssetKey("tuned_model"))
    assert gate.partitions_def == model_weeks and gate.parent_keys == {dg.AssetKey(k) for k in FAMILY_ASSETS}
    for key in ("predictions", "prediction_evaluation"):
        node = graph.get(dg.AssetKey(key))
        assert node.group_name == "ml" and node.partitions_def == trading_days
        assert node.backfill_policy == dg.BackfillPolicy.single_run()
    assert graph.get(dg.AssetKey("predictions")).parent_keys == {dg.AssetKey("features"), dg.AssetKey("tuned_model")}
    assert graph.get(dg.AssetKey("prediction_evaluation")).parent_keys == {dg.AssetKey("predictions"),
                                                                          dg.AssetKey("price_snapshots")}


def test_checks_are_blocking_and_partitioned():
    specs = {spec.key: (spec, checks_def) for checks_def in defs.asset_checks for spec in checks_def.check_specs
             if spec.name != "freshness_check"}
    assert set(specs) == {dg.AssetCheckKey(dg.AssetKey("prices"), "prices_schema"),
                          dg.AssetCheckKey(dg.AssetKey("features"), "features_schema"),
                          dg.AssetCheckKey(dg.AssetKey("predictions"), "predictions_complete_and_plausible")}
    for spec, checks_def in specs.values():
        assert spec.blocking is True
        assert checks_def.partitions_def == trading_days
    # the model's leakage check is evaluated by the asset itself (it reuses the training set)
    [model] = [a for a in defs.assets if dg.AssetKey("tuned_model") in a.keys]
    [leakage] = model.check_specs
    assert leakage.key == dg.AssetCheckKey(dg.AssetKey("tuned_model"), "no_leakage") and leakage.blocking


def test_jobs_and_resources():
    job = defs.resolve_job_def("daily_assets")
    assert job.partitions_def == trading_days
    assert {n.name for n in job.nodes_in_topological_order} == {
        "prices", "prices_prices_schema", "price_snapshots", "features", "features_features_schema", "predictions",
        "predictions_predictions_complete_and_plausible", "prediction_evaluation"}
    retrain = defs.resolve_job_def("weekly_retrain")
    assert retrain.partitions_def == model_weeks and [n.name for n in retrain.nodes_in_topological_order] == [
        *sorted(FAMILY_ASSETS), "tuned_model"]
    assert set(defs.resources) == {"source", "lake", "landing", "universe", "warehouse", "tuning", "tracking",
                                   "alerts", "lineage"}
    assert {s.name for s in defs.sensors} == {"landing_zone_sensor", "live_quotes_sensor", "alerts",
                                              "freshness_checks_sensor", "openlineage"}
    # every job runs its steps in the run's process: ours, and the implicit one behind the UI's backfills
    for name in ("daily_assets", "weekly_retrain", "lake_maintenance", "__ASSET_JOB"):
        assert defs.resolve_job_def(name).executor_def is dg.in_process_executor, name


def test_freshness_is_watched_outside_the_jobs():
    """Each daily asset and the model have a freshness policy (the UI's status) and a partition-aware freshness
    check (WARN, non-blocking) that its sensor evaluates; no job runs a freshness check itself."""
    graph = defs.resolve_asset_graph()
    fresh = {spec.key.asset_key.to_user_string(): spec for checks_def in defs.asset_checks
             for spec in checks_def.check_specs if spec.name == "freshness_check"}
    assert set(fresh) == {"prices", "price_snapshots", "features", "predictions", "tuned_model"}
    assert not any(spec.blocking for spec in fresh.values())
    assert graph.get(dg.AssetKey("prices")).freshness_policy.deadline_cron == "30 18 * * 1-5"
    assert graph.get(dg.AssetKey("tuned_model")).freshness_policy.fail_window.to_timedelta().days == 14
    for job in ("daily_assets", "weekly_retrain"):
        assert not any("freshness" in n.name for n in defs.resolve_job_def(job).nodes_in_topological_order)


def test_warehouse_url_from_the_environment_is_not_shown_in_config():
    out = _python(
        "from stock_platform.definitions import defs; import dagster as dg; "
        "print(type(defs.resources['warehouse'].url).__name__)",
        env={"STOCK_PLATFORM_WAREHOUSE_URL": "postgresql://u:secret@db/w"},
    )
    assert out.strip() == "EnvVar"


def _python(code: str, env: dict | None = None) -> str:
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return out.stdout


def test_loading_definitions_imports_no_heavy_library():
    loaded = json.loads(_python(
        "import sys, json, stock_platform.definitions; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    ))
    assert loaded == []


def test_dagster_validates_the_code_location(tmp_path):
    out = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "dagster"), "definitions", "validate", "-m",
         "stock_platform.definitions"],
        capture_output=True, text=True, env={**os.environ, "DAGSTER_HOME": str(tmp_path)}, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "All code locations passed validation" in out.stdout + out.stderr


@pytest.mark.slow  # two `dg` processes that each load the project: ~10-20 s here
def test_the_dg_cli_checks_and_lists_the_project(tmp_path):
    """`[tool.dg]` in pyproject.toml makes this a `dg` project: `dg check defs` loads it, `dg list defs` shows it."""
    repo = Path(__file__).resolve().parents[1]
    dg_cli = os.path.join(os.path.dirname(sys.executable), "dg")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    check = subprocess.run([dg_cli, "check", "defs"], capture_output=True, text=True, env=env, cwd=repo, timeout=300)
    assert check.returncode == 0 and "All definitions loaded successfully" in check.stdout + check.stderr, (
        check.stdout[-2000:] + check.stderr[-2000:])
    listed = subprocess.run([dg_cli, "list", "defs", "--json"], capture_output=True, text=True, env=env, cwd=repo,
                            timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    defs = json.loads(listed.stdout)
    assert {a["asset_key"] for a in defs["assets"]} == {"prices", "price_snapshots", "features", *FAMILY_ASSETS,
                                                        "tuned_model", "predictions", "prediction_evaluation"}
    assert {c["key"] for c in defs["asset_checks"]} == {
        "prices:prices_schema", "features:features_schema", "predictions:predictions_complete_and_plausible",
        "tuned_model:no_leakage", *(f"{a}:freshness_check" for a in ("prices", "price_snapshots", "features",
                                                                     "predictions", "tuned_model"))}
    assert {j["name"] for j in defs["jobs"]} == {"daily_assets", "weekly_retrain", "lake_maintenance"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside functions (absolute names)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_layers_import_downwards_only():
    """Serving, the CLI and the checks name tables from the catalog (lib/tables.py) and models from the registry,
    never from an asset module; lib/ and serving/ are Dagster-free (serving reads through `stock_platform.lake`)."""
    package = Path(__file__).resolve().parents[1] / "stock_platform"
    above = [*package.glob("serving/*.py"), *package.glob("cli*.py"), *package.glob("cli/*.py"),
             package / "checks.py", package / "registry.py"]
    wrong = {str(f.relative_to(package)): sorted(m for m in imported_modules(f) if m.startswith("stock_platform.assets"))
             for f in above}
    assert not {f: m for f, m in wrong.items() if m}
    dagster_in_lib = {str(f.relative_to(package)): sorted(m for m in imported_modules(f)
                                                          if m.split(".")[0].startswith("dagster"))
                      for f in [*package.glob("lib/*.py"), *package.glob("serving/*.py")]}
    assert not {f: m for f, m in dagster_in_lib.items() if m}


# Private Dagster modules still imported, each where Dagster has no public API (a new one is a decision: add it
# here with its reason). The run launcher's worker protocol; gates' per-partition check status (see gates.py);
# the dashboard's check history (its status filter; no public check-history API in Dagster 1.13).
PRIVATE_DAGSTER_IMPORTS = {
    "stock_platform/launcher.py": {"dagster._cli.api", "dagster._core.execution.run_cancellation_thread",
                                   "dagster._core.instance", "dagster._core.launcher", "dagster._grpc.types",
                                   "dagster._serdes"},
    "stock_platform/gates.py": {"dagster._core.storage.asset_check_execution_record"},
    "stock_platform_tests/test_launcher.py": {"dagster._core.launcher"},
}


def test_private_dagster_imports_are_the_known_ones():
    repo = Path(__file__).resolve().parents[1]
    found = {}
    for path in [*repo.glob("stock_platform/**/*.py"), *repo.glob("stock_platform_tests/*.py"), *repo.glob("benchmarks/*.py")]:
        private = {m for m in imported_modules(path) if m.startswith("dagster._")}
        if private:
            found[str(path.relative_to(repo))] = private
    assert found == PRIVATE_DAGSTER_IMPORTS
