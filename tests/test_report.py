"""The results table: one row per experiment and evaluation set, with dice and image count."""

import csv
import io

from orchestrator.report import to_markdown, write_report
from trainables.results import ResultStore


def test_report_rows_from_stored_results(tmp_path):
    results = ResultStore(str(tmp_path), "study")
    for i, prompt in enumerate(["p1", "p0"]):
        spec = {"id": f"clipseg-frozen-tiny-{prompt}-0000000{i}", "model": "clipseg", "mode": "frozen",
                "train_set": "tiny", "prompt_type": prompt}
        per_image = {"tiny": {"a": 1.0, "b": 0.5}, "other": {"c": 0.25}}
        result = {"experiment_id": spec["id"], "spec": spec, "best_val_dice": 0.9, "epochs": 3,
                  "eval": {"tiny": {"dice_mean": 0.75, "dice_std": 0.25, "n_images": 2},
                           "other": {"dice_mean": 0.25, "dice_std": 0.0, "n_images": 1}}}
        results.write_result(spec, result, per_image)
    results.write_failure("clipseg-frozen-tiny-p2-00000009", {}, "boom")

    md_uri, csv_uri, rows = write_report(str(tmp_path), "study")
    assert md_uri == f"{tmp_path}/study/report.md"
    table = list(csv.DictReader(io.StringIO((tmp_path / "study" / "report.csv").read_text())))
    assert [(r["prompt_type"], r["eval_set"], r["n_images"]) for r in table] == [
        ("p0", "other", "1"), ("p0", "tiny", "2"), ("p1", "other", "1"), ("p1", "tiny", "2")]
    assert float(table[1]["dice_mean"]) == 0.75
    markdown = (tmp_path / "study" / "report.md").read_text()
    assert markdown == to_markdown(rows) and "| 75.00 | 25.00 | 2 |" in markdown
    assert "p2" not in markdown
