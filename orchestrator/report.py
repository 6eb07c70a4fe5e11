"""Results tables: one row per (experiment, evaluation set), as Markdown and CSV; and one row per
evaluation run (``ablate``, ``ood``) when there are any. Read from the study's tidy results
(``orchestrator/results.py``); Dice in % in every file (the columns ending in ``_%``)."""

from __future__ import annotations

import csv
import io
import posixpath

from datasets.overlap import shared_content
from datasets.shards import ShardError, ShardStore, write_atomically
from orchestrator.results import backfill, load
from trainables.results import ResultStore

COLUMNS = ["experiment_id", "model", "mode", "regime", "train_set", "prompt_type", "eval_set",
           "dice_mean_%", "dice_std_%", "n_images", "best_val_dice_%", "epochs", "shares_content_with"]
CAPTION = ("Dice (%) per image at original resolution, mean and standard deviation over the test set; "
           "columns ending in _% are in %, here and in report.csv.")
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
        "shares_content_with": "",
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


def write_report(storage: str, study: str, data: str | None = None) -> tuple[str, str, list[dict]]:
    """Write ``report.md`` and ``report.csv`` beside the study's experiments, both with Dice in %; returns
    their URIs and rows. Reads the study's tidy results (``orchestrator.results``), written first for any
    record finished before they existed. With ``data`` (the shard root), rows on datasets that share
    content with another are flagged."""
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
    results.fs.create_dir(results.path, recursive=True)
    for name, text in files.items():
        write_atomically(results.fs, posixpath.join(results.path, name), text.encode())
    return f"{results.uri}/report.md", f"{results.uri}/report.csv", rows
