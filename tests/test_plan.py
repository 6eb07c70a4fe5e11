"""The planner: packing arithmetic, the study's grid priced on a cluster shape, and a small CPU grid
planned from step times calibrated here, then run for real through the CLI.

The timed comparison is loose on purpose (within 3x): this machine is shared. The 25% bar is
checked by hand and reported in docs/performance.md.
"""

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

from orchestrator.plan import STEP_TIMES, TrialTime, asha_epochs, load_step_times, makespan, save_step_times
from tests.cli import run_cli


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


def test_study_grid_priced_on_a_cluster():
    numbers = plan_json(run_cli("plan", "grid", "--profile", "study", "--gpus", "8", "--gpu-type", "a10g",
                                "--json", timeout=300))
    assert numbers["trials"] > 300 and numbers["device"] == "a10g"
    assert 0 < numbers["makespan_s"] < numbers["sequential_s"]
    assert numbers["cost"] == pytest.approx(numbers["device_hours"] * 1.006)
    assert numbers["sequential_cost"] == pytest.approx(numbers["sequential_s"] / 3600 * 1.006)


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
    assert planned["trials"] == 2 and planned["sources"] == ["cpu measured"]
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
    assert planned["trials"] == 1 and planned["sources"] == ["cpu-test measured"]
    pinned = plan_json(run_cli("plan", "grid", "--gpu-type", "cpu-test", "--only", "synth_polyp-p0", "--data",
                               str(tmp_path / "no-shards"), "--step-times", STEP_TIMES, "--json", timeout=300))
    assert pinned["sources"] == ["paper"]


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
