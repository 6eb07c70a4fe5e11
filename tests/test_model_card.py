"""Adding a model is a builder and a card: a toy model registered through its card alone (a plug-in
module named by VLSM_MODELS) is planned, trained by a real grid on a local Ray, and reported."""

import json
import textwrap

import pytest

from tests.cli import run_cli
from trainables.models import ModelCard, ModelInputs, cards, register
from trainables.models.cards import PLUGINS_ENV, STUDY_CARDS

TOY_MODULE = '''
"""A toy text-conditioned segmenter: a convolution on the image plus a bias from the prompt's tokens."""
import torch
from torch import nn

from trainables.models import ModelCard, ModelInputs, register


class Toy(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.encoder = nn.Conv2d(3, width, 3, padding=1)
        self.words = nn.EmbeddingBag(49408, width)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, pixel_values, input_ids=None, attention_mask=None):
        features = torch.relu(self.encoder(pixel_values))
        if input_ids is not None:
            features = features + self.words(input_ids)[:, :, None, None]
        return self.head(features)


def build_toy(mode, size, weights=None):
    if mode != "finetune":
        raise ValueError(f"toy trains end to end, not {mode!r}")
    return Toy(8 if size == "small" else 64)


INPUTS = ModelInputs(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 16, 0.5)
register(ModelCard(
    name="toy", title="Toy", family="vlsm", builder=build_toy, inputs={"full": INPUTS, "small": INPUTS},
    encoder_prefixes=("encoder.",), as_run_mode="finetune", gpu_fraction=0.25, cpus=1,
    defaults={"lr": 1e-2, "weight_decay": 0.0, "optimizer": "adam", "scheduler": "constant", "bce_weight": 0.0,
              "batch_size": 4, "patience": 5},
    memory={"finetune": (0.1, 0.01)}, memory_source="estimated", in_study=False,
    sources="tests/test_model_card.py",
))
'''


def test_a_card_is_checked_when_registered():
    inputs = ModelInputs(32, (0.5,) * 3, (0.25,) * 3, 16, 0.5)
    fields = dict(title="X", family="vlsm", builder="x:y", encoder_prefixes=(), as_run_mode="finetune",
                  gpu_fraction=0.25, cpus=1, defaults={"lr": 1e-3}, memory={"finetune": (0.1, 0.01)},
                  memory_source="estimated")
    with pytest.raises(ValueError, match="one of the study's"):
        register(ModelCard(name="clipseg", inputs={"full": inputs, "small": inputs}, **fields))
    with pytest.raises(ValueError, match="sizes full and small"):
        register(ModelCard(name="only_full", inputs={"full": inputs}, **fields))
    with pytest.raises(ValueError, match="family must be vlsm or cnn"):
        register(ModelCard(name="odd", inputs={"full": inputs, "small": inputs}, **{**fields, "family": "gan"}))
    assert cards()[:len(STUDY_CARDS)] == STUDY_CARDS


@pytest.mark.slow
def test_a_toy_model_runs_through_plan_grid_and_report_from_its_card_alone(tmp_path, monkeypatch):
    (tmp_path / "toy_vlsm.py").write_text(textwrap.dedent(TOY_MODULE))
    # Every process reads the plug-in: this driver, and through the environment Ray's trial workers.
    monkeypatch.setenv(PLUGINS_ENV, "toy_vlsm")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    data, storage = tmp_path / "data", tmp_path / "runs"
    select = ("--profile", "demo", "--model", "toy", "--only", "p1", "--max-epochs", "2")

    planned = run_cli("plan", "grid", *select, "--data", str(data), timeout=300)
    assert planned.returncode == 0, planned.stderr
    assert "toy finetune synth_polyp" in planned.stdout and "2 trials on" in planned.stdout, planned.stdout

    ran = run_cli("grid", *select, "--data", str(data), "--storage", str(storage), "--no-dashboard", timeout=600)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    results = sorted((storage / "demo" / "experiments").glob("toy-finetune-*/result.json"))
    assert len(results) == 2
    for path in results:
        result = json.loads(path.read_text())
        assert result["spec"]["model"] == "toy" and result["spec"]["lr"] == 1e-2 and result["epochs"] == 2

    reported = run_cli("report", "--storage", str(storage), "--study", "demo", "--data", str(data), timeout=300)
    assert reported.returncode == 0, reported.stderr
    table = (storage / "demo" / "report.md").read_text()
    assert sum("toy" in line for line in table.splitlines()) >= 2, table


def test_the_models_page_shows_the_cards():
    from tests.cli import REPO

    rows = [line.strip("|").split("|") for line in (REPO / "docs" / "models.md").read_text().splitlines()
            if line.startswith("| `")]
    shown = {cells[0].strip(" `"): [c.strip(" `") for c in cells] for cells in rows}
    assert list(shown) == [c.name for c in STUDY_CARDS]
    for c in STUDY_CARDS:
        full, d = c.inputs["full"], c.defaults
        assert shown[c.name] == [
            c.name, c.title, c.family, str(full.input_size), str(full.context_length), f"{full.threshold:g}",
            c.as_run_mode, f"{d['optimizer']} {d['lr']:g}, batch {d['batch_size']}, patience {d['patience']}",
            str(c.weights), f"{c.gpu_fraction:g}", c.memory_source, f"{c.parameters:,}" if c.parameters else "-"]
