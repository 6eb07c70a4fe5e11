"""The planner: packing arithmetic, the study's grid priced on a cluster shape, and a small CPU grid
planned from step times calibrated here, then run for real through the CLI.

The timed comparison is loose on purpose (within 3x): this machine is shared. The 25% bar is
checked by hand and reported in docs/performance.md.
"""

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.plan import asha_epochs
from orchestrator.schedule import decide_workers, launch_order, launch_plan, makespan
from search_spaces.estimates import (
    STEP_TIMES,
    TrialTime,
    charge_builds,
    load_step_times,
    load_time_factors,
    save_step_times,
    trial_time,
)
from search_spaces.grid import STUDY_BLOCKS
from tests.cli import REPO, run_cli


def plan_json(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_packing_fractions_in_grid_order():
    quarter = [TrialTime(f"t{i}", 10.0, 0.25, 1, "test") for i in range(8)]
    assert makespan(quarter, devices=2) == 10.0  # eight quarters fit two GPUs at once
    assert makespan(quarter, devices=1) == 20.0
    whole = [TrialTime(f"t{i}", 10.0, 1.0, 1, "test") for i in range(3)]
    assert makespan(whole, devices=2) == 20.0
    # A half that cannot fit waits for the first trial to end, not for all of them.
    mixed = [TrialTime("a", 10.0, 0.5, 1, "t"), TrialTime("b", 30.0, 0.5, 1, "t"), TrialTime("c", 5.0, 1.0, 1, "t")]
    assert makespan(mixed, devices=1) == 30.0 + 5.0
    assert makespan(quarter, devices=2, max_concurrent=4) == 20.0


def test_asha_expected_epochs():
    assert asha_epochs(4, 1, 2) == pytest.approx(1 + 1 / 2 + 2 / 4)
    assert asha_epochs(1, 1, 2) == 1


def test_study_grid_priced_on_a_cluster_and_explained():
    result = run_cli("plan", "grid", "--profile", "study", "--gpus", "8", "--gpu-type", "a10g", "--explain", "--json",
                     timeout=300)
    numbers = plan_json(result)
    assert numbers["trials"] > 300 and numbers["device"] == "a10g" and numbers["order"] == "lpt"
    assert 0 < numbers["makespan_s"] < numbers["sequential_s"]
    assert numbers["cost"] == pytest.approx(numbers["device_hours"] * 1.006)
    assert numbers["sequential_cost"] == pytest.approx(numbers["sequential_s"] / 3600 * 1.006)
    assert numbers["busy_fraction"] == pytest.approx(numbers["busy_device_hours"] / numbers["device_hours"])
    out = result.stdout
    for block in ("individual", "frozen", "pooled", "mimic"):  # trials, GPU-hours, longest trial and its workers
        assert re.search(rf"^  {block} +\d+ +[\d.]+  \S+ \([\d.]+ h, \d+ workers?\)$", out, re.M), block
    assert "feature cache clipseg" in out and "paper cris" in out  # each block's figures by label
    assert re.search(r"^makespan [\d.]+ h on 8 GPUs: [\d.]+ GPU-hours billed, [\d.]+ busy with trials \(\d+%\)$",
                     out, re.M)
    assert re.search(r"^critical path: \S+ ends last .* lower bounds: total work / GPUs .* bound by ", out, re.M)
    assert re.search(r"^order grid: makespan [\d.]+ h", out, re.M) and "one worker per trial: makespan" in out
    # Every label a block shows resolves to a source; the assumptions say they are assumptions.
    legend = out[out.index("figures (label: source):"):]
    for label in numbers["sources"]:
        assert f"\n  {label}: " in legend and "no source recorded" not in legend
    assert "bf16: x1: assumption" in legend and "one string per row: assumption" in legend


def test_bad_step_time_table_is_named(tmp_path):
    bad = tmp_path / "times.json"
    bad.write_text('{"devices": []}')
    result = run_cli("plan", "grid", "--step-times", str(bad), timeout=300)
    assert result.returncode == 2 and str(bad) in result.stderr and "'devices'" in result.stderr


def test_small_cpu_grid_estimate_against_a_real_run(tmp_path, monkeypatch):
    monkeypatch.setenv("VLSM_CACHE", str(tmp_path / "cache"))
    times = tmp_path / "step_times.json"
    shutil.copy(STEP_TIMES, times)
    subset = ["--only", "synth_polyp-p0", "--only", "synth_polyp-p6", "--max-epochs", "2"]
    data = str(tmp_path / "shards")
    planned = plan_json(run_cli("plan", "grid", "--gpu-type", "cpu", "--gpus", "2", "--calibrate",
                                "--calibrate-epochs", "1", "--step-times", str(times), "--data", data,
                                *subset, "--json", timeout=600))
    assert planned["trials"] == 2 and planned["sources"] == ["cpu measured", "decoded cache"]
    assert "clipseg/frozen/small" in json.loads(times.read_text())["devices"]["cpu"]

    start = time.perf_counter()
    ran = run_cli("grid", *subset, "--data", data, "--storage", str(tmp_path / "runs"), "--no-dashboard",
                  "--verbose", "0", timeout=600)
    measured = time.perf_counter() - start
    assert ran.returncode == 0, ran.stderr
    assert "2 finished" in ran.stdout
    assert measured / 3 < planned["makespan_s"] < measured * 3, (planned["makespan_s"], measured)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_measurements_go_to_the_user_cache_never_the_source_tree(tmp_path, monkeypatch):
    """Storing with no path (what `plan --calibrate` and `benchmarks gpu --save` do without --step-times)
    writes only the measured entries to $VLSM_CACHE/step_times.json; the shipped table stays byte for
    byte; a later load, and `plan`, read the user's entries over the shipped ones."""
    cache = tmp_path / "cache"  # created by the save, folders and all
    monkeypatch.setenv("VLSM_CACHE", str(cache))
    shipped_hash, shipped = sha256(STEP_TIMES), load_step_times(STEP_TIMES)
    assert load_step_times() == shipped  # no user file yet: the shipped table alone
    mine = {"batch": 2, "step_ms": 4.0, "eval_step_ms": 1.0, "source": "test"}
    h200 = {"batch": 32, "step_ms": 50.0, "source": "test, over the shipped h200 entry"}
    saved = save_step_times({"devices": {"cpu-test": {"clipseg/frozen/small": mine},
                                         "h200": {"clipseg/frozen/full": h200}},
                             "grid_start_s": {"cpu-test": 1.5}})
    assert saved == str(cache / "step_times.json")
    assert sha256(STEP_TIMES) == shipped_hash
    written = json.loads(Path(saved).read_text())
    assert set(written) == {"about", "devices", "grid_start_s"}  # measured devices only, never the paper's
    assert written["devices"] == {"cpu-test": {"clipseg/frozen/small": mine}, "h200": {"clipseg/frozen/full": h200}}
    assert not list(cache.glob("*.tmp-*"))

    # A second measurement adds to the file; the user's entries win per device and per entry.
    saved = save_step_times({"devices": {"cpu-test": {"unet/finetune/small": {"batch": 2, "step_ms": 9.0}}}})
    table = load_step_times()
    assert table["devices"]["cpu-test"] == {"clipseg/frozen/small": mine,
                                            "unet/finetune/small": {"batch": 2, "step_ms": 9.0}}
    assert table["devices"]["h200"]["clipseg/frozen/full"] == h200
    assert table["devices"]["h200"]["clipseg/finetune/full"] == shipped["devices"]["h200"]["clipseg/finetune/full"]
    assert table["devices"]["cpu"] == shipped["devices"]["cpu"]
    assert table["grid_start_s"]["cpu-test"] == 1.5
    assert load_step_times(STEP_TIMES) == shipped  # an explicit path reads that file alone
    assert sha256(STEP_TIMES) == shipped_hash

    planned = plan_json(run_cli("plan", "grid", "--gpu-type", "cpu-test", "--only", "synth_polyp-p0",
                                "--data", str(tmp_path / "no-shards"), "--json", timeout=300))
    assert planned["trials"] == 1 and planned["sources"] == ["cpu-test measured", "decoded cache"]
    pinned = plan_json(run_cli("plan", "grid", "--gpu-type", "cpu-test", "--only", "synth_polyp-p0", "--data",
                               str(tmp_path / "no-shards"), "--step-times", STEP_TIMES, "--json", timeout=300))
    assert pinned["sources"] == ["decoded cache", "paper clipseg"]


@pytest.mark.parametrize("content, expected", [
    ("{not json", "cannot read step times"),
    ('{"devices": {"cpu": {"clipseg/frozen/small": {"step_ms": 5}}}}', "'batch' and 'step_ms'"),
    ('{"devices": {}, "paper": {"clipseg": {"minutes": 1, "epochs": 1}}}', "'paper'"),
])
def test_bad_user_step_times_are_refused_by_name(tmp_path, monkeypatch, content, expected):
    monkeypatch.setenv("VLSM_CACHE", str(tmp_path))
    user = tmp_path / "step_times.json"
    user.write_text(content)
    with pytest.raises(ValueError, match=expected) as refused:
        load_step_times()
    assert str(user) in str(refused.value)
    with pytest.raises(ValueError, match=expected):  # nor does a measurement overwrite it
        save_step_times({"devices": {"cpu": {"clipseg/frozen/small": {"batch": 2, "step_ms": 4.0}}}})
    assert user.read_text() == content


def hours(name: str, h: float, share: float = 1.0) -> TrialTime:
    """A hand-made trial of ``h`` hours, all of them training epochs (what workers divide)."""
    return TrialTime(name, h * 3600, share, 1, "test", epochs_s=h * 3600)


def test_longest_first_against_grid_order_and_the_ideal():
    # Four short trials, then a long one, on 2 GPUs: the ideal is max(total / GPUs, longest) = 4 h.
    grid = [hours(f"short{i}", 1) for i in range(4)] + [hours("long", 4)]
    ideal = max(sum(t.seconds for t in grid) / 2, max(t.seconds for t in grid))
    lpt = launch_order(grid, "lpt")
    assert [t.name for t in lpt] == ["long", "short0", "short1", "short2", "short3"]  # ties keep grid order
    assert makespan(lpt, devices=2) == ideal == 4 * 3600
    assert makespan(launch_order(grid, "grid"), devices=2) == 6 * 3600  # the long one starts last
    with pytest.raises(ValueError, match="lpt, grid"):
        launch_order(grid, "random")


def test_a_long_trial_gets_workers_and_the_makespan_falls():
    trials = [hours("long", 8)] + [hours(f"short{i}", 1) for i in range(8)]
    # Busy 16 GPU-hours on 4 GPUs: the bound is 4 h; 8 h on one GPU is 4.4 h on 2 at 0.9, 2.2 h on 4.
    decided = decide_workers(trials, gpus=4, max_workers=4, efficiency=0.9)
    assert [t.workers for t in decided] == [4] + [1] * 8
    assert decided[0].seconds == pytest.approx(8 * 3600 / (4 * 0.9)) and decided[0].share == 4
    assert makespan(launch_order(trials), devices=4) == 8 * 3600
    assert makespan(launch_order(decided), devices=4) == pytest.approx(decided[0].seconds + 2 * 3600)
    # At most the largest node's GPUs; none without GPUs; a number gives every trial that many.
    assert [t.workers for t in decide_workers(trials, gpus=4, max_workers=2, efficiency=0.9)][:2] == [2, 1]
    assert all(t.workers == 1 for t in decide_workers(trials, gpus=4, max_workers=1, efficiency=0.9))
    assert all(t.workers == 2 for t in decide_workers(trials, gpus=4, max_workers=4, efficiency=0.9, workers=2))
    # Only the epochs shrink: a trial's cache builds and fixed part do not.
    fixed = TrialTime("fixed", 3600 + 7200, 1.0, 1, "test", epochs_s=7200)
    assert decide_workers([fixed, hours("x", 0.1)], 2, 2, 1.0)[0].seconds == pytest.approx(3600 + 3600)


def test_caches_are_priced_once_per_model_and_dataset():
    table, factors = load_step_times(STEP_TIMES), load_time_factors()
    clipseg = {(s.train_set, s.prompt_type): {**s.to_dict(), "id": s.id} for s in STUDY_BLOCKS["individual"].specs()
               if s.model == "clipseg"}
    specs = [clipseg[("kvasir_polyp", "p0")], clipseg[("kvasir_polyp", "p1")], clipseg[("busi", "p0")]]
    one = [trial_time(s, table, factors, "a10g", None, None, 0.5) for s in specs]
    charged = charge_builds(one)
    image = [sum(x for key, x in t.builds if key[0] == "image") for t in one]
    text = [sum(x for key, x in t.builds if key[0] == "text") for t in one]
    assert all(x > 0 for x in image + text)
    # kvasir's images (its train, val and test splits) and decoded splits once; each prompt set's text once.
    assert charged[0].build_s == pytest.approx(sum(x for _, x in one[0].builds))
    assert charged[1].build_s == pytest.approx(text[1])
    assert charged[2].build_s == pytest.approx(sum(x for _, x in one[2].builds))
    assert charged[1].seconds == pytest.approx(one[1].seconds + text[1])
    # The epochs run the decoder alone: bench frozen's ratio of the paper's live time (CLIPSeg ~100x).
    ratio = factors["feature_cache"]["clipseg"]
    paper = trial_time({**specs[0], "mode": "finetune"}, table, factors, "a10g", None, None, 0.5)
    assert one[0].epochs_s == pytest.approx(paper.epochs_s * ratio["cached_s"] / ratio["live_s"])
    assert "feature cache clipseg" in one[0].labels
    # A pool reads its members' splits with the encoders every step: no feature cache, a decode per member split.
    pooled = next({**s.to_dict(), "id": s.id} for s in STUDY_BLOCKS["pooled"].specs() if s.model == "clipseg")
    assert not any(key[0] in ("image", "text") for key, _ in trial_time(pooled, table, factors, "a10g", None, None,
                                                                        0.5).builds)


def test_plan_prices_the_launch_order_the_grid_submits(tmp_path):
    table, factors = load_step_times(STEP_TIMES), load_time_factors()
    specs = [{**s.to_dict(), "id": s.id} for s in STUDY_BLOCKS["mimic"].specs() + STUDY_BLOCKS["pooled"].specs()]
    planned = launch_plan(specs, table, factors, "cpu", None, gpus=1, max_workers=1)  # as on a machine without GPUs
    assert [t.seconds for t in planned] == sorted((t.seconds for t in planned), reverse=True)
    assert planned[0].name.startswith("cris-finetune-pooled_all")
    # The grid command submits the same order, computed without torch or ray (a dry run, a few seconds).
    code = ("import sys; from orchestrator.run import main; "
            f"rc = main(['grid', '--dry-run', '--profile', 'study', '--block', 'mimic', '--block', 'pooled', "
            f"'--storage', {str(tmp_path)!r}, '--data', {str(tmp_path / 'none')!r}]); "
            "assert rc == 0; assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'imported'")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.perf_counter() - start < 30
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith(("cris-", "clipseg-"))]
    assert "launch order: longest first" in done.stdout and listed[0] == planned[0].name
    if not shutil.which("nvidia-smi"):  # with GPUs here, long trials may get workers, which changes the order
        assert listed == [t.name for t in planned] and "one each (no GPU on this machine)" in done.stdout
    fixed = run_cli("grid", "--dry-run", "--profile", "study", "--block", "mimic", "--workers-per-trial", "2",
                    "--storage", str(tmp_path), timeout=120)
    assert fixed.returncode == 0 and "4 trial(s) with more than one" in fixed.stdout, fixed.stderr
    bad = run_cli("plan", "grid", "--gpus", "2", "--workers-per-trial", "4", timeout=120)
    assert bad.returncode == 2 and "--workers-per-trial 4" in bad.stderr
