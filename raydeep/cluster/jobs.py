"""Ray Jobs: submit ``raydeep train``/``raydeep tune`` to a cluster, then list, follow and stop it.

Everything goes through the Ray Jobs SDK (``ray.job_submission.JobSubmissionClient``) against
the head's dashboard address (``http://HEAD:8265``). The job's driver runs on the head:

- the project directory is the job's ``working_dir`` (uploaded, without run outputs, caches,
  virtualenvs and ``.git``), so Ray puts it first on ``PYTHONPATH`` and the job runs the
  submitted code: the entrypoint is ``python -m raydeep.cli train CONFIG ...``, which needs
  raydeep's dependencies on the cluster (the image in ``cluster/Dockerfile``, or ``--pip``),
  not raydeep itself;
- ``--env NAME`` forwards a variable's value without it ever entering the job's entrypoint,
  metadata or ``runtime_env.env_vars`` (see ``raydeep/cluster/job_env.py``);
- a token CPU (``entrypoint_num_cpus``) keeps the driver off the workers' CPUs.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from raydeep.cluster.dashboard import JobsError, call, first_line, jobs_client
from raydeep.cluster.job_env import SETUP_HOOK, write_package
from raydeep.cluster.job_outputs import find_outputs
from raydeep.cluster.resources import autoscaler_report_can_launch
from raydeep.errors import ConfigError

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

COMMANDS = ("train", "tune")
# Gitignore-style patterns, relative to the working dir. Ray also honours the project's
# .gitignore files unless RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1.
EXCLUDES = [
    "runs/", ".venv/", "venv/", ".git/", "__pycache__/", "*.pyc", ".pytest_cache/", ".mypy_cache/",
    ".ruff_cache/", ".ipynb_checkpoints/", "*.egg-info/", "build/", "dist/", ".cache/",
]
ENTRYPOINT_CPUS = 0.1
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")





# ---------------------------------------------------------------------------------------------
# Submitting


@dataclass
class JobSpec:
    """What one ``submit_job`` call sends (``forwarded`` holds values and is never printed)."""

    submission_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    working_dir: Path | None
    env_names: list[str] = field(default_factory=list)
    forwarded: dict[str, str] = field(default_factory=dict, repr=False)


def project_dir(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) holding pyproject.toml or .git."""
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "pyproject.toml").is_file() or (d / ".git").exists():
            return d
    return start


def _job_name(name: str, command: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:40] or "run"
    return f"raydeep-{command}-{safe}-{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")
_PLACEHOLDER = re.compile(r"^(\$\{[A-Za-z_][A-Za-z0-9_]*\}|:)*$")  # pip expands ${VAR} on the cluster


def url_credentials(text: str) -> str | None:
    """The first URL in ``text`` carrying credentials, with them masked (``https://***@host/...``).

    Credentials: a password, or any user name on an http(s) URL (a token often travels as the
    user: ``https://TOKEN@github.com/...``). ``ssh://git@host`` names a user, not a secret, and
    ``${VAR}`` placeholders are expanded by pip on the cluster, so both pass.
    """
    for match in _URL.finditer(text):
        parts = urlsplit(match.group(0))
        userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
        if not userinfo or _PLACEHOLDER.match(userinfo):
            continue
        # the scheme ends in http(s) also when pip flags are glued on: "-ihttps://..."
        if ":" in userinfo or parts.scheme.lower().endswith(("http", "https")):
            return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2], query="", fragment=""))
    return None


def _refuse_pip_credentials(where: str, text: str) -> None:
    masked = url_credentials(text)
    if masked:
        raise ConfigError(
            f"--pip{' ' + where if where else ''}: {masked} carries credentials, and the job's pip list "
            "is shown on the dashboard; expected an index or package URL without them: configure the index's credentials on the cluster "
            "(pip.conf, ~/.netrc, the image, or ${VAR} placeholders pip expands there) and forward secrets "
            "the job reads with --env NAME")


def _pip_requirements(pip: list[str]) -> list[str] | str:
    if len(pip) == 1 and Path(pip[0]).is_file():
        # Ray sends the file's lines, comments included, as the job's pip list
        path = Path(pip[0]).resolve()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            _refuse_pip_credentials(f"{pip[0]} line {n}", line)
        return str(path)
    reqs: list[str] = []
    for item in pip:
        if Path(item).is_file():
            raise JobsError(f"--pip {item}: give a requirements file alone, or package specs")
        _refuse_pip_credentials("", item)
        reqs += item.split()  # not on commas: "torch>=2.4,<3" is one requirement
    return reqs


def uploaded_path(config: str | os.PathLike, root: Path, what: str = "") -> str:
    """``config``'s path inside the uploaded working dir ``root``, or the one line why the job could not read it."""
    try:
        rel = Path(config).resolve().relative_to(root).as_posix()
    except ValueError:
        raise JobsError(f"{config}{what}: outside the working dir {root}, so the job could not read it; "
                        "move it inside or pass --working-dir") from None
    if any(rel.startswith(p.rstrip("/") + "/") for p in EXCLUDES if p.endswith("/") and "*" not in p):
        raise JobsError(f"{config}{what}: inside an excluded directory ({rel.split('/')[0]}/), so it is not "
                        "uploaded; copy it to configs/")
    return rel


def build_job(config: str | os.PathLike, command: str = "train", *, name: str = "run",
              overrides: list[str] = (), working_dir: str | os.PathLike | None = None,
              image: str | None = None, pip: list[str] = (), env_names: list[str] = (),
              environ: dict[str, str] | None = None, wait_for_resources: float | None = None,
              bases: list[str | os.PathLike] = ()) -> JobSpec:
    """Work out the entrypoint, runtime env and metadata of one run; nothing is sent.
    ``wait_for_resources``: the job's command waits that many seconds for an autoscaler.
    ``bases``: the files the config's ``base:`` chain names, which the job must read too."""
    if command not in COMMANDS:
        raise JobsError(f"submit: unknown command {command!r}; one of {', '.join(COMMANDS)}")
    if image and pip:
        raise JobsError("submit: --image and --pip cannot be combined; put the packages in the image")
    environ = os.environ if environ is None else environ
    names = list(dict.fromkeys(env_names))
    for n in names:
        if not _ENV_NAME.match(n):
            raise JobsError(f"--env {n}: not a variable name (give the NAME; its value is read from this shell)")
        if n not in environ:
            raise JobsError(f"--env {n}: not set in this shell")
    if names and image:
        # image_uri runtime envs accept only env_vars besides the image (Ray's ImageURIPlugin
        # get_compatible_keys), and env_vars are shown in the job's metadata.
        raise JobsError("submit: --env cannot be used with --image: Ray's image_uri jobs take no packages, "
                        "so the values would be visible in the job's runtime_env; give the cluster its "
                        "credentials another way (instance role, Kubernetes secret)")

    root = Path(working_dir).resolve() if working_dir else project_dir()
    if not root.is_dir():
        raise JobsError(f"--working-dir {root}: not a directory")
    rel = uploaded_path(config, root)
    for base in bases:
        uploaded_path(base, root, f" (the base: of {config})")

    args = [command, rel, *(a for o in overrides for a in ("--set", o))]
    if wait_for_resources is not None:
        args += ["--wait-for-resources", f"{wait_for_resources:g}"]
    module = "raydeep.cluster.job_env" if names else "raydeep.cli"
    entrypoint = shlex.join(["python", "-m", module, *args])
    runtime_env: dict[str, Any] = {}
    if image:
        runtime_env["image_uri"] = image
    else:
        runtime_env["working_dir"] = str(root)
        runtime_env["excludes"] = list(EXCLUDES)
    if pip:
        runtime_env["pip"] = _pip_requirements(list(pip))
    if names:
        runtime_env["worker_process_setup_hook"] = SETUP_HOOK
    metadata = {"raydeep.command": command, "raydeep.config": rel, "raydeep.name": name}
    if names:
        metadata["raydeep.env"] = ",".join(names)  # names only, never values
    return JobSpec(_job_name(name, command), entrypoint, runtime_env, metadata,
                   None if image else root, names, {n: environ[n] for n in names})


def submit(spec: JobSpec, *, address: str | None = None, wait: bool = False,
           out: TextIO | None = None, check_storage: bool = False, run_storage: str | None = None) -> int:
    """Submit ``spec``; print its id and dashboard URL; with ``wait`` follow it to the end.
    ``check_storage``: first refuse a multi-node cluster when ``run_storage`` (the config's
    run.storage) is unset, or note on a one-node one where the outputs will be.

    Returns the exit code: 0 once submitted (without ``wait``), else 0 only if it SUCCEEDED.
    """
    out = out or sys.stdout
    client = jobs_client(address)
    if check_storage:  # before anything is uploaded
        note = storage_verdict(run_storage, *cluster_shape(client))
        if note:
            print(note, file=out)
    runtime_env = dict(spec.runtime_env)
    with tempfile.TemporaryDirectory(prefix="raydeep-env-") as tmp:
        if spec.forwarded:
            runtime_env["py_modules"] = [str(write_package(Path(tmp), spec.forwarded))]
        sid = _submit_with_retry(client, spec, runtime_env)
    url = client.get_address()
    where = f"working dir {spec.working_dir}" if spec.working_dir else f"image {runtime_env['image_uri']}"
    print(f"submitted {sid}: {spec.entrypoint}", file=out)
    print(f"  from {where}" + (f"; forwarded env: {', '.join(spec.env_names)}" if spec.env_names else ""), file=out)
    print(f"  dashboard: {url}/#/jobs/{sid}", file=out)
    if not wait:
        print(f"  follow:    raydeep jobs logs {sid} --follow --address {url}", file=out)
        return 0
    status = follow(client, sid, out=out)
    return 0 if status == "SUCCEEDED" else 1


STORAGE_EXAMPLE = "--set run.storage=s3://BUCKET/runs"


def storage_verdict(run_storage: str | None, nodes: int, can_launch: bool) -> str | None:
    """Whether a run may go to this cluster without run.storage: refused (``ConfigError``) on a cluster
    of several nodes, or one whose autoscaler can add nodes, since its outputs would stay in the job's
    temporary working dir on the head and workers elsewhere could not write checkpoints there; on one
    node (or when the dashboard does not say: ``nodes`` 0) the note to print; None with storage."""
    if run_storage:
        return None
    if nodes > 1 or can_launch:
        shape = f"{nodes} nodes" if nodes > 1 else "an autoscaler that adds nodes"
        raise ConfigError(f"run.storage is unset and the cluster has {shape}: the run's outputs and checkpoints "
                          "would stay in the job's temporary working dir on the head, where workers on other nodes "
                          f"cannot write; set storage every node reaches, e.g. {STORAGE_EXAMPLE} (or a shared "
                          "filesystem path)")
    return ("note: run.storage is unset, so outputs and checkpoints stay on the head node, inside the job's "
            "temporary working dir (removed when the Ray session ends; `raydeep jobs fetch ID` says where); "
            f"set run.storage to keep them, e.g. {STORAGE_EXAMPLE}")


def cluster_shape(client: JobSubmissionClient) -> tuple[int, bool]:
    """(alive nodes, whether an autoscaler can add nodes), from the dashboard's state API and cluster
    status; (0, False) when it does not answer them (best effort: only a note depends on it then)."""
    nodes, can_launch = 0, False
    try:
        r = client._do_request("GET", "/api/v0/nodes?limit=10000&detail=false&filter_keys=state"
                               "&filter_predicates=%3D&filter_values=ALIVE", timeout=30)
        if r.status_code == 200:
            nodes = len(r.json()["data"]["result"]["result"])
    except Exception:  # noqa: BLE001 - an older dashboard, or a proxy in between
        pass
    try:
        r = client._do_request("GET", "/api/cluster_status", timeout=30)
        if r.status_code == 200:
            can_launch = autoscaler_report_can_launch((r.json().get("data") or {}).get("cluster_status") or {})
    except Exception:  # noqa: BLE001
        pass
    return nodes, can_launch


def _submit_with_retry(client: JobSubmissionClient, spec: JobSpec, runtime_env: dict) -> str:
    # A head that has just started answers HTTP before its job agent registers
    # ("No available agent to submit job"); each attempt already waits ~10 s server-side.
    for attempt in range(3):
        try:
            return call(client, "submit the job", client.submit_job,
                         entrypoint=spec.entrypoint, submission_id=spec.submission_id,
                         runtime_env=runtime_env, metadata=spec.metadata,
                         entrypoint_num_cpus=ENTRYPOINT_CPUS)
        except JobsError as exc:
            if "No available agent" not in str(exc):
                raise
            if attempt == 2:
                raise JobsError(
                    "the head's job agent is not available ('No available agent to submit job'): if the head "
                    "just started, retry in a minute; if another Ray runs on the same machine, start this "
                    "head with its own --dashboard-agent-listen-port (default 52365)") from None
            time.sleep(2)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# Following


def follow(client: JobSubmissionClient, sid: str, *, out: TextIO | None = None) -> str:
    """Stream the job's logs until it ends; print and return its final status."""
    out = out or sys.stdout

    async def tail() -> None:
        async for chunk in client.tail_job_logs(sid):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running (raydeep jobs stop {sid} "
              f"--address {client.get_address()})", file=out)
        raise
    except Exception:  # noqa: BLE001 - a dropped log stream: fall back to polling the status
        pass
    while True:
        info = call(client, "read the job's status", client.get_job_info, sid)
        if info.status.is_terminal():
            break
        time.sleep(1)
    print(f"job {sid} {info.status}" + (f": {info.message}" if info.status != "SUCCEEDED" and info.message else ""),
          file=out)
    return str(info.status)


def list_jobs(address: str | None = None) -> list[JobDetails]:
    """Submitted jobs on the cluster, oldest first (drivers that merely connected are left out)."""
    client = jobs_client(address)
    jobs = call(client, "list jobs", client.list_jobs)
    jobs = [j for j in jobs if j.submission_id]
    return sorted(jobs, key=lambda j: j.start_time or 0)


def job_info(sid: str, address: str | None = None) -> JobDetails:
    client = jobs_client(address)
    return call(client, "read the job's status", client.get_job_info, sid)


def logs(sid: str, address: str | None = None, *, follow_logs: bool = False, out: TextIO | None = None) -> str | None:
    """Print the job's logs so far; with ``follow_logs`` stream them until the job ends."""
    out = out or sys.stdout
    client = jobs_client(address)
    if follow_logs:
        call(client, "read the job", client.get_job_status, sid)  # a clear line for a wrong id
        return follow(client, sid, out=out)
    out.write(call(client, "read the job's logs", client.get_job_logs, sid))
    out.flush()
    return None


def job_outputs(sid: str, address: str | None = None) -> tuple[JobDetails, dict[str, Any] | None]:
    """The job, and where its driver said its run outputs are (``job_outputs.find_outputs``)."""
    client = jobs_client(address)
    info = call(client, "read the job's status", client.get_job_info, sid)
    return info, find_outputs(call(client, "read the job's logs", client.get_job_logs, sid))


def stop(sid: str, address: str | None = None, *, timeout_s: float = 60.0) -> str:
    """Ask the job to stop (SIGTERM, then SIGKILL) and wait for a final status; returns it."""
    client = jobs_client(address)
    call(client, "stop the job", client.stop_job, sid)
    deadline = time.time() + timeout_s
    status = call(client, "read the job's status", client.get_job_status, sid)
    while not status.is_terminal() and time.time() < deadline:
        time.sleep(0.5)
        status = call(client, "read the job's status", client.get_job_status, sid)
    return str(status)


# ---------------------------------------------------------------------------------------------
# Printing (what `raydeep jobs ...` shows; runtime_env is never printed)


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _duration(job: JobDetails) -> str:
    if not job.start_time:
        return "-"
    end = job.end_time or time.time() * 1000
    s = int((end - job.start_time) / 1000)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_jobs(jobs: list[JobDetails]) -> str:
    if not jobs:
        return "no submitted jobs\n"
    rows = [("SUBMISSION ID", "STATUS", "STARTED", "TIME", "ENTRYPOINT")]
    for j in jobs:
        ep = j.entrypoint if len(j.entrypoint) <= 70 else j.entrypoint[:67] + "..."
        rows.append((j.submission_id, str(j.status), _when(j.start_time), _duration(j), ep))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] + "\n" for r in rows)


def format_job(job: JobDetails, address: str) -> str:
    lines = [
        f"submission id: {job.submission_id}",
        f"status:        {job.status}" + (f" (driver exit code {job.driver_exit_code})"
                                           if job.driver_exit_code not in (None, 0) else ""),
    ]
    if job.message:
        lines.append(f"message:       {first_line(job.message)}")
    lines += [
        f"entrypoint:    {job.entrypoint}",
        f"started:       {_when(job.start_time)}   ended: {_when(job.end_time)}   time: {_duration(job)}",
    ]
    meta = {k: v for k, v in (job.metadata or {}).items() if k.startswith("raydeep.")}
    if meta.get("raydeep.env"):
        lines.append(f"forwarded env: {meta['raydeep.env']}")
    lines.append(f"dashboard:     {address}/#/jobs/{job.submission_id}")
    return "\n".join(lines) + "\n"
