"""`python -m datasets.prompts show` and `generate`: prompts from masks, images and metadata, written into shards."""

import subprocess
import sys

import pytest

from datasets.prompts import main
from datasets.shards import ShardStore
from datasets.synthetic import split_rows
from tests.cli import REPO


def rows(dataset, sizes=(("train", 30), ("test", 10)), metadata=None):
    for row in split_rows(dataset, sizes, seed=2):
        yield {**row, "metadata": metadata if metadata is not None else row["metadata"]}


def test_show_prints_prompts_and_perturbations(tmp_path, capsys):
    ShardStore(str(tmp_path)).write_dataset("tiny", rows("tiny"), [f"p{i}" for i in range(10)], "non_radiology")
    written = next(rows("tiny"))
    assert main(["show", str(tmp_path), "--name", "tiny", "--prompts", "p6", "-n", "1"]) == 0
    assert repr(written["p6"][0]) in capsys.readouterr().out
    assert main(["show", f"{tmp_path}/tiny", "--prompts", "p6", "-n", "1"]) == 0  # ROOT/DATASET
    assert repr(written["p6"][0]) in capsys.readouterr().out
    assert main(["show", str(tmp_path), "--name", "tiny", "--prompts", "p6", "-n", "1",
                 "--perturb", "random_word:color"]) == 0
    shown = capsys.readouterr().out
    assert written["metadata"]["attr.color"] not in shown and written["metadata"]["attr.shape"] in shown
    assert main(["show", str(tmp_path), "--name", "nope"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


def test_generate_recovers_the_generators_prompts_from_pixels(tmp_path, capsys):
    store = ShardStore(str(tmp_path / "bare"))
    # Shards without prompts or attributes: only images, masks and class names.
    store.write_dataset("tiny", rows("tiny", metadata={}), ["p0"])
    assert main(["generate", str(tmp_path / "bare"), "--name", "tiny"]) == 2
    assert "--family" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "bare"), "--name", "tiny", "--family", "non_radiology"]) == 0
    manifest = store.manifest("tiny")
    assert manifest.prompt_types == tuple(f"p{i}" for i in range(10))
    assert manifest.prompt_family == "non_radiology"
    generated = {r["sample_id"]: r for s in ("train", "test") for r in store.iter_rows("tiny", s)}
    original = {r["sample_id"]: r for r in rows("tiny")}
    assert generated.keys() == original.keys()
    same_p6 = 0
    for sample_id, row in generated.items():
        truth = original[sample_id]
        # Number, size and location follow the study's rules exactly; shape and colour are
        # stand-ins read from pixels, which mostly agree with what the generator drew.
        for attribute in ("number", "size", "location", "class_name"):
            assert row["metadata"][f"attr.{attribute}"] == truth["metadata"][f"attr.{attribute}"]
        assert row["image"] == truth["image"] and row["mask"] == truth["mask"]
        same_p6 += row["p6"] == truth["p6"]
    assert same_p6 >= 0.9 * len(generated)
    # The dataset has prompts now: generating again needs --overwrite.
    assert main(["generate", str(tmp_path / "bare"), "--name", "tiny"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_generate_uses_metadata_for_radiology_families(tmp_path):
    camus = {"label": "1", "view": "2CH", "phase": "ED", "sex": "F", "age": "56", "image_quality": "Good"}
    ShardStore(str(tmp_path)).write_dataset("echo", rows("echo", (("train", 3),), camus), ["p0"])
    assert main(["generate", str(tmp_path), "--name", "echo", "--family", "camus", "--to",
                 str(tmp_path / "out")]) == 0
    row = next(ShardStore(str(tmp_path / "out")).iter_rows("echo", "train"))
    assert row["p6"] == [
        "Left ventricular cavity in two-chamber view of the heart at end of the diastole cycle of a "
        "fifty-six-year-old female with good image quality.",
        "Left ventricular cavity in two-chamber view in the cardiac ultrasound at end of the diastole cycle of a "
        "fifty-six-year-old female with good image quality.",
    ]
    assert row["metadata"]["attr.shape"] in row["p7"][0]
    assert row["metadata"]["view"] == "2CH"  # the original metadata is kept


def test_generate_names_the_row_whose_metadata_is_bad(tmp_path, capsys):
    ShardStore(str(tmp_path)).write_dataset("echo", rows("echo", (("train", 2),), {"label": "7"}), ["p0"])
    assert main(["generate", str(tmp_path), "--name", "echo", "--family", "camus"]) == 2
    err = capsys.readouterr().err
    assert "split 'train' row 0 (sample_id 'echo-train-00000')" in err and "'label'" in err


@pytest.mark.parametrize("command", ["show", "generate"])
def test_help_documents_every_flag(command):
    out = subprocess.run([sys.executable, "-m", "datasets.prompts", command, "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--name", "-n", "--perturb") if command == "show" else ("--family", "--to", "--overwrite"):
        assert flag in out.stdout
