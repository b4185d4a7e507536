"""Inside a submitted job: load the variables that ``raydeep submit --env NAME`` forwarded.

Ray's Jobs API stores a job's entrypoint, metadata and ``runtime_env`` (``env_vars``
included) and shows them to anyone who can read the dashboard, so secret values must not
travel there. Instead ``raydeep submit`` writes them into a tiny package, uploaded through
``runtime_env["py_modules"]`` the way Ray uploads the working dir (the job's metadata holds
only its ``gcs://_ray_pkg_<hash>.zip`` name), and two readers put them into ``os.environ``:

- the job's driver: the entrypoint is ``python -m raydeep.cluster.job_env train ...``,
  which loads them and then execs ``python -m raydeep.cli train ...``;
- every Ray worker of the job (Train workers, Ray Data tasks, Tune trials):
  ``runtime_env["worker_process_setup_hook"] = "raydeep.cluster.job_env.load"``.

This module must stay importable with nothing but the standard library and ``raydeep``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import sys
from pathlib import Path

PACKAGE = "raydeep_forwarded_env"
DATA = "env.json"
SETUP_HOOK = "raydeep.cluster.job_env.load"


def write_package(parent: Path, env: dict[str, str]) -> Path:
    """Write the package holding ``env`` under ``parent``; returns its directory."""
    pkg = Path(parent) / PACKAGE
    pkg.mkdir(parents=True, exist_ok=False)
    (pkg / "__init__.py").write_text('"""Variables forwarded by `raydeep submit --env` (see raydeep.cluster.job_env)."""\n')
    # The package's name is a hash of its bytes; the random salt keeps that hash from being
    # a way to test guesses of a short secret.
    data = {"env": env, "salt": secrets.token_hex(16)}
    path = pkg / DATA
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return pkg


def load() -> list[str]:
    """Put the forwarded variables into ``os.environ``; returns their names (none: ``[]``)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.origin:
        return []
    data = json.loads(Path(spec.origin).with_name(DATA).read_text())
    env = {str(k): str(v) for k, v in data.get("env", {}).items()}
    os.environ.update(env)
    return sorted(env)


def main(argv: list[str]) -> None:
    """Driver side: load the variables, then become ``python -m raydeep.cli ARGV``."""
    load()
    os.execv(sys.executable, [sys.executable, "-m", "raydeep.cli", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
