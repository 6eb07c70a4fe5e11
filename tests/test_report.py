"""The results table: one row per experiment and evaluation set, with dice and image count, read from the
study's tidy results; Markdown and CSV in the same units (Dice in %)."""

import csv
import io
import json

from orchestrator.report import to_markdown, write_report
from search_spaces.experiment import ExperimentSpec
from tests.test_html_report import Page, open_in_browser
from trainables.results import ResultStore


def test_report_rows_from_stored_results(tmp_path):
    results = ResultStore(str(tmp_path), "study")
    for prompt in ["p1", "p0"]:
        experiment = ExperimentSpec("clipseg", "frozen", "tiny", prompt, eval_sets=("tiny", "other"))
        spec = {**experiment.to_dict(), "id": experiment.id}
        per_image = {"tiny": {"a": 1.0, "b": 0.5}, "other": {"c": 0.25}}
        result = {"experiment_id": spec["id"], "spec": spec, "best_val_dice": 0.9, "epochs": 3,
                  "eval": {"tiny": {"dice_mean": 0.75, "dice_std": 0.25, "n_images": 2},
                           "other": {"dice_mean": 0.25, "dice_std": 0.0, "n_images": 1}}}
        results.write_result(spec, result, per_image)
    results.write_failure("clipseg-frozen-tiny-p2-00000009", {}, "boom")

    md_uri, csv_uri, rows = write_report(str(tmp_path), "study")
    assert md_uri == f"{tmp_path}/study/report.md"
    table = list(csv.DictReader(io.StringIO((tmp_path / "study" / "report.csv").read_text())))
    assert [(r["prompt_type"], r["eval_set"], r["n_images"], r["regime"]) for r in table] == [
        ("p0", "other", "1", "as_run"), ("p0", "tiny", "2", "as_run"), ("p1", "other", "1", "as_run"),
        ("p1", "tiny", "2", "as_run")]
    # The same units in both files: Dice in %, said by the column names.
    assert (table[1]["dice_mean_%"], table[1]["dice_std_%"], table[1]["best_val_dice_%"]) == ("75.0", "25.0", "90.0")
    markdown = (tmp_path / "study" / "report.md").read_text()
    assert markdown == to_markdown(rows) and "| 75.00 | 25.00 | 2 | 90.00 | 3 |" in markdown
    assert "| dice_mean_% | dice_std_% | n_images | best_val_dice_% | epochs |" in markdown
    assert "p2" not in markdown


def test_the_report_reads_records_finished_before_the_tidy_results(tmp_path):
    """An old study: records with only spec.json, result.json, per_image.parquet and DONE (a spec from
    before some fields existed), an evaluation among them; the report writes their tidy files first."""
    experiments, evaluations = ResultStore(str(tmp_path), "old"), ResultStore(str(tmp_path), "old", "evaluations")
    source = ExperimentSpec("clipseg", "finetune", "tiny", "p6")
    spec = {k: v for k, v in source.to_dict().items() if k not in ("regime", "resize", "grad_accum")}
    experiments.write_result({**spec, "id": source.id}, {
        "experiment_id": source.id, "spec": spec, "best_val_dice": None, "epochs": 2,
        "eval": {"tiny": {"dice_mean": 0.5, "dice_std": 0.5, "n_images": 2}}}, {"tiny": {"a": 1.0, "b": 0.0}})
    for perturbation, dice in ((None, 0.5), ("class_only", 0.25)):
        record = f"ablate-{source.id}-tiny-{perturbation or 'none'}"
        evaluation = {"kind": "ablate", "source": source.id, "eval_set": "tiny", "prompt_type": "p6",
                      "perturbation": perturbation}
        evaluations.write_result(evaluation, {
            "evaluation_id": record, "kind": "ablate", "spec": evaluation, "source": source.id,
            "source_spec": {**spec, "id": source.id},
            "eval": {"tiny": {"dice_mean": dice, "dice_std": 0.0, "n_images": 1}}}, {"tiny": {"a": dice}},
            record_id=record)
    experiments.fs.delete_dir(f"{experiments.path}/tidy")  # as written before the tidy results existed

    _, _, rows = write_report(str(tmp_path), "old")
    assert [(r["regime"], r["dice_mean_%"], r["best_val_dice_%"], r["epochs"]) for r in rows] == [
        ("end_to_end", 50.0, None, 2)]  # CLIPSeg finetuned end to end: derived from the old spec
    changes = list(csv.DictReader(io.StringIO((tmp_path / "old" / "evaluations.csv").read_text())))
    assert [(r["perturbation"], r["dice_mean_%"], r["change_%"]) for r in changes] == [
        ("none", "50.0", ""), ("class_only", "25.0", "-50.0")]
    markdown = (tmp_path / "old" / "report.md").read_text()
    assert "| class_only | tiny | 25.00 | 0.00 | 1 | -50.00 |" in markdown
    assert json.loads((tmp_path / "old" / "experiments" / source.id / "spec.json").read_text()) == {
        **spec, "id": source.id}  # the record itself as it was


def test_the_report_writes_the_tables_and_prompt_comparisons_of_the_demo(tmp_path):
    """Demo-shaped results (CLIPSeg at p0, p1, p6 on both synthetic sets) written as trials write them:
    tables.md has a Table-2-shaped table with CIs, prompts.md each prompt type against p0 with its test,
    and an experiment the demo's grid does not define is listed apart (kept with keep_all)."""
    import dataclasses
    import random

    from search_spaces.grid import demo

    results = ResultStore(str(tmp_path), "demo")
    rng = random.Random(0)
    effect = {"p0": 0.55, "p1": 0.6, "p6": 0.8, "p2": 0.7}
    # p2: not in the demo's grid; a second seed of the first spec.
    specs = [*demo(), dataclasses.replace(demo()[0], prompt_type="p2"), dataclasses.replace(demo()[0], seed=43)]
    for spec in specs:
        dice = {f"img{i}": min(1.0, max(0.0, effect[spec.prompt_type] + rng.gauss(0, 0.05))) for i in range(24)}
        mean = sum(dice.values()) / len(dice)
        full = {**spec.to_dict(), "id": spec.id}
        results.write_result(full, {"experiment_id": spec.id, "spec": full, "best_val_dice": 0.5, "epochs": 2,
                                    "eval": {spec.train_set: {"dice_mean": mean, "dice_std": 0.05,
                                                              "n_images": len(dice)}}}, {spec.train_set: dice})

    report = write_report(str(tmp_path), "demo")
    md_uri, csv_uri, rows = report  # unpacks as before
    assert len(rows) == 8 and set(report.files) >= {"tables.md", "tables.csv", "prompts.md", "prompts.csv"}
    seeds = (tmp_path / "demo" / "seeds.md").read_text()  # the seeds' spread apart from the images'
    assert "between_seed_sd" in seeds and "between_image_sd" in seeds and seeds.count("| clipseg |") == 1
    ranks = (tmp_path / "demo" / "ranks.md").read_text()  # p6 best on both sets, p0 worst
    assert "clipseg frozen: Friedman p=" in ranks and "p6 1.00" in ranks and "p0 3.00" in ranks
    tables = (tmp_path / "demo" / "tables.md").read_text()
    assert "Table 2's shape" in tables and "| CLIPSeg frozen (P0) |" in tables and " at p6" in tables
    assert "95% BCa bootstrap CI" in tables and "Wilcoxon p" in tables
    assert "## Not in the current grid" in tables and specs[-2].id in tables and specs[-1].id not in tables
    cells = list(csv.DictReader(io.StringIO((tmp_path / "demo" / "tables.csv").read_text())))
    best = next(c for c in cells if c["variant"] == "best prompt" and c["column"] == "synth_polyp")
    assert best["prompt_type"] == "p6" and 75 < float(best["ours_mean_%"]) < 85  # in %
    assert float(best["ci_low_%"]) < float(best["ours_mean_%"]) < float(best["ci_high_%"])
    prompts = (tmp_path / "demo" / "prompts.md").read_text()
    assert "Beat P0: p6 (+" in prompts and "Holm p" in prompts
    comparisons = list(csv.DictReader(io.StringIO((tmp_path / "demo" / "prompts.csv").read_text())))
    assert {(c["eval_set"], c["prompt_type"]) for c in comparisons} == {
        (s, p) for s in ("synth_polyp", "synth_pairs") for p in ("p1", "p6")}
    assert all(float(c["holm_p"]) < 0.05 for c in comparisons if c["prompt_type"] == "p6")
    assert report.tables["demo"].cells["status"].eq("ok").all() and len(report.comparisons) == 4

    # The figures and the one-page report of the same results, as a browser renders it.
    assert {"figures/figure2.png", "figures/table2.png", "figures/cd-clipseg-frozen.png", "report.html"} <= set(
        report.files)
    dom = Page(open_in_browser(tmp_path / "demo" / "report.html", tmp_path, "--dump-dom"))
    assert "| CLIPSeg frozen (P0) |" not in " ".join(dom.tables[0]["cells"])  # Markdown rendered as tables
    shown = dom.table("synth_polyp")
    assert any("CLIPSeg frozen (P0)" in cell for cell in shown["cells"])
    assert {"Figure 2: Dice by prompt type (95% CI)", "Table 2 as a heatmap"} <= {i["alt"] for i in dom.images}
    assert all(i["src"].startswith("data:image/png;base64,") for i in dom.images)

    kept = write_report(str(tmp_path), "demo", keep_all=True)
    assert "p2" in set(kept.comparisons["prompt_type"]) and "(--all)" in (tmp_path / "demo" / "tables.md").read_text()
