"""`report` on a whole study's results, on one core, against loading its tidy results alone.

A synthetic study named ``study`` is written first (untimed) through the project's own result store
(``trainables.results.ResultStore.write_result``, as a finished trial writes it): ``--experiments``
real experiment specs of ``grid --profile study --seeds K`` (its 368, then the next seed's, as many
as it takes) with ``--images`` test images per evaluation set, each with dice, NSD and HD95 per image
and a result.json as ``trainables.tune_trainable`` writes it (its ``run`` included). Then, each in a
fresh Python process pinned to one CPU with one thread for the numeric libraries:

- the ``report`` command (``python -m orchestrator.run report --profile study``), start to exit: what a
  user waits for;
- ``orchestrator.report.write_report`` alone, without Python's start and the imports;
- the baseline: ``orchestrator.results.load`` of both levels of the tidy set alone, what the report has
  to read at least (images: a row per image, for the paper's tables and the prompt tests; experiments:
  a row per experiment and set, for the results table).

Each is the median of ``--runs`` runs; the target is 30 s for the report on 440 experiments x 100 images.
Storage is a local temporary folder (``--storage``: that folder instead, kept), read from the page cache
after the first run.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP = "`report` on a synthetic 440-experiment x 100-image study, one core: its time against the 30 s target"
TARGET_S = 30.0
STUDY = "study"  # the study profile's own name: `report` reads it as that grid's results, as it would a user's
REPO = Path(__file__).resolve().parents[1]
# One thread for every numeric library a child loads (Arrow's pool reads OMP_NUM_THREADS too).
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                     "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "POLARS_MAX_THREADS")}
# What a child times: the imports, then the call (write_report; or load of each level, one after the other).
CHILD = """
import json, sys, time
t0 = time.perf_counter()
import pandas, pyarrow.dataset  # imported by the calls themselves: counted with the imports
from orchestrator.report import write_report
from orchestrator.results import load
t1 = time.perf_counter()
storage, study, what = sys.argv[1:4]
times = {"import": t1 - t0}
if what == "write_report":
    write_report(storage, study)
    times["write_report"] = time.perf_counter() - t1
else:
    for level in ("images", "experiments"):
        t = time.perf_counter()
        load(storage, study, level)
        times[f"load_{level}"] = time.perf_counter() - t
print(json.dumps(times))
"""


def add_arguments(parser) -> None:
    parser.add_argument("--experiments", type=int, default=440, help="finished experiments in the synthetic study")
    parser.add_argument("--images", type=int, default=100, help="test images per experiment and evaluation set")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each; their median is shown")
    parser.add_argument("--storage", help="write the study here and keep it (none: a temporary folder, removed)")


def study_specs(n: int) -> list:
    """The first ``n`` experiments of ``grid --profile study --seeds K``: the profile's 368, then the same
    with the next seed (their own ids), as many seeds as it takes."""
    from orchestrator.common import with_seeds
    from search_spaces.grid import profile_specs

    specs = profile_specs("study")
    return with_seeds(specs, max(1, math.ceil(n / len(specs))))[:n]


def write_study(storage: str, n_experiments: int, n_images: int, seed: int = 0) -> int:
    """Write the synthetic study through ResultStore.write_result; returns its image rows."""
    from trainables.results import ResultStore, eval_summary

    rng = random.Random(seed)
    store = ResultStore(storage, STUDY)
    rows = 0
    now = time.time()
    for k, spec in enumerate(study_specs(n_experiments)):
        skill = rng.uniform(0.3, 0.9)  # the experiment's mean dice, roughly
        per_image, boundary = {}, {"nsd": {}, "hd95": {}}
        for eval_set in spec.eval_sets:
            samples = [f"{eval_set}-{i:05d}" for i in range(n_images)]
            dice = {s: min(1.0, max(0.0, rng.betavariate(8 * skill, 8 * (1 - skill)))) for s in samples}
            per_image[eval_set] = dice
            boundary["nsd"][eval_set] = {s: min(1.0, d + rng.uniform(-0.1, 0.1)) if d > 0 else 0.0
                                         for s, d in dice.items()}
            # HD95 is undefined (None) where a mask or the prediction is empty: here about 1 image in 50.
            boundary["hd95"][eval_set] = {s: None if rng.random() < 0.02 else rng.uniform(1, 60) * (1.2 - d)
                                          for s, d in dice.items()}
            rows += n_images
        finished = now - (n_experiments - k) * 600.0
        epochs = 0 if spec.mode == "zeroshot" else rng.randint(20, spec.max_epochs)
        record = {**spec.to_dict(), "id": spec.id}
        result = {  # as trainables.experiment.summarize and the Tune trainable write it
            "experiment_id": spec.id, "spec": record,
            "best_val_dice": None if spec.mode == "zeroshot" else round(skill + rng.uniform(-0.05, 0.05), 6),
            "epochs": epochs,
            "eval": {name: eval_summary(dice, {m: v.get(name, {}) for m, v in boundary.items()})
                     for name, dice in per_image.items()},
            "run": {"started_at": finished - rng.uniform(300, 7200), "finished_at": finished,
                    "resumed_from_epoch": None, "resources": {"CPU": 1.0, "GPU": 0.25},
                    "gpu_ids": ["0"], "node_ip": "10.0.0.1", "node_id": "bench"},
        }
        store.write_result(record, result, per_image, metrics=boundary)
    return rows


def one_core() -> int:
    """The CPU the timed children are pinned to: the first this process may run on."""
    return min(os.sched_getaffinity(0))


def child_env() -> dict:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, **ONE_THREAD, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def run_pinned(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``command`` pinned to one CPU; its wall time from start to exit, and the finished process."""
    cpu = one_core()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True,
                          preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    return time.perf_counter() - start, done


def timed(storage: str, runs: int, data: str) -> dict[str, list[float]] | str:
    """Per measurement, its seconds in each run; or what failed."""
    times: dict[str, list[float]] = {"command": [], "write_report": [], "import": [], "load_images": [],
                                     "load_experiments": []}
    for _ in range(runs):  # interleaved, so that a slow spell of a shared machine touches all three
        wall, done = run_pinned([sys.executable, "-m", "orchestrator.run", "report", "--storage", storage,
                                 "--profile", STUDY, "--data", data])
        if done.returncode != 0:
            return f"report command failed (exit {done.returncode}): {done.stderr[-2000:]}"
        times["command"].append(wall)
        for what in ("write_report", "load"):
            _, done = run_pinned([sys.executable, "-c", CHILD, storage, STUDY, what])
            if done.returncode != 0:
                return f"{what} failed (exit {done.returncode}): {done.stderr[-2000:]}"
            for key, seconds in json.loads(done.stdout.strip().splitlines()[-1]).items():
                if key != "import" or what == "write_report":
                    times[key].append(seconds)
    return times


def run(args) -> int:
    with tempfile.TemporaryDirectory(prefix="bench_report_") as tmp:
        storage = args.storage or tmp
        start = time.perf_counter()
        rows = write_study(storage, args.experiments, args.images)
        print(f"wrote a synthetic study of {args.experiments} experiments x {args.images} images "
              f"({rows} image rows) to {storage}/{STUDY} in {time.perf_counter() - start:.1f} s "
              f"through ResultStore.write_result")
        times = timed(storage, args.runs, data=os.path.join(tmp, "no-shards"))
    if isinstance(times, str):
        print(times, file=sys.stderr)
        return 1
    median = {k: statistics.median(v) for k, v in times.items()}
    ratio = median["command"] / TARGET_S
    what = f"{args.experiments} experiments x {args.images} images"
    runs = f"median of {args.runs}, one core"
    print(f"report on {what}: {median['command']:.2f} s ({runs}); target {TARGET_S:g} s; ratio "
          f"{median['command']:.2f}/{TARGET_S:g} = {ratio:.2f}" + ("" if ratio <= 1 else "  OVER THE TARGET"))
    print(f"  of which write_report itself {median['write_report']:.2f} s; the rest: Python's start, the imports "
          f"(the report's and pandas': {median['import']:.2f} s), the command line and its printing")
    loads = [i + e for i, e in zip(times["load_images"], times["load_experiments"])]
    load = statistics.median(loads)
    factor = median["write_report"] / load if load > 0 else math.inf
    print(f"baseline, results.load alone: {load:.2f} s ({runs}; images level, {rows} rows, "
          f"{median['load_images']:.2f} s + experiments level {median['load_experiments']:.2f} s); "
          f"write_report / load = {factor:.1f}x")
    return 0
