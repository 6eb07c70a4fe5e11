"""Results tables: one row per (experiment, evaluation set), as Markdown and CSV."""

from __future__ import annotations

import csv
import io
import posixpath

from datasets.shards import write_atomically
from orchestrator.results import ResultStore

COLUMNS = ["experiment_id", "model", "mode", "train_set", "prompt_type", "eval_set",
           "dice_mean", "dice_std", "n_images", "best_val_dice", "epochs"]


def result_rows(results: ResultStore) -> list[dict]:
    rows = []
    for result in results.results():
        spec = result["spec"]
        for eval_set, scores in sorted(result["eval"].items()):
            rows.append({
                "experiment_id": result["experiment_id"], "model": spec["model"], "mode": spec["mode"],
                "train_set": spec["train_set"], "prompt_type": spec["prompt_type"], "eval_set": eval_set,
                "dice_mean": scores["dice_mean"], "dice_std": scores["dice_std"],
                "n_images": scores["n_images"], "best_val_dice": result["best_val_dice"],
                "epochs": result["epochs"],
            })
    return sorted(rows, key=lambda r: (r["model"], r["mode"], r["train_set"], r["prompt_type"], r["eval_set"]))


def _cell(value) -> str:
    if value is None:  # e.g. no validation dice for a zero-shot experiment
        return "-"
    return f"{100 * value:.2f}" if isinstance(value, float) else str(value)


def to_markdown(rows: list[dict]) -> str:
    header = "| " + " | ".join(COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    lines = ["Dice (%) per image at original resolution, mean and standard deviation over the test set.", "",
             header, rule]
    lines += ["| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_report(storage: str, study: str) -> tuple[str, str, list[dict]]:
    """Write ``report.md`` and ``report.csv`` beside the study's experiments; returns their URIs and rows."""
    results = ResultStore(storage, study)
    rows = result_rows(results)
    results.fs.create_dir(results.path, recursive=True)
    for name, text in (("report.md", to_markdown(rows)), ("report.csv", to_csv(rows))):
        write_atomically(results.fs, posixpath.join(results.path, name), text.encode())
    return f"{results.uri}/report.md", f"{results.uri}/report.csv", rows
