"""Reaching a Ray head's dashboard for Ray Jobs: its address, a probe that says whether it is
up and which auth mode it wants, the SDK client with raydeep's token handling, and one-line
errors for every SDK call. Used by ``jobs.py``; knows nothing about what a job runs.

Ray token authentication: the SDK sends ``Authorization: Bearer <token>`` only when
``RAY_AUTH_MODE=token`` is in this process's environment before Ray first reads it, with
the token from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``
(``ray/_private/authentication/http_token_authentication.py``); ``prepare_auth_env`` sets it.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlsplit, urlunsplit

from raydeep.cluster.connect import (
    auth_disabled_warning,
    auth_token_available,
    plain_http_token_warning,
    prepare_auth_env,
    warn_once,
)
from raydeep.errors import RaydeepError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

DASHBOARD_PORT = 8265
PROBE_TIMEOUT_S = 10.0
ADDRESS_HELP = ("give the head's dashboard address with --address http://HEAD:8265 or "
                "export RAY_ADDRESS=http://HEAD:8265 (tunnel a remote head with "
                "`ssh -L 8265:localhost:8265 HEAD`)")


class JobsError(RaydeepError):
    """The cluster cannot be reached, refuses us, or has no such job."""


def dashboard_address(address: str | None = None) -> str:
    """``--address``, else ``RAY_ADDRESS``, as an ``http(s)://host:port`` URL."""
    address = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    if not address or address == "auto":
        raise JobsError(f"no Ray cluster address: {ADDRESS_HELP}")
    if address.startswith("ray://"):
        raise JobsError(f"{address} is a Ray Client address; Ray Jobs use the dashboard: {ADDRESS_HELP}")
    if "://" not in address:
        address = "http://" + address
    if not address.startswith(("http://", "https://")):
        raise JobsError(f"{address}: not an http(s) address; {ADDRESS_HELP}")
    parts = urlsplit(address.rstrip("/"))
    if parts.port is None and ":" not in parts.netloc.rsplit("]", 1)[-1]:
        parts = parts._replace(netloc=f"{parts.netloc}:{DASHBOARD_PORT}")  # Ray's default, not 80
    return urlunsplit(parts)


def _token_source() -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH ({os.environ['RAY_AUTH_TOKEN_PATH']})"
    return "~/.ray/auth_token"


def _missing_token_hint() -> str:
    if os.environ.get("RAY_AUTH_MODE", "").lower() not in ("", "token"):
        return (f"RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']} in this shell stops raydeep sending one; "
                "unset it (the token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")
    return ("set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or write ~/.ray/auth_token) to the cluster's "
            "token; `ray get-auth-token` prints it on the head")


def _probe(url: str) -> str | None:
    """Check that ``url`` is a reachable Ray dashboard; returns its auth mode when it says.

    Uses a timeout, unlike the SDK's own first request, so a firewalled address fails in
    seconds instead of hanging for the OS connect timeout.
    """
    import requests

    try:
        r = requests.get(f"{url}/api/authentication_mode", timeout=PROBE_TIMEOUT_S)  # public endpoint
    except requests.exceptions.Timeout:
        raise JobsError(f"cannot reach a Ray dashboard at {url}: no answer within {PROBE_TIMEOUT_S:g} s; "
                        f"check the address and that the dashboard port is reachable from here") from None
    except requests.exceptions.ConnectionError as exc:
        why = "connection refused" if "refused" in str(exc).lower() else type(exc).__name__
        raise JobsError(f"cannot reach a Ray dashboard at {url} ({why}); check the address "
                        f"(the dashboard port, default 8265, not the GCS port 6379) and that the head is up") from None
    except requests.exceptions.RequestException as exc:
        raise JobsError(f"cannot reach a Ray dashboard at {url}: {type(exc).__name__}") from None
    if r.status_code == 200:
        try:
            mode = r.json().get("authentication_mode")
        except ValueError:
            mode = None
        if mode:
            return str(mode)
    # Older Ray, or not Ray at all: /api/version answers on every Ray dashboard.
    try:
        r = requests.get(f"{url}/api/version", timeout=PROBE_TIMEOUT_S)
    except requests.exceptions.RequestException as exc:
        raise JobsError(f"cannot reach a Ray dashboard at {url}: {type(exc).__name__}") from None
    if r.status_code in (401, 403):
        return "token"
    try:
        if r.status_code == 200 and "ray_version" in r.json():
            return None
    except ValueError:
        pass
    raise JobsError(f"{url} answers HTTP but is not a Ray dashboard (GET /api/version: {r.status_code}); "
                    f"{ADDRESS_HELP}")


def jobs_client(address: str | None = None) -> JobSubmissionClient:
    """A Jobs SDK client for ``address``, or one clear line saying why there is none."""
    url = dashboard_address(address)
    prepare_auth_env(url)
    mode = _probe(url)
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    sends_token = is_token_auth_enabled() and auth_token_available()
    if mode == "token" and not sends_token:
        raise JobsError(f"the Ray cluster at {url} requires an auth token and none is sent (401); "
                        + _missing_token_hint())
    # the cluster's own mode when its dashboard reports one, else this shell's
    for warning in (auth_disabled_warning(url, mode or os.environ.get("RAY_AUTH_MODE")),
                    plain_http_token_warning(url, sends_token)):
        if warning:
            warn_once(warning)
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    # Their modules set INFO on import: "Uploading package ...", "WebSocket closed ...".
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                 "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)

    try:
        return JobSubmissionClient(url)
    except AuthenticationError as exc:
        raise _auth_error(url, exc) from None
    except ConnectionError:
        raise JobsError(f"cannot reach a Ray dashboard at {url}; check the address and that the head is up") from None
    except RuntimeError as exc:
        raise JobsError(f"{url}: {first_line(exc)}") from None


def _auth_error(url: str, exc: Exception) -> JobsError:
    if str(exc).startswith("Authentication failed"):  # 403
        return JobsError(f"the Ray cluster at {url} rejected the auth token from {_token_source()} (403); "
                         "use that cluster's token (`ray get-auth-token` on the head prints it)")
    return JobsError(f"the Ray cluster at {url} requires an auth token and none was accepted (401); "
                     + _missing_token_hint())


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def call(client: JobSubmissionClient, what: str, fn: Callable, *args, **kwargs):
    """Run one SDK call; turn its errors into one line."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args, **kwargs)
    except AuthenticationError as exc:
        raise _auth_error(client.get_address(), exc) from None
    except requests.exceptions.ConnectionError:
        raise JobsError(f"lost the connection to {client.get_address()} while trying to {what}") from None
    except RuntimeError as exc:
        text = first_line(exc)
        if "status code 404" in text or "does not exist" in text:
            raise JobsError(f"no such job on {client.get_address()}: {args[0] if args else ''} "
                            "(`raydeep jobs list` shows the jobs)") from None
        raise JobsError(f"could not {what}: {text}") from None
