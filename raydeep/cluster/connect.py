"""Connecting to a Ray cluster, or starting an embedded local one."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping
from urllib.parse import urlsplit

from raydeep.errors import RaydeepError


@dataclass(frozen=True)
class ClusterInfo:
    address: str | None  # None: the embedded local Ray this process started
    cpus: float
    gpus: float
    nodes: int
    max_node_cpus: float
    dashboard_url: str | None


def disconnect() -> None:
    """Leave Ray now (and stop the local Ray this process started), if this process used Ray.

    Ray's own exit hook does the same but first sleeps 0.5 s so that workers' last log lines
    reach the console; a raydeep command is done with its workers when it returns, so that is
    half a second of every command's wall time (benchmarks/startup.py). Never raises: the
    command's outcome is decided.
    """
    import sys

    if "ray" not in sys.modules:  # commands that never touched Ray do not import it now
        return
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - Ray's exit hook tries again
        pass


def connect(address: str | None = None, *, num_cpus: int | None = None, verbose: bool = False) -> ClusterInfo:
    """Connect to ``address`` (else ``RAY_ADDRESS``), or start a local Ray on this machine.

    A local Ray listens on 127.0.0.1 only, dashboard and node services alike (see
    ``loopback_only``); Ray Tune needs the dashboard to clean up the placement groups of
    early-stopped trials (RAY_NOTES).
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    prepare_auth_env(address)
    if not ray.is_initialized():
        common = dict(
            logging_level=logging.INFO if verbose else logging.WARNING,
            log_to_driver=True,
            configure_logging=True,
            runtime_env={"env_vars": job_env(verbose)},
        )
        try:
            if address:
                check_reachable(address)  # ray.init would retry an address nothing answers at forever
                ray.init(address=address, **common)
                # a cluster that let in a driver sending no token runs without token auth
                warning = auth_disabled_warning(address, None if sends_auth_token() else "disabled")
                if warning:
                    warn_once(warning)
            else:
                # Ray starts worker processes at niceness 15, so on a machine doing anything else
                # the training workers yield to it (benchmarks/overhead.py on a loaded 2-core VM:
                # 146 -> 207 samples/s; on a quiet one +4%, within noise). The local Ray started
                # here runs them at the command's own priority; a cluster keeps its own setting.
                os.environ.setdefault("RAY_worker_niceness", "0")
                ensure_local_auth_token()
                with loopback_only():
                    ray.init(num_cpus=num_cpus, dashboard_host="127.0.0.1", include_dashboard=True, **common)
        except ConnectionError as exc:
            raise RaydeepError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    return describe(address)


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Refuse, in one line, a cluster address that nothing answers at (TCP connect to its host and
    port). Ray's own ``ray.init`` retries such an address without end, printing only C++ warnings."""
    if address in ("auto", "local") or address.startswith("anyscale://"):
        return
    parts = urlsplit(address if "://" in address else "//" + address)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        raise RaydeepError(f"cannot connect to the Ray cluster at {address}: expected HOST:PORT "
                           "(e.g. 10.0.0.5:6379, or ray://HOST:10001)") from None
    if not host or port is None:
        return  # Ray's own parsing decides (e.g. a bare "HOST" it completes itself)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__.replace("Error", " error").lower()
        raise RaydeepError(f"cannot connect to the Ray cluster at {address}: nothing answers at {host}:{port} "
                           f"({why}); is its head running? (`ray start --head` prints the address to use)") from None


# Ray treats a node whose IP is 127.0.0.1 as a one-machine cluster and binds every service
# (GCS, raylet, object manager, agents, workers) to loopback. It picks that IP only where
# multi-node clusters are off (macOS and Windows by default): on Linux it advertises the
# routable address and listens on all interfaces, and ray.init(_node_ip_address="127.0.0.1")
# does not help because Ray replaces a loopback address with the routable one
# (services.resolve_ip_for_localhost). Measured with Ray 2.60 on Linux: 8 listening sockets
# on 0.0.0.0/:: or the node's IP without this, all on 127.0.0.1 with it.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Start a local Ray inside this block and all of its services listen on 127.0.0.1 only.

    The variable reaches the processes Ray starts (they read it when they import Ray); this
    process read it when it imported Ray, so Ray's cached flag is set here too, for the block.
    """
    from ray._private import ray_constants

    saved_env = {k: os.environ.get(k) for k in LOOPBACK_ENV}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(LOOPBACK_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def job_env(verbose: bool) -> dict[str, str]:
    """Environment for every process of this job (Train controller, workers, Ray Data tasks)."""
    env = {
        # Ray Train's controller polls workers for reports every 2 s by default, and a worker's
        # report blocks until the previous one was consumed: on short epochs that added ~2 s
        # per epoch (measured: 40-epoch demo, 24 s of training in 140 s). 0.25 s costs a few
        # cheap RPCs a second.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"),
    }
    if not verbose:
        # Ray Data's per-execution INFO lines ("Starting execution of Dataset ...") would
        # otherwise fill the console every epoch.
        env["RAY_DATA_LOG_LEVEL"] = "WARNING"
    else:
        # --debug: NCCL says which interfaces, rings and transports it picked, and why it hangs
        env["NCCL_DEBUG"] = os.environ.get("NCCL_DEBUG", "INFO")
    return env


def prepare_auth_env(address: str | None) -> None:
    """Send the Ray auth token when connecting to a cluster and one is configured.

    Ray 2.60 heads enable token auth by default, but a connecting driver only sends its token
    when RAY_AUTH_MODE=token is in its environment before Ray is first imported; without it,
    ray.init retries "InvalidAuthToken" for minutes instead of failing. The CLI calls this
    first thing.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if address and "RAY_AUTH_MODE" not in os.environ and auth_token_available():
        os.environ["RAY_AUTH_MODE"] = "token"


def auth_token_available() -> bool:
    """Whether a Ray auth token is configured: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    return os.path.isfile(path)


def sends_auth_token() -> bool:
    """Whether Ray in this process sends a token: RAY_AUTH_MODE=token and a token to send."""
    return os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and auth_token_available()


def ensure_local_auth_token(environ: Mapping[str, str] | None = None) -> Path | None:
    """Write ``~/.ray/auth_token`` (mode 0600) where the local ``ray.init()`` is about to write one.

    A new local Ray turns token auth on and, finding no token, writes one to
    ``~/.ray/auth_token`` with the default mode (0644 under the usual umask: every user of the
    machine could read it). Writing it first, owner-only, leaves Ray nothing to write.
    Returns the path written, or None when Ray would write nothing (token auth off, a token
    in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, or the file already there).
    """
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return None
    if environ.get("RAY_AUTH_TOKEN") or environ.get("RAY_AUTH_TOKEN_PATH"):
        return None
    path = Path.home() / ".ray" / "auth_token"
    if path.exists():
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process wrote one just now
        return None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # what Ray's own generator writes
    return path


# ---------------------------------------------------------------------------------------------
# Warnings: one line each on stderr, once per process


_warned: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"raydeep: warning: {message}", file=sys.stderr)


def address_host(address: str) -> str | None:
    """The host of a Ray address (``HOST:6379``, ``ray://HOST:10001``, ``http://HOST:8265``)."""
    address = address.strip()
    if not address or address in ("auto", "local"):
        return None
    parts = urlsplit(address if "://" in address else "//" + address)
    return parts.hostname


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: not resolved here, so treated as remote


def auth_disabled_warning(address: str, auth_mode: str | None) -> str | None:
    """The warning for a cluster without token auth at a non-loopback ``address``, else None.

    ``auth_mode``: the cluster's (what its dashboard reports), else what this process uses.
    """
    host = address_host(address)
    if (auth_mode or "").lower() != "disabled" or host is None or is_loopback(host):
        return None
    return (f"token auth is disabled (RAY_AUTH_MODE=disabled) for the Ray cluster at {host}: anyone who "
            f"can reach its ports can run code on it; start it with RAY_AUTH_MODE=token "
            f"(docs/cluster.md, Security)")


def plain_http_token_warning(url: str, sends_token: bool) -> str | None:
    """The warning for a bearer token about to travel unencrypted to another machine, else None."""
    parts = urlsplit(url)
    if not sends_token or parts.scheme != "http" or is_loopback(parts.hostname):
        return None
    return (f"--address {parts.scheme}://{parts.netloc}: the Ray auth token is sent over plain http to a "
            f"non-loopback host, readable on the network; tunnel it (ssh -L 8265:localhost:8265 HEAD, then "
            f"--address http://127.0.0.1:8265) or put the dashboard behind https")


def describe(address: str | None) -> ClusterInfo:
    import ray

    total = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    max_node_cpus = max((n.get("Resources", {}).get("CPU", 0.0) for n in nodes), default=0.0)
    ctx = ray.get_runtime_context()
    url = getattr(ctx, "dashboard_url", None) or ray._private.worker.global_worker.node.address_info.get("webui_url")
    return ClusterInfo(
        address=address,
        cpus=float(total.get("CPU", 0.0)),
        gpus=float(total.get("GPU", 0.0)),
        nodes=len(nodes),
        max_node_cpus=float(max_node_cpus),
        dashboard_url=f"http://{url}" if url and not url.startswith("http") else url,
    )
