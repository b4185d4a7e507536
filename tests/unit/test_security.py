"""Security checks (issue 19, item 10): what a local Ray listens on, the warnings for a cluster
without token auth or a token over plain http, credentials refused in ``--pip``, and the
mode of the ``~/.ray/auth_token`` a local Ray start leaves behind."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from raydeep.cluster import connect
from raydeep.cluster.connect import (
    address_host,
    auth_disabled_warning,
    ensure_local_auth_token,
    is_loopback,
    plain_http_token_warning,
    warn_once,
)
from raydeep.cluster.jobs import build_job, url_credentials
from raydeep.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "digits-lt.yaml"


# ---------------------------------------------------------------------------------------------
# 1. the embedded local Ray listens on loopback only


def test_local_ray_starts_with_multi_node_off_so_ray_binds_loopback(monkeypatch):
    """ray.init of the local Ray runs with Ray's one-machine mode on, in this process (Ray's
    cached flag) and for the processes it starts (the environment); both are restored after."""
    import ray
    from ray._private import ray_constants

    seen = {}

    def fake_init(**kwargs):
        seen.update(kwargs=kwargs, flag=ray_constants.ENABLE_RAY_CLUSTER,
                    env=os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"))

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(connect, "describe", lambda address: None)
    monkeypatch.setattr(connect, "ensure_local_auth_token", lambda: None)
    flag_before = ray_constants.ENABLE_RAY_CLUSTER

    connect.connect(None, num_cpus=1)

    assert seen["flag"] is False and seen["env"] == "0"
    assert seen["kwargs"]["dashboard_host"] == "127.0.0.1"
    assert ray_constants.ENABLE_RAY_CLUSTER is flag_before
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ


LOCAL_RAY_PROBE = """
import json, os, stat, psutil, ray
from raydeep.cluster.connect import connect, disconnect
connect(None, num_cpus=1)
node = ray.nodes()[0]
listening = sorted({c.laddr.ip for p in psutil.Process().children(recursive=True)
                    for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN})
token = os.path.expanduser("~/.ray/auth_token")
print(json.dumps({"node": node["NodeManagerAddress"], "gcs": ray.get_runtime_context().gcs_address,
                  "listening": listening, "token_mode": oct(stat.S_IMODE(os.stat(token).st_mode))}))
disconnect()
"""


@pytest.mark.ray
def test_a_real_local_ray_listens_on_loopback_only_and_its_token_is_owner_only(tmp_path):
    """Items 1 and 5 on a real Ray, as a new user runs it: an empty HOME, no token anywhere."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", LOCAL_RAY_PROBE], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["node"] == "127.0.0.1"
    assert seen["gcs"].startswith("127.0.0.1:")
    assert seen["listening"], "no listening socket found: the probe sees nothing"
    assert set(seen["listening"]) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, seen["listening"]
    assert seen["token_mode"] == "0o600"


# ---------------------------------------------------------------------------------------------
# 2. warnings: a cluster without token auth, a token over plain http


@pytest.mark.parametrize("address, host", [
    ("10.0.0.5:6379", "10.0.0.5"), ("ray://head.example:10001", "head.example"),
    ("http://127.0.0.1:8265", "127.0.0.1"), ("[::1]:6379", "::1"), ("auto", None), ("", None),
])
def test_address_host(address, host):
    assert address_host(address) == host


@pytest.mark.parametrize("host, loop", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
    ("10.0.0.5", False), ("head.example", False), ("0.0.0.0", False), (None, False),
])
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_auth_disabled_warning_names_the_host_and_the_setting():
    assert auth_disabled_warning("10.0.0.5:6379", "disabled") == (
        "token auth is disabled (RAY_AUTH_MODE=disabled) for the Ray cluster at 10.0.0.5: anyone who can "
        "reach its ports can run code on it; start it with RAY_AUTH_MODE=token (docs/cluster.md, Security)")
    assert auth_disabled_warning("http://head.example:8265", "DISABLED") is not None


@pytest.mark.parametrize("address, mode", [
    ("127.0.0.1:6379", "disabled"), ("http://localhost:8265", "disabled"),  # loopback: only this machine
    ("10.0.0.5:6379", "token"), ("10.0.0.5:6379", None), ("auto", "disabled"),
])
def test_no_auth_disabled_warning(address, mode):
    assert auth_disabled_warning(address, mode) is None


def test_plain_http_token_warning_names_the_flag_and_the_way_out():
    assert plain_http_token_warning("http://10.0.0.5:8265", True) == (
        "--address http://10.0.0.5:8265: the Ray auth token is sent over plain http to a non-loopback host, "
        "readable on the network; tunnel it (ssh -L 8265:localhost:8265 HEAD, then --address "
        "http://127.0.0.1:8265) or put the dashboard behind https")


@pytest.mark.parametrize("url, sends", [
    ("https://10.0.0.5:8265", True), ("http://127.0.0.1:8265", True), ("http://localhost:8265", True),
    ("http://10.0.0.5:8265", False),
])
def test_no_plain_http_token_warning(url, sends):
    assert plain_http_token_warning(url, sends) is None


def test_warn_once_prints_one_line_once(capsys):
    warn_once("test-only warning 1f3a")
    warn_once("test-only warning 1f3a")
    assert capsys.readouterr().err == "raydeep: warning: test-only warning 1f3a\n"


def test_jobs_client_warns_for_a_token_over_http_and_a_cluster_without_auth(monkeypatch, capsys):
    """The warnings reach the user from ``raydeep submit``/``jobs``: one line each, once, on stderr."""
    import ray.job_submission
    from ray._private.authentication import authentication_utils

    from raydeep.cluster import dashboard

    monkeypatch.setattr(connect, "_warned", set())
    # Ray reads RAY_AUTH_MODE once per process; here it follows the environment
    monkeypatch.setattr(authentication_utils, "is_token_auth_enabled", lambda: os.environ["RAY_AUTH_MODE"] == "token")
    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", lambda url: url)
    monkeypatch.setattr(dashboard, "_probe", lambda url: "token")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # as prepare_auth_env leaves it with a token around
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t" * 64)
    dashboard.jobs_client("http://10.0.0.5:8265")
    dashboard.jobs_client("http://10.0.0.5:8265")
    err = capsys.readouterr().err.splitlines()
    assert err == [f"raydeep: warning: {plain_http_token_warning('http://10.0.0.5:8265', True)}"]

    monkeypatch.setattr(dashboard, "_probe", lambda url: "disabled")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    dashboard.jobs_client("http://10.0.0.6:8265")
    assert capsys.readouterr().err.splitlines() == [
        f"raydeep: warning: {auth_disabled_warning('http://10.0.0.6:8265', 'disabled')}"]


def test_connecting_without_a_token_to_a_remote_cluster_warns(monkeypatch, capsys):
    """A driver that sends no token and is let in: that cluster runs without token auth."""
    import ray

    monkeypatch.setattr(connect, "_warned", set())
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: None)
    monkeypatch.setattr(connect, "describe", lambda address: None)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    connect.connect("10.0.0.5:6379")
    assert capsys.readouterr().err == f"raydeep: warning: {auth_disabled_warning('10.0.0.5:6379', 'disabled')}\n"


# ---------------------------------------------------------------------------------------------
# 3. --pip refuses credentials (shown on the dashboard), before anything is sent

SECRET = "s3cr3tT0ken"


@pytest.mark.parametrize("pip", [
    f"--index-url https://user:{SECRET}@pypi.example.com/simple torch",
    f"--index-url=https://user:{SECRET}@pypi.example.com/simple",
    f"--extra-index-url https://user:{SECRET}@pypi.example.com/simple",
    f"-i https://user:{SECRET}@pypi.example.com/simple",
    f"-ihttps://user:{SECRET}@pypi.example.com/simple",
    f"mypkg @ https://user:{SECRET}@files.example.com/mypkg-1.0.tar.gz",
    f"git+https://{SECRET}@github.com/org/repo.git",
    f"-ihttps://{SECRET}@pypi.example.com/simple",
    f"git+ssh://git:{SECRET}@github.com/org/repo.git",
])
def test_pip_with_credentials_is_refused_without_echoing_them(pip):
    with pytest.raises(ConfigError) as err:
        build_job(CONFIG, pip=[pip], working_dir=ROOT)
    msg = str(err.value)
    assert SECRET not in msg and "\n" not in msg
    assert msg.startswith("--pip: ") and "***@" in msg and "--env NAME" in msg
    assert err.value.exit_code == 2


def test_pip_requirements_file_with_credentials_is_refused(tmp_path):
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(f"torch\n# a comment\n--extra-index-url https://me:{SECRET}@pypi.example.com/simple\n")
    commented = tmp_path / "commented.txt"  # Ray sends comment lines too
    commented.write_text(f"torch  # was: https://me:{SECRET}@pypi.example.com/simple\n")
    with pytest.raises(ConfigError, match=r"^--pip \S+commented.txt line 1: https://\*\*\*@pypi"):
        build_job(CONFIG, pip=[str(commented)], working_dir=ROOT)
    with pytest.raises(ConfigError) as err:
        build_job(CONFIG, pip=[str(reqs)], working_dir=ROOT)
    assert SECRET not in str(err.value)
    assert str(err.value).startswith(f"--pip {reqs} line 3: https://***@pypi.example.com/simple carries credentials")


@pytest.mark.parametrize("pip", [
    "torch>=2.4,<3 numpy",
    "--index-url https://pypi.example.com/simple torch",
    "git+ssh://git@github.com/org/repo.git",
    "--extra-index-url https://${PIP_USER}:${PIP_TOKEN}@pypi.example.com/simple",
])
def test_pip_without_credentials_passes(pip):
    assert build_job(CONFIG, pip=[pip], working_dir=ROOT).runtime_env["pip"] == pip.split()


def test_url_credentials_masks_the_userinfo():
    assert url_credentials(f"x @ https://u:{SECRET}@h.example:8443/p/q?token={SECRET}#frag") == (
        "https://***@h.example:8443/p/q")
    assert url_credentials("https://h.example/simple") is None


def test_cli_submit_refuses_before_contacting_any_cluster(tmp_path):
    """Exit 2 and one line, with an address nobody answers at: nothing was sent."""
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "raydeep.cli", "submit", str(CONFIG), "--address", "http://192.0.2.1:9",
         "--pip", f"-i https://u:{SECRET}@pypi.example.com/simple"],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("raydeep: error: --pip: https://***@pypi.example.com/simple carries credentials")
    assert len(proc.stderr.strip().splitlines()) == 1 and SECRET not in proc.stderr + proc.stdout


# ---------------------------------------------------------------------------------------------
# 5. the token raydeep writes for a local Ray is owner-only


def test_local_token_is_written_owner_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = ensure_local_auth_token({})
    assert path == tmp_path / ".ray" / "auth_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(path.read_text()) == 64
    assert ensure_local_auth_token({}) is None  # never rewritten
    assert len(path.read_text()) == 64


@pytest.mark.parametrize("environ", [
    {"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_TOKEN": "x"}, {"RAY_AUTH_TOKEN_PATH": "/elsewhere"},
])
def test_no_local_token_where_ray_would_not_write_one(tmp_path, monkeypatch, environ):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ensure_local_auth_token(environ) is None
    assert not (tmp_path / ".ray").exists()


# ---------------------------------------------------------------------------------------------
# 4. the --env package on the cluster: what docs/cluster.md says, pinned to Ray's own code


def test_env_package_unpacks_owner_only_where_the_docs_say(tmp_path):
    """Ray's own packaging: the forwarded values land in
    ``py_modules_files/_ray_pkg_<hash>/raydeep_forwarded_env/env.json`` with mode 600."""
    from ray._private.runtime_env import packaging

    from raydeep.cluster.job_env import DATA, PACKAGE, write_package

    pkg = write_package(tmp_path / "src", {"SECRET_X": SECRET})
    uri = packaging.get_uri_for_directory(str(pkg), include_gitignore=True)
    zipped = tmp_path / "pkg.zip"
    packaging.create_package(str(pkg), zipped, include_gitignore=True, include_parent_dir=True)
    resources = tmp_path / "runtime_resources" / "py_modules_files"  # what the node agent uses
    target = packaging.get_local_dir_from_uri(uri, str(resources))
    resources.mkdir(parents=True)  # the plugin creates it when the agent starts
    packaging.unzip_package(str(zipped), str(target), remove_top_level_directory=False, unlink_zip=True)
    env_json = target / PACKAGE / DATA
    assert stat.S_IMODE(env_json.stat().st_mode) == 0o600
    assert env_json.relative_to(resources).as_posix() == f"{Path(uri).stem}/raydeep_forwarded_env/env.json"
    doc = (ROOT / "docs" / "cluster.md").read_text()
    assert "runtime_resources/py_modules_files/_ray_pkg_<hash>/raydeep_forwarded_env/env.json" in doc


def test_docs_name_rays_package_lifetimes_as_ray_defines_them():
    from ray._private import ray_constants
    from ray._private.runtime_env.py_modules import PyModulesPlugin

    doc = " ".join((ROOT / "docs" / "cluster.md").read_text().split())
    assert ray_constants.RAY_RUNTIME_ENV_URI_PIN_EXPIRATION_S_ENV_VAR == "RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S"
    assert ray_constants.RAY_RUNTIME_ENV_URI_PIN_EXPIRATION_S_DEFAULT == 600
    assert "`RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S`, default 600" in doc
    cache_var = f"RAY_RUNTIME_ENV_{PyModulesPlugin.name}_CACHE_SIZE_GB".upper()  # plugin.py's rule
    assert f"`{cache_var}=0`" in doc and "passes 10 GiB" in doc


def test_an_address_nothing_answers_at_is_refused_in_one_line_at_once():
    """ray.init retries such an address forever (printing only C++ warnings); raydeep names it."""
    import time

    from raydeep.cluster.connect import check_reachable
    from raydeep.errors import RaydeepError
    from tests.conftest import free_port

    port = free_port()  # nothing listens there
    t0 = time.perf_counter()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(RaydeepError) as exc:
            check_reachable(address)
        assert str(exc.value) == (f"cannot connect to the Ray cluster at {address}: nothing answers at "
                                  f"127.0.0.1:{port} (Connection refused); is its head running? "
                                  "(`ray start --head` prints the address to use)")
    assert time.perf_counter() - t0 < 5
    with pytest.raises(RaydeepError, match="expected HOST:PORT"):
        check_reachable("127.0.0.1:sixty")
    check_reachable("auto")  # Ray's own lookup: not probed


def test_train_against_an_address_nothing_answers_at_exits_with_one_line(tmp_path):
    from tests.conftest import free_port, run_cli
    from tests.helpers import tiny_config, write_config
    from tests.unit.test_cli_errors import assert_one_line_error

    address = f"127.0.0.1:{free_port()}"
    proc = run_cli("train", str(write_config(tmp_path / "run.yaml", tiny_config())), "--address", address,
                   "--run-dir", str(tmp_path / "run"), timeout=120)
    assert_one_line_error(proc, f"cannot connect to the Ray cluster at {address}: nothing answers at", code=1)
    assert not (tmp_path / "run").exists()
