"""MLflow with its own login, as docker/compose.yaml runs it (`--app-name basic-auth`, under /mlflow, its store on
Postgres with the password from PGPASSWORD): nothing is read without credentials, the platform's tracking resource
logs, registers and promotes with the service account from MLFLOW_TRACKING_USERNAME/PASSWORD, and a reader cannot
change the registry."""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
import uuid

import numpy as np
import pandas as pd
import pytest

from stock_platform_tests.deployment import REPO, compose_services, free_port
from stock_platform_tests.live_stack import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
ADMIN_PASSWORD = f"admin-{uuid.uuid4().hex}"


@pytest.fixture
def mlflow_server(tmp_path, fresh_postgres_db):
    """`mlflow server` with the compose service's command and settings, on loopback; yields its tracking URI."""
    port = free_port()
    service = compose_services()["mlflow"]
    store = fresh_postgres_db.set(drivername="postgresql+psycopg2", password=None).render_as_string()
    command = []
    for arg in service["command"]:  # the compose command; this machine's store, artifacts, host and port
        arg = {"0.0.0.0": "127.0.0.1", "5000": str(port), "s3://mlflow/artifacts": str(tmp_path / "artifacts")}.get(
            arg, arg)
        if arg.startswith("postgresql+psycopg2://${POSTGRES_USER}@postgres:5432/"):
            arg = store
        command.append(arg.replace(":5000", f":{port}"))
    ini = (REPO / "docker" / "mlflow-auth.ini").read_text().replace("sqlite:////mlflow-auth/",
                                                                    f"sqlite:///{tmp_path}/")
    (tmp_path / "auth.ini").write_text(ini)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
        "PGPASSWORD": f"pg-{uuid.uuid4().hex}",  # as compose gives it (trust auth here does not ask for it)
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex}
    assert set(service["environment"]) >= {"PGPASSWORD", "MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_AUTH_ADMIN_PASSWORD",
                                           "MLFLOW_FLASK_SERVER_SECRET_KEY"}
    log = tmp_path / "mlflow.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://localhost:{port}/mlflow"

    def healthy() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return urllib.request.urlopen(f"{uri}/health", timeout=5).status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, timeout=120, every=0.5)
        yield uri
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
    assert ADMIN_PASSWORD not in log.read_text()


def test_mlflow_asks_who_you_are_and_readers_cannot_change_the_registry(mlflow_server, monkeypatch):
    import lightgbm
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    from stock_platform.lib.families import LightGBM
    from stock_platform.resources.tracking import CHAMPION, TrackingResource

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{mlflow_server}/api/2.0/mlflow/experiments/search?max_results=5", timeout=30)
    assert refused.value.code == 401

    # the platform's service account (compose: MLflow's admin) logs, registers and promotes
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    tracking = TrackingResource(tracking_uri=mlflow_server)
    rng = np.random.default_rng(0)
    example = pd.DataFrame(rng.normal(size=(200, 3)), columns=["a", "b", "c"])
    model = lightgbm.LGBMRegressor(n_estimators=5, verbose=-1).fit(example, example["a"] * 2)
    with tracking.run("auth-test", {}):
        version = tracking.log_model(LightGBM(), model, example.head(5))
    name = tracking.model_name(LightGBM())
    tracking.promote(name, version)
    assert tracking.champion().version == version

    # the admin makes a reader; the reader sees the registry and cannot change it
    reader = ("reader", f"reader-{uuid.uuid4().hex}")
    get_app_client("basic-auth", tracking_uri=mlflow_server).create_user(*reader)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", reader[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", reader[1])
    client = mlflow.MlflowClient(mlflow_server, mlflow_server)
    assert client.get_model_version_by_alias(name, CHAMPION).version == version
    for change in (lambda: client.delete_registered_model_alias(name, CHAMPION),
                   lambda: client.delete_registered_model(name),
                   lambda: client.set_registered_model_alias(name, CHAMPION, "1")):
        with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
            change()
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password-here")
    with pytest.raises(MlflowException, match="401|Unauthorized|UNAUTHENTICATED|credentials"):
        client.search_registered_models()
