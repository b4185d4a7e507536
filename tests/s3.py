"""A real S3-protocol server for tests: moto's standalone server on 127.0.0.1 (as s3fs's own suite uses).

IAM authentication is on (``INITIAL_NO_AUTH_ACTION_COUNT=3``: the three calls that create a user,
its policy and its access key are the only unauthenticated ones), so a wrong key or secret is
rejected exactly as AWS rejects it. Nothing in raydeep knows it is talking to moto: tests give
it the endpoint URL (config ``storage.endpoint_url``, ``--endpoint-url`` or ``AWS_ENDPOINT_URL``)
and credentials through the standard AWS variables.

Use: ``from tests.s3 import s3_server  # noqa: F401`` in a test module, then ``s3_server.env()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BIN, free_port, stop_process_group

ALLOW_S3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


@dataclass
class S3Server:
    endpoint: str
    key: str
    secret: str
    proc: subprocess.Popen
    home: Path  # an empty directory standing in for ~/.aws, so a developer's own files are never read

    def env(self, *, endpoint: bool = True, credentials: bool = True) -> dict[str, str]:
        """Variables for a raydeep process (or a Ray head) talking to this server."""
        env = {
            "AWS_SHARED_CREDENTIALS_FILE": str(self.home / "credentials"),
            "AWS_CONFIG_FILE": str(self.home / "config"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        if endpoint:
            env["AWS_ENDPOINT_URL"] = self.endpoint
        if credentials:
            env["AWS_ACCESS_KEY_ID"] = self.key
            env["AWS_SECRET_ACCESS_KEY"] = self.secret
        return env

    def apply(self, monkeypatch: pytest.MonkeyPatch, **kwargs: bool) -> None:
        """Make this process look like a machine configured only for this server."""
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_PROFILE"):
            monkeypatch.delenv(var, raising=False)
        for k, v in self.env(**kwargs).items():
            monkeypatch.setenv(k, v)

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, key=self.key, secret=self.secret,
                                 skip_instance_cache=True, use_listings_cache=False)


def start_s3(tmp: Path) -> S3Server:
    port = free_port()
    log = open(tmp / "moto.log", "wb")
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited: {(tmp / 'moto.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            if time.time() > deadline:
                stop_s3(proc)
                raise RuntimeError("moto_server did not start within 60 s") from None
            time.sleep(0.2)
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
    iam.create_user(UserName="raydeep-test")
    iam.put_user_policy(UserName="raydeep-test", PolicyName="s3", PolicyDocument=json.dumps(ALLOW_S3))
    key = iam.create_access_key(UserName="raydeep-test")["AccessKey"]
    home = tmp / "aws-home"
    home.mkdir()
    return S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], proc, home)


def stop_s3(proc: subprocess.Popen) -> None:
    stop_process_group(proc, 20)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory) -> S3Server:
    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    stop_s3(server.proc)
