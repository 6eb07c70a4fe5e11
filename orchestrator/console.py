"""What a launch prints while its trials run, by ``--verbose``:

- 0: nothing while trials run: the command's plan line (what it skips and runs), its summary, errors;
- 1 (the default): ``TrialConsole``'s lines, one per trial event and a progress line, with Ray's own
  status table, its start-up notes and the trials' output (which Ray forwards to the driver) silenced;
- 2: the same lines beside Ray's status table and the trials' output, as Ray prints them.

A trial that has something to say at verbose 1 says it in the results it reports (``resumed_from_epoch``,
``resume_note``, ``failed`` and ``error``), which reach the driver whatever Ray does with stdout.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator

from ray.tune import Callback

from datasets.storage import error_text, innermost_error, is_infrastructure

PROGRESS_EVERY_S = 30.0  # between two progress lines while nothing ends
LINE_CHARS = 400  # of an error on the console: long enough for the remedy a message ends with


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_seconds(durations: list[float], pending: int, running_for: list[float], slots: int) -> float | None:
    """Time left: the median finished trial's duration for each pending trial and what the median leaves
    of each running one, shared by the trials that run at once, and never less than the longest of those
    pieces. None until a trial has finished."""
    if not durations:
        return None
    typical = statistics.median(durations)
    pieces = [typical] * pending + [max(typical - elapsed, 0.0) for elapsed in running_for]
    return max(sum(pieces) / max(slots, 1), max(pieces, default=0.0))


def outcome_words(result: dict) -> str:
    """What a finished trial's last result says, in a few words: its best validation dice and epochs
    (a training trial or a search trial), or its evaluations (an evaluation trial)."""
    words = []
    if result.get("best_val_dice") is not None:
        words.append(f"best val dice {result['best_val_dice']:.3f}")
    if result.get("epoch") is not None:
        words.append(f"{result['epoch']} epoch{'' if result['epoch'] == 1 else 's'}")
    if "finished" in result and "failed" in result:  # an evaluation trial's counts
        words.append(f"{result['finished']} evaluations finished, {result['failed']} failed")
    return ", ".join(words)


def trial_error(trial) -> BaseException | str | None:
    """The error that ended the trial's last try, from the files this driver wrote about it on its own
    disk a moment ago (never from storage): the exception itself (Tune's pickle of it), else its text
    (Tune's error.txt); None where there is neither."""
    from ray import cloudpickle

    pickled = getattr(trial, "pickled_error_file", None)
    if pickled and os.path.exists(pickled):
        try:
            with open(pickled, "rb") as f:
                return cloudpickle.load(f)
        except Exception:  # an exception class this process cannot rebuild: its text says enough
            pass
    try:
        with open(trial.error_file) as f:
            return f.read()
    except (OSError, TypeError):  # no error file (yet), or no local trial folder
        return None


# Ray's errors of a trial whose process or node went away, in the words a reader looks for.
LOST = ("RayActorError", "NodeDiedError", "WorkerCrashedError", "LocalRayletDiedError")


def error_line(error: BaseException | str | None) -> str:
    """An error on one line that names its cause (``OSError: ...``: the innermost exception's type and
    message, out of Ray's wrappers; for a lost process or node, first that it was lost)."""
    text = error_text(error) if error is not None else ""
    if not text:
        return "see the trial's error.txt"
    line = text.splitlines()[0]
    if isinstance(error, BaseException) and any(
            cls.__name__ in LOST for cls in type(innermost_error(error)).__mro__):
        line = f"its worker process or node was lost ({line})"
    return line if len(line) <= LINE_CHARS else line[:LINE_CHARS - 3] + "..."


def last_error_line(trial) -> str:
    """What ended the trial's last try, on one line (``error_line``)."""
    return error_line(trial_error(trial))


class TrialConsole(Callback):
    """One line when a trial starts, resumes from a checkpoint, finishes (best validation dice, epochs,
    wall time), fails (its error's cause on one line) or is stopped by an infrastructure fault (the
    same, saying that it is not marked failed and runs again); a progress line (done / total, running, failed, ETA)
    after each trial's end and at most every ``every_s`` seconds between. Plain lines: a log keeps them."""

    def __init__(self, every_s: float = PROGRESS_EVERY_S, clock=time.monotonic):
        self.every_s, self.clock = every_s, clock
        self.total: int | None = None
        self.began = self.last_progress = clock()
        self.started: dict[str, float] = {}  # trial name -> when it (last) started
        self.ended: dict[str, bool] = {}  # trial name -> failed?
        self.stopped: set[str] = set()  # ended by an infrastructure fault: neither done nor failed
        self.announced: set[str] = set()  # trials whose first result was read (a resume is said once)
        self.durations: list[float] = []  # of the trials that finished in this launch
        self.slots = 1  # the most trials seen running at once

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        self.total = total_num_samples if total_num_samples and total_num_samples > 0 else None
        self.began = self.last_progress = self.clock()

    def say(self, text: str) -> None:
        print(text, flush=True)

    def on_step_end(self, iteration, trials, **info):
        running = self.running(trials)
        self.slots = max(self.slots, len(running))
        if self.clock() - self.last_progress >= self.every_s:
            self.progress(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        name = str(trial)
        if name not in self.started:  # a retry's start was announced by its "retrying" line
            self.say(f"started  {name}")
        self.started[name] = self.clock()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        name = str(trial)
        if name in self.announced:
            return
        self.announced.add(name)
        if result.get("resumed_from_epoch") is not None:
            self.say(f"resumed  {name} from its checkpoint after epoch {result['resumed_from_epoch']}")
        if result.get("resume_note"):
            self.say(f"note     {name}: {result['resume_note']}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.say(f"retrying {trial} after: {last_error_line(trial)}")
        self.announced.discard(str(trial))  # the retry says again where it resumed from

    def on_trial_complete(self, iteration, trials, trial, **info):
        name, result = str(trial), trial.last_result or {}
        took = self.clock() - self.started.get(name, self.began)
        # True: bad input, recorded by the trial, which ended cleanly (an evaluation trial reports a count here)
        if result.get("failed") is True:
            self.ended[name] = True
            error = (str(result.get("error") or "").splitlines() or ["see its FAILED.json"])[0]
            self.say(f"FAILED   {name}: {error[:LINE_CHARS]}")
        else:
            self.ended[name] = False
            self.durations.append(took)
            words = outcome_words(result)
            self.say(f"done     {name}: {words + ', ' if words else ''}{duration(took)}")
        self.progress(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = trial_error(trial)
        if error is not None and not isinstance(error, str) and is_infrastructure(error):
            self.ended[str(trial)] = False
            self.stopped.add(str(trial))
            self.say(f"stopped  {trial}: {error_line(error)} (a fault of storage, network, node or memory, "
                     "not of its input: not marked failed; the same command runs it again)")
        else:
            self.ended[str(trial)] = True
            self.say(f"FAILED   {trial}: {error_line(error)}")
        self.progress(trials)

    def running(self, trials) -> list:
        """The trials running now (a trial that just ended is RUNNING to Tune a little longer)."""
        return [t for t in trials if t.status == "RUNNING" and str(t) not in self.ended]

    def progress(self, trials) -> None:
        now = self.clock()
        self.last_progress = now
        running = self.running(trials)
        failed = sum(self.ended.values())
        done = len(self.ended) - failed - len(self.stopped)
        total = self.total if self.total is not None else len(trials)
        pending = max(total - len(self.ended) - len(running), 0)
        eta = eta_seconds(self.durations, pending, [now - self.started.get(str(t), now) for t in running],
                          self.slots)
        left = "" if not (pending or running) else ", ETA unknown" if eta is None else f", ETA {duration(eta)}"
        stopped = f", {len(self.stopped)} stopped by a fault" if self.stopped else ""
        self.say(f"progress {done}/{total} done, {len(running)} running, {failed} failed{stopped}, "
                 f"{duration(now - self.began)} elapsed{left}")


def tune_verbosity(verbose: int) -> int:
    """Tune's own ``RunConfig.verbose`` at ours: its status table only at 2."""
    return 1 if verbose >= 2 else 0


# Below verbose 2: Tune's older console engine, which at its verbosity 0 prints nothing (the newer one
# prints its experiment header whatever the verbosity), and no traceback per failed trial from Tune's
# controller (TrialConsole says the error on one line, the command's summary in full).
# Nor Tune's warning, every 10 s of an S3 outage, that saving its experiment state is slow: its S3
# requests are retried through the outage (datasets.storage.filesystem_for), and the launch says so.
QUIET_TUNE = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
              "TUNE_WARN_SLOW_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "600"}


@contextlib.contextmanager
def tune_output(verbose: int) -> Iterator[None]:
    """The environment Tune reads when a fit starts, for ``verbose``; a setting the user made stays."""
    added = {} if verbose >= 2 else {k: v for k, v in QUIET_TUNE.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
