"""Issue 16, cases 8 and 12 (trainer half): splits that would corrupt results or cannot train are refused,
as bad input (a ShardError naming the dataset, split and what is wrong), before any epoch runs.

Before the fix, duplicate sample ids in a split silently overwrote each other's scores in the
per-image results (dicts keyed by id), and a one-row train split died of ZeroDivisionError: its only
batch, of one sample, is dropped (BatchNorm cannot train on one), so the epoch had no batch.

The shards are written as an older vlsm-tune or another tool could have left them: ingest and
``ShardStore.write_dataset`` now refuse duplicate ids themselves, but the trainer must not trust
storage to hold only what today's writer writes.
"""

from __future__ import annotations

import itertools

import pytest

from datasets.shards import Manifest, ShardError, ShardFile, filesystem_for, shard_schema, write_atomically
from datasets.synthetic import synthetic_rows
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES
from search_spaces.experiment import ExperimentSpec
from trainables.experiment import prepare


def write_unchecked(root: str, dataset: str, rows) -> None:
    """Shards and a manifest of ``rows``, as they are: nothing checks the rows."""
    fs, path = filesystem_for(root)
    fs.create_dir(f"{path}/{dataset}", recursive=True)
    splits = {}
    for split, group in itertools.groupby(rows, key=lambda row: row["split"]):
        shard = ShardFile(fs, f"{path}/{dataset}", f"{split}-00000.parquet", shard_schema(NON_RADIOLOGY_PROMPT_TYPES))
        for row in group:
            shard.add(row)
        entry = shard.finish()
        splits[split] = {"rows": entry["rows"], "files": [entry]}
    manifest = Manifest(dataset, tuple(NON_RADIOLOGY_PROMPT_TYPES), splits, "non_radiology")
    write_atomically(fs, f"{path}/{dataset}/manifest.json", manifest.to_json().encode())


def rows(dataset: str, sizes: dict[str, int], repeat: dict[str, dict[int, int]] | None = None):
    """Synthetic rows of each split; ``repeat[split] = {i: j}`` gives row i the sample id of row j."""
    for split, n in sizes.items():
        split_rows = list(synthetic_rows(dataset, split, n, 0.5, seed=5))
        for i, row in enumerate(split_rows):
            j = (repeat or {}).get(split, {}).get(i)
            yield {**row, "sample_id": split_rows[j]["sample_id"]} if j is not None else row


def prepared(root: str, dataset: str):
    spec = ExperimentSpec(model="clipseg", mode="frozen", train_set=dataset, prompt_type="p6", size="small",
                          batch_size=4, max_epochs=1)
    return prepare({**spec.to_dict(), "id": spec.id}, root, feature_cache=False)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_split_with_duplicate_sample_ids_is_refused_before_its_scores_collide(tmp_path, split):
    root, dataset = str(tmp_path / "shards"), f"dup_{split}"
    # Rows 3 and 5 repeat the ids of rows 1 and 2: the scores of rows 1 and 2 would be overwritten.
    write_unchecked(root, dataset, rows(dataset, {"train": 6, "val": 6, "test": 6}, {split: {3: 1, 5: 2}}))
    with pytest.raises(ShardError) as refused:
        trainer, tests = prepared(root, dataset)
        if split == "test":  # the test splits reach the Trainer after training (trainables.experiment.prepare)
            trainer.test_scores(tests[dataset])
    message = str(refused.value)
    assert f"dataset {dataset!r} split {split!r}" in message
    assert f"2 sample id(s) held by more than one row: '{dataset}-{split}-00001', '{dataset}-{split}-00002'" in message
    assert "re-ingest the dataset" in message


def test_a_one_row_train_split_is_refused_with_the_minimum(tmp_path):
    root = str(tmp_path / "shards")
    write_unchecked(root, "one_row", rows("one_row", {"train": 1, "val": 2, "test": 2}))
    with pytest.raises(ShardError) as refused:
        trainer, _ = prepared(root, "one_row")
        trainer.fit()  # before the fix: ZeroDivisionError in the first epoch
    message = str(refused.value)
    assert "dataset 'one_row' split 'train' has 1 row" in message
    assert "training needs at least 2" in message
