"""Pooled training sets as views over the members' shards: counts are the members' sums, samples come
from every member with distinct ids, and the pools and their evaluation sets are the study's."""

import pytest
from torch.utils.data import DataLoader

from datasets.ingest.medvlsm import FAMILIES, TEST_ONLY
from datasets.pooled import POOLED_VIEWS, PooledSplit, member_splits, open_split, pooled_rows
from datasets.segmentation import SegmentationSplit
from datasets.shards import RANDOM_PROMPT, ShardError, ShardStore
from datasets.synthetic import synthetic_rows
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES

SIZES = {"kvasir_polyp": (5, 2), "clinicdb_polyp": (4, 2), "bkai_polyp": (3, 1)}  # train, val


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("VLSM_CACHE", str(tmp_path / "cache"))
    store = ShardStore(str(tmp_path / "shards"))
    for name, (n_train, n_val) in SIZES.items():
        rows = [*synthetic_rows(name, "train", n_train, 0.5, seed=3), *synthetic_rows(name, "val", n_val, 0.5, seed=3)]
        # BKAI with fewer prompt types stands for a member of another prompt family.
        types = NON_RADIOLOGY_PROMPT_TYPES[:4] if name == "bkai_polyp" else NON_RADIOLOGY_PROMPT_TYPES
        rows = [{k: v for k, v in r.items() if not k.startswith("p") or k in types} for r in rows]
        store.write_dataset(name, rows, types)
    return store


def test_pooled_split_is_the_members_splits_one_after_another(store):
    assert member_splits("pooled_polyp", "val") == [("kvasir_polyp", "val"), ("clinicdb_polyp", "val"),
                                                    ("bkai_polyp", "val")]
    assert pooled_rows(store, "pooled_polyp", "train") == 5 + 4 + 3
    assert pooled_rows(store, "pooled_polyp", "val") == 2 + 2 + 1

    train = open_split(store, "pooled_polyp", "train", RANDOM_PROMPT, 32, train=True, seed=1)
    assert isinstance(train, PooledSplit) and len(train) == 12
    expected_ids = [f"{name}/{name}-train-{i:05d}" for name, (n, _) in SIZES.items() for i in range(n)]
    assert train.sample_ids == expected_ids
    sample = train[6]  # the second ClinicDB sample
    assert sample["sample_id"] == "clinicdb_polyp/clinicdb_polyp-train-00001"
    assert tuple(sample["image"].shape) == (3, 32, 32) and sample["text"].strip()
    train.set_epoch(4)
    assert {part.epoch for part in train.parts} == {4}
    # Through a DataLoader, as the Trainer reads it: every sample once, ids distinct.
    seen = [s["sample_id"] for batch in DataLoader(train, batch_size=5, shuffle=True, collate_fn=list)
            for s in batch]
    assert sorted(seen) == sorted(expected_ids)

    val = open_split(store, "pooled_polyp", "val", RANDOM_PROMPT, 32, train=False)
    first = [val[i]["text"] for i in range(len(val))]
    val.set_epoch(7)
    assert len(val) == 5 and [val[i]["text"] for i in range(len(val))] == first  # evaluation prompts are fixed


def test_a_single_dataset_is_its_own_split(store):
    assert member_splits("kvasir_polyp", "train") == [("kvasir_polyp", "train")]
    split = open_split(store, "kvasir_polyp", "train", "p6", 32, train=True)
    assert isinstance(split, SegmentationSplit) and len(split) == 5


def test_a_prompt_type_one_member_lacks_is_refused(store):
    with pytest.raises(ShardError, match=r"dataset 'bkai_polyp' has no prompt type 'p6'"):
        open_split(store, "pooled_polyp", "train", "p6", 32, train=True)


def test_a_missing_member_is_named(store, tmp_path):
    (tmp_path / "shards" / "clinicdb_polyp" / "manifest.json").unlink()
    with pytest.raises(ShardError, match=r"pooled set 'pooled_polyp' needs dataset\(s\) clinicdb_polyp"):
        open_split(store, "pooled_polyp", "train", RANDOM_PROMPT, 32, train=True)


def test_pools_and_evaluation_sets_are_the_studys():
    polyp, everything = POOLED_VIEWS["pooled_polyp"], POOLED_VIEWS["pooled_all"]
    # Section 2.2 / Table 2: endoscopy pooled = Kvasir-SEG, ClinicDB, BKAI, scored on the six endoscopy
    # test sets; pooled = the eight finetuning datasets, scored on all eleven.
    assert polyp.members == ("kvasir_polyp", "clinicdb_polyp", "bkai_polyp")
    assert set(polyp.eval_sets) == {*polyp.members, "cvc300_polyp", "colondb_polyp", "etis_polyp"}
    assert set(everything.members) == {*polyp.members, "isic", "dfu", "camus", "busi", "chexlocalize"}
    assert set(everything.eval_sets) == set(polyp.eval_sets) | set(everything.members)
    assert len(everything.members) == 8 and len(everything.eval_sets) == 11


def test_pools_and_ingest_names_agree_with_the_grid():
    """The grid's dataset table (datasets/catalogue.py) and the data side name the same things."""
    import datasets.catalogue as grid
    for name, view in POOLED_VIEWS.items():
        assert set(grid.POOLS[name].members) == set(view.members)
        assert set(grid.POOLS[name].eval_sets) == set(view.eval_sets)
    for name, info in grid.DATASETS.items():
        assert FAMILIES[name] == info.prompt_family
        assert (name in TEST_ONLY) == info.test_only


def test_a_grid_experiment_trains_on_a_pool_and_scores_its_members(store):
    """What the grid's pooled block runs: prepare() reads the pool's members, trains, and tests."""
    from orchestrator.grid_runner import input_problems
    from search_spaces.experiment import ExperimentSpec
    from trainables.experiment import prepare

    for name in SIZES:  # test splits to score the pooled model on
        manifest = store.manifest(name)
        rows = [*store.iter_rows(name, "train"), *store.iter_rows(name, "val"),
                *({**r, "split": "test", "sample_id": r["sample_id"] + "-t"} for r in store.iter_rows(name, "val"))]
        store.write_dataset(name, rows, manifest.prompt_types)
    spec = ExperimentSpec(model="clipseg", mode="finetune", train_set="pooled_polyp", prompt_type=RANDOM_PROMPT,
                          eval_sets=("kvasir_polyp", "bkai_polyp"), size="small", batch_size=4, max_epochs=1)
    assert input_problems([spec], store.root) == []
    trainer, test_sets = prepare({**spec.to_dict(), "id": spec.id}, store.root)
    assert len(trainer.train_set) == 12 and len(trainer.val_set) == 5
    trainer.fit()
    assert trainer.epoch == 1
    assert {name: len(trainer.test(split)) for name, split in test_sets.items()} == {"kvasir_polyp": 2,
                                                                                     "bkai_polyp": 1}
    # A pool whose member is missing is named before any trial starts.
    missing = ExperimentSpec(model="clipseg", mode="finetune", train_set="pooled_all", prompt_type=RANDOM_PROMPT,
                             eval_sets=("kvasir_polyp",), size="small")
    assert any("isic" in problem for problem in input_problems([missing], store.root))
