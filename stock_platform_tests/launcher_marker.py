"""Preloaded by the run workers of test_launcher.py: on import, it notes which process imported it and when."""

import os
import time

if os.environ.get("LAUNCHER_MARKER_LOG"):
    with open(os.environ["LAUNCHER_MARKER_LOG"], "a") as log:
        log.write(f"{os.getpid()} {time.time()}\n")
