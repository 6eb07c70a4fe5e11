"""Adding a model is a builder and a card: a toy model registered through its card alone (a plug-in module
a study file names, as VLSM_MODELS does), on a dataset folder ingested from outside the package, is planned,
trained by a real grid on a local Ray, shown by status and reported."""

import json
import re
import subprocess
import sys
import textwrap

import pytest

from tests.cli import REPO, run_cli
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


STUDY_FILE = """
name: lab
description: a user's own model on a user's own dataset
plugins: [toy_vlsm]
weights: none
settings: {size: small, max_epochs: 2}
blocks:
  mine:
    source: tests/test_model_card.py
    models: [toy]
    mode: as_run
    datasets: [lab_polyps]
    prompts: [p1, p10]
"""


def write_folder(folder) -> None:
    """A plain dataset folder as a lab keeps one: images/, masks/ (a bright disc), splits.csv and a prompt
    of the lab's own per image (metadata.csv)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    splits, prompts = ["id,split"], ["id,prompt"]
    for i in range(12):
        yy, xx = np.mgrid[:48, :48]
        cy, cx, r = rng.integers(14, 34, 2).tolist() + [int(rng.integers(5, 10))]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image = rng.integers(0, 90, (48, 48, 3)).astype(np.uint8)
        image[disc] = (220, 120, 110)
        Image.fromarray(image).save(folder / "images" / f"case{i:02d}.png")
        Image.fromarray((disc * 255).astype(np.uint8)).save(folder / "masks" / f"case{i:02d}.png")
        splits.append(f"case{i:02d},{'train' if i < 8 else 'val' if i < 10 else 'test'}")
        prompts.append(f"case{i:02d},the {'left' if cx < 24 else 'right'} lesion")
    (folder / "splits.csv").write_text("\n".join(splits) + "\n")
    (folder / "metadata.csv").write_text("\n".join(prompts) + "\n")


@pytest.mark.slow
def test_a_study_file_runs_a_users_model_on_a_users_dataset_through_plan_grid_status_and_report(tmp_path, monkeypatch):
    """Issue 18's whole path from outside the package: a model module and a dataset folder of a lab's own,
    a study file naming both; ingest, plan, grid on a local Ray, status and report."""
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "toy_vlsm.py").write_text(textwrap.dedent(TOY_MODULE))
    write_folder(tmp_path / "my_polyps")
    study = tmp_path / "lab.yaml"
    study.write_text(STUDY_FILE)
    # The study file names the plug-in; Ray's trial workers import it from the same PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", str(lab))
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    data, storage = tmp_path / "data", tmp_path / "runs"

    ingested = subprocess.run([sys.executable, "-m", "datasets.ingest", "folder", "lab_polyps",
                               str(tmp_path / "my_polyps"), "--to", str(data), "--class-name", "polyp"],
                              capture_output=True, text=True, timeout=300, cwd=REPO)
    assert ingested.returncode == 0, ingested.stderr
    where = ("--study-file", str(study), "--data", str(data))

    planned = run_cli("plan", "grid", *where, timeout=300)
    assert planned.returncode == 0, planned.stderr
    assert "2 trials on" in planned.stdout, planned.stdout

    ran = run_cli("grid", *where, "--storage", str(storage), "--no-dashboard", timeout=600)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    results = sorted((storage / "lab" / "experiments").glob("toy-finetune-lab_polyps-*/result.json"))
    assert len(results) == 2, ran.stdout
    for path in results:
        result = json.loads(path.read_text())
        assert result["spec"]["model"] == "toy" and result["spec"]["lr"] == 1e-2 and result["epochs"] == 2
        assert result["spec"]["prompt_type"] in ("p1", "p10") and 0 <= result["eval"]["lab_polyps"]["dice_mean"] <= 1

    status = run_cli("status", *where, "--storage", str(storage), timeout=300)
    assert status.returncode == 0, status.stderr
    assert re.search(r"^total\s+2\s+0\s+0\s+0\b", status.stdout, re.M), status.stdout  # done, running, failed, pending

    reported = run_cli("report", *where, "--storage", str(storage), timeout=300)
    assert reported.returncode == 0, reported.stderr
    table = (storage / "lab" / "report.md").read_text()
    assert sum("toy" in line and "lab_polyps" in line for line in table.splitlines()) >= 2, table


def test_the_models_page_shows_the_cards():
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
