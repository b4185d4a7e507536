"""Where a Ray Job's run outputs are: the one line its driver prints, and reading it back.

A job's driver runs ``raydeep train`` (or ``tune``) in the job's temporary working dir on the
head, and with ``run.storage`` set its whole run directory is mirrored to
``<run.storage>/<run name>/`` (``trainers/outputs.py``). The driver cannot change the job's
metadata once submitted, and the run's storage name is made on the driver, so the driver says
where its outputs are in its logs, once, as one machine-readable line::

    raydeep-outputs {"uri": "s3://bucket/runs/x-1a2b3c4d", "run_dir": "/tmp/ray/.../runs/x", ...}

``raydeep jobs fetch ID`` reads the job's logs, takes that line and copies the folder. The line
holds no secret: the storage URI, the run dir's path and node on the head, and where S3 is (the
endpoint and region, which a config may give; credentials never enter a config).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any, TextIO

TAG = "raydeep-outputs"
JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor on every job driver


def in_job(environ: dict[str, str] | None = None) -> bool:
    """Whether this process is a Ray Job's driver (Ray's job supervisor started it)."""
    return JOB_ENV in (os.environ if environ is None else environ)


def node_address() -> str:
    """This node's IP as Ray knows it, else the host name."""
    try:
        import ray.util  # deferred: only a job's driver, connected to Ray, asks

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - a name is enough to say where the files are
        return socket.gethostname()


def outputs_line(uri: str | None, run_dir: str, *, kind: str, endpoint_url: str | None = None,
                 region: str | None = None, node: str | None = None) -> str:
    """The line a job's driver prints: ``uri`` None when the run has no run.storage."""
    record: dict[str, Any] = {"kind": kind, "uri": uri, "run_dir": run_dir, "node": node or node_address()}
    if endpoint_url:
        record["endpoint_url"] = endpoint_url
    if region:
        record["region"] = region
    return f"{TAG} {json.dumps(record, sort_keys=True)}"


def announce(uri: str | None, run_dir: str, *, kind: str, endpoint_url: str | None = None,
             region: str | None = None, out: TextIO | None = None, environ: dict[str, str] | None = None) -> bool:
    """Print the outputs line when this process is a job's driver; returns whether it did."""
    if not in_job(environ):
        return False
    out = out or sys.stdout
    # plain print, not rich: a console would fold a long line at its width
    print(outputs_line(uri, run_dir, kind=kind, endpoint_url=endpoint_url, region=region), file=out, flush=True)
    return True


def find_outputs(logs: str) -> dict[str, Any] | None:
    """The last outputs line in a job's logs, parsed; None when the logs hold none."""
    for line in reversed(logs.splitlines()):
        line = line.strip()
        if line.startswith(TAG + " {"):
            try:
                record = json.loads(line[len(TAG) + 1:])
            except ValueError:
                continue
            if isinstance(record, dict) and "run_dir" in record:
                return record
    return None
