"""Where data and checkpoints live: a local path or ``s3://bucket/prefix``, and how to reach S3.

S3 goes through ``s3fs``. Credentials come only from the standard AWS places (environment
variables, ``~/.aws/credentials`` and ``~/.aws/config``, container or instance roles), on every
machine that touches the data; they are never read from a raydeep config, never passed to
s3fs explicitly (so they are never pickled into a Ray task) and never printed. What *is* fixed
on the driver and shipped with each filesystem object is where S3 is: the endpoint URL,
region and profile, from the config's ``storage:`` section, else ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` / ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` in the driver's environment, so
a Ray worker whose environment lacks them still talks to the same server.

Every S3 failure a user can cause becomes one ``DataError`` line (``s3_error``): a bucket
that does not exist, missing or rejected credentials (naming the variables and files that
were looked at, never their values), an unreachable endpoint (bounded: a connect timeout
and a small number of attempts, so it fails in seconds rather than minutes).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field, field_validator

from raydeep.errors import DataError

if TYPE_CHECKING:
    import s3fs

S3_SCHEME = "s3://"
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                        "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_ROLE_ARN",
                        "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
# botocore's ``Credentials.method`` -> where the rejected credentials came from, in words.
_CREDENTIAL_METHODS = {
    "env": "the environment variables AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
    "shared-credentials-file": "the shared credentials file",
    "config-file": "the AWS config file",
    "assume-role": "an assumed role from the AWS config file",
    "assume-role-with-web-identity": "a web-identity role (AWS_ROLE_ARN / AWS_WEB_IDENTITY_TOKEN_FILE)",
    "sso": "an SSO session from the AWS config file",
    "container-role": "the container credentials endpoint",
    "iam-role": "the instance metadata (IAM role)",
}
# S3 error codes that mean "these credentials are not accepted" rather than "not allowed".
_REJECTED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
             "InvalidClientTokenId", "TokenRefreshRequired", "AuthorizationHeaderMalformed"}
_DENIED = {"AccessDenied", "Forbidden", "403", "AllAccessDisabled", "AccountProblem"}


class StorageConfig(BaseModel):
    """How to reach S3 (``storage:`` in a run config). Never holds a secret: credentials come
    from the standard AWS environment variables and files on each machine."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint, e.g. http://minio:9000; default: AWS_ENDPOINT_URL_S3, "
        "AWS_ENDPOINT_URL, else AWS's own")
    region: str | None = Field(None, description="default: AWS_REGION / AWS_DEFAULT_REGION / the profile's")
    profile: str | None = Field(None, description="a profile in ~/.aws/config or ~/.aws/credentials; default: "
                                "AWS_PROFILE, else 'default'")
    connect_timeout: float = Field(5.0, gt=0, description="seconds per connection attempt")
    read_timeout: float = Field(60.0, gt=0, description="seconds to wait for a response")
    max_attempts: int = Field(3, ge=1, le=20, description="attempts per request (botocore 'standard' retries)")

    @field_validator("endpoint_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        if "@" in v.split("//", 1)[1].split("/", 1)[0]:
            # Never let a credential ride in on a URL: it would be logged and saved with the config.
            raise ValueError("must not contain user:password@; credentials come from the AWS environment")
        return v.rstrip("/")


def is_s3(uri: Any) -> bool:
    return isinstance(uri, str) and uri.startswith(S3_SCHEME)


def strip_s3(uri: str) -> str:
    """``s3://bucket/prefix/`` -> ``bucket/prefix`` (the form s3fs and pyarrow wrappers take)."""
    return uri[len(S3_SCHEME):].strip("/")


def bucket_of(uri: str) -> str:
    return strip_s3(uri).split("/", 1)[0]


def endpoint_url(storage: StorageConfig | None = None) -> str | None:
    """The endpoint the driver resolved (config, then the standard AWS variables)."""
    if storage is not None and storage.endpoint_url:
        return storage.endpoint_url
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _region(storage: StorageConfig | None) -> str | None:
    if storage is not None and storage.region:
        return storage.region
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def s3_filesystem(storage: StorageConfig | None = None) -> s3fs.S3FileSystem:
    """An s3fs filesystem that knows where S3 is but carries no credential.

    ``skip_instance_cache``: s3fs would otherwise hand back an instance whose session was set
    up under earlier credentials. ``use_listings_cache=False``: a prepare followed by a read
    in one process must see the new objects.
    """
    import s3fs  # deferred: s3fs and botocore are heavy imports, and only S3 paths need them

    storage = storage or StorageConfig()
    kwargs: dict[str, Any] = {
        "skip_instance_cache": True,
        "use_listings_cache": False,
        "config_kwargs": {
            "connect_timeout": storage.connect_timeout,
            "read_timeout": storage.read_timeout,
            "retries": {"max_attempts": storage.max_attempts, "mode": "standard"},
        },
    }
    url = endpoint_url(storage)
    if url:
        kwargs["endpoint_url"] = url
    region = _region(storage)
    if region:
        kwargs["client_kwargs"] = {"region_name": region}
    if storage.profile:
        kwargs["profile"] = storage.profile
    return s3fs.S3FileSystem(**kwargs)


def arrow_filesystem(fs: Any) -> pafs.FileSystem:
    """A pyarrow filesystem over an fsspec one (what Ray Data and Ray Train take)."""
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def resolve_storage(uri: str, storage: StorageConfig | None = None, *, key: str = "run.storage"
                    ) -> tuple[str, pafs.FileSystem | None]:
    """Ray Train's ``(storage_path, storage_filesystem)`` for a local directory or ``s3://bucket/prefix``.

    For S3: the path without its scheme (Ray fails on ``s3://`` with a custom filesystem) and
    the s3fs filesystem wrapped for pyarrow. The bucket is checked now, on the driver, so a
    missing bucket, bad credentials or an unreachable endpoint fail before any worker starts.
    Local: the absolute path and ``None`` (Ray's default local filesystem).
    """
    if is_s3(uri):
        path = strip_s3(uri)
        if not path:
            raise DataError(f"{key}: {uri}: expected s3://BUCKET/PREFIX")
        fs = s3_filesystem(storage)
        with s3_errors(uri, key=key, storage=storage):
            check_bucket(fs, uri)
        return path, arrow_filesystem(fs)
    if "://" in uri and not uri.startswith("file://"):
        raise DataError(f"{key}: {uri}: {uri.split('://', 1)[0]}:// is not supported; use a local path or "
                        "s3://BUCKET/PREFIX")
    raw = uri[len("file://"):] if uri.startswith("file://") else uri
    return os.path.abspath(os.path.expanduser(raw)), None


def check_bucket(fs: Any, uri: str) -> None:
    """Raise (s3fs's own exception) unless the bucket of ``uri`` exists and can be listed."""
    fs.ls(bucket_of(uri), refresh=True)


# ---------------------------------------------------------------------------------------------
# Turning S3 failures into one line


def _aws_file(var: str, default: str) -> str:
    return os.environ.get(var) or os.path.join(os.path.expanduser("~"), ".aws", default)


def looked_at(storage: StorageConfig | None = None) -> str:
    """Where botocore looks for credentials, with which are present: names only, never values."""
    env = [f"{v} ({'set' if os.environ.get(v) else 'unset'})" for v in CREDENTIAL_VARIABLES[:4]]
    files = []
    for var, default in (("AWS_SHARED_CREDENTIALS_FILE", "credentials"), ("AWS_CONFIG_FILE", "config")):
        path = _aws_file(var, default)
        files.append(f"{path} ({'present' if os.path.isfile(path) else 'missing'})")
    profile = (storage.profile if storage and storage.profile else None) or os.environ.get("AWS_PROFILE") or "default"
    return (f"looked at {', '.join(env)}; files {', '.join(files)} (profile {profile!r}); "
            "then container and instance-metadata roles")


def _credential_method(storage: StorageConfig | None) -> str | None:
    try:
        import botocore.session  # deferred: see s3_filesystem

        session = botocore.session.Session(profile=storage.profile if storage and storage.profile else None)
        creds = session.get_credentials()
    except Exception:  # noqa: BLE001 - only used to describe an error already being reported
        return None
    return getattr(creds, "method", None) if creds is not None else None


def _client_error(exc: BaseException) -> tuple[str | None, str]:
    """(S3 error code, message) from a botocore ClientError anywhere in the cause chain."""
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 5:
        response = getattr(e, "response", None)
        if isinstance(response, dict) and "Error" in response:
            err = response["Error"]
            return str(err.get("Code")), str(err.get("Message") or "")
        e = e.__cause__ or e.__context__
        seen += 1
    return None, ""


def s3_error(exc: BaseException, uri: str, *, key: str, storage: StorageConfig | None = None) -> DataError | None:
    """The one-line ``DataError`` for an S3 failure, or None when ``exc`` is not one we know."""
    import botocore.exceptions as bx  # deferred: see s3_filesystem

    where = f"{key}: {uri}" if key else uri
    url = endpoint_url(storage) or "the AWS default endpoint"
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return DataError(f"{where}: no AWS credentials found ({type(exc).__name__}); {looked_at(storage)}. "
                         "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile, on every machine "
                         "that reads the data")
    if isinstance(exc, bx.ProfileNotFound):
        return DataError(f"{where}: AWS profile not found ({exc}); {looked_at(storage)}")
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ConnectionClosedError,
                        bx.ReadTimeoutError, bx.ProxyConnectionError)):
        tries = (storage or StorageConfig()).max_attempts
        timeout = (storage or StorageConfig()).connect_timeout
        return DataError(f"{where}: cannot reach S3 at {url} ({type(exc).__name__}; gave up after {tries} "
                         f"attempt(s), {timeout:g} s connect timeout); check storage.endpoint_url / "
                         "AWS_ENDPOINT_URL and the network")
    code, message = _client_error(exc)
    if code == "NoSuchBucket" or (isinstance(exc, FileNotFoundError) and "bucket does not exist" in str(exc)):
        return DataError(f"{where}: bucket {bucket_of(uri)!r} does not exist (at {url})")
    if code in _REJECTED or (isinstance(exc, PermissionError) and code is None and _rejected_text(str(exc))):
        method = _credential_method(storage)
        source = _CREDENTIAL_METHODS.get(method or "", method or "an unknown source")
        return DataError(f"{where}: S3 rejected the credentials ({code or _rejected_text(str(exc))}); they came "
                         f"from {source}; {looked_at(storage)}")
    if code in _DENIED or isinstance(exc, PermissionError):
        method = _credential_method(storage)
        source = _CREDENTIAL_METHODS.get(method or "", method or "an unknown source")
        return DataError(f"{where}: access denied by S3 ({code or 'PermissionError'}: {message or exc}); "
                         f"credentials came from {source}; check that they may read and write "
                         f"s3://{bucket_of(uri)}")
    return None


def _rejected_text(text: str) -> str:
    if "Access Key Id you provided does not exist" in text:
        return "InvalidAccessKeyId"
    if "signature we calculated does not match" in text:
        return "SignatureDoesNotMatch"
    if "security token" in text and ("invalid" in text or "expired" in text):
        return "InvalidToken"
    return ""


@contextlib.contextmanager
def s3_errors(uri: str, *, key: str, storage: StorageConfig | None = None) -> Iterator[None]:
    """Re-raise any S3 failure in the block as its one-line ``DataError``; others pass through."""
    try:
        yield
    except DataError:
        raise
    except Exception as exc:
        err = s3_error(exc, uri, key=key, storage=storage)
        if err is None:
            raise
        raise err from None
