"""Every registered model builds offline, and its small config trains and evaluates through the Trainer."""


import pytest
import torch

from datasets.shards import ShardStore
from datasets.synthetic import split_rows
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES
from search_spaces.defaults import training_defaults
from search_spaces.experiment import ExperimentSpec
from trainables.experiment import prepare
from trainables.models import build_model, build_tokenizer, card, cards, model_names

STUDY_MODELS = model_names(study_only=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("shards"))
    # 9 training rows in batches of 4: the last batch of one is dropped (BatchNorm needs two).
    sizes = (("train", 9), ("val", 4), ("test", 4))
    rows = split_rows("tiny", sizes, seed=5)
    ShardStore(root).write_dataset("tiny", rows, NON_RADIOLOGY_PROMPT_TYPES, "non_radiology")
    return root


def test_the_study_has_seven_cards_each_complete():
    assert set(STUDY_MODELS) == {"clipseg", "cris", "biomedclipseg", "biomedclipseg_d", "unet", "unetpp",
                                 "deeplabv3plus"}
    for model in cards():
        assert set(model.inputs) == {"small", "full"} and model.defaults and model.memory, model.name
        assert {"lr", "batch_size", "optimizer", "scheduler", "patience"} <= set(model.defaults), model.name
        assert model.as_run_mode in model.memory or "finetune" in model.memory, model.name
    assert {m.name for m in cards() if m.family == "cnn"} == {"unet", "unetpp", "deeplabv3plus"}


@pytest.mark.parametrize("name", [m.name for m in cards() if m.parameters])
def test_full_size_parameter_counts_match_the_cards(name):
    model = build_model(name, card(name).as_run_mode, "full")
    assert sum(p.numel() for p in model.parameters()) == card(name).parameters


@pytest.mark.parametrize("name", STUDY_MODELS)
def test_small_model_trains_and_evaluates_through_the_trainer(name, data):
    torch.set_num_threads(2)
    mode = card(name).as_run_mode
    spec = ExperimentSpec(model=name, mode=mode, train_set="tiny", prompt_type="p6",
                          **{**training_defaults(name), "size": "small", "batch_size": 4, "max_epochs": 2})
    trainer, tests = prepare({**spec.to_dict(), "id": spec.id}, data)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.fit()
    assert trainer.epoch == 2 and 0.0 <= trainer.best_dice <= 1.0
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if n in before)
    scores = trainer.test(tests["tiny"])
    assert len(scores) == 4 and all(0.0 <= s <= 1.0 for s in scores.values())


def test_cnns_train_end_to_end_only():
    with pytest.raises(ValueError, match="mode must be finetune"):
        build_model("unet", "frozen", "small")


def test_zeroshot_evaluates_without_training(data):
    spec = ExperimentSpec(model="clipseg", mode="zeroshot", train_set="tiny", prompt_type="p1", size="small")
    trainer, tests = prepare({**spec.to_dict(), "id": spec.id}, data)
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    assert trainer.epoch == 0 and trainer.best_state is None
    assert len(trainer.test(tests["tiny"])) == 4
    assert all(torch.equal(weights[n], p) for n, p in trainer.model.named_parameters())


@pytest.mark.parametrize("name", STUDY_MODELS)
def test_tokenizer_produces_real_ids(name):
    tokenizer = build_tokenizer(name)
    ids = tokenizer("one small pink round polyp, located in left of the image")["input_ids"]
    words = [i for i in ids if i not in tokenizer.all_special_ids]  # CLIP's unknown is its end token
    assert len(words) >= 10 and tokenizer.unk_token_id not in words
    assert "polyp" in tokenizer.decode(ids) and "left" in tokenizer.decode(ids)


def test_bench_prints_step_time_and_memory_per_model(capsys):
    from benchmarks.models import main

    assert main(["--size", "small", "--steps", "1", "--batch-size", "2", "--models", "clipseg", "unet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"clipseg", "unet"}
    for row in rows.values():
        assert float(row[-2]) > 0 and float(row[-1]) > 0  # step seconds, peak GiB


def test_clipseg_reloads_from_a_folder_it_was_saved_to(tmp_path):
    torch.manual_seed(0)
    model = build_model("clipseg", "frozen", "small").eval()
    model.net.save_pretrained(tmp_path / "clipseg")
    clip_bpe = build_tokenizer("clipseg")
    clip_bpe.save_pretrained(tmp_path / "clipseg")
    reloaded = build_model("clipseg", "frozen", "small", weights=str(tmp_path / "clipseg")).eval()
    tokenizer = build_tokenizer("clipseg", str(tmp_path / "clipseg"))
    text = "one small pink round polyp"
    assert tokenizer(text)["input_ids"] == clip_bpe(text)["input_ids"]
    tokens = tokenizer([text], padding="max_length", max_length=32, return_tensors="pt")
    pixels = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        before = model(pixels, tokens["input_ids"], tokens["attention_mask"])
        after = reloaded(pixels, tokens["input_ids"], tokens["attention_mask"])
    # from_pretrained may pick another attention kernel than the constructor: equal up to rounding.
    torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))


def test_relative_weights_paths_resolve_against_the_commands_folder(tmp_path, monkeypatch):
    from trainables.models import WEIGHTS_ROOT_ENV, resolve_weights

    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "cris_best.pth").write_bytes(b"x")
    trial_dir = tmp_path / "trial"
    trial_dir.mkdir()
    monkeypatch.chdir(trial_dir)  # where Ray runs a trial: not where the user typed the command
    monkeypatch.setenv(WEIGHTS_ROOT_ENV, str(tmp_path))
    assert resolve_weights("pretrain/cris_best.pth") == str(tmp_path / "pretrain" / "cris_best.pth")
    assert resolve_weights("CIDAS/clipseg-rd64-refined") == "CIDAS/clipseg-rd64-refined"  # a hub id
    assert resolve_weights(None) is None
    monkeypatch.delenv(WEIGHTS_ROOT_ENV)
    assert resolve_weights("pretrain/cris_best.pth") == "pretrain/cris_best.pth"
