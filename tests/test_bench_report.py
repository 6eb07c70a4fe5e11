"""`python -m benchmarks report` with tiny sizes, through its main(): the synthetic study it writes is a real
one (the report reads it back) and it prints its lines. Times are only checked to be numbers: speed belongs
in the benchmark's output, not in a test."""

import re

import pandas as pd

from benchmarks.__main__ import main
from benchmarks.report import STUDY, study_specs
from orchestrator.results import load


def test_the_report_benchmark_runs_and_prints_its_lines(tmp_path, capsys):
    storage = str(tmp_path / "runs")
    assert main(["report", "--experiments", "6", "--images", "5", "--runs", "1", "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert "wrote a synthetic study of 6 experiments x 5 images (30 image rows)" in out
    headline = re.search(r"report on 6 experiments x 5 images: ([\d.]+) s \(median of 1, one core\); "
                         r"target 30 s; ratio ([\d.]+)/30 = ([\d.]+)", out)
    assert headline and float(headline.group(1)) > 0, out
    assert re.search(r"of which write_report itself [\d.]+ s", out), out
    assert re.search(r"baseline, results\.load alone: [\d.]+ s \(median of 1, one core; images level, 30 rows, "
                     r"[\d.]+ s \+ experiments level [\d.]+ s\); write_report / load = [\d.]+x", out), out

    # What it timed is a study as trials write it: real ids, every image with its scores, the report beside it.
    images = load(storage, STUDY)
    assert len(images) == 30 and set(images["record_id"]) == {s.id for s in study_specs(6)}
    assert images["dice"].between(0, 1).all() and images["nsd"].notna().all() and (images["seed"] == 42).all()
    experiments = load(storage, STUDY, "experiments")
    assert len(experiments) == 6 and experiments["wall_time_s"].gt(0).all()
    assert (experiments["gpu_share"] == 0.25).all()
    assert (tmp_path / "runs" / STUDY / "report.md").exists()
    assert pd.read_csv(tmp_path / "runs" / STUDY / "report.csv").shape[0] == 6


def test_specs_beyond_the_blocks_are_later_seeds():
    specs = study_specs(3000)  # more than every block of the study holds
    assert len({s.id for s in specs}) == 3000
    assert specs[0].seed == 42 and specs[-1].seed > 42
