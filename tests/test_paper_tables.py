"""The paper's tables from a tidy results frame (orchestrator/paper_tables.py): each planted result lands in its
table's row and column beside the published number, a missing run says so, the P0 and best-prompt variants are
labelled, Markdown and CSV give Dice in %, and an experiment outside the grid is left out and listed apart
(kept with --all). No Ray, no storage: the frame is built as orchestrator.results.load returns it."""

from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np
import pandas as pd
import pytest

from datasets.catalogue import ALL_POOL, POOLS
from orchestrator import paper_tables as pt
from orchestrator import published
from search_spaces.grid import MIMIC, study_spec
from trainables.results import IMAGES_SCHEMA, SPEC_COLUMNS

N = 30  # images per test set


def planted(mean: float, seed: int, n: int = N) -> np.ndarray:
    """Per-image Dice around ``mean`` (a fixed spread), clipped to [0, 1]."""
    return np.clip(mean + np.random.default_rng(seed).normal(0, 0.05, n), 0, 1)


def rows(spec, dice: dict[str, np.ndarray], kind: str | None = None, record_id: str | None = None) -> list[dict]:
    """The tidy image rows of one record, as the result store writes them (trainables.results.tidy_tables)."""
    d = spec.to_dict()
    head = {k: ",".join(d[k]) if k == "eval_sets" else d[k] for k in SPEC_COLUMNS}
    kind = kind or ("zeroshot" if spec.mode == "zeroshot" else "train")
    return [{"record_id": record_id or spec.id, "experiment_id": spec.id, "kind": kind, **head, "regime": spec.regime,
             "perturbation": None, "eval_set": eval_set, "sample_id": f"{eval_set}-{i}", "prompt": None,
             "dice": float(v), "nsd": None, "hd95": None}
            for eval_set, values in dice.items() for i, v in enumerate(values)]


def frame(*records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([r for record in records for r in record], columns=IMAGES_SCHEMA.names)


KVASIR, CLINICDB = "kvasir_polyp", "clinicdb_polyp"
CRIS_P0 = study_spec("cris", "finetune", KVASIR, "p0")
CRIS_P1 = study_spec("cris", "finetune", KVASIR, "p1")
CLIPSEG_P0 = study_spec("clipseg", "frozen", KVASIR, "p0")  # individual and frozen: one spec
POOLED = study_spec("cris", "finetune", ALL_POOL, "random", POOLS[ALL_POOL].eval_sets)  # two sets planted
MIMIC_P1 = study_spec("cris", "finetune", MIMIC, "p1")
OUTSIDE = study_spec("cris", "finetune", KVASIR, "random")  # no block trains CRIS on one dataset with `random`
DICE = {
    "cris_p0": planted(0.80, 1), "cris_p1": planted(0.90, 2), "clipseg_p0": planted(0.70, 3),
    "pooled_kvasir": planted(0.85, 4), "pooled_busi": planted(0.60, 5), "ood": planted(0.75, 6),
    "mimic": planted(0.88, 7), "outside": planted(0.97, 8),
}


@pytest.fixture(scope="module")
def images() -> pd.DataFrame:
    return frame(
        rows(CRIS_P0, {KVASIR: DICE["cris_p0"]}), rows(CRIS_P1, {KVASIR: DICE["cris_p1"]}),
        rows(CLIPSEG_P0, {KVASIR: DICE["clipseg_p0"]}),
        rows(POOLED, {"kvasir_polyp": DICE["pooled_kvasir"], "busi": DICE["pooled_busi"]}),
        # Table 3: CRIS trained on Kvasir with P1, its best weights on ClinicDB (an ood evaluation)
        rows(CRIS_P1, {CLINICDB: DICE["ood"]}, kind="ood", record_id=f"ood-{CRIS_P1.id}-{CLINICDB}-0000"),
        rows(MIMIC_P1, {MIMIC: DICE["mimic"]}),
        rows(OUTSIDE, {KVASIR: DICE["outside"]}),
    )


def analyse(images: pd.DataFrame, keep_all: bool = False, n_resamples: int = 500) -> pt.Analysis:
    return pt.analyse(images, "study", pt.grid_for("study"), "study", keep_all=keep_all, n_resamples=n_resamples)


@pytest.fixture(scope="module")
def analysis(images) -> pt.Analysis:
    return analyse(images)


def cell(analysis: pt.Analysis, table: str, **keys) -> dict:
    cells = analysis.tables[table].cells
    found = cells[np.logical_and.reduce([cells[k] == v for k, v in keys.items()])]
    assert len(found) == 1, (table, keys, found)
    return found.iloc[0].to_dict()


def test_table2_cells_land_in_the_papers_rows_and_columns_beside_the_published_number(analysis):
    p0 = cell(analysis, "table2", group="Individual", row="CRIS", variant="P0", column="Kvasir-SEG")
    paper = published.cell(2, group="Individual", row="CRIS", column="Kvasir-SEG")["dice"]
    assert p0["status"] == "ok" and p0["prompt_type"] == "p0" and p0["n_images"] == N
    assert p0["ours_mean_%"] == pytest.approx(100 * DICE["cris_p0"].mean())
    assert p0["published_%"] == paper == 91.39
    assert p0["difference_%"] == pytest.approx(100 * DICE["cris_p0"].mean() - paper)
    assert p0["ci_low_%"] < p0["ours_mean_%"] < p0["ci_high_%"]
    # Pooled: the pooled block's experiment (prompt type random) on each of its test sets
    pooled = cell(analysis, "table2", group="Pooled", row="CRIS", column="BUSI")
    assert pooled["ours_mean_%"] == pytest.approx(100 * DICE["pooled_busi"].mean())
    assert pooled["published_%"] == published.cell(2, group="Pooled", row="CRIS", column="BUSI")["dice"]
    assert (pooled["variant"], pooled["prompt_type"], pooled["train_set"]) == ("", "random", "pooled_all")
    # SOTA* is the paper's number from the literature, not an experiment
    sota = cell(analysis, "table2", row="SOTA*", column="Kvasir-SEG")
    assert (sota["status"], sota["published_%"]) == ("literature", 95.02)


def test_the_p0_and_best_prompt_variants_are_labelled(analysis):
    best = cell(analysis, "table2", group="Individual", row="CRIS", variant="best prompt", column="Kvasir-SEG")
    assert best["prompt_type"] == "p1" and best["ours_mean_%"] == pytest.approx(100 * DICE["cris_p1"].mean())
    assert best["note"] == "best of 2 of 10 prompt types run"
    wide = analysis.tables["table2"].wide()
    assert wide.loc[("Individual", "CRIS (P0)"), "Kvasir-SEG"].endswith("(paper 91.39, " + f"{best_diff(analysis)})")
    assert " at p1 (paper 91.39" in wide.loc[("Individual", "CRIS (best prompt)"), "Kvasir-SEG"]
    assert wide.loc[("Individual", "CRIS (P0)"), "CVC-300"] == "-"  # the paper prints "-": a test-only set


def best_diff(analysis) -> str:
    p0 = cell(analysis, "table2", group="Individual", row="CRIS", variant="P0", column="Kvasir-SEG")
    return f"{p0['difference_%']:+.1f}"


def test_a_missing_run_says_no_run_yet(analysis):
    missing = cell(analysis, "table2", group="Individual", row="CRIS", variant="P0", column="ClinicDB")
    assert (missing["status"], missing["published_%"], missing["n_images"]) == ("no run yet", 91.69, 0)
    assert analysis.tables["table2"].wide().loc[("Individual", "CRIS (P0)"), "ClinicDB"] == \
        "no run yet (paper 91.69)"
    frozen = cell(analysis, "table6", row="Kvasir-SEG", column="P0")  # CRIS frozen: not run here
    assert frozen["status"] == "no run yet" and frozen["published_%"] == 75.49


def test_tables_3_6_7_and_8(analysis):
    # Table 3: the row's prompt is the best on the training set's own test split (p1); off the diagonal, the
    # ood evaluation; the same row at P0 has no ood run yet.
    ood = cell(analysis, "table3", group="Kvasir-SEG", row="CRIS", variant="best prompt", column="ClinicDB")
    assert (ood["prompt_type"], ood["status"], ood["published_%"]) == ("p1", "ok", 82.99)
    assert ood["ours_mean_%"] == pytest.approx(100 * DICE["ood"].mean())
    diagonal = cell(analysis, "table3", group="Kvasir-SEG", row="CRIS", variant="best prompt", column="Kvasir-SEG")
    assert diagonal["ours_mean_%"] == pytest.approx(100 * DICE["cris_p1"].mean())
    assert cell(analysis, "table3", group="Kvasir-SEG", row="CRIS", variant="P0", column="ClinicDB")["status"] \
        == "no run yet"
    # Table 7: CLIPSeg on frozen encoders is the individual block's CLIPSeg: the same experiment
    t7 = cell(analysis, "table7", row="Kvasir-SEG", column="P0")
    assert t7["ours_mean_%"] == pytest.approx(100 * DICE["clipseg_p0"].mean()) and t7["published_%"] == 86.38
    assert t7["published_std_%"] == 17.8
    assert analysis.tables["table7"].wide().loc[("", "CAMUS"), "P9"] == "N/A"
    # Table 8: MIMIC finetuned at P1; zero-shot not run
    t8 = cell(analysis, "table8", group="CRIS", row="Finetuning", column="P1")
    assert t8["ours_mean_%"] == pytest.approx(100 * DICE["mimic"].mean()) and t8["published_%"] == 90.99
    assert cell(analysis, "table8", group="CRIS", row="Zero-shot", column="P0")["status"] == "no run yet"
    # Figure 2: by prompt type, no published numbers
    f2 = cell(analysis, "figure2", group="Kvasir-SEG", row="CRIS finetuned", column="P1")
    assert f2["status"] == "ok" and pd.isna(f2["published_%"])
    assert cell(analysis, "figure2", group="Kvasir-SEG", row="CRIS zero-shot", column="P0")["status"] == "no run yet"


def test_csv_and_markdown_give_dice_in_percent(analysis):
    table = list(csv.DictReader(io.StringIO(analysis.texts["tables.csv"])))
    assert list(table[0]) == pt.CELL_COLUMNS
    row = next(r for r in table if r["table"] == "table2" and r["row"] == "CRIS" and r["variant"] == "P0"
               and r["column"] == "Kvasir-SEG")
    assert float(row["ours_mean_%"]) == pytest.approx(100 * DICE["cris_p0"].mean(), abs=1e-3)
    assert float(row["published_%"]) == 91.39 and row["n_images"] == str(N) and row["status"] == "ok"
    markdown = analysis.texts["tables.md"]
    mean = 100 * DICE["cris_p0"].mean()
    assert f"| Individual | CRIS (P0) | {mean:.1f} [" in markdown
    assert "## Table 2" in markdown and "## Table 3" in markdown and "## Table 8" in markdown
    assert "Dice (%)" in markdown and "BCa bootstrap CI" in markdown and "500 resamples" in markdown


def test_prompt_types_against_p0_with_their_test(analysis):
    comparisons = analysis.comparisons
    row = comparisons[(comparisons["model"] == "cris") & (comparisons["eval_set"] == KVASIR)].iloc[0]
    assert row["prompt_type"] == "p1" and row["beats_baseline"]
    prompts = list(csv.DictReader(io.StringIO(analysis.texts["prompts.csv"])))
    assert float(prompts[0]["mean_diff_%"]) == pytest.approx(100 * (DICE["cris_p1"] - DICE["cris_p0"]).mean())
    text = analysis.texts["prompts.md"]
    assert "## CRIS finetune on kvasir_polyp" in text and "Beat P0: p1 (+" in text
    assert "Wilcoxon p" in text and "Holm p" in text


def test_an_experiment_outside_the_grid_is_left_out_and_listed_apart(images, analysis):
    assert list(analysis.left_out["record_id"]) == [OUTSIDE.id]
    assert "## Not in the current grid" in analysis.texts["tables.md"] and OUTSIDE.id in analysis.texts["tables.md"]
    best = cell(analysis, "table2", group="Individual", row="CRIS", variant="best prompt", column="Kvasir-SEG")
    assert best["prompt_type"] == "p1"  # not the outside experiment's better score
    kept = analyse(images, keep_all=True)
    assert list(kept.left_out["record_id"]) == [OUTSIDE.id] and "(--all)" in kept.texts["tables.md"]
    best = cell(kept, "table2", group="Individual", row="CRIS", variant="best prompt", column="Kvasir-SEG")
    assert best["prompt_type"] == "random" and "not in the grid (kept: --all)" in best["note"]


def test_a_grid_without_a_block_says_not_in_this_grid(images):
    analysis = pt.analyse(images, "study", pt.grid_for("study", ["individual"]), "study", n_resamples=200)
    unet = cell(analysis, "table2", group="Individual", row="UNet", column="Kvasir-SEG")
    assert unet["status"] == "not in this grid" and unet["published_%"] == 84.77
    assert POOLED.id in set(analysis.left_out["record_id"])  # the pooled block is not in this grid


def test_seeds_are_averaged_per_image_first():
    second = dataclasses.replace(CRIS_P0, seed=7)
    images = frame(rows(CRIS_P0, {KVASIR: DICE["cris_p0"]}), rows(second, {KVASIR: DICE["cris_p1"]}))
    exact = pt.Grid("launch", (CRIS_P0,), exact=True)  # the launch's specs: other seeds are the same experiment
    analysis = pt.analyse(images, "study", exact, "study", n_resamples=200)
    assert analysis.left_out.empty
    p0 = cell(analysis, "table2", group="Individual", row="CRIS", variant="P0", column="Kvasir-SEG")
    assert (p0["n_runs"], p0["n_seeds"], p0["n_images"]) == (2, 2, N)
    assert p0["ours_mean_%"] == pytest.approx(100 * ((DICE["cris_p0"] + DICE["cris_p1"]) / 2).mean())
    other = dataclasses.replace(CRIS_P0, max_epochs=3)  # another experiment of the same cell
    assert not exact.holds(rows(other, {KVASIR: DICE["cris_p0"][:1]})[0])
    assert pt.grid_for("study").holds(rows(other, {KVASIR: DICE["cris_p0"][:1]})[0])  # by what blocks fix


def test_the_generic_table_for_a_profile_without_paper_tables():
    from search_spaces.grid import demo

    specs = demo()
    effect = {"p0": 0.6, "p1": 0.62, "p6": 0.8}
    images = frame(*(rows(s, {s.train_set: planted(effect[s.prompt_type], i)}) for i, s in enumerate(specs)))
    grid = pt.grid_for("demo")
    analysis = pt.analyse(images, "demo", grid, "generic", n_resamples=200)
    table = analysis.tables["demo"]
    assert table.columns == ["synth_pairs", "synth_polyp"]
    best = cell(analysis, "demo", row="CLIPSeg frozen", variant="best prompt", column="synth_polyp")
    assert best["prompt_type"] == "p6" and best["ours_mean_%"] == pytest.approx(100 * images[
        (images["prompt_type"] == "p6") & (images["eval_set"] == "synth_polyp")]["dice"].mean())
    text = analysis.texts["tables.md"]
    assert "CLIPSeg frozen (P0)" in text and " at p6" in text and "## Prompt types against P0" in text
    assert "p6 beats p0" in text and "Wilcoxon p" in text
    assert len(analysis.comparisons) == 4

