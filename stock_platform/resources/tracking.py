"""MLflow tracking and model registry (MLFLOW_TRACKING_URI; a local SQLite store by default)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:
    import pandas as pd

    from stock_platform.lib.families import Family

CHAMPION = "champion"


class TrackingResource(dg.ConfigurableResource):
    """A thin resource around `mlflow`: one experiment, one registered model per model family
    (`<model_prefix>_<family short name>`), and the `champion` alias on at most one version of them.

    dagster-mlflow offers only the legacy `mlflow_tracking` resource (global run state tied to the Dagster
    run); this one opens the runs it needs and nothing else.
    """

    tracking_uri: str
    # where a new experiment keeps its artifacts (a directory or s3:// prefix); None: the server decides
    artifact_location: str | None = None
    experiment: str = "stock_platform"
    model_prefix: str = "stock_platform"

    def model_name(self, family: Family) -> str:
        """The registered model of a family (LightGBM's: `stock_platform_lgbm`)."""
        return f"{self.model_prefix}_{family.short}"

    def model_names(self) -> list[str]:
        from stock_platform.lib.families import FAMILIES

        return [self.model_name(f) for f in FAMILIES.values()]

    def _mlflow(self):
        import logging

        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Created version ..." on the console
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        return mlflow

    def client(self):
        return self._mlflow().MlflowClient(self.tracking_uri, self.tracking_uri)

    @contextmanager
    def run(self, run_name: str, tags: dict[str, str]) -> Iterator[Any]:
        """A run in the experiment (created with `artifact_location` the first time); inside another run, a run
        nested in it."""
        mlflow = self._mlflow()
        client = self.client()
        experiment = client.get_experiment_by_name(self.experiment)
        experiment_id = (experiment.experiment_id if experiment else
                         client.create_experiment(self.experiment, artifact_location=self.artifact_location))
        nested = mlflow.active_run() is not None
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags, nested=nested) as run:
            yield run

    @contextmanager
    def asset_run(self, context, run_name: str) -> Iterator[Any]:
        """The MLflow run of one asset partition's materialization, bound to the Dagster run.

        Bound as dagster-mlflow binds its runs (the `dagster_run_id` tag), and across attempts by the Dagster run's
        root: a step retry or a re-execution of a failed run (a new Dagster run, the same root) resumes the MLflow
        run the first attempt opened, instead of leaving it behind as an orphan, and the run ends FINISHED when the
        attempt that completes the materialization ends (FAILED while it has not). `dagster_run_id` names the
        latest attempt; the note links back to the Dagster run.
        """
        mlflow = self._mlflow()
        client = self.client()
        experiment = client.get_experiment_by_name(self.experiment)
        experiment_id = (experiment.experiment_id if experiment else
                         client.create_experiment(self.experiment, artifact_location=self.artifact_location))
        run = context.run
        binding = {"dagster_root_run_id": run.root_run_id or run.run_id,
                   "dagster_asset": context.asset_key.to_user_string(), "dagster_partition": context.partition_key}
        earlier = client.search_runs([experiment_id], " and ".join(f"tags.{k} = '{v}'" for k, v in binding.items()),
                                     max_results=1)
        resume = earlier[0].info.run_id if earlier else None
        with mlflow.start_run(run_id=resume, experiment_id=experiment_id, run_name=None if resume else run_name,
                              tags=None if resume else binding) as active:
            mlflow.set_tags({"dagster_run_id": run.run_id, "dagster_job": run.job_name,
                             "mlflow.note.content": f"Dagster run {run.run_id} of job `{run.job_name}`, "
                             f"{binding['dagster_asset']} partition {binding['dagster_partition']} (Dagster UI: "
                             f"/runs/{run.run_id}); first attempt: run {binding['dagster_root_run_id']}"})
            yield active

    def log_params(self, params: dict) -> None:
        """Log parameters on the active run; on a resumed run, those an earlier attempt logged keep their first
        value (MLflow never changes one) and this attempt's full set is in the `params` tag."""
        import json

        mlflow = self._mlflow()
        logged = self.client().get_run(mlflow.active_run().info.run_id).data.params
        mlflow.log_params({k: v for k, v in params.items() if k not in logged})
        mlflow.set_tag("params", json.dumps(params, default=str))

    def log_trials(self, trials: list[dict], params: list[str]) -> None:
        """One nested run per trial: its parameters and scores, tagged with the Dagster run and the Ray node that
        ran it."""
        mlflow = self._mlflow()
        parent = mlflow.active_run()
        experiment_id = parent.info.experiment_id  # not the default experiment
        attempt = self.client().get_run(parent.info.run_id).data.tags.get("dagster_run_id")
        for trial in trials:
            tags = {"dagster_run_id": attempt} if attempt else {}
            if trial.get("node_id"):
                tags["ray_node_id"] = trial["node_id"]
            with mlflow.start_run(run_name=f"trial {trial['trial']}", nested=True, experiment_id=experiment_id,
                                  tags=tags or None):
                mlflow.log_params({k: trial[k] for k in params})
                mlflow.log_metrics({k: float(v) for k, v in trial.items()
                                    if k not in params and isinstance(v, int | float) and v == v})

    def log_model(self, family: Family, model, example: pd.DataFrame) -> str:
        """Log a family's fitted model with its signature and an input example (LightGBM in MLflow's lightgbm
        flavour, the linear families as a python model); register it under the family's registered model;
        return the new version."""
        from mlflow.models import infer_signature

        from stock_platform.lib.families import LightGBM

        mlflow = self._mlflow()
        common = {"name": "model", "input_example": example, "registered_model_name": self.model_name(family)}
        with redirect_stderr(io.StringIO()):  # MLflow prints "Created version ..." there; the asset logs it
            if isinstance(family, LightGBM):
                # the flavour's own requirements (the pinned lightgbm): inferring them loads the model in a
                # subprocess that imports it, 2.7 s of every weekly run here
                info = mlflow.lightgbm.log_model(model, signature=infer_signature(example, model.predict(example)),
                                                 pip_requirements=mlflow.lightgbm.get_default_pip_requirements(),
                                                 **common)
            else:
                import polars as pl

                from stock_platform.resources.pyfunc import FamilyModel

                predicted = family.predict_frame(model, pl.from_pandas(example))
                info = mlflow.pyfunc.log_model(python_model=FamilyModel(family.key, family.dumps(model)),
                                               signature=infer_signature(example, predicted),
                                               pip_requirements=["numpy", "polars", "pandas"], **common)
        return str(info.registered_model_version)

    def champion(self):
        """The model version carrying the `champion` alias (of any family's registered model), or None."""
        from mlflow.exceptions import MlflowException

        client = self.client()
        for name in self.model_names():
            try:
                return client.get_model_version_by_alias(name, CHAMPION)
            except MlflowException:
                continue
        return None

    def version_params(self, model_name: str, version: int) -> dict[str, str]:
        """The parameters a model version was fitted with (strings, as MLflow keeps them): its `params` tag, or,
        for versions registered before it existed, the parameters its run logged."""
        import json

        client = self.client()
        registered = client.get_model_version(model_name, str(version))
        if "params" in registered.tags:
            return {k: str(v) for k, v in json.loads(registered.tags["params"]).items()}
        return client.get_run(registered.run_id).data.params

    def tag_version(self, model_name: str, version: str, tags: dict[str, str]) -> None:
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version, key, value)

    def promote(self, model_name: str, version: str) -> None:
        """`champion` moves to this version (and off any other family's model)."""
        self.remove_champion(keep=model_name)
        self.client().set_registered_model_alias(model_name, CHAMPION, version)

    def remove_champion(self, keep: str | None = None) -> None:
        from mlflow.exceptions import MlflowException

        client = self.client()
        for name in self.model_names():
            if name != keep:
                try:
                    client.delete_registered_model_alias(name, CHAMPION)
                except MlflowException:  # no such model or alias
                    pass
