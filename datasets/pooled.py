"""Pooled training sets of the study as views over the members' shards (nothing is copied).

The study trained on two pools besides single datasets (paper, section 2.2 and Table 2):

- ``pooled_polyp`` (Table 2's "Endoscopy Pooled"): Kvasir-SEG, ClinicDB and BKAI; scored on the test
  splits of all six endoscopy datasets (the three members plus the test-only CVC-300, ColonDB, ETIS);
- ``pooled_all`` (Table 2's "Pooled"): the eight datasets used for finetuning (the three polyp sets,
  ISIC, DFU, CAMUS, BUSI and CheXlocalize); scored on the test splits of all eleven datasets.

The names are the study's datamodule names, as the grid (``datasets/catalogue.py``) uses them.
A pool's train (val) split is the concatenation of its members' train (val) splits, as the study's
configs list them (naamiinepal/medvlsm, ``configs/datamodule/img_txt_mask/pooled_*.yaml``). Names are
the released layout's folder names; ColonDB is ``colondb_polyp``, as in the study's per-dataset and
endoscopy configs. Pooled training usually draws its prompt type at random (``RANDOM_PROMPT``), since
the members' families have different prompt types.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

from datasets.catalogue import POOLS
from datasets.segmentation import SegmentationSplit
from datasets.shards import ShardError, ShardStore


@dataclass(frozen=True)
class PooledView:
    name: str
    members: tuple[str, ...]  # datasets whose train and val splits are pooled
    eval_sets: tuple[str, ...]  # datasets whose test split the study scored a model of this pool on


# One table of the study's datasets and pools (datasets/catalogue.py); this is its data-side view.
POOLED_VIEWS: dict[str, PooledView] = {name: PooledView(name, pool.members, pool.eval_sets)
                                       for name, pool in POOLS.items()}


def member_splits(name: str, split: str) -> list[tuple[str, str]]:
    """The (dataset, split) pairs that make up ``split`` of ``name``: a pool's members, or the dataset."""
    view = POOLED_VIEWS.get(name)
    return [(member, split) for member in view.members] if view else [(name, split)]


def pooled_rows(store: ShardStore, name: str, split: str) -> int:
    """Rows of a (pooled) split, from the manifests alone."""
    return sum(store.check_split(dataset, s).rows(s) for dataset, s in member_splits(name, split))


class PooledSplit(Dataset):
    """Members' SegmentationSplits one after another; sample ids get ``<dataset>/`` in front, since
    ids are unique only within a dataset and the Trainer keys its per-image scores by them."""

    def __init__(self, parts: list[SegmentationSplit]):
        self.parts = parts
        self.sample_ids = [f"{p.dataset}/{sid}" for p in parts for sid in p.sample_ids]
        self.index = [(k, i) for k, p in enumerate(parts) for i in range(len(p))]

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        k, j = self.index[i]
        return {**self.parts[k][j], "sample_id": self.sample_ids[i]}


def open_split(store: ShardStore, name: str, split: str, prompt_type: str, input_size: int, train: bool,
               seed: int = 0, resize: str = "torch") -> SegmentationSplit | PooledSplit:
    """A dataset's split, or a pool's: what the Trainer reads for ``train_set`` = name."""
    if name not in POOLED_VIEWS:
        return SegmentationSplit(store, name, split, prompt_type, input_size, train, seed, resize=resize)
    present = store.datasets()
    missing = [d for d, _ in member_splits(name, split) if d not in present]
    if missing:
        raise ShardError(f"pooled set {name!r} needs dataset(s) {', '.join(missing)} under {store.root}; "
                         "ingest them first (python -m datasets.ingest)")
    return PooledSplit([SegmentationSplit(store, d, s, prompt_type, input_size, train, seed, resize=resize)
                        for d, s in member_splits(name, split)])

