"""A run launcher whose run processes are started before their runs: `WarmProcessRunLauncher`.

Dagster's `DefaultRunLauncher` asks the code server to spawn a fresh Python process per run. That process
imports Dagster, opens the instance, loads the definitions and, in its first steps, pandera and LightGBM:
~4 s of a landing run on this machine (benchmarks/latency.py). This launcher keeps `spares` run workers
that have done all of that already and wait for a run on stdin; launching a run hands it to one. Each run
still gets a process of its own, which exits with the run, as before; the worker executes it through
`dagster api execute_run`, as the Docker and Kubernetes run launchers do.

- A run of another Python environment (its code location's `executable_path` is not this interpreter) is
  launched by the code server, as `DefaultRunLauncher` does.
- A spare never runs stale code: if any file it imported changed before its run arrived (new code or
  packages deployed), it replaces itself with a fresh `dagster api execute_run` process.
- Spares are started when a run's worker exits (the first run after a start is cold): a spare warming up
  while a run executes would take CPU from that run. Runs launched while no spare is ready start cold.
- Termination marks the run CANCELING; the worker's cancellation thread interrupts the run within
  `cancellation_thread_poll_interval_seconds`. It works from any process of the instance (the UI too).
- A worker that dies before its run finished (killed, out of memory) fails the run with its exit code.
  If the launching process died too (the daemon killed with its workers, its container restarted), Dagster's
  run monitoring (`run_monitoring` in dagster.yaml) asks `check_run_worker_health`, which finds the run's
  worker by the pid and start time tagged on the run, and fails the run when that process is gone.
- The workers are children of the process that launches runs (the daemon's run queue): that process must
  have the code location's environment, as every service of docker/compose.yaml does (one image).

Configure it in dagster.yaml:

    run_launcher:
      module: stock_platform.launcher
      class: WarmProcessRunLauncher
      config: {spares: 2}   # optional: preload_modules: [...]

`python -m stock_platform.launcher [--instance-ref REF] MODULE...` is the worker itself.
"""

from __future__ import annotations

# Private Dagster APIs, on purpose: a run launcher's protocol with its run workers (ExecuteRunArgs, the
# `execute_run` command, the cancellation thread, the instance ref, CheckRunHealthResult) has no public API;
# Dagster's own Docker and Kubernetes launchers use the same. test_definitions lists every private import.

import importlib
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from dagster import Field
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, LaunchRunContext, WorkerStatus
from dagster._serdes import ConfigurableClassData

# What a daily landing run imports on its way to the forecast besides Dagster's run machinery and the
# instance's storage (those a worker always loads): the code location, pandera with the polars backend
# it registers on first use (prices' contract), LightGBM (predictions) and delta-rs (every table).
DEFAULT_PRELOAD = ("stock_platform.definitions", "pandera.polars", "pandera.backends.polars.container",
                   "pandera.backends.polars.builtin_checks", "lightgbm", "deltalake")
WORKER_PID_TAG = "stock_platform/run_worker_pid"
WORKER_START_TAG = "stock_platform/run_worker_start"  # the pid's start time: a reused pid is another process


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks after boot, from /proc), or None if no such live process.
    With the pid it names one process: a pid reused after a restart has another start time. Without /proc
    (macOS), "alive" for any live pid."""
    if not os.path.exists("/proc/self/stat"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "alive"
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3, start 22
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has exited: only its exit code is left


class WarmProcessRunLauncher(DefaultRunLauncher):
    """Launches each run in its own pre-started, pre-imported Python process (see the module docstring)."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, spares: int = 2,
                 preload_modules: Sequence[str] = DEFAULT_PRELOAD):
        super().__init__(inst_data=inst_data)
        self._spares_wanted = int(spares)
        self._preload = list(preload_modules)
        self._spares: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._disposed = False

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "spares": Field(int, is_required=False, default_value=2,
                            description="Idle run workers kept ready (0: start each worker at launch). Two: "
                            "a run that follows another within a spare's warm-up still finds one ready."),
            "preload_modules": Field([str], is_required=False, default_value=list(DEFAULT_PRELOAD),
                                     description="Modules a worker imports before its run arrives."),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        return cls(inst_data=inst_data, **config_value)

    # ------------------------------------------------------------------------------------------ workers
    def _start_worker(self) -> subprocess.Popen:
        from dagster._serdes import serialize_value

        return subprocess.Popen([sys.executable, "-m", "stock_platform.launcher",
                                 "--instance-ref", serialize_value(self._instance.get_ref()), *self._preload],
                                stdin=subprocess.PIPE, text=True)

    def _take_worker(self) -> subprocess.Popen:
        """The oldest live spare (the likeliest to have finished its warm-up), or a new worker if there is none."""
        with self._lock:
            self._spares = [p for p in self._spares if p.poll() is None]
            return self._spares.pop(0) if self._spares else self._start_worker()

    def _refill(self) -> None:
        with self._lock:
            if self._disposed:
                return
            self._spares = [p for p in self._spares if p.poll() is None]
            self._spares += [self._start_worker() for _ in range(self._spares_wanted - len(self._spares))]

    def _hand_over(self, run_id: str, worker: subprocess.Popen, serialized_args: str) -> bool:
        """Tag the run with the worker's pid and send the worker its run; False if the worker is gone."""
        self._instance.add_run_tags(run_id, {WORKER_PID_TAG: str(worker.pid),
                                             WORKER_START_TAG: process_start(worker.pid) or ""})
        assert worker.stdin is not None
        try:
            worker.stdin.write(serialized_args + "\n")
            worker.stdin.close()
        except BrokenPipeError:
            return False
        return True

    def _watch(self, worker: subprocess.Popen, run_id: str) -> None:
        """Wait for the worker; if it ended before its run did, the run failed with it. Then top up the spares."""
        code = worker.wait()
        if self._disposed:  # the instance went with the launcher; run monitoring reports a worker lost meanwhile
            return
        run = self._instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            self._instance.report_run_failed(
                run, f"run worker (pid {worker.pid}) exited with code {code} before the run finished")
        self._refill()

    # ------------------------------------------------------------------------------------- run launcher
    def launch_run(self, context: LaunchRunContext) -> None:
        from dagster._grpc.types import ExecuteRunArgs
        from dagster._serdes import serialize_value

        run = context.dagster_run
        origin = run.job_code_origin
        if origin is None or os.path.realpath(origin.executable_path) != os.path.realpath(sys.executable):
            super().launch_run(context)  # another environment: its code server starts the run
            return
        args = serialize_value(ExecuteRunArgs(job_origin=origin, run_id=run.run_id,
                                              instance_ref=self._instance.get_ref()))
        worker = self._take_worker()
        if not self._hand_over(run.run_id, worker, args):  # the spare died since it was checked (killed)
            worker = self._start_worker()
            self._hand_over(run.run_id, worker, args)
        threading.Thread(target=self._watch, args=(worker, run.run_id), daemon=True,
                         name=f"run-worker-{worker.pid}").start()
        self._run_ids.add(run.run_id)

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        if WORKER_PID_TAG not in run.tags:
            return super().terminate(run_id)
        self._instance.report_run_canceling(run)  # the worker's cancellation thread interrupts the run
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run):
        """For run monitoring: RUNNING while the run's worker process lives, FAILED once it is gone."""
        pid, started = run.tags.get(WORKER_PID_TAG), run.tags.get(WORKER_START_TAG)
        if pid is None:  # launched by its code server (another environment): its process is not ours to watch
            return CheckRunHealthResult(WorkerStatus.RUNNING, "not in a run worker of this launcher: not checked")
        if process_start(int(pid)) == started:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker (pid {pid}) is gone: the process ended "
                                    "before its run did (killed with the process that launched it?)")

    def dispose(self) -> None:
        with self._lock:
            self._disposed = True
            spares, self._spares = self._spares, []
        for spare in spares:  # a spare holds no run yet: nothing is lost
            spare.terminate()
        for spare in spares:
            try:
                spare.wait(10)
            except subprocess.TimeoutExpired:
                spare.kill()
            if spare.stdin:
                spare.stdin.close()


# ------------------------------------------------------------------------------------------------ worker
def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _imported_files() -> dict[str, int | None]:
    """Every file this process has imported from, with its modification time."""
    paths = {getattr(module, "__file__", None) for module in list(sys.modules.values())}
    return {path: _mtime(path) for path in paths if path}


def _execute(serialized_args: str) -> None:
    """Execute the run as `dagster api execute_run` does, with a thread that interrupts it once it is
    marked CANCELING (the launcher's terminate())."""
    from dagster._cli.api import execute_run_command
    from dagster._core.execution.run_cancellation_thread import start_run_cancellation_thread
    from dagster._core.instance import DagsterInstance
    from dagster._grpc.types import ExecuteRunArgs
    from dagster._serdes import deserialize_value

    args = deserialize_value(serialized_args, ExecuteRunArgs)
    assert args.instance_ref is not None, "a run worker needs the instance"
    with DagsterInstance.from_ref(args.instance_ref) as instance:
        thread, stop = start_run_cancellation_thread(instance, args.run_id)
        try:
            execute_run_command.main([serialized_args], prog_name="dagster api execute_run",
                                     standalone_mode=False)
        finally:
            stop.set()
            thread.join(timeout=15)


def _warm_up(instance_ref: str | None, modules: Sequence[str]) -> None:
    """Open the instance once (imports its storage: SQLAlchemy, alembic, ...) and import the modules."""
    if instance_ref:
        from dagster._core.instance import DagsterInstance, InstanceRef
        from dagster._serdes import deserialize_value

        DagsterInstance.from_ref(deserialize_value(instance_ref, InstanceRef)).dispose()
    for name in ["dagster._cli.api", *modules]:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a head start only: the run reports a broken import itself
            print(f"run worker: could not preload {name}: {exc!r}", file=sys.stderr)


def worker_main(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m stock_platform.launcher")
    parser.add_argument("--instance-ref", help="the serialized instance the runs use")
    parser.add_argument("modules", nargs="*", help="modules to import before the run arrives")
    options = parser.parse_args(argv)
    _warm_up(options.instance_ref, options.modules)
    imported = _imported_files()
    serialized_args = sys.stdin.readline().strip()
    if not serialized_args:  # the launcher went away: no run for this worker
        return 0
    if any(_mtime(path) != mtime for path, mtime in imported.items()):  # code changed meanwhile: start afresh
        os.execve(sys.executable, [sys.executable, "-m", "dagster", "api", "execute_run"],
                  {**os.environ, "DAGSTER_EXECUTE_RUN_ARGS": serialized_args})
    _execute(serialized_args)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
