"""Where data and results live: a local folder or ``s3://`` through pyarrow.fs; and the one
classification of errors. The floor under the shard store, the node cache and the result store.

Errors come in two kinds, and every layer above sorts them the same way (``is_infrastructure``):

- **bad input**: ``ShardError`` (a dataset, shard, row or setting that cannot be used). It fails the
  same way on every try, so it is recorded (``FAILED.json``, naming the file and the reason) and
  skipped by later launches unless ``--retry-failed``.
- **infrastructure**: storage, network, node and memory faults (``OSError``, ``StorageUnavailable``
  and a full disk among them, a lost Ray node or worker, out of memory). The library that owns the
  call retries them with backoff (S3 requests: pyarrow's ``retry_strategy`` and botocore's retries,
  ``s3_attempts()`` tries each); what still fails is raised, Ray Tune retries the trial, and a trial
  that still fails is left neither DONE nor FAILED, so the next launch runs it.
Anything else (a bug) is recorded as FAILED with its cause, like bad input.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import sys
import urllib.parse
import uuid
from functools import cache

import pyarrow.fs as pafs

# Tries of each S3 request (the AWS SDKs' "standard" retry mode: a random wait of up to 2**attempt s,
# 20 s at most, between two tries). 10 tries ride out about a minute of outage (41 s at the least,
# 84 s on average) before the error reaches the caller; then Ray Tune's trial retry takes over.
# $VLSM_S3_ATTEMPTS sets another number (1: no retries), on every node that should use it.
S3_ATTEMPTS = 10
S3_ATTEMPTS_ENV = "VLSM_S3_ATTEMPTS"


class ShardError(Exception):
    """A dataset, shard or row that cannot be used; the message names it and what to do."""


class StorageUnavailable(OSError):
    """Storage could not be read or written after its retries: an infrastructure fault (never bad
    input); the message names the file and what to check."""


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path for a local folder or an ``s3://bucket/prefix`` URI.

    S3: endpoint and credentials come from the environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``
    / ``AWS_PROFILE``, the instance role), the same way boto3 and Ray find them; the bucket's region
    (on AWS itself, without an endpoint) from the bucket. Every
    request is tried ``s3_attempts()`` times with backoff. A URI with credentials in it
    (``s3://key:secret@bucket``) is refused: they would be copied into specs, logs and reports.
    """
    if uri.startswith("s3://"):
        return _s3_filesystem(uri)
    if "://" in uri:
        raise ShardError(f"unsupported storage URI {uri!r}: use a local folder or s3://bucket/prefix")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def _s3_filesystem(uri: str) -> tuple[pafs.S3FileSystem, str]:
    parts = urllib.parse.urlsplit(uri)
    # "key:secret@bucket"; a secret key may hold "/", which ends urlsplit's netloc early. Bucket names
    # have neither ":" nor "@". Never echo what is before the last "@": it holds the secret.
    if "@" in parts.netloc or ":" in parts.netloc:
        shown = f"s3://...@{uri.rpartition('@')[2]}" if "@" in uri else "s3://..."
        raise ShardError(f"refused {shown}: a storage URI must not hold credentials. Give them in the "
                         "environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) or through "
                         "the instance role, and write s3://BUCKET/PREFIX.")
    if parts.query or parts.fragment:  # a path is appended to a storage URI: an option would end up mid-path
        raise ShardError(f"refused {uri!r}: s3:// URIs take no options. Set the endpoint in AWS_ENDPOINT_URL "
                         "(or AWS_ENDPOINT_URL_S3); the region comes from the bucket.")
    bucket = parts.netloc
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = None if endpoint or not bucket else _bucket_region(bucket)
    fs = pafs.S3FileSystem(region=region, endpoint_override=endpoint,
                           retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=s3_attempts()))
    return fs, f"{bucket}{parts.path}".rstrip("/")


def s3_attempts() -> int:
    """Tries of each S3 request: ``$VLSM_S3_ATTEMPTS``, else ``S3_ATTEMPTS``."""
    value = os.environ.get(S3_ATTEMPTS_ENV) or str(S3_ATTEMPTS)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"${S3_ATTEMPTS_ENV} is {value!r}: expected a whole number of tries, 1 or more")
    return int(value)


@cache
def _bucket_region(bucket: str) -> str:
    """A bucket's region, asked of S3 once per process (as ``FileSystem.from_uri`` does each time)."""
    return pafs.resolve_s3_region(bucket)


def s3_client():
    """A boto3 S3 client for what pyarrow cannot do (conditional writes), with the retries of
    ``filesystem_for``'s requests: botocore's "standard" mode, ``s3_attempts()`` tries. Endpoint, region
    and credentials come from the environment, as for pyarrow. One per endpoint and process (boto3's
    clients are thread-safe): an instance role's credentials are fetched once, not at every heartbeat."""
    return _s3_client(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"), s3_attempts())


@cache
def _s3_client(endpoint: str | None, attempts: int):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, config=Config(retries={"mode": "standard",
                                                                            "max_attempts": attempts}))


def absolute_uri(uri: str) -> str:
    """``s3://`` URIs as they are; local paths made absolute, since Ray trials run in other folders."""
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def read_if_exists(fs: pafs.FileSystem, path: str) -> bytes | None:
    """A small file's bytes; None where there is no such file (any other error is raised: a storage
    fault is not a missing file)."""
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_atomically(fs: pafs.FileSystem, path: str, data: bytes, hidden: bool = False) -> None:
    """Replace the file at ``path`` whole: readers, and a kill at any moment, see the old file or the
    new. ``hidden``: the temporary file's name starts with "." (pyarrow.dataset and pandas skip it in a
    folder they read). A write that fails leaves no temporary file behind; a full disk raises
    ``StorageFull`` naming the folder."""
    folder, name = posixpath.split(path)
    tmp = posixpath.join(folder, f"{'.' if hidden else ''}{name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise_if_full(e, folder, name)
        raise


def raise_if_full(error: BaseException, folder: str, name: str) -> None:
    """Raise ``StorageFull`` naming ``folder`` where ``error`` is a full disk (ENOSPC, EDQUOT)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        raise StorageFull(f"disk full: no space left in {folder} to write {name}. Free space on that disk, "
                          "or use a folder on a larger one (--storage, --data); then run the same command "
                          "again.") from None


class StorageFull(StorageUnavailable):
    """A full disk (errno ENOSPC): under a local ``--storage`` folder, or a node's cache
    (``datasets.disk.DiskFullError``). An infrastructure fault; the message names the folder."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __reduce__(self):  # pickled as its message: Ray sends a trial's error to the driver
        return type(self), (self.strerror,)

    def __str__(self) -> str:  # the message alone, without "[Errno 28]"
        return self.strerror


# -- the classification of errors (the module's docstring) -----------------------------------------
# Ray's errors of a lost node, worker or actor, or of memory: infrastructure. Looked up by name in
# ray.exceptions where Ray is loaded (an error from Ray means it is), so this floor never imports Ray.
RAY_INFRASTRUCTURE_ERRORS = ("RayActorError", "WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError",
                             "OutOfMemoryError", "OutOfDiskError", "ObjectLostError", "ObjectStoreFullError")


# OSErrors of a path that is not what it should be: every try meets them again (the message names it).
NOT_THERE = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


def innermost_error(error: BaseException) -> BaseException:
    """The exception a trial raised, out of Ray's and Tune's wrappers (``RayTaskError.cause``, and any
    wrapper with a ``cause``). ``__cause__`` is not followed: a ShardError raised from an OSError is
    bad input, as its type says."""
    seen = set()
    while isinstance(getattr(error, "cause", None), BaseException) and id(error) not in seen:
        seen.add(id(error))
        error = error.cause
    return error


def is_infrastructure(error: BaseException) -> bool:
    """Whether ``error`` (or what Ray wrapped in it) is a fault of storage, network, node or memory,
    which another try may not meet, rather than of the input or the code: an OSError (but a missing
    file, ``NOT_THERE``), MemoryError, a lost Ray node, worker or actor, CUDA out of memory."""
    error = innermost_error(error)
    if isinstance(error, (ShardError, *NOT_THERE)):
        return False
    if isinstance(error, (OSError, MemoryError)):  # storage and network (ConnectionError, TimeoutError too)
        return True
    ray_errors = sys.modules.get("ray.exceptions")
    if ray_errors and isinstance(error, tuple(getattr(ray_errors, n) for n in RAY_INFRASTRUCTURE_ERRORS
                                              if hasattr(ray_errors, n))):
        return True
    torch = sys.modules.get("torch")
    return bool(torch and isinstance(error, getattr(torch, "OutOfMemoryError", ())))  # CUDA out of memory


def error_text(error: BaseException | str) -> str:
    """What went wrong, in words that name the cause: ``OSError: When reading ...`` (the innermost
    exception's type and message), never a wrapper's bare ``RayTaskError(OSError)()``."""
    if isinstance(error, str):  # Tune's text of an error it could not keep: its last line names it
        lines = [line.strip() for line in error.splitlines() if line.strip() and not line[0].isspace()]
        return lines[-1] if lines else "unknown error"
    error = innermost_error(error)
    message = str(error).strip()
    ray_errors = sys.modules.get("ray.exceptions")
    if ray_errors and isinstance(error, ray_errors.RayTaskError):  # no cause kept: its traceback's last line
        return error_text(getattr(error, "traceback_str", "") or message)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def write_if_unchanged(uri: str, data: bytes, expected: bytes | None = None) -> bool:
    """Write ``data`` at ``uri`` (a local path or ``s3://`` URI) only if the file there is still
    ``expected`` byte for byte, or, with ``expected`` None, only if there is no file: one atomic step,
    so of two writers with the same ``expected`` exactly one succeeds. True if written; False if the
    condition did not hold (another writer got there first). Readers see the old file or the new, whole.

    S3 (pyarrow has no conditional write, so through boto3: ``s3_client``): ``PutObject`` with
    ``If-None-Match: *``, or with ``If-Match`` on the ETag of the object just read and compared. A local
    folder: a hard link to a complete temporary file (the link fails where the name exists), or a rename
    over the file under an exclusive ``flock`` on it, once it is checked to be still the file at that
    name. Other storage errors raise OSError (S3's, after retries: StorageUnavailable) naming the URI.
    """
    if uri.startswith("s3://"):
        from botocore.exceptions import BotoCoreError, ClientError

        parts = urllib.parse.urlsplit(uri)
        bucket, key = parts.netloc, parts.path.lstrip("/")
        s3 = s3_client()
        try:
            if expected is None:
                s3.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
                return True
            current = s3.get_object(Bucket=bucket, Key=key)
            if current["Body"].read() != expected:
                return False
            s3.put_object(Bucket=bucket, Key=key, Body=data, IfMatch=current["ETag"])
            return True
        except ClientError as e:
            # 412: the condition failed; 409: a concurrent write or delete won; NoSuchKey: it is gone.
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict",
                                                              "NoSuchKey"):
                return False
            raise StorageUnavailable(f"{uri}: {e}") from None
        except BotoCoreError as e:  # unreachable endpoint, no credentials
            raise StorageUnavailable(f"{uri}: {e}") from None
    import fcntl

    path = os.path.abspath(os.path.expanduser(uri))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        try:
            with open(tmp, "wb") as out:
                out.write(data)
        except OSError as e:
            raise_if_full(e, os.path.dirname(path), os.path.basename(path))
            raise
        if expected is None:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        try:
            current = open(path, "rb+")  # opened for writing: NFS grants exclusive locks only then
        except FileNotFoundError:
            return False
        with current:
            fcntl.flock(current, fcntl.LOCK_EX)  # every replacer of this file takes it: one at a time
            try:
                still_there = os.path.samestat(os.fstat(current.fileno()), os.stat(path))
            except FileNotFoundError:
                return False
            if not still_there or current.read() != expected:
                return False
            os.replace(tmp, path)
            return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
