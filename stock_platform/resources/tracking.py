"""MLflow tracking and model registry (MLFLOW_TRACKING_URI; a local SQLite store by default)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:
    import pandas as pd

CHAMPION = "champion"


class TrackingResource(dg.ConfigurableResource):
    """A thin resource around `mlflow`: one experiment, one registered model, the `champion` alias.

    dagster-mlflow offers only the legacy `mlflow_tracking` resource (global run state tied to the Dagster
    run); this one opens the runs it needs and nothing else.
    """

    tracking_uri: str
    # where a new experiment keeps its artifacts (a directory or s3:// prefix); None: the server decides
    artifact_location: str | None = None
    experiment: str = "stock_platform"
    model_name: str = "stock_platform_lgbm"

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
        """A parent run in the experiment (created with `artifact_location` the first time)."""
        mlflow = self._mlflow()
        client = self.client()
        experiment = client.get_experiment_by_name(self.experiment)
        experiment_id = (experiment.experiment_id if experiment else
                         client.create_experiment(self.experiment, artifact_location=self.artifact_location))
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
            yield run

    def log_trials(self, trials: list[dict], params: list[str]) -> None:
        """One nested run per trial: its parameters and scores."""
        mlflow = self._mlflow()
        experiment_id = mlflow.active_run().info.experiment_id  # not the default experiment
        for trial in trials:
            with mlflow.start_run(run_name=f"trial {trial['trial']}", nested=True, experiment_id=experiment_id):
                mlflow.log_params({k: trial[k] for k in params})
                mlflow.log_metrics({k: float(v) for k, v in trial.items()
                                    if k not in params and isinstance(v, int | float) and v == v})

    def log_model(self, booster, example: pd.DataFrame) -> str:
        """Log the booster with its signature and an input example; register it; return the new version."""
        from mlflow.models import infer_signature

        mlflow = self._mlflow()
        signature = infer_signature(example, booster.predict(example))
        with redirect_stderr(io.StringIO()):  # MLflow prints "Created version ..." there; the asset logs it
            info = mlflow.lightgbm.log_model(booster, name="model", signature=signature, input_example=example,
                                             registered_model_name=self.model_name)
        return str(info.registered_model_version)

    def champion(self):
        """The registry's `champion` model version, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client().get_model_version_by_alias(self.model_name, CHAMPION)
        except MlflowException:
            return None

    def run_params(self, run_id: str) -> dict[str, str]:
        return self.client().get_run(run_id).data.params

    def tag_version(self, version: str, tags: dict[str, str]) -> None:
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(self.model_name, version, key, value)

    def promote(self, version: str) -> None:
        self.client().set_registered_model_alias(self.model_name, CHAMPION, version)

    def remove_champion(self) -> None:
        self.client().delete_registered_model_alias(self.model_name, CHAMPION)
