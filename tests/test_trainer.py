"""The Trainer: a resumed run equals an uninterrupted one, and frozen mode trains only the decoder."""

import dataclasses
import io

import pytest
import torch

from datasets.shards import ShardStore
from datasets.synthetic import split_rows
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES
from search_spaces.experiment import ExperimentSpec
from trainables.experiment import prepare


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("shards"))
    sizes = (("train", 16), ("val", 8), ("test", 8))
    rows = split_rows("tiny", sizes, seed=3)
    ShardStore(root).write_dataset("tiny", rows, NON_RADIOLOGY_PROMPT_TYPES)
    return root


def trainer_for(data: str, mode: str = "frozen", max_epochs: int = 3):
    spec = ExperimentSpec(model="clipseg", mode=mode, train_set="tiny", prompt_type="p7", size="small",
                          batch_size=4, max_epochs=max_epochs, patience=10)
    return prepare({**spec.to_dict(), "id": spec.id}, data)


def test_resume_from_checkpoint_equals_uninterrupted_run(data):
    torch.set_num_threads(2)
    straight, _ = trainer_for(data)
    straight.fit()

    first, _ = trainer_for(data)
    first.step()
    first.step()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed, _ = trainer_for(data)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.epoch == 2
    resumed.fit()

    assert resumed.epoch == straight.epoch == 3
    assert resumed.best_dice == straight.best_dice
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resume")


def test_frozen_mode_trains_only_the_decoder_and_finetune_trains_all(data):
    for mode in ("frozen", "finetune"):
        trainer, _ = trainer_for(data, mode)
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.step()
        changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
        decoder = {n for n in before if n.startswith("net.decoder.")}
        if mode == "frozen":
            assert changed and changed <= decoder
        else:
            assert any(n.startswith("net.clip.vision_model.") for n in changed)
            assert any(n.startswith("net.clip.text_model.") for n in changed)


def test_early_stopping_and_test_on_best_weights(data):
    trainer, tests = trainer_for(data, max_epochs=50)
    trainer.config = dataclasses.replace(trainer.config, patience=1)
    trainer.fit()
    assert trainer.epoch < 50 and trainer.epochs_since_best == 1
    scores = trainer.test(tests["tiny"])
    assert len(scores) == 8 and all(0.0 <= s <= 1.0 for s in scores.values())
    # test() evaluates the best validation weights: validating them again gives the best dice.
    assert sum(trainer.evaluate(trainer.val_set)[1].values()) / 8 == pytest.approx(trainer.best_dice)


def test_encoders_get_their_own_learning_rate(data):
    trainer, _ = trainer_for(data, "finetune")
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [2e-3, 2e-3]  # scale 1 by default
    spec = ExperimentSpec(model="clipseg", mode="finetune", train_set="tiny", prompt_type="p7", size="small",
                          batch_size=4, max_epochs=1, encoder_lr_scale=0.1)
    trainer, _ = prepare({**spec.to_dict(), "id": spec.id}, data)
    decoder, encoder = trainer.optimizer.param_groups
    assert decoder["lr"] == 2e-3 and encoder["lr"] == pytest.approx(2e-4)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert all(names[id(p)].startswith("net.clip.") for p in encoder["params"])
    assert not any(names[id(p)].startswith("net.clip.") for p in decoder["params"])
    frozen, _ = trainer_for(data, "frozen")
    assert len(frozen.optimizer.param_groups) == 1  # nothing of the encoders trains
