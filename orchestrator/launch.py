"""The one launch path: every command that runs Tune trials (grid, zeroshot, ablate, ood, hpo) goes
through here. ``launch`` runs a list of ``Job``s, one Tune trial each, writing records (experiments or
evaluations) to a ``ResultStore``: it skips the records already finished (and, unless asked, those that
failed before), holds the study's lease and Ray (``session``), places every trial on the cluster's node
types (``place_trials``), runs them (``fit``) and sorts what they wrote into an ``Outcome``. hpo, whose
trials a search algorithm proposes, has nothing to skip: it calls ``session``, ``place_trials`` and
``fit`` itself. ``fit`` is where every launch gets the project's Tune settings and console
(``orchestrator/console.py``: ``--verbose``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import posixpath
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from datasets.storage import absolute_uri, filesystem_for, is_remote
from orchestrator.lease import study_lease
from orchestrator.placement import Placement, cluster_node_types, place_all
from trainables.results import ResultStore, StorageError, finished_in

# Ray is imported inside the functions that start or run trials: it costs ~2 s, and the commands
# that only list, plan or report (and every --help) import this module without launching anything.

# The config key naming a launched trial's job; the trainables read their job with it. Beside it the
# config carries what the trial runs, for Ray's result API: "spec", the experiment's spec (an evaluation
# trial's source experiment's), with its id, and an evaluation trial's "evaluations".
TRIAL = "trial"
SPEC = "spec"
# Every launch's Tune run gets a folder of its own, <storage>/<study>/tune/<UTC time>-<what>-<random>/
# (launch_folders lists them); the records are in <study>/experiments/ and <study>/evaluations/.
TUNE_FOLDER = "tune"


@dataclass
class Outcome:
    skipped: int = 0  # already finished before this launch
    skipped_failed: list[str] = field(default_factory=list)  # failed before this launch, not retried
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # id -> error
    unfinished: list[str] = field(default_factory=list)  # stopped before the end, e.g. by Ctrl-C
    # id -> why an unfinished record stopped, where an infrastructure fault (storage, network, node,
    # memory) outlasted the retries: neither DONE nor FAILED, so the next launch runs it
    causes: dict[str, str] = field(default_factory=dict)
    tune_dir: str | None = None  # this launch's Tune run (None where nothing ran)


@dataclass
class Job:
    """One Tune trial of a launch: the records it writes (id -> spec: one experiment, or one source
    experiment's evaluations), the spec its resources are placed as, and what else its trainable reads."""
    name: str  # the trial's name, and its folder under Tune's run
    records: dict[str, dict]
    placed_as: dict  # model, mode, size, batch size: what place_trials sizes
    context: dict = field(default_factory=dict)
    spec: dict | None = None  # the spec its Tune config shows, with its id (none: its one record's)
    # Ray Train workers of the trial (DDP, trainables/distributed.py), each placed as ``placed_as`` with
    # 1/workers of its batch; 1: a single-process trial
    workers: int = 1


def add_verbose_argument(p) -> None:
    """--verbose, the same for every command that launches trials (orchestrator/console.py)."""
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                   help="console: 0 the summary only; 1 a line per trial start, resume, end or failure and a "
                        "progress line (done, running, failed, ETA); 2 also Ray's status table and the trials' "
                        "own output")


def check_shared_storage(storage: str, nodes: int) -> None:
    """On several nodes, results and checkpoints must go where every node can write: object storage."""
    if nodes > 1 and not is_remote(storage):
        raise StorageError(
            f"--storage {storage} is a local folder, but this Ray cluster has {nodes} nodes: trials on other "
            "nodes would write their results and checkpoints to their own disks, and a lost node would take "
            "them along. Use shared storage, e.g. --storage s3://BUCKET/runs.")


def start_ray(address: str | None, fake_gpus: int | None, dashboard: bool, verbose: int = 1) -> bool:
    """Join a cluster, or start a local Ray; returns whether trials should ask for GPUs. Below
    ``verbose`` 2 Ray keeps its start-up notes and the trials' output (its worker logs) to itself.

    A local Ray is Ray's local-only mode (its default on macOS and Windows): its node address is
    127.0.0.1, so the GCS, raylet, workers, agents, metrics and dashboard all listen on loopback alone.
    Trials never get the driver's AWS credentials through Ray (Ray Tune would copy them into every
    trial's runtime_env, which Ray's runtime-env agent logs in plain text under its temp folder): they
    find them as the driver does, in their node's environment or its instance role."""
    import ray
    from ray._private import ray_constants
    from ray.tune.execution import class_cache

    from prompts.images import MAX_BYTES_ENV, MAX_PIXELS_ENV
    from trainables.models import WEIGHTS_ROOT_ENV
    from trainables.models.cards import PLUGINS_ENV

    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(
        {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"})
    # Trials resolve relative weights paths against the folder this command runs in.
    runtime_env = {"env_vars": {WEIGHTS_ROOT_ENV: os.environ.get(WEIGHTS_ROOT_ENV, os.getcwd())}}
    # Where set here, trials on every node register the same plug-in models and open images within the
    # same limits (prompts/images.py) as the ingest that wrote them.
    for name in (PLUGINS_ENV, MAX_PIXELS_ENV, MAX_BYTES_ENV):
        if os.environ.get(name):
            runtime_env["env_vars"][name] = os.environ[name]
    quiet = {"logging_level": logging.INFO if verbose >= 2 else logging.WARNING, "log_to_driver": verbose >= 2}
    if verbose < 2:  # a note that a local Ray has token authentication on, once per launch
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if address:
        refuse_without_token(address)
        ray.init(address=address, runtime_env=runtime_env, **quiet)
        # An autoscaling cluster may have no GPU node yet: asking for GPUs is what starts one.
        return True
    # address="local" starts a new Ray even where `ray start` left one running; N logical GPUs
    # make fractional-GPU scheduling work (and testable) on machines without any. Ray reads its
    # local-only switch once, at import (here: already imported), and its processes read it at start.
    local_only, os.environ[LOCAL_ONLY_ENV] = os.environ.get(LOCAL_ONLY_ENV), "0"
    clusters, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    try:
        ray.init(address="local", num_gpus=fake_gpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 runtime_env=runtime_env, **quiet)
    finally:  # the started node keeps its address; this process may join a cluster later (tests do)
        ray_constants.ENABLE_RAY_CLUSTER = clusters
        if local_only is None:
            os.environ.pop(LOCAL_ONLY_ENV)
        else:
            os.environ[LOCAL_ONLY_ENV] = local_only
    if ray.cluster_resources().get("GPU", 0):
        return True
    print("no GPUs on this machine: trials run on CPU (use --fake-gpus N to test fractional scheduling)")
    return False


LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's nodes take 127.0.0.1 as their address


def refuse_without_token(address: str) -> None:
    """Exit with one line, not Ray's 20 s of retries and a traceback, where the cluster at ``address``
    refuses this driver's credentials (token authentication on the cluster, off or another token here)."""
    import grpc
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    from ray._private.authentication.grpc_authentication_client_interceptor import (
        _get_authentication_metadata_tuple,
    )
    from ray._private.services import canonicalize_bootstrap_address
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    try:
        gcs = None if address.startswith("ray://") else canonicalize_bootstrap_address(address)
    except (ValueError, ConnectionError):
        gcs = None
    if gcs is None:
        return  # Ray Client, a malformed address, or no running cluster found: ray.init says so
    if address == "auto":  # as ray.init does for a cluster it finds itself: a token here turns token auth on
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    with grpc.insecure_channel(gcs) as channel:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), metadata=_get_authentication_metadata_tuple(), timeout=10)
            return
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAUTHENTICATED:
                return  # unreachable or starting: ray.init retries and says so
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        raise SystemExit(f"the Ray cluster at {address} requires token authentication: set RAY_AUTH_MODE=token "
                         "and the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token (`ray get-auth-token` "
                         "on the head prints it), then launch again")
    raise SystemExit(f"the Ray cluster at {address} refused this machine's token: put the cluster's token in "
                     "RAY_AUTH_TOKEN or ~/.ray/auth_token (`ray get-auth-token` on the head prints it), then launch "
                     "again")


def place_trials(specs: list[dict], cluster_file: str | None, *, cpus: float | None, gpus: float | None,
                 use_gpus: bool, replicas: int = 1, auto_accumulate: bool = False,
                 joined: bool = False) -> dict[str, Placement]:
    """Every trial's resources on the running Ray's node types (and the cluster file's); raises
    Unplaceable, before any trial starts, for trials that no node type can hold. ``joined``: the Ray is a
    cluster this launch joined (``--address``), whose autoscaler may add nodes the running ones do not show."""
    node_types, source = cluster_node_types(cluster_file, running=True)
    return place_all(specs, node_types, source, cpus=cpus, gpus_per_trial=gpus, use_gpus=use_gpus,
                     replicas=replicas, auto_accumulate=auto_accumulate, may_grow=joined)


def trial_resources(placements: dict, key: str = TRIAL) -> Callable[[dict], dict]:
    """Resources as a function of a trial's config: what the placement of its ``config[key]`` (its job's
    name; an hpo trial's batch size) asks of Ray for the trial itself (a DDP trial's workers ask for
    theirs through Ray Train: ``Placement.trial_resources``)."""

    def resources(config: dict) -> dict:
        return placements[config[key]].trial_resources

    return resources


@contextlib.contextmanager
def session(storage: str, lease_name: str, *, address: str | None, fake_gpus: int | None, dashboard: bool,
            force: bool, verbose: int = 1) -> Iterator[bool]:
    """The launch's hold on its study (one driver at a time) and on Ray; yields whether trials ask for
    GPUs. Both go when the block ends, after whatever it recorded."""
    import ray

    lease = study_lease(storage, lease_name, force=force)  # another live driver on this study stops us here
    try:
        use_gpus = start_ray(address, fake_gpus, dashboard, verbose)
        nodes = sum(node["Alive"] for node in ray.nodes())
        check_shared_storage(storage, nodes)
        if address and nodes == 1 and not is_remote(storage):
            print(f"warning: --storage {storage} is local; if this cluster adds nodes, use object storage "
                  "(s3://, gs://, abfs://)")
        yield use_gpus
    finally:
        ray.shutdown()
        lease.release()


def fit(trainable: Callable, resources: Callable[[dict], dict], *, storage_path: str, name: str,
        param_space: dict | None = None, tune_config=None, max_failures: int = 0, verbose: int = 1,
        checkpoint_config=None, callbacks: list | None = None):
    """Run the trials of ``trainable``, each asking ``resources(config)`` of Ray, into a new Tune run at
    ``<storage_path>/<name>``, with the caller's ``callbacks`` beside the console (which follows ``verbose``:
    orchestrator/console.py). Returns Tune's ResultGrid. It never restores a Tune run (``Tuner.restore``
    unpickles state from storage): a launch continues from the project's own records."""
    from ray import tune

    from orchestrator.console import TrialConsole, tune_output, tune_verbosity

    errors = trial_errors()
    callbacks = ([TrialConsole()] if verbose >= 1 else []) + list(callbacks or []) + [errors]
    tuner = tune.Tuner(tune.with_resources(trainable, resources), param_space=param_space, tune_config=tune_config,
                       run_config=tune.RunConfig(name=name, **tune_storage(storage_path),
                                                 verbose=tune_verbosity(verbose), callbacks=callbacks,
                                                 failure_config=tune.FailureConfig(max_failures=max_failures),
                                                 checkpoint_config=checkpoint_config))
    with tune_output(verbose):
        grid = tuner.fit()
    for result in grid:  # each failed trial's error as this driver caught it
        if result.error is not None and result.path in errors.caught:
            result.error = errors.caught[result.path]
    return grid


def trial_errors():
    """A Tune callback that keeps each failed trial's error in memory, read from the file this driver wrote on
    its own disk, and stops Tune's result grid from reading it back from storage with cloudpickle (the
    grid then reads the error's text): a file in --storage is never unpickled."""
    from ray.tune import Callback

    from orchestrator.console import trial_error

    class Errors(Callback):
        def __init__(self):
            self.caught: dict[str, BaseException | str] = {}

        def forget_pickle(self, trial) -> None:
            if (error := trial_error(trial)) is not None:  # the driver's own copy, written a moment ago
                self.caught[trial.path] = error
            trial.run_metadata.pickled_error_filename = None

        def on_trial_error(self, iteration, trials, trial, **info):
            self.forget_pickle(trial)

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.forget_pickle(trial)

    return Errors()


def launch_name(what: str) -> str:
    """A new launch's Tune folder: named by its start (UTC, so the names sort in time), what it runs and a
    random part, so no launch writes into another's."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{what}-{uuid.uuid4().hex[:6]}"


def launch_folders(storage: str, study: str) -> list[str]:
    """The Tune runs of ``study``'s launches (grid, zeroshot, ablate, ood), oldest first:
    ``<storage>/<study>/tune/<UTC time>-<experiments|evaluations>-<random>``, each one that got as far as
    Tune's experiment state. Each loads on its own with ``ray.tune.ExperimentAnalysis(folder)``, whose
    ``dataframe()`` has a row per trial: its config (``config/trial``, ``config/spec/model``, ...) and its
    last result (an experiment's ``test_dice``). Ray unpickles that state: load only storage you trust;
    the report reads only the result store's JSON and Parquet. (An hpo search's launches write their
    trials to ``<study>/hpo/<model>/tune``; a rerun continues from the search's own JSON records.)"""
    root = f"{absolute_uri(storage).rstrip('/')}/{study}/{TUNE_FOLDER}"
    fs, path = filesystem_for(root)
    folders = []
    for info in sorted(fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)), key=lambda i: i.base_name):
        if info.type == pafs.FileType.Directory and any(
                f.base_name.startswith("experiment_state-") for f in fs.get_file_info(pafs.FileSelector(info.path))):
            folders.append(f"{root}/{info.base_name}")
    return folders


def trial_configs(pending: dict[str, dict], jobs: list[Job], what: str) -> dict:
    """Tune's param space: a grid over the pending jobs' names, each trial's config also carrying its
    spec and, where its records are not that spec (an evaluation trial's), the records it runs as
    ``config[what]``, so Ray's tables and result API show what each trial ran."""
    from ray import tune

    shown = {}
    for job in jobs:
        if job.name in pending:
            records = pending[job.name]["records"]
            spec = job.spec or {"id": next(iter(records)), **next(iter(records.values()))}
            shown[job.name] = {SPEC: spec}
            if list(records) != [spec["id"]]:
                shown[job.name][what] = [{"id": i, **record} for i, record in records.items()]
    keys = sorted({key for config in shown.values() for key in config})
    # A sample_from reads the grid's value: each trial gets its own job's entries.
    return {TRIAL: tune.grid_search(list(pending)),
            **{key: tune.sample_from(lambda config, key=key: shown[config[TRIAL]].get(key)) for key in keys}}


def launch(jobs: list[Job], store: ResultStore, trainable: Callable, *, what: str, storage: str, lease: str,
           address: str | None = None, fake_gpus: int | None = None,
           gpus_per_trial: float | None = None, cpus_per_trial: float = 1.0, dashboard: bool = True,
           max_failures: int = 1, retry_failed: bool = False, verbose: int = 1, force: bool = False,
           cluster_file: str | None = None, reuse_actors: bool = False, bound: dict | None = None,
           callbacks: list | None = None) -> Outcome:
    """Run the jobs' records that are not finished (nor failed before, unless ``retry_failed``), one
    Tune trial per job that has any, submitted in the order of ``jobs``:
    ``trainable(config, jobs=..., threads=..., **bound)`` with ``jobs[config[TRIAL]]`` its job
    (``{"records": {id: spec} left to run, "workers": job.workers, **job.context}``, and for a DDP job,
    ``"worker_resources"``: what each of its workers asks for), and ``config[SPEC]`` its spec
    (``trial_configs``), in a Tune folder of this launch's own (``launch_folders``), with the Tune
    ``callbacks`` given (experiment trackers: orchestrator/trackers.py). Prints what it skips and runs;
    returns what happened to every record, read back from ``store``."""
    from ray import tune

    files = store.listing()
    done = {i for i, names in files.items() if finished_in(names)}
    broken = {i for i, names in files.items() if "DONE" in names} - done  # DONE without result.json
    failed = {i for i, names in files.items() if "FAILED.json" in names} - done
    records = {i: spec for job in jobs for i, spec in job.records.items()}
    todo = {i for i in records if i not in done and (retry_failed or i not in failed)}
    outcome = Outcome(skipped=len(records.keys() & done),
                      skipped_failed=[] if retry_failed else [i for i in records if i in failed])
    retried = [i for i in records if i in todo and i in failed]
    resumable = sum(store.CHECKPOINT in files.get(i, {}) for i in todo)
    print(f"{len(records)} {what}: {outcome.skipped} already finished in {store.uri}/{store.folder}, "
          + (f"{len(outcome.skipped_failed)} failed before (skipped; --retry-failed reruns them), "
             if outcome.skipped_failed else "")
          + (f"{len(retried)} failed before (retried), " if retried else "")
          + f"{len(todo)} to run" + (f", {resumable} of them from their checkpoints" if resumable else ""))
    for record_id in sorted(broken & todo):
        print(f"  {store.uri}/{store.folder}/{record_id} has a DONE marker but no result.json (a partial copy "
              "or cleanup?): it runs again")
    # A driver stopped between a trial's DONE and its cleanup leaves the resume state behind.
    for record_id in sorted(done):
        if store.CHECKPOINT in files[record_id] or store.PROGRESS in files[record_id]:
            store.clear_resume_state(record_id)
    # In the order of ``jobs``: Tune's grid search submits its trials in this order.
    pending = {job.name: {"records": {i: s for i, s in job.records.items() if i in todo}, "workers": job.workers,
                          **job.context}
               for job in jobs if todo & job.records.keys()}
    if not pending:
        return outcome

    store.check_writable()
    with session(storage, lease, address=address, fake_gpus=fake_gpus, dashboard=dashboard, force=force,
                 verbose=verbose) as use_gpus:
        placements = place_trials([{**job.placed_as, "id": job.name, "workers": job.workers}
                                   for job in jobs if job.name in pending],
                                  cluster_file, cpus=cpus_per_trial, gpus=gpus_per_trial, use_gpus=use_gpus,
                                  joined=address is not None)
        for job_name, placement in placements.items():
            pending[job_name]["workers"] = placement.workers  # 1 where the trial has nothing to split
            if placement.workers > 1:  # each Ray Train worker asks for this; the trial, for its driver share
                pending[job_name]["worker_resources"] = dict(placement.resources)
        for record_id in retried:  # placed: a retry that fails again writes its own FAILED.json
            store.clear_failure(record_id)
        for record_id in sorted(broken & todo):  # its run writes a DONE of its own, with its result
            store.clear_done(record_id)

        def trial_name(trial) -> str:
            return trial.config[TRIAL]

        name = launch_name(what)
        outcome.tune_dir = f"{store.uri}/{TUNE_FOLDER}/{name}"
        grid = fit(tune.with_parameters(trainable, jobs=pending, threads=max(1, math.floor(cpus_per_trial)),
                                       **(bound or {})),
                   trial_resources(placements), storage_path=f"{store.uri}/{TUNE_FOLDER}", name=name,
                   param_space=trial_configs(pending, jobs, what),
                   tune_config=tune.TuneConfig(trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                                               reuse_actors=reuse_actors),
                   max_failures=max_failures, verbose=verbose, callbacks=callbacks)
        errors = {trial_of(r): r.error for r in grid if r.error is not None}
        # A trial that crashed, after Ray's retries, leaves the records of its job it had not written
        # failed, or unfinished where an infrastructure fault ended it; recorded before the session ends,
        # so a relaunch sees this run's FAILED.json.
        store.record_outcome(outcome, ((i, spec, errors.get(name)) for name, job in pending.items()
                                       for i, spec in job["records"].items()))
    say_causes(outcome)
    return outcome


def say_causes(outcome: Outcome) -> None:
    """Each record an infrastructure fault stopped, with its cause, and that it runs again (stderr)."""
    for record_id, cause in outcome.causes.items():
        print(f"  NOT FINISHED {record_id}: {cause[:500]}", file=sys.stderr)
    if outcome.causes:
        print(f"  {len(outcome.causes)} stopped on a fault of storage, network, node or memory, not of their "
              "input: they are not marked failed, and the same command runs them again (from their "
              "checkpoints), no --retry-failed needed", file=sys.stderr)


def tune_storage(storage_path: str) -> dict:
    """Tune's storage (``RunConfig`` arguments) for a folder or ``s3://`` URI, through the project's
    filesystem (``datasets.storage.filesystem_for``: S3 requests retried with backoff), so an S3 outage
    that trials ride out does not stop Tune's own writes either."""
    fs, path = filesystem_for(storage_path)
    return {"storage_path": path, "storage_filesystem": fs}


def trial_of(result) -> str:
    """The job name of one of ``launch``'s Tune results; a trial that never started has no config, but
    its folder has the name."""
    return (result.config or {}).get(TRIAL) or posixpath.basename(result.path.rstrip("/"))
