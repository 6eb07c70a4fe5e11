"""Bad arguments are refused when they are parsed, with the reason; resources no node of the cluster has are
refused before anything starts; storage that is missing, a file or of an unsupported scheme gets one line,
never a traceback (issue 16, cases 4, 9 and 12)."""

from __future__ import annotations

import pytest

from orchestrator.run import main, parser
from tests.cli import run_cli

BAD = [
    # (command line, what the error must say)
    (["grid", "--max-epochs", "0"], "--max-epochs: '0' is not a whole number of 1 or more"),
    (["grid", "--max-epochs", "-1"], "--max-epochs: '-1' is not a whole number of 1 or more"),
    (["status", "--max-epochs", "0"], "--max-epochs: '0' is not a whole number of 1 or more"),
    (["plan", "grid", "--max-epochs", "0"], "--max-epochs: '0' is not a whole number of 1 or more"),
    (["hpo", "--model", "clipseg", "--max-epochs", "0"], "--max-epochs: '0' is not a whole number of 1 or more"),
    (["hpo", "--model", "clipseg", "--num-samples", "0"], "--num-samples: '0' is not a whole number of 1 or more"),
    (["hpo", "--model", "clipseg", "--grace-period", "-2"], "--grace-period: '-2' is not a whole number of 1"),
    (["hpo", "--model", "clipseg", "--reduction-factor", "1"], "--reduction-factor: '1' is not a number above 1"),
    (["grid", "--cpus-per-trial", "0"], "--cpus-per-trial: '0' is not a number above 0"),
    (["grid", "--cpus-per-trial", "-1"], "--cpus-per-trial: '-1' is not a number above 0"),
    (["hpo", "--model", "clipseg", "--cpus-per-trial", "0"], "--cpus-per-trial: '0' is not a number above 0"),
    (["ood", "--cpus-per-trial", "-0.5"], "--cpus-per-trial: '-0.5' is not a number above 0"),
    (["grid", "--gpus-per-trial", "0"], "--gpus-per-trial: '0' is not a GPU share"),
    (["grid", "--gpus-per-trial", "1.5"], "a fraction in (0, 1] or a whole number of GPUs"),
    (["zeroshot", "--gpus-per-trial", "-1"], "--gpus-per-trial: '-1' is not a GPU share"),
    (["hpo", "--model", "clipseg", "--gpus-per-trial", "2.5"], "--gpus-per-trial: '2.5' is not a GPU share"),
    (["grid", "--fake-gpus", "-1"], "--fake-gpus: '-1' is not a whole number of 0 or more"),
    (["grid", "--max-failures", "-1"], "--max-failures: '-1' is not a whole number of 0 or more"),
    (["grid", "--checkpoint-interval", "-5"], "--checkpoint-interval: '-5' is not a number of 0 or more"),
    (["grid", "--grad-accum", "0"], "--grad-accum: '0' is not a whole number of 1 or more"),
    (["plan", "grid", "--gpus", "0"], "--gpus: '0' is not a whole number of 1 or more"),
    (["grid", "--max-epochs", "ten"], "--max-epochs: 'ten' is not a whole number of 1 or more"),
    # Case 9: a study is one folder under --storage, never a path out of it.
    (["grid", "--study", "../x"], "--study: '../x' is not a usable name"),
    (["status", "--study", "a/b"], "--study: 'a/b' is not a usable name"),
    (["report", "--study", ".."], "--study: '..' is not a usable name"),
    (["hpo", "--model", "clipseg", "--study", "../../etc"], "--study: '../../etc' is not a usable name"),
    (["ablate", "--study", "/tmp/x"], "--study: '/tmp/x' is not a usable name"),
    (["grid", "--hparams-from-hpo", "../x"], "--hparams-from-hpo: '../x' is not a usable name"),
]


@pytest.mark.parametrize("argv,reason", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_argument_is_refused_when_parsed_with_its_reason(argv, reason, capsys):
    with pytest.raises(SystemExit) as stopped:
        parser().parse_args(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert reason in err, err


def test_good_values_still_parse():
    args = parser().parse_args(["grid", "--max-epochs", "1", "--cpus-per-trial", "0.5", "--gpus-per-trial", "0.25",
                                "--fake-gpus", "0", "--max-failures", "0", "--checkpoint-interval", "0",
                                "--study", "my-study.v2"])
    assert (args.max_epochs, args.cpus_per_trial, args.gpus_per_trial, args.study) == (1, 0.5, 0.25, "my-study.v2")
    assert parser().parse_args(["grid", "--gpus-per-trial", "2"]).gpus_per_trial == 2
    assert parser().parse_args(["hpo", "--model", "clipseg", "--gpus-per-trial", "1"]).gpus_per_trial == 1


def test_hpo_takes_no_dashboard_as_grid_does():
    assert parser().parse_args(["hpo", "--model", "clipseg", "--no-dashboard"]).no_dashboard is True


def test_status_says_the_storage_folder_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    assert main(["status", "--storage", str(missing)]) == 0
    out = capsys.readouterr().out
    assert f"{missing} does not exist" in out and "check --storage" in out
    assert "pending" in out  # still the listing of what the grid would run
    assert not missing.exists()


def test_storage_that_is_a_file_or_an_unsupported_scheme_is_one_line(tmp_path, capsys):
    a_file = tmp_path / "runs.txt"
    a_file.write_text("not a folder")
    for argv in (["status", "--storage", str(a_file)], ["status", "--storage", "ftp://host/runs"],
                 ["report", "--storage", "ftp://host/runs"], ["grid", "--dry-run", "--storage", "ftp://host/runs"]):
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 2, argv
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
        assert "--storage" in lines[0] or "storage URI" in lines[0], lines[0]
    main(["status", "--storage", str(a_file)])
    assert "is a file, not a folder" in capsys.readouterr().err


def test_dry_run_counts_the_demo_of_another_model(capsys):
    assert main(["grid", "--dry-run", "--model", "unet", "--max-epochs", "2", "--storage", "/nonexistent-h4"]) == 0
    out = capsys.readouterr().out
    [row] = [line for line in out.splitlines() if line.startswith("demo ")]
    assert row.split()[1] == "2", out  # unet reads no text: p0 on both synthetic sets


@pytest.mark.slow
def test_a_trial_larger_than_every_node_is_refused_before_anything_starts(tmp_path):
    """On a local Ray of one logical GPU, --gpus-per-trial 2 used to wait forever for a node with two;
    --cpus-per-trial beyond the machine's CPUs the same."""
    storage = tmp_path / "runs"
    result = run_cli("grid", "--only", "synth_polyp-p0", "--max-epochs", "1", "--fake-gpus", "1",
                     "--gpus-per-trial", "2", "--cpus-per-trial", "512", "--storage", str(storage),
                     "--data", str(tmp_path / "shards"), "--no-dashboard", "--verbose", "0", timeout=180)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "asks for 2 GPUs and 512 CPUs" in result.stderr
    assert "the largest node of the running Ray cluster has 1 GPU" in result.stderr
    assert "--gpus-per-trial" in result.stderr and "--cpus-per-trial" in result.stderr
    assert not (storage / "demo" / "tune").exists()  # refused before Tune started a trial
