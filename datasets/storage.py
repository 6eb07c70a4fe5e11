"""Where data and results live: a local folder or ``s3://`` through pyarrow.fs, and the one error
of unusable input. The floor under the shard store, the node cache and the result store."""

from __future__ import annotations

import os
import uuid

import pyarrow.fs as pafs


class ShardError(Exception):
    """A dataset, shard or row that cannot be used; the message names it and what to do."""


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path for a local folder or an ``s3://`` URI.

    S3 endpoint and credentials come from the environment (``AWS_ENDPOINT_URL`` and friends),
    the same way boto3 and Ray find them.
    """
    if uri.startswith("s3://"):
        return pafs.FileSystem.from_uri(uri)
    if "://" in uri:
        raise ShardError(f"unsupported storage URI {uri!r}: use a local folder or s3://bucket/prefix")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


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


def write_atomically(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)
