"""The small CLIPSeg learns on synthetic data, and learns to read the prompt.

On two-object images the mask holds only the object the prompt describes: without a prompt (P0)
the best a model can do is outline both objects (dice near 0.6); with P6 (size, colour, shape and
place of the target) it can pick the right one. Same seed, data and steps for both.
"""

import pytest
import torch

from datasets.shards import ShardStore
from datasets.synthetic import write_synthetic
from search_spaces.experiment import ExperimentSpec
from trainables.experiment import prepare

EPOCHS = 60  # 1,200 steps of batch 8; about a minute per run on two CPU cores


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("shards"))
    write_synthetic(ShardStore(root), "synth_pairs")
    return root


def train(data: str, prompt_type: str) -> tuple[float, float]:
    # Decoder on frozen random encoders, as the study trained; a constant LR within this short budget.
    spec = ExperimentSpec(model="clipseg", mode="frozen", train_set="synth_pairs", prompt_type=prompt_type,
                          size="small", lr=2e-3, batch_size=8, max_epochs=EPOCHS, patience=EPOCHS,
                          lr_patience=EPOCHS)
    torch.set_num_threads(2)
    trainer, tests = prepare({**spec.to_dict(), "id": spec.id}, data)
    trainer.fit()
    test = trainer.test(tests["synth_pairs"])
    return trainer.best_dice, sum(test.values()) / len(test)


@pytest.mark.slow
def test_informative_prompt_beats_empty_prompt_on_two_object_images(data):
    p6_val, p6_test = train(data, "p6")
    p0_val, p0_test = train(data, "p0")
    print(f"validation dice p6 {p6_val:.3f} p0 {p0_val:.3f}; test dice p6 {p6_test:.3f} p0 {p0_test:.3f}")
    assert p6_val >= 0.8
    assert p6_test >= 0.8
    assert p6_val - p0_val >= 0.15
    assert p6_test - p0_test >= 0.15
