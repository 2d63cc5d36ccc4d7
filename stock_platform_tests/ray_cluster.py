"""A real two-node Ray cluster on this machine: `ray start --head` and `ray start --address` as separate processes
(one CPU each), each in its own process group (`--block`), so stopping it ends exactly its processes; and the
/proc reads the Ray tests check for leftover processes with."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stock_platform_tests.deployment import free_port

NODES_SCRIPT = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(json.dumps({"nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
                  "cpus": ray.cluster_resources().get("CPU", 0), "free_cpus": ray.available_resources().get("CPU", 0)}))
"""


def process_table() -> dict[int, tuple[str, int, int]]:
    """Every live process: pid -> (state, parent pid, process group), from /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
            state, ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            table[int(stat.parent.name)] = (state, int(ppid), int(group))
        except (OSError, ValueError, IndexError):  # the process ended meanwhile
            continue
    return table


def ray_processes() -> list[str]:
    """Command lines of the live Ray processes (raylet, GCS, workers) this test process started: its descendants,
    so a Ray job of another process on the machine does not count."""
    parents = {pid: ppid for pid, (_, ppid, _) in process_table().items()}
    mine, grew = {os.getpid()}, True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in mine} - mine
        mine |= found
        grew = bool(found)
    commands = []
    for pid in mine - {os.getpid()}:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(name in cmd for name in ("raylet", "gcs_server", "ray::", "default_worker.py")):
            commands.append(cmd[:120])
    return commands


class RayCluster:
    def __init__(self, root: Path, *, port: int | None = None):
        self.root, self.port = root, port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.env = os.environ | {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}

    def _start(self, name: str, args: list[str]) -> None:
        ray = str(Path(sys.executable).parent / "ray")
        log = open(self.root / f"{name}.log", "a")  # noqa: SIM115 - the process owns it
        self.procs.append(subprocess.Popen([ray, "start", "--block", "--num-cpus", "1", "--disable-usage-stats", *args],
                                           env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def start(self, timeout: float = 120) -> RayCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self._start("head", ["--head", "--port", str(self.port), "--include-dashboard", "false"])
        self._start("worker", ["--address", self.address])  # it waits for the head's GCS to answer
        deadline = time.monotonic() + timeout
        while len((self.state(timeout=30) or {}).get("nodes", [])) < 2:
            assert all(p.poll() is None for p in self.procs) and time.monotonic() < deadline, (
                (self.root / "head.log").read_text()[-2000:] + (self.root / "worker.log").read_text()[-2000:])
            time.sleep(0.5)
        return self

    def state(self, timeout: float = 60) -> dict | None:
        """The live nodes' ids, the cluster's CPUs and the free ones, as a fresh driver sees them (None: no answer)."""
        try:
            done = subprocess.run([sys.executable, "-c", NODES_SCRIPT, self.address], env=self.env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else None

    def stop(self) -> None:
        """Kill every process of the cluster (as a machine that goes away would; a test's cluster keeps nothing)."""
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the node, and its raylet, GCS and workers in its group
            except ProcessLookupError:
                pass
            proc.wait()
        self.procs.clear()

    @staticmethod
    def leftovers(groups: list[int], wait: float = 10) -> list[int]:
        """Processes still alive in the process groups `groups` (a node's group holds all it started), after
        giving a SIGKILL up to `wait` s to land (zombies, dead but not yet reaped, do not count)."""
        deadline = time.monotonic() + wait
        while True:
            alive = [pid for pid, (state, _, group) in process_table().items() if group in groups and state != "Z"]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)

    def __enter__(self) -> RayCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
