"""Fit before launch: which node type of the cluster holds each trial, and the trials none can hold.

A trial's GPU memory need comes from the memory model (``search_spaces.defaults.estimated_memory_gib``);
the node types from the cluster file (``cluster.yaml``: each type's instance and declared resources)
or from a running Ray (each node's GPUs and ``accelerator_type:*`` resource). A trial goes to the
smallest GPU that holds it, at the model's share doubled until it fits; a trial that fits only a
larger GPU type than the smallest asks Ray for that type's ``accelerator_type:<X>`` resource, so it
waits for (or makes the autoscaler start) that type and never lands on a GPU too small for it. A
trial no node type can hold is refused before anything starts: Ray would keep it PENDING forever.

Remedies, in the order to try them: bf16 autocast (on wherever the GPU has it; the estimates assume
it), gradient accumulation (``--grad-accum K``: the same effective batch in K micro-batches), then a
node type with a larger GPU in the cluster file.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from search_spaces.defaults import estimated_memory_gib
from trainables.models import card

REPO_CLUSTER_FILE = Path(__file__).resolve().parent.parent / "cluster.yaml"
# The autoscaler's copy of the cluster file on a head node started by `ray up`.
HEAD_CLUSTER_FILE = Path("~/ray_bootstrap_config.yaml").expanduser()

# Memory a process can use per GPU (total memory as nvidia-smi reports it, MiB / 1024), per accelerator
# type in Ray's names (ray.util.accelerators): an A10G's "24 GB" is 23,028 MiB. Plain "A100" (Ray's
# label for either size) is taken as the 40 GB card.
GPU_MEMORY_GIB: dict[str, float] = {
    "T4": 14.7, "V100": 15.8, "A10G": 22.5, "L4": 22.5, "A100-40G": 39.5, "A100": 39.5, "L40S": 45.0,
    "A100-80G": 79.2, "H100": 79.2, "H200": 140.4,
}
# Accelerator of each AWS instance family (the prefix of its instance type).
AWS_FAMILY_ACCELERATOR: dict[str, str] = {
    "g4dn": "T4", "p3": "V100", "g5": "A10G", "g6": "L4", "g6e": "L40S", "p4d": "A100-40G", "p4de": "A100-80G",
    "p5": "H100", "p5e": "H200", "p5en": "H200",
}
ACCELERATOR_PREFIX = "accelerator_type:"
ROUTING_SHARE = 0.001  # what Ray itself asks of accelerator_type:<X> for @ray.remote(accelerator_type=X)
# What the Tune trial of a DDP trial asks for itself: it only starts Ray Train's controller (which Ray Train
# starts with 0 CPUs) and waits for it, while its workers hold the trial's CPUs and GPUs. Tune refuses a
# trial of no resources at all, so a token share: an assumption (not a measurement) that the driver's CPU
# use is negligible beside its workers'; 100 waiting drivers hold one CPU, none keeps a CPU from workers.
DRIVER_RESOURCES = {"cpu": 0.01, "gpu": 0.0}


@dataclass(frozen=True)
class NodeType:
    name: str
    gpus: int  # GPUs per node
    accelerator: str | None  # Ray's accelerator type (A10G, L40S, ...); None where unknown
    max_workers: int | None = None
    cpus: float | None = None  # CPUs per node, where the cluster file declares them

    @property
    def gpu_memory_gib(self) -> float | None:
        return GPU_MEMORY_GIB.get(self.accelerator) if self.accelerator else None

    def __str__(self) -> str:
        memory = f" {self.gpu_memory_gib:.0f} GiB" if self.gpu_memory_gib else ""
        return f"{self.name} ({self.gpus}x {self.accelerator or 'GPU'}{memory})"


@dataclass
class Placement:
    spec_id: str
    need_gib: float | None  # None: not estimated (the small test models)
    resources: dict[str, float]
    node_type: NodeType | None = None
    grad_accum: int = 1
    unchecked: str = ""  # why the need was not checked against a GPU, where it could not be
    workers: int = 1  # Ray Train workers (DDP), each asking for ``resources``; 1: a single-process trial

    @property
    def trial_resources(self) -> dict[str, float]:
        """What the Tune trial itself asks of Ray: everything for one process; a DDP trial's driver share."""
        return dict(self.resources) if self.workers == 1 else dict(DRIVER_RESOURCES)

    @property
    def gpus(self) -> float:
        """GPUs the trial holds while it runs, all its workers together."""
        return self.workers * self.resources.get("gpu", 0.0)


@dataclass
class Refusal:
    spec_id: str
    need_gib: float
    largest: NodeType | None
    remedies: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        largest = self.largest
        where = (f"the largest GPU of the cluster is {largest.accelerator} ({largest.gpu_memory_gib:.0f} GiB, "
                 f"node type {largest.name})" if largest else "the cluster has no GPU node type")
        return (f"{self.spec_id}: needs an estimated {self.need_gib:.1f} GiB of GPU memory; {where}. "
                f"Remedies, in order: " + "; ".join(f"{i + 1}) {r}" for i, r in enumerate(self.remedies)))


@dataclass
class TooLarge:
    """A trial that asks for more CPUs or GPUs than any node has: Ray would keep it PENDING forever."""
    spec_id: str
    cpus: float
    gpus: float
    largest: tuple[float, float]  # (CPUs, GPUs) of the node with the most GPUs, then CPUs
    where: str

    def __str__(self) -> str:
        cpus, gpus = self.largest
        fixes = []
        if self.gpus > gpus:
            fixes.append(f"--gpus-per-trial {gpus:g} or less" if gpus else "no --gpus-per-trial (no node has GPUs)")
        if self.cpus > cpus:
            fixes.append(f"--cpus-per-trial {cpus:g} or less")
        return (f"{self.spec_id}: asks for {_amount(self.gpus, 'GPU')} and {_amount(self.cpus, 'CPU')}; the largest "
                f"node of {self.where} has {_amount(gpus, 'GPU')} and {_amount(cpus, 'CPU')}. Use "
                + " and ".join(fixes) + ", or a node type with more in the cluster file")


def _amount(n: float, what: str) -> str:
    return f"{n:g} {what}" + ("" if n == 1 else "s")


@dataclass
class TooManyWorkers:
    """A DDP trial whose workers the cluster cannot hold all at once: its placement group would wait forever."""
    spec_id: str
    workers: int
    per_worker: dict[str, float]
    slots: int  # workers of this size the cluster holds at once
    where: str

    def __str__(self) -> str:
        cpus, gpus = self.per_worker.get("cpu", 0.0), self.per_worker.get("gpu", 0.0)
        return (f"{self.spec_id}: runs as {self.workers} Ray Train workers of {_amount(gpus, 'GPU')} and "
                f"{_amount(cpus, 'CPU')} each, all at once; {self.where} holds {self.slots} such worker(s). "
                f"Give it {self.slots} worker(s) or fewer (--workers-per-trial), or add nodes to the cluster file")


class Unplaceable(Exception):
    def __init__(self, refusals: list[Refusal | TooLarge | TooManyWorkers], source: str):
        self.refusals, self.source = refusals, source
        shown = "\n  ".join(str(r) for r in refusals[:10])
        more = f"\n  ... and {len(refusals) - 10} more" if len(refusals) > 10 else ""
        super().__init__(f"{len(refusals)} trial(s) fit no node type of {source}; nothing was started:\n  "
                         f"{shown}{more}")


# -- node types ------------------------------------------------------------------------------------
def node_types_from_cluster_file(path: str | os.PathLike) -> list[NodeType]:
    """The worker types of a Ray cluster file (``ray up``'s YAML) that have GPUs."""
    config = yaml.safe_load(Path(path).read_text())
    types = []
    for name, node in (config.get("available_node_types") or {}).items():
        resources = node.get("resources") or {}
        declared = [k[len(ACCELERATOR_PREFIX):] for k in resources if k.startswith(ACCELERATOR_PREFIX)]
        instance = str((node.get("node_config") or {}).get("InstanceType", ""))
        accelerator = declared[0] if declared else AWS_FAMILY_ACCELERATOR.get(instance.split(".")[0])
        if resources.get("GPU", 0) >= 1:
            types.append(NodeType(name, int(resources["GPU"]), accelerator, node.get("max_workers"),
                                  resources.get("CPU")))
    return types


def node_types_from_ray() -> list[NodeType]:
    """The GPU node types of the running Ray: alive nodes grouped by GPU count and accelerator type."""
    import ray  # costly (~0.5 s): grid --dry-run and plan read the cluster file, not a running Ray

    seen = {}
    for node in ray.nodes():
        resources = node.get("Resources", {})
        if not node.get("Alive") or resources.get("GPU", 0) < 1:
            continue
        accelerators = [k[len(ACCELERATOR_PREFIX):] for k in resources if k.startswith(ACCELERATOR_PREFIX)]
        key = (int(resources["GPU"]), accelerators[0] if accelerators else None)
        seen[key] = NodeType(f"{key[0]}x {key[1] or 'GPU'} (running)", *key)
    return list(seen.values())


def cluster_node_types(cluster_file: str | None, running: bool) -> tuple[list[NodeType], str]:
    """Node types to place trials on, and where they were read: the cluster file named, else (on a
    running Ray) the running nodes plus the head's autoscaler config where `ray up` left one."""
    types, sources = [], []
    path = Path(cluster_file) if cluster_file else (HEAD_CLUSTER_FILE if running else REPO_CLUSTER_FILE)
    if cluster_file or path.exists():
        types += node_types_from_cluster_file(path)
        sources.append(str(path))
    if running:
        known = {(t.gpus, t.accelerator) for t in types}
        types += [t for t in node_types_from_ray() if (t.gpus, t.accelerator) not in known]
        sources.append("the running Ray cluster")
    return types, " and ".join(sources) or "no cluster"


# -- placing trials --------------------------------------------------------------------------------
def _share(model: str, need: float, memory: float) -> float:
    share = card(model).gpu_fraction
    while share < 1.0 and need > share * memory:
        share *= 2
    return min(share, 1.0)


def _accumulations(batch_size: int) -> list[int]:
    return [k for k in (2, 4, 8, 16, 32) if batch_size % k == 0]


def place(spec: dict, node_types: list[NodeType], *, cpus: float | None = None, gpus_per_trial: float | None = None,
          replicas: int = 1, use_gpus: bool = True, auto_accumulate: bool = False) -> Placement | Refusal:
    """Where one trial of ``spec`` (an ExperimentSpec dict, with ``workers`` where it runs as DDP) runs, or
    why it cannot. A DDP trial's placement is its workers': each holds the model and 1/N of the batch, and
    on GPUs a whole GPU.

    ``auto_accumulate`` (hpo, whose batch sizes are sampled) splits a batch that fits no GPU into
    micro-batches; a grid spec keeps its own ``grad_accum`` (it is part of the experiment's id).
    """
    # A zero-shot trial trains nothing: data parallelism has nothing to split.
    workers = 1 if spec.get("mode") == "zeroshot" else spec.get("workers", 1)
    placed = _place_one(worker_spec({**spec, "workers": workers}), node_types, cpus=cpus, use_gpus=use_gpus,
                        replicas=replicas, gpus_per_trial=1.0 if workers > 1 and use_gpus else gpus_per_trial,
                        auto_accumulate=auto_accumulate)
    if isinstance(placed, Placement):
        placed.workers = workers
    return placed


def worker_spec(spec: dict) -> dict:
    """What one worker of ``spec``'s trial holds: for N DDP workers, its share of the global batch (the
    largest, ceil(batch / N)); a single-process trial's spec as it is."""
    workers = spec.get("workers", 1)
    if workers < 1:
        raise ValueError(f"{spec.get('id', spec['model'])}: {workers} workers; expected 1 or more")
    return spec if workers == 1 else {**spec, "batch_size": -(-spec["batch_size"] // workers)}


def _place_one(spec: dict, node_types: list[NodeType], *, cpus: float | None, gpus_per_trial: float | None,
               replicas: int, use_gpus: bool, auto_accumulate: bool) -> Placement | Refusal:
    cpu = card(spec["model"]).cpus if cpus is None else cpus
    spec_id = spec.get("id", spec["model"])
    if not use_gpus:
        return Placement(spec_id, None, {"cpu": cpu, "gpu": 0})
    need = estimated_memory_gib(spec, replicas)
    sized = sorted((t for t in node_types if t.gpu_memory_gib), key=lambda t: t.gpu_memory_gib)
    if need is None or not sized:  # nothing to check against: the model's share, or the override
        share = gpus_per_trial if gpus_per_trial is not None else card(spec["model"]).gpu_fraction
        return Placement(spec_id, need, {"cpu": cpu, "gpu": share})
    accumulations = [spec.get("grad_accum", 1)] + (_accumulations(spec["batch_size"]) if auto_accumulate else [])
    for k in accumulations:
        need_k = estimated_memory_gib({**spec, "grad_accum": k}, replicas)
        for node_type in sized:
            memory = node_type.gpu_memory_gib
            share = gpus_per_trial if gpus_per_trial is not None else _share(spec["model"], need_k, memory)
            if need_k > share * memory:
                continue
            resources = {"cpu": cpu, "gpu": share}
            if memory > sized[0].gpu_memory_gib:  # too big for the smallest GPUs: route to this type
                resources[f"{ACCELERATOR_PREFIX}{node_type.accelerator}"] = ROUTING_SHARE
            return Placement(spec_id, need_k, resources, node_type, k)
    unknown = [t for t in node_types if not t.gpu_memory_gib]
    if unknown:  # perhaps large enough: Ray decides, and the trial may wait for such a node
        return Placement(spec_id, need, {"cpu": cpu, "gpu": gpus_per_trial if gpus_per_trial is not None else 1.0},
                         unchecked=f"needs ~{need:.0f} GiB, more than any GPU of known memory; "
                                   f"the memory of {', '.join(str(t) for t in unknown)} is unknown")
    return Refusal(spec_id, need, sized[-1], remedies(spec, replicas, sized[-1], gpus_per_trial))


def remedies(spec: dict, replicas: int, largest: NodeType, gpus_per_trial: float | None) -> list[str]:
    memory = largest.gpu_memory_gib
    out = ["bf16 autocast: on wherever the GPU has it (A10G, L4, L40S, A100, H100 do), and assumed by the "
           "estimate; a GPU without bf16 needs more"]
    if gpus_per_trial is not None and gpus_per_trial < 1:
        out.append(f"a larger --gpus-per-trial than {gpus_per_trial}")
    fitting = [k for k in _accumulations(spec["batch_size"]) if k > spec.get("grad_accum", 1)
               and estimated_memory_gib({**spec, "grad_accum": k}, replicas) <= memory]
    if fitting:
        k = fitting[0]
        out.append(f"gradient accumulation: --grad-accum {k} (batch {spec['batch_size']} in {k} micro-batches, "
                   f"~{estimated_memory_gib({**spec, 'grad_accum': k}, replicas):.1f} GiB; BatchNorm statistics "
                   "then see smaller batches)")
    else:
        out.append("gradient accumulation: no micro-batch size fits either")
    need = estimated_memory_gib(spec, replicas)
    larger = [a for a, m in sorted(GPU_MEMORY_GIB.items(), key=lambda x: x[1]) if m >= need]
    out.append(f"a node type with a GPU of at least {need:.0f} GiB in the cluster file"
               + (f" (e.g. {', '.join(larger[:2])})" if larger else "") + ", or a smaller batch")
    return out


def running_capacities() -> list[tuple[float, float]]:
    """(CPUs, GPUs) of each alive node of the Ray this process has joined; none where it has joined none
    (Ray is not imported for the asking: grid --dry-run and plan have no Ray)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return []
    return [(node["Resources"].get("CPU", 0.0), node["Resources"].get("GPU", 0.0))
            for node in ray.nodes() if node.get("Alive")]


def too_large(placement: Placement, capacities: list[tuple[float | None, float]], where: str) -> TooLarge | None:
    """Why no node holds ``placement``'s CPUs and GPUs at once (a node's unknown CPUs hold any), or None."""
    cpus, gpus = placement.resources.get("cpu", 0.0), placement.resources.get("gpu", 0.0)
    if not capacities or any((c is None or c >= cpus) and g >= gpus for c, g in capacities):
        return None
    known = [(c, g) for c, g in capacities if c is not None]
    largest = max(known, key=lambda cg: (cg[1], cg[0])) if known else (0.0, 0.0)
    return TooLarge(placement.spec_id, cpus, gpus, largest, where)


def worker_slots(per_worker: dict[str, float], nodes: list[tuple[float | None, float, int | None]]) -> int | None:
    """How many workers of ``per_worker``'s CPUs and GPUs ``nodes`` hold at once: each node ``(CPUs or None
    for any, GPUs, how many such nodes or None for no known limit)``; None where there is no known limit."""
    cpus, gpus = per_worker.get("cpu", 0.0), per_worker.get("gpu", 0.0)
    total = 0
    for node_cpus, node_gpus, count in nodes:
        # A small tolerance: 1.0 / 0.1 is 9.999... in floating point.
        fits = [int(have / need + 1e-9) for have, need in ((node_cpus, cpus), (node_gpus, gpus))
                if need > 0 and have is not None]
        per_node = min(fits) if fits else None
        if per_node is None or (count is None and per_node > 0):
            return None
        total += per_node * count
    return total


def too_many_workers(placement: Placement, nodes: list[tuple[float | None, float, int | None]],
                     where: str) -> TooManyWorkers | None:
    """Why ``nodes`` cannot hold all of a DDP trial's workers at once, or None (a single-process trial,
    or enough room)."""
    if placement.workers == 1:
        return None
    slots = worker_slots(placement.resources, nodes)
    if slots is None or slots >= placement.workers:
        return None
    return TooManyWorkers(placement.spec_id, placement.workers, placement.resources, slots, where)


def place_all(specs: list[dict], node_types: list[NodeType], source: str, *, may_grow: bool = False,
              **kwargs) -> dict[str, Placement]:
    """Every trial's placement, keyed by id; raises Unplaceable naming each trial no node type holds:
    by GPU memory, or (on a running Ray) by CPUs and GPUs more than any node, running or of the cluster
    file, has, or a DDP trial's workers more than all of them hold at once. ``may_grow``: the running
    Ray is a joined cluster, whose autoscaler may add nodes; without its cluster file, a trial larger than
    its running nodes gets a warning, not a refusal."""
    placed, refused = {}, []
    for spec in specs:
        result = place(spec, node_types, **kwargs)
        (refused.append(result) if isinstance(result, Refusal) else placed.__setitem__(result.spec_id, result))
    if running := running_capacities():
        capacities = running + [(t.cpus, float(t.gpus)) for t in node_types if not t.name.endswith("(running)")]
        where = "the running Ray cluster" + (" or its cluster file" if len(capacities) > len(running) else "")
        too_big = [r for r in (too_large(p, capacities, where) for p in placed.values()) if r is not None]
        # All of a DDP trial's workers at once: every running node, and each cluster-file type's max_workers.
        nodes = [(c, g, 1) for c, g in running] + [(t.cpus, float(t.gpus), t.max_workers) for t in node_types
                                                    if not t.name.endswith("(running)")]
        already = {r.spec_id for r in too_big}
        too_big += [r for p in placed.values() if p.spec_id not in already and (r := too_many_workers(p, nodes, where))]
        if may_grow and len(capacities) == len(running) and too_big:
            print(f"warning: {len(too_big)} trial(s) larger than every running node, e.g. {too_big[0].spec_id}: "
                  "they wait for the autoscaler to add a node that holds them (pass --cluster YAML to check "
                  "them against the cluster's node types now)")
        else:
            refused += too_big
    if refused:
        raise Unplaceable(refused, source)
    unchecked = [p for p in placed.values() if p.unchecked]
    if unchecked:
        print(f"warning: {len(unchecked)} trial(s) not checked against a GPU, e.g. {unchecked[0].spec_id}: "
              f"{unchecked[0].unchecked} (GPU_MEMORY_GIB in orchestrator/placement.py names the known ones)")
    return placed


def fit_summary(blocks: dict[str, list[dict]], node_types: list[NodeType], source: str, **kwargs) -> list[str]:
    """Lines for --dry-run and plan: per block, the largest need and the node types its trials go to."""
    lines = [f"fit on {source}: " + (", ".join(str(t) for t in node_types) or "no GPU node type")]
    for name, specs in blocks.items():
        results = [place(s, node_types, **kwargs) for s in specs]
        needs = [r.need_gib for r in results if r.need_gib is not None]
        refused = [r for r in results if isinstance(r, Refusal)]
        unchecked = [r for r in results if isinstance(r, Placement) and r.unchecked]
        counts: dict[str, int] = {}
        for r in results:
            if isinstance(r, Placement) and r.node_type:
                counts[r.node_type.name] = counts.get(r.node_type.name, 0) + 1
        where = ", ".join(f"{n} on {t}" for t, n in counts.items()) or "no GPU check (size small or no GPU types)"
        need = f"{max(needs):.1f} GiB" if needs else "-"
        lines.append(f"  {name:<15} need up to {need:>9}: {where}"
                     + (f"; {len(refused)} fit NO node type (launch refuses them)" if refused else "")
                     + (f"; {len(unchecked)} unchecked (GPU memory unknown)" if unchecked else ""))
    return lines
