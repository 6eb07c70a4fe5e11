"""The one launch path: every command that runs Tune trials (grid, zeroshot, ablate, ood, hpo) goes
through here. ``session`` holds the study's lease and a Ray connection (local, or a cluster) for the
launch; ``place_trials`` fits each trial on the cluster's node types before anything starts; ``fit``
runs the trials (or continues a stopped search) with the project's Tune settings; ``Outcome`` is what
a launch did, sorted from storage by ``ResultStore.record_outcome``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from orchestrator.lease import study_lease
from orchestrator.placement import Placement, cluster_node_types, place_all
from trainables.results import StorageError


@dataclass
class Outcome:
    skipped: int = 0  # already finished before this launch
    skipped_failed: list[str] = field(default_factory=list)  # failed before this launch, not retried
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # id -> error
    unfinished: list[str] = field(default_factory=list)  # stopped before the end, e.g. by Ctrl-C


def check_shared_storage(storage: str, nodes: int) -> None:
    """On several nodes, results and checkpoints must go where every node can write: object storage."""
    if nodes > 1 and "://" not in storage:
        raise StorageError(
            f"--storage {storage} is a local folder, but this Ray cluster has {nodes} nodes: trials on other "
            "nodes would write their results and checkpoints to their own disks, and a lost node would take "
            "them along. Use shared storage, e.g. --storage s3://BUCKET/runs.")


def start_ray(address: str | None, fake_gpus: int | None, dashboard: bool) -> bool:
    """Join a cluster, or start a local Ray; returns whether trials should ask for GPUs."""
    import ray

    from trainables.models import WEIGHTS_ROOT_ENV

    # Trials resolve relative weights paths against the folder this command runs in.
    runtime_env = {"env_vars": {WEIGHTS_ROOT_ENV: os.environ.get(WEIGHTS_ROOT_ENV, os.getcwd())}}
    if address:
        ray.init(address=address, runtime_env=runtime_env)
        # An autoscaling cluster may have no GPU node yet: asking for GPUs is what starts one.
        return True
    # address="local" starts a new Ray even where `ray start` left one running; N logical GPUs
    # make fractional-GPU scheduling work (and testable) on machines without any.
    ray.init(address="local", num_gpus=fake_gpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
             runtime_env=runtime_env)
    if ray.cluster_resources().get("GPU", 0):
        return True
    print("no GPUs on this machine: trials run on CPU (use --fake-gpus N to test fractional scheduling)")
    return False


def place_trials(specs: list[dict], cluster_file: str | None, *, cpus: float | None, gpus: float | None,
                 use_gpus: bool, replicas: int = 1, auto_accumulate: bool = False) -> dict[str, Placement]:
    """Every trial's resources on the running Ray's node types (and the cluster file's); raises
    Unplaceable, before any trial starts, for trials that no node type can hold."""
    node_types, source = cluster_node_types(cluster_file, running=True)
    return place_all(specs, node_types, source, cpus=cpus, gpus_per_trial=gpus, use_gpus=use_gpus,
                     replicas=replicas, auto_accumulate=auto_accumulate)


@contextlib.contextmanager
def session(storage: str, lease_name: str, *, address: str | None, fake_gpus: int | None, dashboard: bool,
            force: bool) -> Iterator[bool]:
    """The launch's hold on its study (one driver at a time) and on Ray; yields whether trials ask for
    GPUs. Both go when the block ends, after whatever it recorded."""
    import ray

    lease = study_lease(storage, lease_name, force=force)  # another live driver on this study stops us here
    try:
        use_gpus = start_ray(address, fake_gpus, dashboard)
        nodes = sum(node["Alive"] for node in ray.nodes())
        check_shared_storage(storage, nodes)
        if address and nodes == 1 and "://" not in storage:
            print(f"warning: --storage {storage} is local; if this cluster adds nodes, use s3:// storage")
        yield use_gpus
    finally:
        ray.shutdown()
        lease.release()


def fit(trainable: Callable, resources: Callable[[dict], dict], *, storage_path: str, name: str,
        param_space: dict | None = None, tune_config=None, max_failures: int = 0, verbose: int = 1,
        checkpoint_config=None, restore: bool = False):
    """Run the trials of ``trainable``, each asking ``resources(config)`` of Ray, into
    ``<storage_path>/<name>``; ``restore`` continues the Tune run stored there. Returns Tune's ResultGrid."""
    from ray import tune

    trainable = tune.with_resources(trainable, resources)
    if restore:
        tuner = tune.Tuner.restore(f"{storage_path}/{name}", trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                           run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=verbose,
                                                     failure_config=tune.FailureConfig(max_failures=max_failures),
                                                     checkpoint_config=checkpoint_config))
    return tuner.fit()
