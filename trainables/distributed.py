"""Data-parallel training (DDP) of one experiment: its Trainer's steps on N ranks, as Ray Train workers.

A trial that its launch gives N > 1 workers (``orchestrator.launch.Job.workers``) runs its experiment as a
``ray.train.torch.TorchTrainer`` of N workers inside its Tune trial (``train_data_parallel``, called by
``trainables.tune_trainable.train_experiment``). Each worker runs ``train_worker``: the single-process
trial's own ``run_experiment`` (passed in by that module, which imports this one), with its Trainer
made data-parallel by ``attach``.

The same training as one process with the same global batch (tests/test_ddp.py):
- every rank draws the permutation the single-process loader draws (the same DataLoader, seed and epoch,
  over indices) and takes its slice of each global batch of n samples: rank r the samples
  [n r / N, n (r + 1) / N);
- each sample's loss weighs N / n on its rank, so DDP's average of the ranks' gradients is the gradient of
  the global batch's mean loss, an uneven last batch included; a rank whose slice of a short last batch
  (fewer samples than ranks) is empty runs a stand-in sample at weight 0, as DDP needs every rank in
  every step;
- the learning rate is the spec's: the global batch is the spec's batch, so there is nothing to scale;
- torch's DistributedDataParallel averages the gradients. A frozen trial on the feature cache runs
  ``model.decode``, not ``forward``: DDP wraps ``Routed``, whose forward runs either, so both synchronise;
- BatchNorm: on CUDA every BatchNorm becomes SyncBatchNorm (statistics of the global batch). torch's
  SyncBatchNorm runs on GPUs only, so on CPU (gloo) each rank normalises by its own slice's statistics
  and DDP copies rank 0's running statistics to the others before each forward: a model with BatchNorm
  (CRIS, the CNNs) then trains close to one process, not exactly as it; CLIPSeg's decoder has none;
- validation: every rank evaluates the whole validation split and rank 0's loss and dice are broadcast,
  so the LR schedule and early stopping decide the same on every rank.

Checkpoints and results are those of a single-process trial (trainables/tune_trainable.py): every rank
loads the stored checkpoint at start; rank 0 alone writes checkpoints, progress, weights and the result.
A lost worker: the Train run fails with the worker's own error (``worker_failure``), which Tune retries
(``--max-failures``, as any trial: the grid gives Ray Train no restarts of its own, so retries do not
multiply) from the stored checkpoint, and the launch classifies (an infrastructure fault leaves the
experiment unfinished).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from trainables.trainer import OneProcess, Trainer

# The Train run's own folder (Ray Train's run state; the experiment's checkpoint is the project's own,
# in experiments/<id>/), beside the study's tune/ folder.
TRAIN_FOLDER = "train"


class Routed(nn.Module):
    """The model, with ``forward`` running its forward or (``decode=True``) its decoder alone: what DDP
    wraps, so that steps on cached encoder features synchronise gradients as full forwards do."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args, decode: bool = False) -> torch.Tensor:
        return self.model.decode(*args) if decode else self.model(*args)


class DataParallel(OneProcess):
    """The Trainer's steps on rank ``rank`` of ``world`` (module docstring: why they equal one process's)."""

    def __init__(self, model: nn.Module, rank: int, world: int, device: torch.device):
        self.rank, self.world, self.device = rank, world, device
        # DDP copies rank 0's weights to every rank here, and averages gradients in each synced backward.
        self.ddp = DistributedDataParallel(Routed(model))

    def batches(self, loader: DataLoader) -> Iterator[tuple[dict, float]]:
        # The global batches exactly as the single-process loader draws them: the same DataLoader
        # (length, batch size, generator, drop_last) over the indices instead of the samples.
        indices = DataLoader(range(len(loader.dataset)), batch_size=loader.batch_size, shuffle=True,
                             generator=loader.generator, drop_last=loader.drop_last, collate_fn=list)
        for batch in indices:
            n = len(batch)
            mine = batch[n * self.rank // self.world:n * (self.rank + 1) // self.world]
            samples = [loader.dataset[i] for i in (mine or batch[:1])]
            yield loader.collate_fn(samples), (self.world / n if mine else 0.0)

    def run(self, model: nn.Module, *args, decode: bool = False) -> torch.Tensor:
        if torch.is_grad_enabled():  # a training step: through DDP, whose backward averages gradients
            return self.ddp(*args, decode=decode)
        return super().run(model, *args, decode=decode)  # evaluation: each rank alone, no collective

    def syncing(self, last: bool) -> contextlib.AbstractContextManager:
        # Micro-batches (grad_accum) accumulate locally; the step's last backward averages over ranks.
        return contextlib.nullcontext() if last else self.ddp.no_sync()

    def sum(self, *values: float) -> list[float]:
        summed = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(summed)
        return summed.tolist()

    def agree(self, *values: float) -> list[float]:
        shared = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(shared, src=0)
        return shared.tolist()


def attach(trainer: Trainer, rank: int, world: int) -> None:
    """Make ``trainer`` rank ``rank`` of a data-parallel run of ``world`` ranks; torch.distributed is set up
    (Ray Train's TorchTrainer does it). Call after loading any stored state: DDP then copies rank 0's
    weights to the others."""
    if trainer.device.type == "cuda":  # BatchNorm over the global batch; SyncBatchNorm has no CPU kernel
        trainer.model = nn.SyncBatchNorm.convert_sync_batchnorm(trainer.model)
    trainer.parallel = DataParallel(trainer.model, rank, world, trainer.device)


# -- Ray Train ---------------------------------------------------------------------------------------
def train_worker(config: dict) -> None:
    """One Ray Train worker of a data-parallel trial: ``config["run"]`` (``tune_trainable.run_experiment``)
    on its rank, reporting to Ray Train (whose TuneReportCallback forwards rank 0's reports to the Tune
    trial)."""
    import ray.train
    from ray.train.torch import get_device

    from trainables.results import ResultStore

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config["threads"])
    device = get_device()
    if device.type == "cuda":  # the Trainer puts its model on the current device, "cuda"
        torch.cuda.set_device(device)
    config["run"](config["spec"], config["data"], ResultStore(config["storage"], config["study"]),
                  config["checkpoint_interval_s"], ray.train.report, config["resources"], rank=rank,
                  make_parallel=lambda trainer: attach(trainer, rank, world))


def scaling_resources(placed: dict[str, float]) -> dict[str, float]:
    """A worker's resources in Ray Train's spelling (``CPU``, ``GPU``, custom) from a placement's (Tune's
    lower-case ``cpu`` and ``gpu``)."""
    names = {"cpu": "CPU", "gpu": "GPU"}
    return {names.get(k, k): v for k, v in placed.items() if v}


def train_data_parallel(run: Callable, spec: dict, *, data: str, storage: str, study: str,
                        checkpoint_interval_s: float, workers: int, worker_resources: dict[str, float], threads: int,
                        restarts: int) -> None:
    """Run ``spec``'s experiment as a TorchTrainer of ``workers`` workers, each running ``run`` (the
    trainable's ``run_experiment``) and asking Ray for ``worker_resources`` (a placement's, Tune's
    spelling), from inside a Tune trial. The workers form a
    placement group; on GPUs they use NCCL (gloo for CPU tensors), on CPU gloo. A worker group that fails
    is restarted up to ``restarts`` times, resuming from the stored checkpoint; after that the worker's own
    error is raised, for Tune to retry and the launch to classify."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from datasets.storage import filesystem_for

    resources = scaling_resources(worker_resources)
    use_gpu = resources.get("GPU", 0) > 0
    fs, path = filesystem_for(f"{storage.rstrip('/')}/{study}/{TRAIN_FOLDER}")
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"run": run, "spec": spec, "data": data, "storage": storage, "study": study,
                           "threads": threads, "checkpoint_interval_s": checkpoint_interval_s,
                           "resources": {"workers": workers, "per_worker": worker_resources}},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="cpu:gloo,cuda:nccl" if use_gpu else "gloo"),
        # A name of its own per try: the project's checkpoint, not Ray Train's run state, is what resumes.
        run_config=RunConfig(name=f"{spec['id']}-{uuid.uuid4().hex[:6]}", storage_path=path, storage_filesystem=fs,
                             callbacks=[TuneReportCallback()], failure_config=FailureConfig(max_failures=restarts)))
    try:
        trainer.fit()
    except TrainingFailedError as e:
        raise worker_failure(e) from e
    # Ray Train's state of a finished run: nothing reads it again (a new try gets a name of its own).
    with contextlib.suppress(OSError):
        fs.delete_dir(f"{path}/{trainer.run_config.name}")


def worker_failure(error: BaseException) -> BaseException:
    """The error that stopped a Train run, out of Ray Train's wrappers, so the launch classifies it as it
    does a single-process trial's (``datasets.storage.is_infrastructure``): a lost worker or other fault of
    infrastructure first (the surviving ranks then fail with collective errors of their own), then bad
    input (ShardError), then the lowest rank's error."""
    from ray.train import ControllerError, WorkerGroupError

    from datasets.shards import ShardError
    from datasets.storage import innermost_error, is_infrastructure

    if isinstance(error, ControllerError):
        return error.controller_failure
    if not isinstance(error, WorkerGroupError) or not error.worker_failures:
        return error
    # A worker that died is reported as a failed health check, holding Ray's actor error; an error raised in
    # a worker's code comes wrapped with its traceback (Ray Train's UserExceptionWithTraceback, ``_base_exc``).
    failures = [getattr(f, "health_check_failure", None) or f for _, f in sorted(error.worker_failures.items())]
    failures = [getattr(f, "_base_exc", None) or f for f in failures]
    for wanted in (is_infrastructure, lambda f: isinstance(innermost_error(f), ShardError)):
        if found := [f for f in failures if wanted(f)]:
            return found[0]
    return failures[0]
