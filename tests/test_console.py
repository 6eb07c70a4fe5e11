"""The launch's console at the default verbosity: a line per trial event, a progress line with an ETA
on each trial's end and at most every 30 s between, and nothing else per trial. Driven here by hand
with stand-in trials, as Tune's controller drives it; the end-to-end tests (test_grid_s3, test_resume,
test_bad_input) check the same lines from the real command."""

from orchestrator.console import TrialConsole, duration, eta_seconds, outcome_words
from trainables.tune_trainable import final_metrics


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Trial:
    """What the console reads of a Tune trial: its name (str), status, last result and error file."""

    def __init__(self, name: str, status: str = "PENDING"):
        self.name, self.status, self.last_result, self.error_file = name, status, {}, None

    def __str__(self) -> str:
        return self.name


def test_each_trial_event_is_one_line_and_progress_follows_each_end(capsys, tmp_path):
    clock = Clock()
    console = TrialConsole(clock=clock)
    trials = [Trial(n) for n in ("a", "b", "c")]
    console.setup(total_num_samples=3)
    a, b, c = trials
    for t in (a, b):
        t.status = "RUNNING"
        console.on_trial_start(0, trials, t)
    console.on_step_end(1, trials)
    clock.now += 10
    console.on_trial_result(2, trials, a, {"epoch": 1, "resumed_from_epoch": 3})
    console.on_trial_result(3, trials, a, {"epoch": 2, "resumed_from_epoch": 3})  # said once
    console.on_trial_result(3, trials, b, {"epoch": 1, "resumed_from_epoch": None})
    clock.now += 50
    a.last_result = {"epoch": 5, "best_val_dice": 0.71234, "resumed_from_epoch": 3}
    console.on_trial_complete(4, trials, a)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["started  a", "started  b", "resumed  a from its checkpoint after epoch 3",
                     "done     a: best val dice 0.712, 5 epochs, 1m00s",
                     "progress 1/3 done, 1 running, 0 failed, 1m00s elapsed, ETA 1m00s"]

    # Between ends, at most one progress line every 30 s.
    a.status, c.status = "TERMINATED", "RUNNING"
    console.on_trial_start(5, trials, c)
    clock.now += 29
    console.on_step_end(6, trials)
    assert capsys.readouterr().out.splitlines() == ["started  c"]
    clock.now += 1
    console.on_step_end(7, trials)
    assert capsys.readouterr().out.splitlines() == [
        "progress 1/3 done, 2 running, 0 failed, 1m30s elapsed, ETA 30s"]  # b is past the median; c has 30 s

    # Bad input the trial recorded, and a crash: one line each, with the error's last line.
    b.last_result = {"failed": True, "error": "corrupt shard x.parquet: re-ingest 'synth'\nmore"}
    console.on_trial_complete(8, trials, b)
    error = tmp_path / "error.txt"
    error.write_text("Failure # 1\nTraceback (most recent call last):\n  File 'x.py'\n    boom()\nValueError: boom\n")
    c.error_file = str(error)
    console.on_trial_error(9, trials, c)
    assert capsys.readouterr().out.splitlines() == [
        "FAILED   b: corrupt shard x.parquet: re-ingest 'synth'",
        "progress 1/3 done, 1 running, 1 failed, 1m30s elapsed, ETA 30s",
        "FAILED   c: ValueError: boom",
        "progress 1/3 done, 0 running, 2 failed, 1m30s elapsed"]


def test_eta_is_unknown_until_a_trial_finishes_then_follows_the_median():
    assert eta_seconds([], 4, [10.0], 2) is None
    # Four pending trials of ~60 s and one running 20 s into its 60, on two slots.
    assert eta_seconds([50.0, 60.0, 70.0], 4, [20.0], 2) == (4 * 60 + 40) / 2
    # One trial left cannot go faster than itself, whatever the slots.
    assert eta_seconds([60.0], 1, [], 8) == 60.0
    assert duration(42) == "42s" and duration(185) == "3m05s" and duration(7620) == "2h07m"


def test_a_finished_trial_is_described_by_what_it_reported():
    assert outcome_words({"best_val_dice": 0.5, "epoch": 1}) == "best val dice 0.500, 1 epoch"
    assert outcome_words({"finished": 11, "failed": 1, "pending": 0}) == "11 evaluations finished, 1 failed"
    assert outcome_words({}) == ""  # a zero-shot experiment reports nothing before its test


def test_an_experiments_last_result_adds_its_test_dice_to_what_the_console_says():
    result = {"epochs": 5, "best_val_dice": 0.6, "eval": {"a": {"dice_mean": 0.5}, "b": {"dice_mean": 0.7}}}
    last_epoch = {"epoch": 5, "best_val_dice": 0.6, "val_dice": 0.55, "resumed_from_epoch": 2}
    final = final_metrics(result, last_epoch)
    assert final == {**last_epoch, "test_dice/a": 0.5, "test_dice/b": 0.7, "test_dice": 0.6}
    assert outcome_words(final) == "best val dice 0.600, 5 epochs"
    # Resumed after its last epoch, it reported none: its epochs, and no resume to announce.
    assert final_metrics(result, {}) == {"epoch": 5, "timesteps_total": 5, "best_val_dice": 0.6,
                                         "test_dice/a": 0.5, "test_dice/b": 0.7, "test_dice": 0.6}
    zeroshot = final_metrics({**result, "epochs": 0, "best_val_dice": None, "eval": {"a": {"dice_mean": 0.4}}}, {})
    assert zeroshot == {"test_dice/a": 0.4, "test_dice": 0.4} and outcome_words(zeroshot) == ""
