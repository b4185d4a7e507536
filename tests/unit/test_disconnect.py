"""``cluster.connect.disconnect``: the CLI leaves Ray itself when a command returns (Ray's exit
hook would first sleep 0.5 s), and a command that never used Ray does not import it for that."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def test_a_process_that_never_imported_ray_does_not_import_it():
    proc = run("import sys\nfrom raydeep.cluster.connect import disconnect\ndisconnect()\n"
               "assert 'ray' not in sys.modules\nprint('ok')")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.ray
def test_a_local_ray_is_stopped_and_a_second_call_is_harmless():
    proc = run("import ray, time\nfrom raydeep.cluster.connect import disconnect\n"
               "ray.init(num_cpus=1, include_dashboard=False, logging_level='ERROR')\n"
               "node = ray._private.worker._global_node\nprocs = [p.process for ps in node.all_processes.values() "
               "for p in ps]\ndisconnect()\nassert not ray.is_initialized()\n"
               "assert all(p.poll() is not None for p in procs), 'a Ray process outlived disconnect'\n"
               "disconnect()\nprint('ok')")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
