"""Shared fixtures: a quiet, offline environment, a real S3 server on loopback, synthetic shards."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid

import pytest

# Before anything imports Ray, boto3 or transformers: nothing may leave this machine.
os.environ.update({
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
})
# The node caches (shards, decoded splits, frozen features) of this test session live in a folder
# of its own, never in the user's ~/.cache; every process the tests start inherits it.
_SESSION_CACHE = tempfile.mkdtemp(prefix="vlsm-test-cache-")
os.environ["VLSM_CACHE"] = _SESSION_CACHE


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1, over HTTP; AWS_ENDPOINT_URL points boto3, pyarrow and Ray at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    previous = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    yield endpoint
    if previous is None:
        os.environ.pop("AWS_ENDPOINT_URL", None)
    else:
        os.environ["AWS_ENDPOINT_URL"] = previous
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh, empty bucket; returns its s3:// URI."""
    import boto3

    name = f"vlsm-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"
