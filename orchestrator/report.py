"""Results tables: one row per (experiment, evaluation set), as Markdown and CSV; and one row per
evaluation run (``ablate``, ``ood``) when there are any. Read from the study's tidy results
(``orchestrator/results.py``); Dice in % in every file (the columns ending in ``_%``).

Beside them, the results as the paper prints them (``orchestrator/paper_tables.py``): ``tables.md`` and
``tables.csv`` (for ``--profile study`` Tables 2, 3, 6, 7, 8 and Figure 2's values, each cell our mean Dice
with its 95% CI and the published number; for the demo, a Table-2-shaped table and its prompt comparisons),
``prompts.md`` and ``prompts.csv`` (every prompt type against P0, with the test that says so)."""

from __future__ import annotations

import csv
import html
import io
import os
import posixpath
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets.overlap import shared_content
from datasets.shards import ShardError, ShardStore, write_atomically
from orchestrator.html_report import write_html_report
from orchestrator.results import backfill, load
from trainables.results import ResultStore

if TYPE_CHECKING:
    from collections.abc import Sequence

    from search_spaces.experiment import ExperimentSpec

COLUMNS = ["experiment_id", "model", "mode", "regime", "train_set", "prompt_type", "eval_set",
           "dice_mean_%", "dice_std_%", "n_images", "best_val_dice_%", "epochs", "nsd_mean_%", "hd95_mean_px",
           "shares_content_with"]
CAPTION = ("Dice (%) per image at original resolution, mean and standard deviation over the test set; "
           "columns ending in _% are in %, here and in report.csv. Beside it, as Metrics Reloaded recommends, "
           "a boundary metric: the normalized surface distance at 2 px (%) and the 95th-percentile Hausdorff "
           "distance (pixels), means over the images where they are defined (trainables/metrics.py).")
EVAL_COLUMNS = ["evaluation_id", "kind", "source", "model", "mode", "train_set", "prompt_type", "perturbation",
                "eval_set", "dice_mean_%", "dice_std_%", "n_images", "change_%"]
EVAL_CAPTION = ("Evaluation runs: a finished experiment's best weights on a test set, with the prompt perturbed "
                "at inference (ablate) or on another dataset (ood). Dice (%) as above; change: relative change (%) "
                "of mean dice against the same weights with the prompt unperturbed (Figure 3).")


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 4)


def _records(frame) -> list[dict]:
    """A DataFrame's rows as dicts of plain Python values (numpy's as Python's), a missing value as None."""
    import pandas as pd  # loaded already by the frame's maker

    return [{k: None if pd.isna(v) else v.item() if hasattr(v, "item") else v for k, v in row.items()}
            for row in frame.to_dict("records")]


def result_rows(storage: str, study: str) -> list[dict]:
    """One row per finished experiment and evaluation set, from the study's tidy results (experiments level)."""
    frame = load(storage, study, "experiments", folders=("experiments",))
    rows = [{
        "experiment_id": r["record_id"], "model": r["model"], "mode": r["mode"], "regime": r["regime"],
        "train_set": r["train_set"], "prompt_type": r["prompt_type"], "eval_set": r["eval_set"],
        "dice_mean_%": _percent(r["dice_mean"]), "dice_std_%": _percent(r["dice_std"]),
        "n_images": r["n_images"], "best_val_dice_%": _percent(r["best_val_dice"]), "epochs": r["epochs"],
        "nsd_mean_%": _percent(r["nsd_mean"]),
        "hd95_mean_px": None if r["hd95_mean"] is None else round(r["hd95_mean"], 2), "shares_content_with": "",
    } for r in _records(frame) if r["eval_set"] is not None]
    return sorted(rows, key=lambda r: tuple(r[k] or "" for k in ("model", "mode", "train_set", "prompt_type",
                                                                  "eval_set")))


def evaluation_rows(storage: str, study: str) -> list[dict]:
    """One row per finished evaluation, with the relative change against the unperturbed prompt."""
    records = _records(load(storage, study, "experiments", folders=("evaluations",)))
    reference = {(r["kind"], r["experiment_id"], r["eval_set"]): r["dice_mean"]
                 for r in records if r["perturbation"] is None}
    rows = []
    for r in records:
        unperturbed = reference.get((r["kind"], r["experiment_id"], r["eval_set"]))
        change = r["dice_mean"] / unperturbed - 1 if r["perturbation"] is not None and unperturbed else None
        rows.append({
            "evaluation_id": r["record_id"], "kind": r["kind"], "source": r["experiment_id"],
            "model": r["model"], "mode": r["mode"], "train_set": r["train_set"],
            "prompt_type": r["prompt_type"], "perturbation": r["perturbation"] or "none",
            "eval_set": r["eval_set"], "dice_mean_%": _percent(r["dice_mean"]),
            "dice_std_%": _percent(r["dice_std"]), "n_images": r["n_images"], "change_%": _percent(change),
        })
    return sorted(rows, key=lambda r: (r["kind"], r["source"], r["eval_set"], r["perturbation"] != "none",
                                       r["perturbation"]))


def _cell(value) -> str:
    if value is None:  # e.g. no validation dice for a zero-shot experiment
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def to_markdown(rows: list[dict], columns: list[str] = COLUMNS, caption: str = CAPTION) -> str:
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [caption, "", header, rule]
    lines += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict], columns: list[str] = COLUMNS) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def flag_shared_content(rows: list[dict], data: str) -> list[str]:
    """Mark each row whose evaluation set shares images or masks with another dataset under ``data``
    (datasets.overlap, from the hashes ingest recorded); returns a note per overlapping pair."""
    sets = {r["eval_set"] for r in rows} | {r["train_set"] for r in rows}
    try:
        overlaps = shared_content(ShardStore(data, cache=False), involving=sets)
    except (OSError, ShardError) as e:  # no shards where the report runs: nothing to flag from
        print(f"note: shared content not checked ({e})")
        return []
    for row in rows:
        others = sorted({o.dataset_b if o.dataset_a == row["eval_set"] else o.dataset_a for o in overlaps
                         if row["eval_set"] in (o.dataset_a, o.dataset_b)})
        row["shares_content_with"] = " ".join(others)
    return [f"- {o.describe()}: scores on one are no independent evidence about the other" for o in overlaps]


@dataclass
class Report:
    """What ``write_report`` wrote. Unpacks as before, ``md_uri, csv_uri, rows = write_report(...)``; the rest
    for whoever reuses the results (figures, an HTML page): ``files`` (every file written, name -> URI),
    ``tables`` (name -> ``paper_tables.PaperTable``: its ``cells`` frame, ``markdown()``, ``wide()``),
    ``comparisons`` (``significance.compare_prompts``' frame, Dice in [0, 1]), ``left_out`` (records not in the
    current grid, one row each) and the ``analysis`` (``paper_tables.Analysis``)."""

    markdown: str  # URI of report.md
    csv: str  # URI of report.csv
    rows: list[dict]
    files: dict[str, str] = field(default_factory=dict)
    analysis: Any = None  # paper_tables.Analysis

    def __iter__(self):
        return iter((self.markdown, self.csv, self.rows))

    @property
    def tables(self) -> dict:
        return self.analysis.tables if self.analysis else {}

    @property
    def comparisons(self):
        return self.analysis.comparisons if self.analysis else None

    @property
    def left_out(self):
        return self.analysis.left_out if self.analysis else None


def paper_analysis(storage: str, study: str, profile: str | None = None, blocks: Sequence[str] | None = None,
                   models: Sequence[str] | None = None, specs: Sequence[ExperimentSpec] | None = None,
                   keep_all: bool = False, n_resamples: int | None = None, images=None):
    """The study's tables and prompt comparisons (``paper_tables.analyse``) for the report's grid: ``specs``
    when given (ids compared, seeds aside: the launch's own flags), else the ``profile``'s ``blocks`` for
    ``models`` (``paper_tables.grid_for``; the profile defaults to the study's name where it names one; the
    demo's models default to those the study ran, as ``grid --profile demo --model NAME`` runs any).
    With no grid, every record is kept. Records not in the grid are left out and listed (``keep_all``:
    kept). ``images``: the study's tidy images, where the caller has read them already."""
    from orchestrator import paper_tables as pt
    from search_spaces.grid import PROFILES

    images = load(storage, study, "images") if images is None else images
    profile = profile or (study if study in PROFILES else None)
    if profile == "demo" and not models and specs is None:  # the demo is defined for any model: those it ran
        models = pt.known_models(images["model"].dropna().unique()) or None
    if specs is not None:
        grid = pt.Grid("the given experiments", tuple(specs), exact=True)
    else:
        grid = None
        if profile is not None:
            try:
                grid = pt.grid_for(profile, blocks, models)
            except ValueError as e:  # e.g. --model NAME that no experiment of the profile trains
                print(f"note: the tables keep every finished record ({e})")
                keep_all = True
    layout = pt.layout_of(profile, images)
    if grid is None and layout == "study":  # no grid to leave anything out by; its cells say "no run yet"
        grid, keep_all = pt.grid_for("study"), True
    return pt.analyse(images, study, grid, layout, keep_all=keep_all,
                      n_resamples=n_resamples or pt.CELL_RESAMPLES)


def write_report(storage: str, study: str, data: str | None = None, *, profile: str | None = None,
                 blocks: Sequence[str] | None = None, models: Sequence[str] | None = None,
                 specs: Sequence[ExperimentSpec] | None = None, keep_all: bool = False) -> Report:
    """Write ``report.md`` and ``report.csv`` beside the study's experiments, both with Dice in %, and the
    paper's tables (``tables.md``, ``tables.csv``), prompt comparisons (``prompts.md``, ``prompts.csv``),
    ``ranks.md`` and ``seeds.md`` where they apply, ``figures/`` and ``report.html``; returns a ``Report``
    (unpacking as their URIs and rows, as before). Reads the study's tidy results
    (``orchestrator.results``), written first for any record finished before they existed. With ``data``
    (the shard root), rows on datasets that share content with another are flagged. The grid of the tables
    (``paper_analysis``): ``specs``, else ``profile`` (default: the study's name), ``blocks``, ``models``;
    records outside it are left out of the tables and listed apart unless ``keep_all``."""
    results = ResultStore(storage, study)
    backfill(storage, study)  # records finished before the tidy results existed
    rows = result_rows(storage, study)
    notes = flag_shared_content(rows, data) if data and rows else []
    files = {"report.md": to_markdown(rows), "report.csv": to_csv(rows)}
    if notes:
        files["report.md"] += ("\nDatasets that share images or masks (python -m datasets.validate):\n"
                               + "\n".join(notes) + "\n")
    if evaluations := evaluation_rows(storage, study):  # evaluations.csv, and a second table in report.md
        files["report.md"] += "\n" + to_markdown(evaluations, EVAL_COLUMNS, EVAL_CAPTION)
        files["evaluations.csv"] = to_csv(evaluations, EVAL_COLUMNS)
    images = load(storage, study, "images")
    analysis = paper_analysis(storage, study, profile, blocks, models, specs, keep_all, images=images)
    trained, rankings = own_test_sets(images)
    files.update(analysis.texts)
    files.update(spread_and_ranks(trained, rankings, study))
    results.fs.create_dir(results.path, recursive=True)
    for name, text in files.items():
        write_atomically(results.fs, posixpath.join(results.path, name), text.encode())
    uris = {name: f"{results.uri}/{name}" for name in files}
    figures = write_figures(results, study, images, rankings)
    uris.update({f"{FIGURES}/{name}": f"{results.uri}/{FIGURES}/{name}" for name in figures})
    # Names come from storage (record ids, plug-in models): escaped before Markdown, which keeps raw HTML.
    tables = {"Results": to_markdown(rows), **{t.title: t.markdown() for t in analysis.tables.values()},
              "Prompt types against P0": analysis.texts.get("prompts.md", ""),
              **{title: files[name] for name, title in (("ranks.md", "Prompt types ranked across datasets"),
                                                         ("seeds.md", "Spread between seeds and between images"))
                 if name in files}}
    tables = {title: html.escape(text, quote=False) for title, text in tables.items()}
    titled = {TITLES.get(name) or name.removesuffix(".png").replace("cd-", "Prompt types' average ranks: ", 1)
              .replace("-", " "): data for name, data in figures.items()}
    uris["report.html"] = write_html_report(results.uri.removesuffix(f"/{study}"), study, tables, titled)
    return Report(uris["report.md"], uris["report.csv"], rows, uris, analysis)


FIGURES = "figures"  # <storage>/<study>/figures/*.png
TITLES = {"figure2.png": "Figure 2: Dice by prompt type (95% CI)", "figure3.png": "Figure 3: perturbed prompts",
          "figure4.png": "Figure 4: largest drops when an attribute value is replaced",
          "table2.png": "Table 2 as a heatmap", "curves.png": "Training curves"}


def own_test_sets(images) -> tuple:
    """The experiments' scores on their own test sets (not ood, not ablations), and per model and mode the
    prompt types ranked across datasets (``significance.rank_prompts``: Friedman, Nemenyi)."""
    from orchestrator.significance import rank_prompts  # scipy, scikit-posthocs: only a report needs them

    trained = images[images["kind"].isin(("train", "zeroshot")) & (images["eval_set"] == images["train_set"])]
    return trained, (rank_prompts(trained) if len(trained) else {})


def spread_and_ranks(trained, rankings: dict, study: str) -> dict[str, str]:
    """``seeds.md`` where specs ran with several seeds (``significance.seed_spread``: the spread between
    seeds and between images, apart), and ``ranks.md``: ``rankings`` (``own_test_sets``) as text, where
    a Friedman test could be computed."""
    from orchestrator.significance import seed_spread

    texts = {}
    spread = seed_spread(trained[["model", "mode", "train_set", "prompt_type", "eval_set", "seed", "sample_id",
                                  "dice"]]) if len(trained) else None
    if spread is not None and len(spread):
        table = spread.assign(**{c: (100 * spread[c]).round(2) for c in ("mean_dice", "between_seed_sd",
                                                                          "between_image_sd")})
        texts["seeds.md"] = f"# Seeds: {study}\n\n" + to_markdown(
            _records(table), list(table.columns), "Dice (%) of the specs run with several seeds (--seeds): the SD "
            "between the seeds' means and the mean SD between images, reported apart.")
    lines = []
    for key, ranking in rankings.items():
        if ranking.n_blocks >= 2 and len(ranking.ranks) >= 3 and ranking.pvalue == ranking.pvalue:
            ranks = ", ".join(f"{p} {r:.2f}" for p, r in ranking.ranks.items())
            lines.append(f"- {' '.join(map(str, key))}: Friedman p={ranking.pvalue:.2g} over {ranking.n_blocks} "
                         f"datasets; average rank (1 = best): {ranks}"
                         + (f"; left out (not on every dataset): {', '.join(ranking.dropped)}"
                            if ranking.dropped else ""))
    if lines:
        texts["ranks.md"] = (f"# Prompt types ranked across datasets: {study}\n\nPer model and mode, the mean "
                             "Dice of each prompt type on each dataset ranked (Friedman test; Nemenyi post-hoc in "
                             "the critical-difference figures).\n\n" + "\n".join(lines) + "\n")
    return texts


def write_figures(results: ResultStore, study: str, images, rankings: dict) -> dict[str, bytes]:
    """Draw the study's figures (orchestrator/figures.py) and store them under ``<study>/figures/``; returns
    name -> PNG bytes of those there was something to draw. A figure that fails is reported and skipped:
    the tables stand without it."""
    from orchestrator import figures as fig  # matplotlib: only a report draws
    from orchestrator.significance import critical_difference_figure
    from trainables.models import model_names

    storage = results.uri.removesuffix(f"/{study}")
    drawn: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as folder:
        jobs = {"figure2.png": lambda p: fig.figure2(images, p), "figure3.png": lambda p: fig.figure3(images, p),
                "figure4.png": lambda p: fig.figure4(storage, study, p),
                "table2.png": lambda p: fig.table2_heatmap(images, p),
                "curves.png": lambda p: fig.training_curves(storage, study, p)}
        for name, draw in jobs.items():
            try:
                if draw(os.path.join(folder, name)) is not None:
                    drawn[name] = Path(folder, name).read_bytes()
            except Exception as e:  # noqa: BLE001 - a figure is a view of the tables, never a reason to stop
                print(f"report: {name} not drawn ({type(e).__name__}: {e})", file=sys.stderr)
        for key, ranking in rankings.items():
            if ranking.posthoc is not None and len(ranking.ranks) >= 3:
                name = f"cd-{'-'.join(map(str, key))}.png"
                try:
                    critical_difference_figure(ranking.ranks, ranking.posthoc, os.path.join(folder, name),
                                               title=f"{' '.join(map(str, key))}: prompt types, average rank")
                    drawn[name] = Path(folder, name).read_bytes()
                except Exception as e:  # noqa: BLE001
                    print(f"report: {name} not drawn ({type(e).__name__}: {e})", file=sys.stderr)
        for model in model_names():
            try:
                for path in fig.hpo_figures(storage, study, model, folder):
                    drawn[Path(path).name] = Path(path).read_bytes()
            except Exception as e:  # noqa: BLE001
                print(f"report: hpo figures of {model} not drawn ({type(e).__name__}: {e})", file=sys.stderr)
    where = posixpath.join(results.path, FIGURES)
    results.fs.create_dir(where, recursive=True)
    for name, data in drawn.items():
        write_atomically(results.fs, posixpath.join(where, name), data)
    return drawn
