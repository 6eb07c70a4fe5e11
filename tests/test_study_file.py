"""A study is a file: the built-in profiles are study files shipped in the package and list the same ids as
the code-defined grids did; a user's file names its own models, datasets (from the catalogue or the shard
root), prompts, blocks, settings, seeds and resources; every mistake in it is refused before anything runs,
naming the file, the line and the key; `new-study` writes a file that loads and dry-runs as written."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import textwrap
from pathlib import Path

import pytest

from datasets.shards import ShardStore
from datasets.synthetic import split_rows
from orchestrator.run import main
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES
from tests.cli import run_cli
from trainables.models.cards import PLUGINS_ENV

# Sorted ids of `grid --dry-run` with these flags, taken from the code-defined grids (search_spaces/grid.py)
# before the profiles became study files: count, the first 16 hex digits of sha256("\n".join(sorted ids)).
PINNED = {
    "--profile demo": (6, "62a11c972b6918ea"),
    "--profile study": (368, "463e6ce9e3530455"),
    "--profile study --block individual": (288, "ebe99620d04adbae"),
    "--profile study --block frozen": (144, "33233c53577951ed"),
    "--profile study --block pooled": (4, "1b6cf3204e733e8d"),
    "--profile study --block mimic": (4, "cf2658cdd30b1e1f"),
    "--profile study --block cnn": (30, "ad76332738cec6c4"),
    "--profile study --block zeroshot": (144, "dab63d5b1f1bca87"),
    "--profile study --block zeroshot_mimic": (4, "7bce541999f94bfc"),
    "--profile study --block end_to_end": (216, "1199972de489ffbe"),
    "--profile demo --model unet --model cris": (8, "abdbf2b6d4e58d3d"),
    "--profile study --model unet --block cnn": (10, "fc22ada64d127f75"),
    "--profile study --seeds 2 --block mimic --as-released --set bce_weight=0": (8, "0de4933c258cc7c1"),
}
DEMO_IDS = ["clipseg-frozen-synth_pairs-p0-3008cbd3", "clipseg-frozen-synth_pairs-p1-720c82de",
            "clipseg-frozen-synth_pairs-p6-6a8778ea", "clipseg-frozen-synth_polyp-p0-b4399f8c",
            "clipseg-frozen-synth_polyp-p1-76f8ba3c", "clipseg-frozen-synth_polyp-p6-ed75f0bd"]


def dry_run(*args: str) -> tuple[int, str, str]:
    """``grid --dry-run ARGS`` in this process (a dry run imports neither torch nor Ray): exit code, out, err."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["grid", "--dry-run", *args])
        except SystemExit as e:  # argparse refusing a flag
            code = e.code
    return code, out.getvalue(), err.getvalue()


def listed_ids(stdout: str) -> list[str]:
    """The experiment ids of a dry run's listing, sorted (the listing itself is longest first)."""
    return sorted(line.split()[0] for line in stdout.splitlines()
                  if line.split() and line.split()[-1] in ("pending", "done") and line[:1].islower())


def digest(ids: list[str]) -> tuple[int, str]:
    return len(ids), hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


@pytest.mark.parametrize("flags", list(PINNED))
def test_the_profiles_list_the_ids_they_listed_before_they_were_files(flags, tmp_path):
    code, out, err = dry_run(*flags.split(), "--storage", str(tmp_path / "runs"))
    assert code == 0, err
    assert digest(listed_ids(out)) == PINNED[flags], out


def test_the_builtin_profiles_are_study_files_read_by_the_same_code(tmp_path):
    from search_spaces.grid import PROFILES, STUDY_BLOCKS
    from search_spaces.study_file import STUDIES_DIR, load_study

    for name in ("demo", "study"):
        path = STUDIES_DIR / f"{name}.yaml"
        assert path.is_file()
        study = load_study(path)
        assert sorted(s.id for s in study.specs()) == sorted(s.id for s in PROFILES[name]())
    # hpo sizes its trials by search_spaces/defaults.py: the files say the same.
    from search_spaces.defaults import SMALL_OVERRIDES, STUDY

    assert load_study(STUDIES_DIR / "demo.yaml").settings == {**SMALL_OVERRIDES, "hparams": "paper"}
    assert load_study(STUDIES_DIR / "study.yaml").settings == STUDY
    # Each paper block keeps its source, and `--study-file` on the shipped file is `--profile`.
    assert "App. F.1; Tables 6, 7" in STUDY_BLOCKS["frozen"].source
    code, out, err = dry_run("--study-file", str(STUDIES_DIR / "demo.yaml"), "--storage", str(tmp_path))
    assert code == 0, err
    assert listed_ids(out) == DEMO_IDS


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


GOOD = """
    name: mine
    settings:
      size: small
      max_epochs: 2
    blocks:
      polyps:
        source: our polyp prompts
        models: [clipseg, unet]
        mode: as_run
        datasets: [kvasir_polyp]
        prompts: [p0, p1]
"""


# (what is wrong, the line of GOOD changed, its new text, the line the error names, words the error says)
MISTAKES = [
    ("unknown top-level key", "name: mine", "name: mine\nmodel: clipseg", 2, ["'model'", "expected one of"]),
    ("unknown block key", "    mode: as_run", "    mode: as_run\n    prompt: [p0]", 10, ["'prompt'", "prompts"]),
    ("unknown model", "[clipseg, unet]", "[clipseg, unet, segformer]", 8, ["segformer", "plugins"]),
    ("unknown mode", "mode: as_run", "mode: frozen_encoder", 9, ["frozen_encoder", "as_run"]),
    ("unknown dataset", "[kvasir_polyp]", "[kvasir_polyp, my_polyps]", 10, ["my_polyps", "--data"]),
    ("unknown prompt type", "[p0, p1]", "[p0, p12]", 11, ["p12", "kvasir_polyp"]),
    ("a setting that is not a spec field", "size: small", "size: small\n  learning_rate: 0.1", 4,
     ["learning_rate", "lr"]),
    ("a setting of the wrong type", "max_epochs: 2", "max_epochs: two", 4, ["max_epochs", "int"]),
    ("a setting the blocks fix", "size: small", "size: small\n  train_set: isic", 4, ["train_set", "blocks"]),
    ("a block without its source", "    source: our polyp prompts\n", "", 6, ["source"]),
    ("a list where one value is wanted", "mode: as_run", "mode: [as_run]", 9, ["mode", "one of"]),
    # PyYAML finds an unclosed list where the next line starts; the message names the line it opened on.
    ("no YAML at all", "    models: [clipseg, unet]", "    models: [clipseg, unet", 9, ["YAML", "line 8"]),
    ("seeds that are not whole numbers", "name: mine", "name: mine\nseeds: [42, x]", 2, ["seeds", "whole"]),
    ("resources out of range", "name: mine", "name: mine\nresources: {gpus_per_trial: 1.5}", 2,
     ["gpus_per_trial", "fraction"]),
    ("a key given twice", "    mode: as_run", "    mode: as_run\n    mode: frozen", 10, ["'mode'", "twice"]),
    ("a name that is no folder name", "name: mine", "name: ../../escape", 1, ["name", "usable"]),
    ("a size no model has", "size: small", "size: tiny", 3, ["size", "full, small"]),
    ("a batch of none", "max_epochs: 2", "max_epochs: 2\n  batch_size: 0", 5, ["batch_size", "above 0"]),
]


def test_a_setting_in_a_file_gives_the_id_the_same_set_flag_gives(tmp_path):
    """A whole number stays whole and 1e-4 (which YAML reads as text) is a number, as `--set` reads them: moving
    a --set into a file keeps the ids, so the results already stored stay the study's."""
    text = textwrap.dedent(GOOD).replace("max_epochs: 2", "max_epochs: 2\n  bce_weight: 0\n  lr: 1e-4")
    code, out, err = dry_run("--study-file", str(write(tmp_path / "mine.yaml", text)), "--storage", str(tmp_path))
    assert code == 0, err
    from_file = listed_ids(out)
    good = write(tmp_path / "good.yaml", GOOD)
    code, out, err = dry_run("--study-file", str(good), "--storage", str(tmp_path), "--set", "bce_weight=0",
                             "--set", "lr=1e-4")
    assert code == 0, err
    assert sorted(from_file) == sorted(listed_ids(out)) and len(from_file) == 3, (from_file, out)


def test_a_good_user_file_expands_as_written(tmp_path):
    code, out, err = dry_run("--study-file", str(write(tmp_path / "mine.yaml", GOOD)), "--storage", str(tmp_path))
    assert code == 0, err
    ids = listed_ids(out)
    # CLIPSeg reads both prompts, the UNet reads no text: P0 alone.
    assert [i.rsplit("-", 1)[0] for i in ids] == ["clipseg-frozen-kvasir_polyp-p0", "clipseg-frozen-kvasir_polyp-p1",
                                                  "unet-finetune-kvasir_polyp-p0"], out
    assert "polyps" in out and "our polyp prompts" in out  # the block, with its source


@pytest.mark.parametrize("what,old,new,line,words", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_in_a_study_file_names_its_line_and_key(what, old, new, line, words, tmp_path):
    text = textwrap.dedent(GOOD).lstrip()
    assert old in text
    path = tmp_path / "mine.yaml"
    path.write_text(text.replace(old, new, 1))
    code, out, err = dry_run("--study-file", str(path), "--storage", str(tmp_path / "runs"))
    assert code == 2 and not listed_ids(out), out
    assert f"{path}, line {line}:" in err, err
    for word in words:
        assert word in err, err


def test_a_dataset_found_only_in_the_shard_root_takes_its_manifests_prompt_types(tmp_path):
    data = tmp_path / "shards"
    prompt_types = NON_RADIOLOGY_PROMPT_TYPES[:4]  # p0..p3: the manifest, not a catalogue family, says which
    ShardStore(str(data)).write_dataset("lab_polyps", split_rows("lab_polyps", [("train", 4), ("val", 2), ("test", 2)]),
                                        prompt_types)
    study = write(tmp_path / "lab.yaml", """
        blocks:
          lab:
            source: our own polyps
            models: [clipseg]
            mode: frozen
            datasets: [lab_polyps]
            prompts: each
            eval_sets: [lab_polyps, kvasir_polyp]
        seeds: [42, 7]
    """)
    code, out, err = dry_run("--study-file", str(study), "--data", str(data), "--storage", str(tmp_path / "runs"))
    assert code == 0, err
    ids = listed_ids(out)
    assert len(ids) == 8 and {i.split("-")[3] for i in ids} == set(prompt_types), out  # 4 prompts x 2 seeds
    # Without the shard root that holds it, the name is refused before anything runs, naming where it looked.
    code, out, err = dry_run("--study-file", str(study), "--data", str(tmp_path / "empty"),
                             "--storage", str(tmp_path / "runs"))
    assert code == 2 and f"{study}, line 6:" in err and "lab_polyps" in err and "empty" in err, err


def test_plugins_and_settings_of_a_file_reach_the_specs_and_the_environment(tmp_path, monkeypatch):
    from search_spaces.study_file import load_study

    (tmp_path / "lab_models.py").write_text(textwrap.dedent("""
        from trainables.models import ModelCard, ModelInputs, register
        INPUTS = ModelInputs(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 16, 0.5)
        register(ModelCard(name="lab_net", title="LabNet", family="cnn", builder="lab_models:build",
                           inputs={"full": INPUTS, "small": INPUTS}, encoder_prefixes=(), as_run_mode="finetune",
                           gpu_fraction=0.25, cpus=1, defaults={"lr": 1e-2, "batch_size": 4},
                           memory={"finetune": (0.1, 0.01)}, memory_source="estimated", in_study=False))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(PLUGINS_ENV, "")  # restored after the test: load_study sets it
    study = load_study(write(tmp_path / "lab.yaml", """
        plugins: [lab_models]
        settings: {size: small, lr: 0.5}
        resources: {gpus_per_trial: 0.5, cpus_per_trial: 2}
        blocks:
          lab:
            source: our model
            models: [lab_net]
            mode: as_run
            datasets: [synth_polyp]
            prompts: each
    """))
    assert os.environ[PLUGINS_ENV] == "lab_models"  # so Ray's trials import it too (orchestrator/launch.py)
    [spec] = study.specs()
    assert (spec.model, spec.mode, spec.prompt_type, spec.lr, spec.batch_size, spec.hparams) == (
        "lab_net", "finetune", "p0", 0.5, 4, "set")
    assert study.resources == {"gpus_per_trial": 0.5, "cpus_per_trial": 2}


def test_new_study_writes_a_commented_file_that_runs_as_written(tmp_path):
    made = run_cli("new-study", "my_study", cwd=tmp_path, timeout=120)
    assert made.returncode == 0, made.stderr
    path = tmp_path / "my_study.yaml"
    text = path.read_text()
    assert text.count("\n#") + text.count("  #") > 10  # a file to start from: every key explained
    shown = run_cli("grid", "--study-file", str(path), "--dry-run", "--storage", str(tmp_path / "runs"),
                    cwd=tmp_path, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert len(listed_ids(shown.stdout)) == 4 and "polyps" in shown.stdout, shown.stdout  # CLIPSeg x 3, UNet x 1
    status = run_cli("status", "--study-file", str(path), "--storage", str(tmp_path / "runs"), cwd=tmp_path,
                     timeout=120)
    assert status.returncode == 0 and "pending" in status.stdout, status.stdout + status.stderr
    again = run_cli("new-study", "my_study", cwd=tmp_path, timeout=120)
    assert again.returncode != 0 and "exists" in again.stderr  # never overwrites a user's file
