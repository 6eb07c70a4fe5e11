"""Where data and results live: a local folder or an object store (``s3://``, ``gs://``, ``abfs://``),
each through its pyarrow.fs filesystem (``SCHEMES``, the table docs/data.md shows); and the one
classification of errors. The floor under the shard store, the node cache and the result store.

Errors come in two kinds, and every layer above sorts them the same way (``is_infrastructure``):

- **bad input**: ``ShardError`` (a dataset, shard, row or setting that cannot be used). It fails the
  same way on every try, so it is recorded (``FAILED.json``, naming the file and the reason) and
  skipped by later launches unless ``--retry-failed``.
- **infrastructure**: storage, network, node and memory faults (``OSError``, ``StorageUnavailable``
  and a full disk among them, a lost Ray node or worker, out of memory). The library that owns the
  call retries them with backoff (S3 requests: pyarrow's ``retry_strategy`` and botocore's retries,
  ``s3_attempts()`` tries each; GCS requests for ``GCS_RETRY_SECONDS``; Azure's, its SDK's own retries);
  what still fails is raised (pyarrow raises OSError for all three), Ray Tune retries the trial, and a trial
  that still fails is left neither DONE nor FAILED, so the next launch runs it.
Anything else (a bug) is recorded as FAILED with its cause, like bad input.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import sys
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

import pyarrow.fs as pafs

# Tries of each S3 request (the AWS SDKs' "standard" retry mode: a random wait of up to 2**attempt s,
# 20 s at most, between two tries). 10 tries ride out about a minute of outage (41 s at the least,
# 84 s on average) before the error reaches the caller; then Ray Tune's trial retry takes over.
# $VLSM_S3_ATTEMPTS sets another number (1: no retries), on every node that should use it.
S3_ATTEMPTS = 10
S3_ATTEMPTS_ENV = "VLSM_S3_ATTEMPTS"
# How long the GCS client retries one request (pyarrow sets a time, not a number of tries): the same
# minute or so that S3's tries ride out, which the study lease's staleness (orchestrator/lease.STALE_S)
# assumes of every request. Left unset, the client's own limit is 15 minutes.
GCS_RETRY_SECONDS = 60
# The storage account of az://CONTAINER/PREFIX URIs (the variable adlfs, and so pandas, reads too).
AZURE_ACCOUNT_ENV = "AZURE_STORAGE_ACCOUNT_NAME"


class ShardError(Exception):
    """A dataset, shard or row that cannot be used; the message names it and what to do."""


class StorageUnavailable(OSError):
    """Storage could not be read or written after its retries: an infrastructure fault (never bad
    input); the message names the file and what to check."""


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path for a local folder or a storage URI, by its scheme (``SCHEMES``);
    an unsupported scheme raises ShardError, one line naming the supported ones.

    S3: endpoint and credentials come from the environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``
    / ``AWS_PROFILE``, the instance role), the same way boto3 and Ray find them; the bucket's region
    (on AWS itself, without an endpoint) from the bucket. Every
    request is tried ``s3_attempts()`` times with backoff. A URI with credentials in it
    (``s3://key:secret@bucket``) is refused: they would be copied into specs, logs and reports. GCS and
    Azure likewise: ``_gcs_filesystem``, ``_azure_filesystem``.
    """
    store = SCHEMES.get(_scheme(uri))
    if store is None:
        raise ShardError(f"unsupported storage URI {_shown(uri)!r}: use a local folder or one of "
                         f"{', '.join(f'{name}://' for name in SCHEMES if name)}")
    return store.build(uri)


def is_remote(uri: str) -> bool:
    """Whether ``uri`` is in object storage, which every node reaches: not a local path or ``file://``
    (this machine's disk), nor an unsupported scheme (``filesystem_for`` refuses those)."""
    store = SCHEMES.get(_scheme(uri))
    return bool(store and store.remote)


def conditional_writes(uri: str) -> bool:
    """Whether ``write_if_unchanged`` is one atomic step at ``uri`` (local folders and S3), rather than
    best effort (GCS and Azure, where pyarrow has no conditional write: ``_compare_then_write``)."""
    store = SCHEMES.get(_scheme(uri))
    return bool(store and store.conditional_writes)


def _scheme(uri: str) -> str:
    """``s3`` of ``s3://bucket``, as written; "" for a local path."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", uri)
    return match.group(1) if match else ""


def _shown(uri: str) -> str:
    """``uri`` fit for a message: never what is before its last "@" (it may hold a secret), nor its
    options (a SAS token is one)."""
    scheme, separator, rest = uri.partition("://")
    if not separator:
        return uri
    if "@" in rest:
        rest = f"...@{rest.rpartition('@')[2]}"
    return f"{scheme}://{rest.split('?')[0].split('#')[0]}"


def _local_filesystem(path: str) -> tuple[pafs.LocalFileSystem, str]:
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def _file_filesystem(uri: str) -> tuple[pafs.LocalFileSystem, str]:
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise ShardError(f"refused {_shown(uri)!r}: a file:// URI names a folder on this machine (file:///PATH); "
                         "file://host/... and options are not supported")
    return pafs.LocalFileSystem(), os.path.abspath(urllib.parse.unquote(parts.path))


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
        raise ShardError(f"refused {_shown(uri)}?...: s3:// URIs take no options (an option may hold a secret, so "
                         "it is not shown). Set the endpoint in AWS_ENDPOINT_URL "
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


def _gcs_filesystem(uri: str) -> tuple[pafs.GcsFileSystem, str]:
    """``gs://BUCKET/PREFIX`` (or ``gcs://``): credentials as Google's client libraries find them
    (``GOOGLE_APPLICATION_CREDENTIALS``, the instance's service account, gcloud's application-default
    login); each request retried for ``GCS_RETRY_SECONDS``. Credentials or options in the URI are refused."""
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme
    if "@" in parts.netloc or ":" in parts.netloc:  # bucket names have neither
        raise ShardError(f"refused {_shown(uri)}: a storage URI must not hold credentials. Give them in the "
                         "environment (GOOGLE_APPLICATION_CREDENTIALS) or through the instance's service account, "
                         f"and write {scheme}://BUCKET/PREFIX.")
    if parts.query or parts.fragment:  # a path is appended to a storage URI: an option would end up mid-path
        raise ShardError(f"refused {_shown(uri)}?...: {scheme}:// URIs take no options (nor credentials); write "
                         f"{scheme}://BUCKET/PREFIX")
    fs = pafs.GcsFileSystem(retry_time_limit=timedelta(seconds=GCS_RETRY_SECONDS))
    return fs, f"{parts.netloc}{parts.path}".rstrip("/")


# abfs://CONTAINER@ACCOUNT.dfs.core.windows.net: the account (3-24 lowercase letters and digits), the
# service (dfs or blob) and the cloud's domain (core.windows.net, or a national cloud's).
AZURE_HOST = re.compile(r"([a-z0-9]{3,24})\.(?:dfs|blob)(\.[a-z0-9.-]+)")


def _azure_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """``abfs[s]://CONTAINER@ACCOUNT.dfs.core.windows.net/PREFIX``, or ``az://CONTAINER/PREFIX`` with the
    account in ``$AZURE_STORAGE_ACCOUNT_NAME``; HTTPS either way. Credentials: Azure's
    DefaultAzureCredential (``AZURE_CLIENT_ID`` / ``AZURE_TENANT_ID`` / ``AZURE_CLIENT_SECRET``, workload
    or managed identity, ``az login``). Keys, SAS tokens and options in the URI are refused."""
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme
    form = (f"{scheme}://CONTAINER/PREFIX" if scheme == "az"
            else f"{scheme}://CONTAINER@ACCOUNT.dfs.core.windows.net/PREFIX")
    # A key ("container:key@account"; it may hold "/", which ends urlsplit's netloc early) has a ":".
    if ":" in parts.netloc or (scheme == "az" and "@" in uri):
        raise ShardError(f"refused {_shown(uri)}: a storage URI must not hold credentials. Give them in the "
                         "environment (AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET) or through a "
                         f"managed identity or `az login`, and write {form}.")
    if parts.query or parts.fragment:  # a SAS token is a query
        raise ShardError(f"refused {_shown(uri)}?...: {scheme}:// URIs take no options (nor SAS tokens); write "
                         f"{form}")
    container, _, host = parts.netloc.rpartition("@")
    if scheme == "az":
        container, account, domain = host, os.environ.get(AZURE_ACCOUNT_ENV), ".core.windows.net"
        if not account:
            raise ShardError(f"{_shown(uri)}: az:// URIs take the storage account from ${AZURE_ACCOUNT_ENV}: set "
                             "it, or write abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/PREFIX")
    else:
        match = AZURE_HOST.fullmatch(host)
        if not container or not match:
            raise ShardError(f"{_shown(uri)}: expected {form} (the container, then the storage account)")
        account, domain = match.groups()
    fs = pafs.AzureFileSystem(account, blob_storage_authority=f".blob{domain}", dfs_storage_authority=f".dfs{domain}")
    return fs, f"{container}{parts.path}".rstrip("/")


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


@dataclass(frozen=True)
class Store:
    """One row of the scheme table: how a URI's filesystem is built, whether every node reaches it, and
    whether ``write_if_unchanged`` is one atomic step there."""

    build: Callable[[str], tuple[pafs.FileSystem, str]]
    remote: bool
    conditional_writes: bool


# The scheme table (docs/data.md, "Where data and results can live"); "" is a local path. Azure only
# where this pyarrow has it. hdfs:// is left out: pyarrow's needs a JVM and Hadoop's libraries.
SCHEMES: dict[str, Store] = {
    "": Store(_local_filesystem, remote=False, conditional_writes=True),
    "file": Store(_file_filesystem, remote=False, conditional_writes=True),
    "s3": Store(_s3_filesystem, remote=True, conditional_writes=True),
    "gs": Store(_gcs_filesystem, remote=True, conditional_writes=False),
    "gcs": Store(_gcs_filesystem, remote=True, conditional_writes=False),
    **({scheme: Store(_azure_filesystem, remote=True, conditional_writes=False) for scheme in ("abfs", "abfss", "az")}
       if hasattr(pafs, "AzureFileSystem") else {}),
}


def absolute_uri(uri: str) -> str:
    """URIs (``s3://``, ``gs://``, ...) as they are; local paths made absolute, since Ray trials run in
    other folders."""
    return uri if _scheme(uri) else os.path.abspath(os.path.expanduser(uri))


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
    """Write ``data`` at ``uri`` (a local path or storage URI) only if the file there is still
    ``expected`` byte for byte, or, with ``expected`` None, only if there is no file: one atomic step,
    so of two writers with the same ``expected`` exactly one succeeds. True if written; False if the
    condition did not hold (another writer got there first). Readers see the old file or the new, whole.

    S3 (pyarrow has no conditional write, so through boto3: ``s3_client``): ``PutObject`` with
    ``If-None-Match: *``, or with ``If-Match`` on the ETag of the object just read and compared. A local
    folder: a hard link to a complete temporary file (the link fails where the name exists), or a rename
    over the file under an exclusive ``flock`` on it, once it is checked to be still the file at that
    name. Other storage errors raise OSError (S3's, GCS's and Azure's, after retries: StorageUnavailable)
    naming the URI.

    GCS and Azure (``conditional_writes`` False): pyarrow offers no conditional write there, so this is
    best effort, a read, a comparison and then a write (``_compare_then_write``, which says so once per
    process): two writers in the same second can both succeed. For the study lease that means two
    drivers launched on one study at the same moment may both run; for DONE markers, that two runs of
    one experiment may both write it (harmless: each file whole, of the same experiment).
    """
    if _scheme(uri) == "s3":
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
    fs, path = filesystem_for(uri)
    if not conditional_writes(uri):
        return _compare_then_write(fs, path, uri, data, expected)
    import fcntl

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


def _compare_then_write(fs: pafs.FileSystem, path: str, uri: str, data: bytes, expected: bytes | None) -> bool:
    """``write_if_unchanged`` where the store has no conditional write: best effort, not one atomic step."""
    _warn_not_conditional(_scheme(uri))
    try:
        if read_if_exists(fs, path) != expected:
            return False
        write_atomically(fs, path, data)
        return True
    except StorageUnavailable:
        raise
    except OSError as e:
        raise StorageUnavailable(f"{uri}: {e}") from None


@cache  # once per process and scheme
def _warn_not_conditional(scheme: str) -> None:
    print(f"warning: {scheme}:// has no conditional write through pyarrow: the study lease (one driver per study) "
          "and DONE markers there are best effort, so do not launch two drivers on one study at once "
          "(docs/data.md, 'Where data and results can live')", file=sys.stderr)
