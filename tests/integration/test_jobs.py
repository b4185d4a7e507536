"""`raydeep submit` and `raydeep jobs` against a real local Ray head, through the real CLI.

The head here is this module's own, not the session's ``ray_head``, for two reasons:
- a job's entrypoint is ``python -m raydeep.cli ...``, so ``python`` on the head's PATH must
  be the one with Ray, as on a real cluster; here that is the venv's interpreter;
- every Ray node binds its dashboard agent to port 52365 unless told otherwise, and on a
  machine where another Ray is running the agent then fails and every submission answers
  "No available agent to submit job". ``isolated_port_flags`` gives each node its own ports.
"""

from __future__ import annotations

import http.server
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from io import StringIO
from pathlib import Path

import pytest

from raydeep.cluster import dashboard, jobs
from raydeep.cluster.job_env import PACKAGE, load, write_package
from raydeep.errors import RaydeepError
from raydeep.trainers.engine import isolate_extension_builds
from tests.conftest import BIN, ROOT, free_port, isolated_port_flags, run_cli, start_head, stop_head
from tests.helpers import tiny_config, write_config
from tests.s3 import s3_server  # noqa: F401 - the fixture

SECRET_NAME = "RAYDEEP_TEST_SECRET"


# ---------------------------------------------------------------------------------------------
# Building a job (no Ray)


def test_default_job_runs_the_cli_on_the_uploaded_project():
    spec = jobs.build_job(ROOT / "configs/digits-lt.yaml", "train", name="digits-lt",
                          overrides=["run.epochs=1", "name=a b"], working_dir=ROOT)
    assert spec.entrypoint == "python -m raydeep.cli train configs/digits-lt.yaml --set run.epochs=1 --set 'name=a b'"
    assert spec.runtime_env["working_dir"] == str(ROOT)
    assert {"runs/", ".venv/", ".git/", "__pycache__/"} <= set(spec.runtime_env["excludes"])
    assert "env_vars" not in spec.runtime_env and "py_modules" not in spec.runtime_env
    assert spec.metadata == {"raydeep.command": "train", "raydeep.config": "configs/digits-lt.yaml",
                             "raydeep.name": "digits-lt"}
    assert re.fullmatch(r"raydeep-train-digits-lt-\d{8}-\d{6}-[0-9a-f]{4}", spec.submission_id)


def test_forwarded_values_are_nowhere_in_what_is_submitted():
    secret = secrets.token_hex(16)
    spec = jobs.build_job(ROOT / "configs/digits-lt.yaml", "tune", env_names=["MY_KEY", "MY_KEY"],
                          working_dir=ROOT, environ={"MY_KEY": secret})
    sent = repr((spec.entrypoint, spec.runtime_env, spec.metadata, spec.submission_id))
    assert secret not in sent and secret not in repr(spec)
    assert spec.entrypoint.startswith("python -m raydeep.cluster.job_env tune configs/digits-lt.yaml")
    assert spec.runtime_env["worker_process_setup_hook"] == "raydeep.cluster.job_env.load"
    assert spec.metadata["raydeep.env"] == "MY_KEY"
    assert spec.forwarded == {"MY_KEY": secret}


@pytest.mark.parametrize("kwargs, message", [
    ({"env_names": ["NOT_SET_ANYWHERE"]}, "--env NOT_SET_ANYWHERE: not set in this shell"),
    ({"env_names": ["A=b"]}, "not a variable name"),
    ({"working_dir": ROOT / "raydeep"}, "outside the working dir"),
    ({"image": "img:1", "pip": ["rich"]}, "cannot be combined"),
    ({"image": "img:1", "env_names": ["HOME"]}, "--env cannot be used with --image"),
])
def test_build_job_refuses(kwargs, message):
    with pytest.raises(RaydeepError, match=re.escape(message)):
        jobs.build_job(ROOT / "configs/digits-lt.yaml", **kwargs)


def test_pip_takes_a_requirements_file_or_package_specs(tmp_path):
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("rich\n")
    build = lambda pip: jobs.build_job(ROOT / "configs/digits-lt.yaml", working_dir=ROOT, pip=pip).runtime_env
    assert build([str(reqs)])["pip"] == str(reqs)
    assert build(["rich>=13,<15 wandb", "boto3"])["pip"] == ["rich>=13,<15", "wandb", "boto3"]
    image = jobs.build_job(ROOT / "configs/digits-lt.yaml", working_dir=ROOT, image="reg/raydeep:1").runtime_env
    assert image == {"image_uri": "reg/raydeep:1"}  # Ray's image_uri takes no working_dir


def test_dashboard_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(RaydeepError, match="--address http://HEAD:8265 or export RAY_ADDRESS"):
        dashboard.dashboard_address(None)
    assert dashboard.dashboard_address("head") == "http://head:8265"
    assert dashboard.dashboard_address("https://head.example/") == "https://head.example:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.1:9999")
    assert dashboard.dashboard_address(None) == "http://10.0.0.1:9999"
    with pytest.raises(RaydeepError, match="Ray Client address"):
        dashboard.dashboard_address("ray://head:10001")


def test_forwarded_package_loads_into_the_environment(tmp_path, monkeypatch):
    write_package(tmp_path, {"RD_A": "1", "RD_B": "two words"})
    assert oct((tmp_path / PACKAGE / "env.json").stat().st_mode & 0o777) == "0o600"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("RD_A", raising=False)
    monkeypatch.delenv("RD_B", raising=False)
    assert load() == ["RD_A", "RD_B"]
    assert (os.environ["RD_A"], os.environ["RD_B"]) == ("1", "two words")


# ---------------------------------------------------------------------------------------------
# Connection errors: one line each, no traceback


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    assert err.startswith("raydeep: error: ")
    for n in needles:
        assert n in err, err
    return err


def test_no_address_says_how_to_give_one():
    proc = run_cli("jobs", "list", env={"RAY_ADDRESS": ""}, timeout=60)
    assert_one_line_error(proc, "--address http://HEAD:8265", "RAY_ADDRESS")


def test_unreachable_address():
    proc = run_cli("jobs", "list", "--address", f"http://127.0.0.1:{free_port()}", timeout=60)
    assert_one_line_error(proc, "cannot reach a Ray dashboard", "connection refused")


def test_an_http_server_that_is_not_ray(tmp_path):
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = run_cli("jobs", "status", "x", "--address", f"http://127.0.0.1:{server.server_port}", timeout=60)
    finally:
        server.shutdown()
    assert_one_line_error(proc, "is not a Ray dashboard", "404")


# ---------------------------------------------------------------------------------------------
# Against a real head


@pytest.fixture(scope="module")
def new_user_home(tmp_path_factory) -> Path:
    """An empty HOME for the head and the CLI: no ~/.ray/auth_token, no caches, as on a new
    machine (the token comes from RAY_AUTH_TOKEN_PATH, set by conftest)."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def jobs_head(tmp_path_factory, raydeep_cache, new_user_home):
    # DeepSpeed's comm op, built once per suite under the real HOME, is shared: an empty HOME would
    # rebuild it (~30 s) and prove nothing about ~/.ray, which is what the empty HOME is for.
    head = start_head(tmp_path_factory.mktemp("jobs-head"), num_cpus=4, extra=isolated_port_flags(),
                      env={"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HOME": str(new_user_home),
                           "TORCH_EXTENSIONS_DIR": isolate_extension_builds()})
    yield head
    stop_head(head)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, s3_server) -> Path:  # noqa: F811
    """A project to upload: the package, two configs, and things that must stay behind. The tiny
    run keeps its outputs in run.storage on the loopback S3 server; the long one has none."""
    wd = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "raydeep", wd / "raydeep", ignore=shutil.ignore_patterns("__pycache__"))
    (wd / "pyproject.toml").write_text("[project]\nname = 'uploaded'\n")
    (wd / "configs").mkdir()
    one_worker = {"num_workers": 1}
    s3_server.filesystem().mkdir("jobsbkt")
    write_config(wd / "configs/tiny.yaml", tiny_config(scaling=one_worker, run={"epochs": 1, "storage": "s3://jobsbkt/runs"},
                                                       storage={"endpoint_url": s3_server.endpoint}))
    write_config(wd / "configs/long.yaml", tiny_config(name="long", scaling=one_worker, run={"epochs": 500}))
    for junk in ("runs/old/model.bin", ".venv/lib/x.py", ".git/HEAD"):
        (wd / junk).parent.mkdir(parents=True, exist_ok=True)
        (wd / junk).write_bytes(b"must not be uploaded")
    return wd


@pytest.fixture(scope="module")
def finished_job(jobs_head, workdir, new_user_home, s3_server):  # noqa: F811
    """One `raydeep submit --wait` of a tiny run that forwards a planted secret by name, from a
    shell whose HOME is empty (a new user's); the S3 keys its run.storage needs travel the same way."""
    secret = "planted-" + secrets.token_hex(16)
    cmd = [str(BIN / "raydeep"), "submit", "configs/tiny.yaml", "--address", jobs_head.dashboard_url,
           "--env", SECRET_NAME, "--env", "AWS_ACCESS_KEY_ID", "--env", "AWS_SECRET_ACCESS_KEY", "--wait"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=workdir, text=True,
                            env={**os.environ, **s3_server.env(endpoint=False), SECRET_NAME: secret,
                                 "PYTHONUNBUFFERED": "1", "HOME": str(new_user_home)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = []
    for line in proc.stdout:
        first.append(line)
        if m := re.match(r"submitted (\S+):", line):
            sid = m.group(1)
            break
    else:
        raise AssertionError("".join(first))
    # While it runs: the job's driver process was started with the value in its environment.
    client = dashboard.jobs_client(jobs_head.dashboard_url)
    driver_env = b""
    deadline = time.time() + 300
    while time.time() < deadline and not driver_env:
        info = client.get_job_info(sid)
        if info.driver_info and info.driver_info.pid:
            try:
                driver_env = Path(f"/proc/{info.driver_info.pid}/environ").read_bytes()
            except OSError:
                break
        elif info.status.is_terminal():
            break
        time.sleep(0.5)
    rest = proc.stdout.read()  # not communicate(timeout=): it would skip what the loop above buffered
    proc.wait(timeout=60)
    return {"sid": sid, "secret": secret, "rc": proc.returncode, "out": "".join(first) + rest,
            "driver_env": driver_env, "info": client.get_job_info(sid), "client": client,
            "seconds": time.time() - t0}


@pytest.mark.slow
@pytest.mark.ray
def test_submit_wait_runs_the_training_and_shows_its_final_metrics(finished_job, jobs_head):
    out = finished_job["out"]
    assert finished_job["rc"] == 0, out
    assert f"dashboard: {jobs_head.dashboard_url}/#/jobs/{finished_job['sid']}" in out
    assert re.search(r"epoch 1/1  train loss [\d.]+  val loss [\d.]+  acc [\d.]+  macro-F1 [\d.]+", out), out
    assert f"job {finished_job['sid']} SUCCEEDED" in out
    info = finished_job["info"]
    assert str(info.status) == "SUCCEEDED"
    assert info.entrypoint == "python -m raydeep.cluster.job_env train configs/tiny.yaml"
    assert info.metadata["raydeep.env"] == f"{SECRET_NAME},AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY"
    assert "note: run.storage is unset" not in out


@pytest.mark.slow
@pytest.mark.ray
def test_jobs_fetch_copies_the_jobs_run_dir_from_storage(finished_job, jobs_head, s3_server, tmp_path):  # noqa: F811
    # The job's run dir on the head (its temporary working dir) and its copy in run.storage are the
    # same files; `raydeep jobs fetch` finds the storage folder from the job's logs.
    from raydeep.trainers.outputs import output_files

    (head_run,) = Path(jobs_head.temp_dir).glob("session_2*/runtime_resources/working_dir_files/*/runs/tiny-*")
    proc = run_cli("jobs", "fetch", finished_job["sid"], str(tmp_path / "got"), "--address", jobs_head.dashboard_url,
                   env=s3_server.env(endpoint=False), timeout=120, check=True)  # the endpoint: from the job's line
    assert re.search(r"copied \d+ files from s3://jobsbkt/runs/tiny-\S+ to ", proc.stdout), proc.stdout
    files = output_files(head_run)
    assert {"summary.json", "metrics.jsonl", "config.yaml", "learning_curves.png"} <= set(files)
    assert set(output_files(tmp_path / "got")) - set(files) == {"checkpoint_manager_snapshot.json"}  # Ray's
    assert all((tmp_path / "got" / rel).read_bytes() == (head_run / rel).read_bytes() for rel in files)
    assert not [p for p in (tmp_path / "got").glob("checkpoint_*") if p.is_dir()]  # left there without --checkpoints


@pytest.mark.slow
@pytest.mark.ray
def test_working_dir_upload_leaves_outputs_caches_and_venvs_behind(finished_job, jobs_head):
    uploaded = [p for p in Path(jobs_head.temp_dir).glob("session_2*/runtime_resources/working_dir_files/_ray_pkg_*")
                if p.is_dir()]
    assert len(uploaded) == 1
    names = {p.relative_to(uploaded[0]).as_posix() for p in uploaded[0].rglob("*")}
    assert {"configs/tiny.yaml", "raydeep/cli.py", "raydeep/cluster/job_env.py"} <= names
    assert not any(n.startswith((".venv", ".git", "runs/old")) or "__pycache__/" in n for n in names)


@pytest.mark.slow
@pytest.mark.ray
def test_forwarded_secret_reaches_the_driver_and_no_log_metadata_or_run_dir(finished_job, jobs_head, workdir):
    secret, sid = finished_job["secret"], finished_job["sid"]
    assert f"{SECRET_NAME}={secret}".encode() in finished_job["driver_env"]

    assert secret not in finished_job["out"]  # what `raydeep submit --wait` printed, logs included
    client = finished_job["client"]
    assert secret not in repr(client.get_job_info(sid))  # entrypoint, metadata, runtime_env
    assert secret not in repr(client.list_jobs())
    assert secret not in client.get_job_logs(sid)
    for args in (("jobs", "status", sid), ("jobs", "list"), ("jobs", "logs", sid)):
        proc = run_cli(*args, "--address", jobs_head.dashboard_url, timeout=120, check=True)
        assert secret not in proc.stdout + proc.stderr
        if args[1] == "status":
            assert "SUCCEEDED" in proc.stdout and f"forwarded env: {SECRET_NAME}" in proc.stdout

    # Everything the head wrote (logs, the uploaded project, the run dir with its config,
    # metrics and checkpoints): the value is only in the forwarded package itself.
    holders = {p.relative_to(jobs_head.temp_dir).as_posix()
               for p in Path(jobs_head.temp_dir).rglob("*")
               if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes()}
    assert all(h.endswith(f"/{PACKAGE}/env.json") and "/py_modules_files/" in h for h in holders), holders
    run_dirs = list(Path(jobs_head.temp_dir).glob("session_2*/runtime_resources/working_dir_files/*/runs/tiny-*"))
    assert len(run_dirs) == 1 and (run_dirs[0] / "summary.json").is_file()
    assert not any(secret.encode() in p.read_bytes() for p in workdir.rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.ray
def test_forwarded_variables_reach_every_ray_worker_of_the_job(jobs_head, workdir):
    probe = "probe-" + secrets.token_hex(4)  # not a secret: printed to prove delivery
    spec = jobs.build_job(workdir / "configs/tiny.yaml", working_dir=workdir, env_names=["RAYDEEP_TEST_PROBE"],
                          environ={"RAYDEEP_TEST_PROBE": probe})
    # Same runtime env (package + setup hook) as a training job; a one-task driver instead.
    spec.entrypoint = ("python -c \"import os, ray; ray.init(); print('worker sees', ray.get(ray.remote("
                       "lambda: os.environ.get('RAYDEEP_TEST_PROBE')).remote()))\"")
    out = StringIO()
    assert jobs.submit(spec, address=jobs_head.dashboard_url, wait=True, out=out) == 0, out.getvalue()
    assert f"worker sees {probe}" in out.getvalue()


@pytest.mark.slow
@pytest.mark.ray
def test_stop_a_long_run_and_list_both(finished_job, jobs_head, workdir, new_user_home):
    url = jobs_head.dashboard_url
    home = {"HOME": str(new_user_home)}  # a new user's shell: nothing in ~/.ray
    proc = run_cli("submit", str(workdir / "configs/long.yaml"), "--working-dir", str(workdir),
                   "--address", url, env=home, timeout=120, check=True)
    sid = re.search(r"submitted (\S+):", proc.stdout).group(1)
    assert f"raydeep jobs logs {sid} --follow --address {url}" in proc.stdout
    assert "note: run.storage is unset" in proc.stdout  # one node: submitted, with a note
    client = finished_job["client"]
    deadline = time.time() + 120
    while "raydeep-outputs" not in client.get_job_logs(sid) and time.time() < deadline:
        time.sleep(0.5)
    assert str(client.get_job_status(sid)) == "RUNNING"

    proc = run_cli("jobs", "stop", sid, "--address", url, env=home, timeout=120, check=True)
    assert proc.stdout.strip() == f"{sid}: STOPPED"
    # No run.storage: nothing to fetch; one line says where on the head the run dir is.
    proc = run_cli("jobs", "fetch", sid, str(workdir / "fetched"), "--address", url, env=home, timeout=60)
    assert_one_line_error(proc, "its run has no run.storage", "/runs/long-", "only on the head node ")

    table = run_cli("jobs", "list", "--address", url, env=home, timeout=60, check=True).stdout
    rows = {line.split()[0]: line.split()[1] for line in table.splitlines()[1:]}
    assert rows[finished_job["sid"]] == "SUCCEEDED" and rows[sid] == "STOPPED"
    # The token came from RAY_AUTH_TOKEN_PATH: nothing was read from or written to ~/.ray.
    assert not (new_user_home / ".ray").exists()


@pytest.mark.ray
@pytest.mark.parametrize("env, needles", [
    ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "wrong"}, ("rejected the auth token from RAY_AUTH_TOKEN", "403")),
    ({"RAY_AUTH_MODE": "disabled"}, ("requires an auth token", "401", "RAY_AUTH_MODE=disabled")),
], ids=["wrong-token", "no-token"])
def test_token_auth_errors_are_one_clear_line(jobs_head, env, needles):
    proc = run_cli("jobs", "list", "--address", jobs_head.dashboard_url, env=env, timeout=60)
    assert_one_line_error(proc, *needles)


@pytest.mark.ray
def test_unknown_job_id(jobs_head):
    proc = run_cli("jobs", "status", "raysubmit_nope", "--address", jobs_head.dashboard_url, timeout=60)
    assert_one_line_error(proc, "no such job", "raysubmit_nope")


def test_a_base_outside_the_uploaded_dir_is_refused_before_submitting(tmp_path):
    """A config whose ``base:`` lies outside the working dir loads here and would fail on the head:
    refused in one line naming the base, before anything is sent (an unreachable address)."""
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (tmp_path / "shared.yaml").write_text((ROOT / "configs" / "digits-lt.yaml").read_text())
    (project / "configs" / "exp.yaml").write_text("base: ../../shared.yaml\nrun: {epochs: 1}\n")
    proc = run_cli("submit", str(project / "configs" / "exp.yaml"), "--working-dir", str(project),
                   "--address", f"http://127.0.0.1:{free_port()}", timeout=60)
    assert_one_line_error(proc, f"{tmp_path / 'shared.yaml'} (the base: of "
                                f"{project / 'configs' / 'exp.yaml'}): outside the working dir {project}")
