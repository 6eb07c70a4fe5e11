"""Results tables: one row per (experiment, evaluation set), as Markdown and CSV; and one row per
evaluation run (``ablate``, ``ood``) when there are any."""

from __future__ import annotations

import csv
import io
import posixpath

from datasets.overlap import shared_content
from datasets.shards import ShardError, ShardStore, write_atomically
from search_spaces.experiment import ExperimentSpec
from trainables.results import ResultStore

COLUMNS = ["experiment_id", "model", "mode", "regime", "train_set", "prompt_type", "eval_set",
           "dice_mean", "dice_std", "n_images", "best_val_dice", "epochs", "shares_content_with"]
CAPTION = "Dice (%) per image at original resolution, mean and standard deviation over the test set."
EVAL_COLUMNS = ["evaluation_id", "kind", "source", "model", "mode", "train_set", "prompt_type", "perturbation",
                "eval_set", "dice_mean", "dice_std", "n_images", "change"]
EVAL_CAPTION = ("Evaluation runs: a finished experiment's best weights on a test set, with the prompt perturbed "
                "at inference (ablate) or on another dataset (ood). Dice (%) as above; change: relative change (%) "
                "of mean dice against the same weights with the prompt unperturbed (Figure 3).")


def result_rows(results: ResultStore) -> list[dict]:
    rows = []
    for result in results.results():
        spec = result["spec"]
        for eval_set, scores in sorted(result["eval"].items()):
            rows.append({
                "experiment_id": result["experiment_id"], "model": spec["model"], "mode": spec["mode"],
                "regime": ExperimentSpec.from_dict(spec).regime, "shares_content_with": "",
                "train_set": spec["train_set"], "prompt_type": spec["prompt_type"], "eval_set": eval_set,
                "dice_mean": scores["dice_mean"], "dice_std": scores["dice_std"],
                "n_images": scores["n_images"], "best_val_dice": result["best_val_dice"],
                "epochs": result["epochs"],
            })
    return sorted(rows, key=lambda r: (r["model"], r["mode"], r["train_set"], r["prompt_type"], r["eval_set"]))


def evaluation_rows(storage: str, study: str) -> list[dict]:
    rows = []
    for result in ResultStore(storage, study, folder="evaluations").results():
        spec, source = result["spec"], result["source_spec"]
        scores = result["eval"][spec["eval_set"]]
        rows.append({
            "evaluation_id": result["evaluation_id"], "kind": result["kind"], "source": result["source"],
            "model": source["model"], "mode": source["mode"], "train_set": source["train_set"],
            "prompt_type": spec["prompt_type"], "perturbation": spec["perturbation"] or "none",
            "eval_set": spec["eval_set"], "dice_mean": scores["dice_mean"], "dice_std": scores["dice_std"],
            "n_images": scores["n_images"], "change": None,
        })
    reference = {(r["kind"], r["source"], r["eval_set"]): r["dice_mean"] for r in rows if r["perturbation"] == "none"}
    for row in rows:
        unperturbed = reference.get((row["kind"], row["source"], row["eval_set"]))
        if row["perturbation"] != "none" and unperturbed:
            row["change"] = row["dice_mean"] / unperturbed - 1
    return sorted(rows, key=lambda r: (r["kind"], r["source"], r["eval_set"], r["perturbation"] != "none",
                                       r["perturbation"]))


def _cell(value) -> str:
    if value is None:  # e.g. no validation dice for a zero-shot experiment
        return "-"
    return f"{100 * value:.2f}" if isinstance(value, float) else str(value)


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
    """Write ``report.md`` and ``report.csv`` beside the study's experiments; returns their URIs and rows.
    With ``data`` (the shard root), rows on datasets that share content with another are flagged."""
    results = ResultStore(storage, study)
    rows = result_rows(results)
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
