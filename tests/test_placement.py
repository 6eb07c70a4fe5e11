"""Fit before launch: every trial goes to a node type that holds it, or is refused before anything starts."""

import json

import pytest
from cli import REPO, run_cli
from pyarrow.fs import FileSelector, FileType

from datasets.shards import ShardStore, filesystem_for
from datasets.synthetic import split_rows
from orchestrator.placement import (
    Placement,
    Refusal,
    node_types_from_cluster_file,
    place,
)
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES
from search_spaces.grid import STUDY_BLOCKS

CLUSTER = REPO / "cluster.yaml"


def first(block: str, model: str) -> dict:
    spec = next(s for s in STUDY_BLOCKS[block].specs() if s.model == model)
    return {**spec.to_dict(), "id": spec.id}


def test_the_shipped_cluster_holds_every_trial_of_the_study_and_of_end_to_end():
    types = {t.name: t for t in node_types_from_cluster_file(CLUSTER)}
    assert types["gpu_1x_a10g"].accelerator == "A10G" and types["gpu_1x_l40s"].accelerator == "L40S"
    # The study's CRIS end to end and decoder-only CLIPSeg fit an A10G, and ask for no particular type.
    for spec in (first("individual", "cris"), first("individual", "clipseg")):
        placed = place(spec, list(types.values()))
        assert isinstance(placed, Placement) and placed.node_type.accelerator == "A10G"
        assert not any(k.startswith("accelerator_type:") for k in placed.resources)
    # End-to-end CLIPSeg at batch 128 (~39 GiB) only fits the L40S type, and is routed there.
    placed = place(first("end_to_end", "clipseg"), list(types.values()))
    assert placed.need_gib > 30 and placed.node_type.name == "gpu_1x_l40s"
    assert placed.resources == {"cpu": 2, "gpu": 1.0, "accelerator_type:L40S": 0.001}


def test_a_trial_no_node_type_holds_is_refused_with_its_need_and_remedies():
    types = node_types_from_cluster_file(CLUSTER)
    # An hpo trial of CRIS holds eight models at once; at batch 128 that is ~65 GiB.
    cris = {**first("individual", "cris"), "batch_size": 128}
    refused = place(cris, types, replicas=8)
    assert isinstance(refused, Refusal) and refused.need_gib > 45 and refused.largest.accelerator == "L40S"
    text = str(refused)
    assert cris["id"] in text and "L40S" in text and "bf16" in text and "--grad-accum 2" in text
    # hpo's sampled batches are split into micro-batches instead: the same batch, a GPU that holds it.
    split = place(cris, types, replicas=8, auto_accumulate=True)
    assert isinstance(split, Placement) and split.grad_accum == 2 and split.node_type.accelerator == "L40S"


def test_plan_reports_every_study_trial_placeable_on_the_shipped_cluster():
    result = run_cli("plan", "grid", "--profile", "study", "--gpus", "8", "--block", "individual", "--block",
                     "frozen", "--block", "pooled", "--block", "mimic", "--block", "end_to_end", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "fit NO node type" not in result.stdout and "216 on gpu_1x_l40s" in result.stdout
    assert "288 on gpu_1x_a10g" in result.stdout


@pytest.fixture
def two_gpu_types(s3_endpoint):
    """A local Ray of three nodes: a CPU head, one A10G node and one L40S node (logical GPUs). Started
    after the S3 server, so trials inherit its endpoint."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    try:
        a10g = cluster.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:A10G": 1})
        l40s = cluster.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:L40S": 1})
        cluster.wait_for_nodes()
        yield cluster, a10g, l40s
    finally:
        cluster.shutdown()  # stops its own processes by handle, never `ray stop`


@pytest.mark.slow
def test_launch_routes_a_large_trial_to_the_large_gpu_and_refuses_one_too_large(tmp_path, s3_bucket, two_gpu_types):
    cluster, _, l40s = two_gpu_types
    data, storage = tmp_path / "shards", f"{s3_bucket}/runs"  # several nodes: results go to object storage
    ShardStore(str(data)).write_dataset("kvasir_polyp", split_rows("kvasir_polyp", (("test", 2),), seed=1),
                                        NON_RADIOLOGY_PROMPT_TYPES, prompt_family="non_radiology")
    # Full-size CLIPSeg, random weights, zero-shot on two test images: with an evaluation batch of 600
    # it needs ~25 GiB (more than an A10G), with 1,300 ~53 GiB (more than any GPU here).
    base = ("grid", "--profile", "study", "--block", "zeroshot", "--only", "clipseg-zeroshot-kvasir_polyp-p1-*",
            "--set", "weights=null", "--data", str(data), "--storage", str(storage), "--address", cluster.address,
            "--cpus-per-trial", "1", "--verbose", "0")
    fs, root = filesystem_for(f"{storage}/study")

    too_large = run_cli(*base, "--set", "batch_size=1300", timeout=300)
    assert too_large.returncode == 2, too_large.stdout + too_large.stderr
    assert "fit no node type of the running Ray cluster; nothing was started" in too_large.stderr
    assert "clipseg-zeroshot-kvasir_polyp-p1-" in too_large.stderr and "L40S (45 GiB" in too_large.stderr
    assert "Remedies, in order: 1) bf16" in too_large.stderr
    assert fs.get_file_info(f"{root}/tune").type == FileType.NotFound  # refused before Tune started a trial

    large = run_cli(*base, "--set", "batch_size=600", timeout=600)
    assert large.returncode == 0, large.stdout[-3000:] + large.stderr[-3000:]
    [info] = [i for i in fs.get_file_info(FileSelector(f"{root}/experiments", recursive=True))
              if i.base_name == "result.json"]
    with fs.open_input_stream(info.path) as f:
        result = json.loads(f.read())
    assert result["run"]["node_id"] == l40s.node_id
    assert result["run"]["resources"].get("accelerator_type:L40S") == pytest.approx(0.001)
    assert fs.get_file_info(f"{root}/experiments/{result['experiment_id']}/DONE").type == FileType.File


def test_a_gpu_of_unknown_memory_is_not_a_reason_to_refuse():
    from orchestrator.placement import NodeType

    spec = first("end_to_end", "clipseg")
    types = [NodeType("a10g", 1, "A10G"), NodeType("workstation", 1, "RTX-A6000")]
    placed = place(spec, types)
    assert isinstance(placed, Placement) and placed.unchecked and "RTX-A6000" in placed.unchecked
    assert not any(k.startswith("accelerator_type:") for k in placed.resources)
    # A trial that a known GPU holds is placed there as usual.
    assert place(first("individual", "cris"), types).node_type.accelerator == "A10G"
