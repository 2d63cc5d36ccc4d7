"""WarmProcessRunLauncher on a real instance: runs execute in real worker processes started before them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.launcher import LaunchRunContext

from stock_platform.launcher import WORKER_PID_TAG, WORKER_START_TAG
from stock_platform_tests.launcher_jobs import MARKER_MODULE, probe_job
from stock_platform_tests.live_stack import wait_for

# one worker for all of them: a test here moves the marker module's mtime ("a deploy"), which a warm worker of a
# test running beside it on the other xdist worker would take for changed code (and run its run in a fresh process)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("launcher_marker_file")]
MARKER_FILE = Path(__file__).with_name("launcher_marker.py")


@pytest.fixture
def warm_instance(tmp_path, monkeypatch):
    """An instance whose runs are launched by WarmProcessRunLauncher (one spare, preloading the marker module
    last) and whose workers check for cancellation every second."""
    monkeypatch.setenv("LAUNCHER_MARKER_LOG", str(tmp_path / "marker.log"))
    overrides = {
        "run_launcher": {"module": "stock_platform.launcher", "class": "WarmProcessRunLauncher",
                         "config": {"spares": 1, "preload_modules": ["stock_platform_tests.launcher_jobs",
                                                                      MARKER_MODULE]}},
        "run_monitoring": {"cancellation_thread_poll_interval_seconds": 1},
    }
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(overrides=overrides, temp_dir=str(tmp_path / "home")) as instance:
        yield instance


def launch(instance: dg.DagsterInstance, report: Path, **config) -> str:
    run = instance.create_run_for_job(
        probe_job, run_config={"ops": {"probe": {"config": {"report": str(report), **config}}}},
        job_code_origin=dg.reconstructable(probe_job).get_python_origin())
    instance.launch_run(run.run_id, workspace=None)
    return run.run_id


def finished(instance: dg.DagsterInstance, run_id: str, timeout: float = 90) -> dg.DagsterRun:
    run, _ = wait_for(lambda: (r := instance.get_run_by_id(run_id)) is not None and r.is_finished and r, timeout)
    return run


def marker_imports(tmp_path: Path) -> dict[int, float]:
    """pid -> when that process imported the marker module (the last module a worker preloads)."""
    log = tmp_path / "marker.log"
    lines = log.read_text().split() if log.exists() else []
    return {int(pid): float(at) for pid, at in zip(lines[::2], lines[1::2], strict=True)}


def ready_spare(tmp_path: Path, *not_these: int) -> int:
    """Wait for a worker other than `not_these` to finish its preload; return its pid."""
    spare, _ = wait_for(lambda: next((p for p in marker_imports(tmp_path) if p not in not_these), None), 90)
    time.sleep(1)  # past its snapshot of the imported files' modification times
    return spare


def test_runs_execute_in_workers_started_and_preloaded_before_them(warm_instance, tmp_path):
    first = launch(warm_instance, tmp_path / "first.json")  # no spare yet: started at launch
    run = finished(warm_instance, first)
    seen = json.loads((tmp_path / "first.json").read_text())
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert seen == {"pid": int(run.tags[WORKER_PID_TAG]), "preloaded": True}

    spare = ready_spare(tmp_path, seen["pid"])  # the first run's end started a spare
    second = launch(warm_instance, tmp_path / "second.json")
    run = finished(warm_instance, second)
    created = warm_instance.get_run_record_by_id(second).create_timestamp.timestamp()
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert json.loads((tmp_path / "second.json").read_text()) == {"pid": spare, "preloaded": True}
    assert int(run.tags[WORKER_PID_TAG]) == spare and marker_imports(tmp_path)[spare] < created


def test_a_spare_whose_imported_files_changed_runs_its_run_in_a_fresh_process(warm_instance, tmp_path):
    finished(warm_instance, launch(warm_instance, tmp_path / "first.json"))
    spare = ready_spare(tmp_path, json.loads((tmp_path / "first.json").read_text())["pid"])
    stat = MARKER_FILE.stat()
    os.utime(MARKER_FILE, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # "a deploy"
    try:
        run = finished(warm_instance, launch(warm_instance, tmp_path / "second.json"))
    finally:
        os.utime(MARKER_FILE, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert run.status == dg.DagsterRunStatus.SUCCESS
    # the same process (exec), now a plain `dagster api execute_run` that never imported the stale module
    assert json.loads((tmp_path / "second.json").read_text()) == {"pid": spare, "preloaded": False}


def test_terminate_cancels_a_run_in_a_warm_worker(warm_instance, tmp_path):
    run_id = launch(warm_instance, tmp_path / "long.json", sleep_seconds=120)
    wait_for(lambda: (tmp_path / "long.json").exists(), 60)
    assert warm_instance.run_launcher.terminate(run_id)
    run = finished(warm_instance, run_id, timeout=30)
    assert run.status == dg.DagsterRunStatus.CANCELED
    assert not warm_instance.run_launcher.terminate(run_id)  # finished: nothing to terminate


def test_a_worker_that_dies_mid_run_fails_the_run_with_its_exit_code(warm_instance, tmp_path):
    run_id = launch(warm_instance, tmp_path / "dies.json", exit_code=3)
    run = finished(warm_instance, run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    messages = [e.message for e in warm_instance.all_logs(run_id)]
    assert any(f"(pid {run.tags[WORKER_PID_TAG]}) exited with code 3 before the run finished" in (m or "")
               for m in messages)


def test_run_monitoring_sees_whether_the_runs_worker_process_lives(warm_instance, tmp_path):
    from dagster._core.launcher import WorkerStatus

    launcher = warm_instance.run_launcher
    assert launcher.supports_check_run_worker_health
    run_id = launch(warm_instance, tmp_path / "long.json", sleep_seconds=120)
    wait_for(lambda: (tmp_path / "long.json").exists(), 60)
    run = warm_instance.get_run_by_id(run_id)
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    # the same pid with another start time: the pid was reused by another process after a restart
    reused = run.with_tags({**run.tags, WORKER_START_TAG: "1"})
    assert launcher.check_run_worker_health(reused).status == WorkerStatus.FAILED
    os.kill(int(run.tags[WORKER_PID_TAG]), 9)
    wait_for(lambda: launcher.check_run_worker_health(run).status == WorkerStatus.FAILED, 30)
    assert "is gone" in launcher.check_run_worker_health(run).msg
    finished(warm_instance, run_id)  # the launcher's own watch fails it (the daemon's monitoring when it is gone)


def test_disposing_the_instance_ends_its_spares(warm_instance, tmp_path):
    finished(warm_instance, launch(warm_instance, tmp_path / "first.json"))
    spare = ready_spare(tmp_path, json.loads((tmp_path / "first.json").read_text())["pid"])
    warm_instance.run_launcher.dispose()
    with pytest.raises(ProcessLookupError):
        os.kill(spare, 0)


def test_runs_of_another_python_environment_are_left_to_their_code_server(warm_instance, tmp_path):
    origin = dg.reconstructable(probe_job).get_python_origin()
    elsewhere = origin._replace(repository_origin=origin.repository_origin._replace(
        executable_path="/opt/another-env/bin/python"))
    run = warm_instance.create_run_for_job(
        probe_job, run_config={"ops": {"probe": {"config": {"report": str(tmp_path / "r.json")}}}},
        job_code_origin=elsewhere)
    # DefaultRunLauncher's path: it asks the run's code location (from the workspace) to start the run
    with pytest.raises(dg.DagsterInvariantViolationError, match="requires a workspace"):
        warm_instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    assert WORKER_PID_TAG not in warm_instance.get_run_by_id(run.run_id).tags
