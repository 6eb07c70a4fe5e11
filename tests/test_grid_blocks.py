"""The study's grid: every block the paper itemizes, with stable ids, and resources that follow the batch."""

from collections import Counter

from cli import run_cli

from datasets.catalogue import DATASETS, POOLS, prompt_types
from orchestrator.launch import trial_resources
from orchestrator.placement import NodeType, place
from search_spaces.defaults import GPU_MEMORY_GIB, estimated_memory_gib, resources_for
from search_spaces.grid import PROFILES, STUDY_BLOCKS, block_of, blocks_for, specs_of

# Pinned literals, computed once: if one changes, every stored result of that experiment is orphaned.
PINNED = {
    "cris-finetune-kvasir_polyp-p0-828a7aa1", "clipseg-frozen-kvasir_polyp-p6-ab9a2ee4",
    "cris-frozen-camus-p7-bc05f8b1", "cris-finetune-pooled_polyp-random-91315d9a",
    "clipseg-frozen-pooled_all-random-01aca914", "cris-finetune-mimic_cxr_lungs-p0-fe3be58d",
    "clipseg-frozen-mimic_cxr_lungs-p1-d23ba832",
}
# The CLIPSeg family end to end: the ids the `individual` block gave these experiments before it
# trained them as the study ran them (decoder only); kept, so earlier end-to-end results stay valid.
PINNED_OTHER_BLOCKS = {"unet-finetune-kvasir_polyp-p0-67a6ef9d", "deeplabv3plus-finetune-pooled_all-p0-38986a51",
                       "cris-zeroshot-kvasir_polyp-p0-1328fa8b", "clipseg-zeroshot-mimic_cxr_lungs-p1-f0a6e58b",
                       "clipseg-finetune-kvasir_polyp-p6-6e8d33ba", "biomedclipseg-finetune-busi-p3-573d5993",
                       "biomedclipseg_d-finetune-chexlocalize-p6-2e731371"}
COUNTS = {"individual": 288, "frozen": 144, "pooled": 4, "mimic": 4, "cnn": 30, "zeroshot": 144, "zeroshot_mimic": 4,
          "end_to_end": 216}
SHARED = 72  # CLIPSeg decoder-only: in `individual` and in `frozen`, one experiment


def test_blocks_itemize_the_paper():
    counts = {name: len(block.specs()) for name, block in STUDY_BLOCKS.items()}
    assert counts == COUNTS
    # Appendix C.1: 72 individual finetuning experiments per VLSM (50 non-radiology + 22 radiology).
    per_model = Counter(s.model for s in STUDY_BLOCKS["individual"].specs())
    assert per_model == {"cris": 72, "clipseg": 72, "biomedclipseg": 72, "biomedclipseg_d": 72}
    per_dataset = Counter(s.train_set for s in STUDY_BLOCKS["individual"].specs() if s.model == "cris")
    assert per_dataset == {"kvasir_polyp": 10, "clinicdb_polyp": 10, "bkai_polyp": 10, "isic": 10, "dfu": 10,
                           "camus": 8, "busi": 7, "chexlocalize": 7}
    study = PROFILES["study"]()
    assert len(study) == 440 - SHARED and {block_of(s) for s in study} == {"individual", "frozen", "pooled", "mimic"}
    everything = specs_of(tuple(STUDY_BLOCKS.values()))
    assert len({s.id for s in everything}) == len(everything) == sum(COUNTS.values()) - SHARED
    # The test-only endoscopy sets are never trained on; pooled endoscopy is scored on all six.
    assert not {s.train_set for s in everything} & {n for n, d in DATASETS.items() if d.test_only}
    endoscopy_pooled = [s for s in everything if s.train_set == "pooled_polyp"]
    assert len(endoscopy_pooled) == 5 and all(len(s.eval_sets) == 6 for s in endoscopy_pooled)
    # The grid runs to the paper's stopping rule: patience 50 (CLIPSeg family), 10 (CRIS), 20 (CNNs).
    patience = {s.model: s.patience for s in everything}
    assert patience == {"cris": 10, "clipseg": 50, "biomedclipseg": 50, "biomedclipseg_d": 50,
                        "unet": 20, "unetpp": 20, "deeplabv3plus": 20}


def test_study_ids_are_pinned():
    ids = {s.id for s in PROFILES["study"]()}
    assert PINNED <= ids
    others = specs_of(blocks_for("study", ["cnn", "zeroshot", "zeroshot_mimic", "end_to_end"]))
    assert PINNED_OTHER_BLOCKS <= {s.id for s in others}
    assert not PINNED_OTHER_BLOCKS & ids


def test_every_study_dataset_and_prompt_is_in_the_table():
    for spec in specs_of(tuple(STUDY_BLOCKS.values())):
        assert spec.prompt_type in prompt_types(spec.train_set), spec.id
        assert all(name in DATASETS for name in spec.eval_sets), spec.id
        if spec.train_set in POOLS:
            assert spec.eval_sets == POOLS[spec.train_set].eval_sets
    assert POOLS["pooled_all"].prompt_types[-1] == "random" and "p7" not in POOLS["pooled_all"].prompt_types


def test_resources_follow_the_batch():
    clipseg = {"model": "clipseg", "mode": "frozen", "size": "full", "batch_size": 128}
    assert resources_for(clipseg) == {"cpu": 2, "gpu": 0.5}
    assert estimated_memory_gib(clipseg) <= 0.5 * GPU_MEMORY_GIB
    # A batch that does not fit the model's share gets the next one up, up to a whole GPU.
    unet = {"model": "unet", "mode": "finetune", "size": "full", "batch_size": 16}
    assert resources_for(unet)["gpu"] == 0.25
    assert estimated_memory_gib({**unet, "batch_size": 128}) > 0.25 * GPU_MEMORY_GIB
    assert resources_for({**unet, "batch_size": 128})["gpu"] == 0.5
    assert resources_for({**clipseg, "mode": "finetune"})["gpu"] == 1.0
    # An hpo trial holding eight models needs more than one holding a single model.
    assert estimated_memory_gib(clipseg, replicas=8) > estimated_memory_gib(clipseg)
    # Overrides win; the small test models keep the model's share.
    assert resources_for({**unet, "batch_size": 128}, 0.25, 3) == {"cpu": 3, "gpu": 0.25}
    assert resources_for({**unet, "size": "small", "batch_size": 128})["gpu"] == 0.25
    # The grid asks Ray for its placement's resources, per trial: the same shares on an A10G.
    a10g = [NodeType("gpu_1x_a10g", 1, "A10G")]
    specs = {"a": unet, "b": {**unet, "batch_size": 128}}
    placements = {k: place({**s, "id": k}, a10g, cpus=1.0) for k, s in specs.items()}
    resources = trial_resources(placements)
    assert resources({"trial": "a"})["gpu"] == 0.25 and resources({"trial": "b"})["gpu"] == 0.5


def test_dry_run_lists_blocks_without_data(tmp_path):
    data = tmp_path / "no-shards-here"
    result = run_cli("grid", "--dry-run", "--profile", "study", "--data", str(data),
                     "--storage", str(tmp_path / "runs"), timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = {line.split()[0]: line for line in lines
            if line.split() and line.split()[0] in STUDY_BLOCKS and not line.startswith(" ")}
    assert set(rows) == {"individual", "frozen", "pooled", "mimic"}
    for name, line in rows.items():
        assert line.split()[1] == str(COUNTS[name]) and "Table" in line
    assert "total: 368 experiments (0 done)" in result.stdout
    assert "finetuning experiments here: 440 listed, 368 to run; the paper counts 442" in result.stdout
    assert sum(line.startswith(tuple(PINNED)) for line in lines) == len(PINNED)
    assert not data.exists()  # a dry run reads no data

    picked = run_cli("grid", "--dry-run", "--profile", "study", "--block", "cnn", "--block", "zeroshot",
                     "--only", "kvasir", "--data", str(data), "--storage", str(tmp_path / "runs"), timeout=300)
    assert picked.returncode == 0, picked.stderr
    counts = {line.split()[0]: line.split()[1] for line in picked.stdout.splitlines()
              if line.split() and line.split()[0] in STUDY_BLOCKS and not line.startswith(" ")}
    assert counts == {"cnn": "3", "zeroshot": "20"} and "total: 23 experiments" in picked.stdout

    # --seeds, --max-epochs and --set change ids; each block still counts its experiments, every seed of them.
    seeded = run_cli("grid", "--dry-run", "--profile", "study", "--block", "mimic", "--block", "zeroshot",
                     "--seeds", "3", "--max-epochs", "2", "--storage", str(tmp_path / "runs"), timeout=300)
    assert seeded.returncode == 0, seeded.stderr
    counts = {line.split()[0]: line.split()[1] for line in seeded.stdout.splitlines()
              if line.split() and line.split()[0] in STUDY_BLOCKS and not line.startswith(" ")}
    assert counts == {"mimic": "12", "zeroshot": "144"} and "total: 156 experiments" in seeded.stdout
    assert "mimic           need up to" in seeded.stdout and "12 on" in seeded.stdout
    seeds = [line.split()[-2] for line in seeded.stdout.splitlines() if line.startswith("cris-finetune-mimic")]
    assert sorted(seeds) == ["42", "42", "43", "43", "44", "44"]

    wrong = run_cli("grid", "--dry-run", "--block", "cnn", "--storage", str(tmp_path / "runs"), timeout=300)
    assert wrong.returncode == 2 and "--profile study" in wrong.stderr
