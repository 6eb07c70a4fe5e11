"""The scheme table of datasets/storage.py: which pyarrow filesystem each storage URI gets, which URIs
are remote object storage, and the one-line refusals (an unsupported scheme, credentials or options in a
URI). S3 runs against the loopback server; GCS and Azure are checked by construction (building their
filesystems makes no request), and their network errors by a request to a closed loopback port."""

from __future__ import annotations

import datetime
import os

import pyarrow.fs as pafs
import pytest

from datasets.storage import (
    GCS_RETRY_SECONDS,
    ShardError,
    _compare_then_write,
    conditional_writes,
    filesystem_for,
    is_infrastructure,
    is_remote,
    write_if_unchanged,
)

AZURE = hasattr(pafs, "AzureFileSystem")
needs_azure = pytest.mark.skipif(not AZURE, reason="this pyarrow has no AzureFileSystem")


def options(fs: pafs.FileSystem) -> dict:
    """The options a pyarrow filesystem was built with (what it pickles)."""
    return fs.__reduce__()[1][0]


def test_local_paths_and_file_uris_are_the_local_filesystem(tmp_path):
    fs, path = filesystem_for(str(tmp_path / "runs"))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "runs")
    assert filesystem_for("~/runs")[1] == os.path.expanduser("~/runs")
    assert filesystem_for("runs")[1] == os.path.abspath("runs")
    fs, path = filesystem_for(f"file://{tmp_path}/runs/")
    assert isinstance(fs, pafs.LocalFileSystem) and path == f"{tmp_path}/runs"
    assert not is_remote(str(tmp_path)) and not is_remote("runs") and not is_remote(f"file://{tmp_path}")
    with pytest.raises(ShardError, match="file://host"):
        filesystem_for("file://host/runs")  # another machine's disk


def test_s3_uris_are_s3_on_the_loopback_server(s3_bucket):
    fs, path = filesystem_for(f"{s3_bucket}/runs/")
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{s3_bucket.removeprefix('s3://')}/runs"
    with fs.open_output_stream(f"{path}/a.txt") as out:
        out.write(b"through the table")
    assert fs.open_input_stream(f"{path}/a.txt").read() == b"through the table"
    assert is_remote(s3_bucket) and conditional_writes(s3_bucket)
    assert write_if_unchanged(f"{s3_bucket}/runs/DONE", b"1") and not write_if_unchanged(f"{s3_bucket}/runs/DONE", b"2")


@pytest.mark.parametrize("uri", ["gs://lab-bucket/vlsm/runs/", "gcs://lab-bucket/vlsm/runs"])
def test_gs_uris_are_gcs(uri):
    fs, path = filesystem_for(uri)
    assert isinstance(fs, pafs.GcsFileSystem) and path == "lab-bucket/vlsm/runs"
    assert options(fs)["retry_time_limit"] == datetime.timedelta(seconds=GCS_RETRY_SECONDS)
    assert not options(fs)["anonymous"]  # credentials as Google's libraries find them
    assert is_remote(uri) and not conditional_writes(uri)


@needs_azure
def test_abfs_uris_are_azure():
    for uri in ("abfs://runs@lab.dfs.core.windows.net/vlsm/", "abfss://runs@lab.blob.core.windows.net/vlsm"):
        fs, path = filesystem_for(uri)
        assert isinstance(fs, pafs.AzureFileSystem) and path == "runs/vlsm", uri
        assert is_remote(uri) and not conditional_writes(uri)
    assert filesystem_for("abfs://runs@lab.dfs.core.windows.net/vlsm")[0] == pafs.AzureFileSystem("lab")
    national = options(filesystem_for("abfs://runs@lab.dfs.core.chinacloudapi.cn/vlsm")[0])
    assert (national["account_name"], national["blob_storage_authority"], national["dfs_storage_authority"]) == (
        "lab", ".blob.core.chinacloudapi.cn", ".dfs.core.chinacloudapi.cn")


@needs_azure
def test_az_uris_take_the_account_from_the_environment(monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "lab")
    fs, path = filesystem_for("az://runs/vlsm/")
    assert isinstance(fs, pafs.AzureFileSystem) and path == "runs/vlsm" and fs == pafs.AzureFileSystem("lab")
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_NAME")
    with pytest.raises(ShardError, match="AZURE_STORAGE_ACCOUNT_NAME"):
        filesystem_for("az://runs/vlsm")


@pytest.mark.parametrize("uri", ["ftp://user:hunter2@host/runs", "http://host/runs", "hdfs://namenode/runs",
                                 "S3://bucket/runs"])
def test_an_unsupported_scheme_is_one_line_naming_the_supported_ones(uri):
    with pytest.raises(ShardError) as refused:
        filesystem_for(uri)
    message = str(refused.value)
    assert "\n" not in message and "unsupported storage URI" in message
    assert all(scheme in message for scheme in ("s3://", "gs://", "file://", *(("abfs://", "az://") if AZURE else ())))
    assert "hunter2" not in message
    assert not is_remote(uri)


@pytest.mark.parametrize("uri", [
    "s3://bucket/runs?secret_key=hunter2", "gs://key:hunter2@bucket/runs", "gs://bucket/runs?access_token=hunter2",
    *(["abfs://runs:hunter2@lab.dfs.core.windows.net/vlsm", "abfs://runs:a/hunter2==@lab.dfs.core.windows.net/x",
       "abfs://runs@lab.dfs.core.windows.net/vlsm?sig=hunter2", "az://runs/vlsm?sv=1&sig=hunter2"] if AZURE else []),
])
def test_credentials_or_options_in_a_uri_are_refused_without_echoing_them(uri, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "lab")
    with pytest.raises(ShardError) as refused:
        filesystem_for(uri)
    assert "hunter2" not in str(refused.value) and "\n" not in str(refused.value)
    assert str(refused.value).startswith("refused "), refused.value


@needs_azure
def test_an_abfs_uri_without_container_and_account_says_the_form():
    with pytest.raises(ShardError, match="CONTAINER@ACCOUNT.dfs.core.windows.net"):
        filesystem_for("abfs://lab.dfs.core.windows.net/runs")


def test_without_conditional_writes_the_lease_compares_then_writes_and_warns_once(tmp_path, capsys):
    fs, path = pafs.LocalFileSystem(), f"{tmp_path}/driver.json"
    assert _compare_then_write(fs, path, "gs://b/driver.json", b"first", None)
    assert not _compare_then_write(fs, path, "gs://b/driver.json", b"second", None)  # there is one now
    assert not _compare_then_write(fs, path, "gs://b/driver.json", b"second", b"not it")
    assert _compare_then_write(fs, path, "gs://b/driver.json", b"second", b"first")
    assert open(path, "rb").read() == b"second"
    warned = [line for line in capsys.readouterr().err.splitlines() if "best effort" in line]
    assert len(warned) == 1 and "gs://" in warned[0], warned


def test_gcs_and_azure_network_errors_are_infrastructure():
    """A store that cannot be reached (a closed port on loopback) raises OSError: an infrastructure
    fault, which the trial's retry and the next launch handle, never a FAILED record."""
    gcs = pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override="127.0.0.1:9",
                             retry_time_limit=datetime.timedelta(seconds=1))
    stores = [(gcs, "bucket/runs/DONE")]
    if AZURE:
        closed = {"blob_storage_authority": "127.0.0.1:9", "dfs_storage_authority": "127.0.0.1:9",
                  "blob_storage_scheme": "http", "dfs_storage_scheme": "http"}
        stores.append((pafs.AzureFileSystem("devstoreaccount1", account_key="a2V5", **closed), "runs/DONE"))
    for fs, path in stores:
        with pytest.raises(OSError) as raised:
            fs.open_input_stream(path).read()
        assert is_infrastructure(raised.value), (type(fs).__name__, raised.value)


def test_a_multi_node_launch_takes_any_object_store_and_refuses_this_machines_disk(tmp_path):
    from orchestrator.launch import check_shared_storage
    from trainables.results import StorageError

    for uri in ("s3://bucket/runs", "gs://bucket/runs", *(["abfs://runs@lab.dfs.core.windows.net/x"] if AZURE else [])):
        check_shared_storage(uri, nodes=3)
    for local in (str(tmp_path), f"file://{tmp_path}"):
        with pytest.raises(StorageError, match="local folder, but this Ray cluster has 3 nodes"):
            check_shared_storage(local, nodes=3)
