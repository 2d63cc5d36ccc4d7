"""A job for test_launcher.py: its op reports what its process looks like, then sleeps or dies on request."""

import json
import os
import sys
import time
from pathlib import Path

import dagster as dg

# test_launcher.py preloads this module in the workers and touches its file to simulate a deploy.
MARKER_MODULE = "stock_platform_tests.launcher_marker"


class ProbeConfig(dg.Config):
    report: str  # where the op writes what it saw (a JSON file)
    sleep_seconds: float = 0.0
    exit_code: int | None = None  # end the process abruptly with this code


@dg.op
def probe(config: ProbeConfig) -> None:
    Path(config.report).write_text(json.dumps({"pid": os.getpid(), "preloaded": MARKER_MODULE in sys.modules}))
    if config.exit_code is not None:
        os._exit(config.exit_code)
    deadline = time.monotonic() + config.sleep_seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)


@dg.job(executor_def=dg.in_process_executor)  # the op runs in the run worker itself
def probe_job():
    probe()
