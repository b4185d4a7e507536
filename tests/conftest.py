"""Shared fixtures: one real local Ray head per test session, started and stopped by us.

The head is a ``ray start --head --block`` child process on free loopback ports with the
dashboard on (Ray Jobs and Tune's placement-group cleanup need it). It advertises 4 logical
CPUs on this 2-core machine: RAY_NOTES measured that workers holding every CPU starve Ray
Data's read tasks, and extra logical CPUs are how a small machine runs a 2-worker run plus
its data tasks. Teardown kills exactly the processes this fixture started (its process
group), never other Ray instances on the machine.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Token auth, as on a real cluster, with the suite's own token: `ray start --head` under
# RAY_AUTH_MODE=token never creates one (it reads RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
# ~/.ray/auth_token and refuses to start without), and a driver sends it only with
# RAY_AUTH_MODE=token in its environment before ray is imported. The heads, drivers and CLI
# subprocesses the tests start all inherit these, so the suite never reads or writes the
# user's ~/.ray and runs the same on a new machine with an empty HOME.
os.environ["RAY_AUTH_MODE"] = "token"
# tests never download: a hf model is a tiny local directory (tests/hf_models.py)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("RAY_AUTH_TOKEN", None)  # a developer's own token must not win over the suite's
_TOKEN_DIR = tempfile.mkdtemp(prefix="raydeep-test-auth-")
atexit.register(shutil.rmtree, _TOKEN_DIR, True)
TOKEN_PATH = Path(_TOKEN_DIR) / "auth_token"
TOKEN_PATH.write_text(secrets.token_hex(32))
TOKEN_PATH.chmod(0o600)
os.environ["RAY_AUTH_TOKEN_PATH"] = str(TOKEN_PATH)
# Quiet Ray Data's per-execution INFO lines in this process and in CLI subprocesses.
os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_port_flags() -> list[str]:
    """``ray start`` flags giving a node its own ports for the services that default to fixed
    ones (two heads on one machine otherwise fight over the agent's 52365: "No available agent")."""
    names = ("ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port", "metrics-export-port")
    return [f"--{n}={free_port()}" for n in names]


@dataclass
class RayHead:
    address: str  # GCS address for ray.init / --address
    dashboard_url: str  # for the Jobs SDK
    proc: subprocess.Popen
    temp_dir: str


def start_head(tmp: Path, *, num_cpus: int = 4, env: dict | None = None, extra: list[str] = ()) -> RayHead:
    port, dash = free_port(), free_port()
    # Ray's default worker port range is 10002-19999; free_port() returns an ephemeral
    # (>= 32768) port, so the two never collide.
    # Short: Ray's AF_UNIX socket paths under the temp dir must stay under 108 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))
    log = open(tmp / "ray-head.log", "wb")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--num-cpus={num_cpus}", "--num-gpus=0",
         f"--port={port}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", "--include-dashboard=true", f"--temp-dir={temp_dir}",
         "--disable-usage-stats", *extra],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # RAY_ADDRESS pins the head's own processes (e.g. Ray Train's PlacementGroupCleaner,
        # which calls the state API with no address) to this cluster when other Ray
        # instances run on the same machine.
        env={**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}", **(env or {})},
    )
    head = RayHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", proc, str(temp_dir))
    deadline = time.time() + 90
    import urllib.error
    import urllib.request

    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray head exited: {(tmp / 'ray-head.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{head.dashboard_url}/api/version", timeout=2)
            return head
        except urllib.error.HTTPError:  # 401 under token auth: the dashboard is up
            return head
        except OSError:
            time.sleep(1)
    stop_head(head)
    raise RuntimeError("ray head did not start within 90 s")


def stop_process_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group a service was started in (``start_new_session=True``), and
    SIGKILL it if it is still there after ``grace_s``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop_head(head: RayHead) -> None:
    # Ray drains for up to 30 s on SIGTERM (a full 15 s wait per head here); a test head holds
    # nothing to drain, so it gets 3 s, then SIGKILL for the whole process group.
    stop_process_group(head.proc, 3)
    shutil.rmtree(head.temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def raydeep_cache(tmp_path_factory) -> str:
    """One cache of bundled data sets for the session (generated once, reused by all tests)."""
    path = str(tmp_path_factory.mktemp("raydeep-cache"))
    os.environ["RAYDEEP_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory, raydeep_cache) -> RayHead:
    head = start_head(tmp_path_factory.mktemp("ray-head"), extra=isolated_port_flags())
    yield head
    import ray

    if ray.is_initialized():
        ray.shutdown()
    stop_head(head)


@pytest.fixture
def ray_connected(ray_head):
    """This test process as a driver of the shared head, checked before every test: an in-process
    ``cli.main`` disconnects when its command ends (as the console script must), and any Ray call
    made while disconnected would start a private 2-CPU local Ray that later tests then used."""
    import ray

    port = ray_head.address.rsplit(":", 1)[1]  # Ray reports the GCS by the node's IP, not 127.0.0.1
    if ray.is_initialized() and ray.get_runtime_context().gcs_address.rsplit(":", 1)[1] != port:
        ray.shutdown()
    if not ray.is_initialized():
        ray.init(address=ray_head.address, logging_level="WARNING",
                 runtime_env={"env_vars": {"RAY_DATA_LOG_LEVEL": "WARNING"}})
    return ray_head


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, check: bool = False
            ) -> subprocess.CompletedProcess:
    """The real ``raydeep`` console script, as a user runs it."""
    proc = subprocess.run([str(BIN / "raydeep"), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"raydeep {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc
