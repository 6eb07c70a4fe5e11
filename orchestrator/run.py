"""vlsm-tune command line: ``python -m orchestrator.run {grid,report,status,hpo,...} ...``."""

from __future__ import annotations

import argparse
import os
import sys

# Nothing leaves this machine unless the user asks for it: Ray's usage reporting is opt-in here.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Tune warns whenever frequent trial checkpoints force experiment snapshots; on a grid of short
# trials that is expected and the warning would bury the progress table.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import pyarrow.fs as pafs  # noqa: E402

from datasets.cli import DefaultsHelpFormatter, name_type  # noqa: E402
from datasets.shards import ShardError, absolute_uri  # noqa: E402
from orchestrator.arguments import (  # noqa: E402
    gpu_share,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from orchestrator.common import (  # noqa: E402
    DEFAULT_DATA,
    DEFAULT_STORAGE,
    add_cluster_argument,
    add_spec_arguments,
    add_study_arguments,
    add_study_file_argument,
    add_workers_argument,
    build_specs,
    ensure_synthetic,
    fit_lines,
    study_of,
    summarize_outcome,
    use_study_file,
)
from orchestrator.launch import add_verbose_argument  # noqa: E402
from orchestrator.lease import LeaseError, add_force_argument, driver_line  # noqa: E402
from orchestrator.placement import Unplaceable  # noqa: E402
from orchestrator.trackers import TrackerError, add_tracker_arguments, tracker_callbacks  # noqa: E402


def cmd_grid(args: argparse.Namespace) -> int:
    from trainables.results import ResultStore, StorageError

    if args.cpus_per_trial is None:  # neither the flag nor a --study-file's resources
        args.cpus_per_trial = 1.0
    try:
        specs = build_specs(args)
    except ValueError as e:  # --block with another profile
        print(e, file=sys.stderr)
        return 2
    study = args.study or args.profile
    if not specs:
        print(f"no experiment of profile {args.profile!r} matches --only {args.only}", file=sys.stderr)
        return 2
    from orchestrator.plan import grid_launch

    # Longest first, with each trial's Ray Train workers: the order and workers `plan` assumes.
    specs, workers, order_line = grid_launch(specs, args)
    if args.dry_run:
        from search_spaces.grid import block_summary, blocks_for

        done = ResultStore(args.storage, study).finished_ids()
        print(order_line)
        print(f"{'experiment id':<52} {'model':<15} {'mode':<9} {'regime':<10} {'train set':<15} prompt  "
              f"{'seed':>4}  status")
        for s in specs:
            state = "done" if s.id in done else "pending"
            print(f"{s.id:<52} {s.model:<15} {s.mode:<9} {s.regime:<10} {s.train_set:<15} {s.prompt_type:<7} "
                  f"{s.seed:>4}  {state}")
        blocks = blocks_for(study_of(args), args.block, args.model)
        print(*block_summary(blocks, specs), sep="\n")
        print(*fit_lines(blocks, specs, args), sep="\n")
        print(f"total: {len(specs)} experiments ({sum(s.id in done for s in specs)} done)")
        return 0
    # Imported here, after --dry-run: they load PyTorch and every model, which a listing does not need.
    from orchestrator.grid_runner import input_problems, run_grid

    try:
        callbacks = tracker_callbacks(args.log, storage=args.storage, study=study, mlflow_uri=args.mlflow_uri)
    except TrackerError as e:
        print(e, file=sys.stderr)
        return 2
    try:
        ensure_synthetic(args.data, study_of(args))
        problems = input_problems(specs, args.data)
    except ShardError as e:
        problems = [str(e)]
    except OSError as e:  # storage unreachable: a missing bucket, no credentials, no permission
        problems = [f"cannot read or write shards at {args.data} ({e}); check --data and your credentials"]
    if problems:
        print("cannot start the grid; fix these first:", *problems, sep="\n  ", file=sys.stderr)
        return 2
    if workers or args.verbose >= 2:  # the order alone is the dry run's; a split trial is news
        print(order_line)
    try:
        outcome = run_grid(specs, data=args.data, storage=args.storage, study=study, address=args.address,
                           fake_gpus=args.fake_gpus, gpus_per_trial=args.gpus_per_trial,
                           cpus_per_trial=args.cpus_per_trial, dashboard=not args.no_dashboard,
                           max_failures=args.max_failures, checkpoint_interval_s=args.checkpoint_interval,
                           retry_failed=args.retry_failed, verbose=args.verbose, force=args.force,
                           cluster_file=args.cluster, workers=workers, callbacks=callbacks)
    except StorageError as e:
        print(e, file=sys.stderr)
        return 2
    return summarize_outcome(outcome, "experiments", args.storage, study, args.data)


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.evaluation import EVALUATIONS
    from orchestrator.report import to_markdown, write_report
    from trainables.results import ResultStore

    args.study = args.study or "demo"
    if not (ResultStore(args.storage, args.study).finished_ids()
            or ResultStore(args.storage, args.study, EVALUATIONS).finished_ids()):
        print(f"no finished experiments or evaluations under {args.storage.rstrip('/')}/{args.study}: "
              "check --storage, --study and --profile", file=sys.stderr)
        return 1
    if args.study_file:  # the file's experiments are the report's grid
        from search_spaces.grid import profile_specs

        try:
            specs = profile_specs(study_of(args), args.block, args.model)
        except ValueError as e:
            print(e, file=sys.stderr)
            return 2
        report = write_report(args.storage, args.study, args.data, specs=specs, keep_all=args.all)
    else:
        report = write_report(args.storage, args.study, args.data, profile=args.profile, blocks=args.block,
                              models=args.model, keep_all=args.all)
    print(to_markdown(report.rows))
    print(f"results table ({len(report.rows)} rows): {report.markdown}\n                  csv: {report.csv}")
    for name in ("tables.md", "prompts.md", "report.html"):
        print(f"{name:>12}: {report.files[name]}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.evaluation import EVALUATIONS
    from orchestrator.status import collect, render, state_of
    from search_spaces.grid import PROFILES
    from trainables.results import ResultStore

    if args.profile is None:
        if args.study and args.study not in PROFILES:
            print(f"study {args.study!r} is not a profile name: say which grid it runs with --profile "
                  f"({', '.join(sorted(PROFILES))})", file=sys.stderr)
            return 2
        args.profile = args.study or "demo"
    study = args.study or args.profile
    try:
        specs = build_specs(args)
    except ValueError as e:  # --block with another profile
        print(e, file=sys.stderr)
        return 2
    if not specs:
        print(f"no experiment of profile {args.profile!r} matches --only {args.only}", file=sys.stderr)
        return 2
    if problem := storage_problem(args.storage):
        print(problem, file=sys.stderr)
        return 2
    results = ResultStore(args.storage, study)
    if not exists(absolute_uri(args.storage)):
        print(f"note: {args.storage} does not exist: nothing has run there (check --storage); every experiment "
              "below is pending")
    elif not exists(results.uri):
        print(f"note: {results.uri} does not exist: no study {study!r} has run there (check --study); every "
              "experiment below is pending")
    where = f"{results.uri} (profile {args.profile}, {len(specs)} experiments)"
    print(render(collect(specs, results), where))
    print(driver_line(args.storage, study))
    evaluations = [state_of(names) for names in ResultStore(args.storage, study, EVALUATIONS).listing().values()]
    if evaluations:  # zeroshot runs are experiments above; ablate and ood runs live beside them
        print(f"evaluations (ablate, ood): {evaluations.count('done')} done, {evaluations.count('failed')} failed, "
              f"{len(evaluations) - evaluations.count('done') - evaluations.count('failed')} unfinished")
    return 0


def storage_problem(storage: str) -> str | None:
    """Why ``--storage`` cannot hold results (a file, an unsupported scheme), or None."""
    from datasets.storage import filesystem_for

    fs, path = filesystem_for(absolute_uri(storage))  # ShardError for an unsupported scheme
    if fs.get_file_info(path).type == pafs.FileType.File:
        return f"--storage {storage} is a file, not a folder: name a folder (or s3://bucket/prefix) for the results"
    return None


def exists(uri: str) -> bool:
    from datasets.storage import filesystem_for

    fs, path = filesystem_for(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def parser() -> argparse.ArgumentParser:
    from orchestrator.hpo import add_hpo_arguments, cmd_hpo
    from search_spaces.grid import PROFILES, STUDY_BLOCKS

    top = argparse.ArgumentParser(
        # The console script (vlsm-tune) or the module, as the user ran it.
        prog="vlsm-tune" if os.path.basename(sys.argv[0]) == "vlsm-tune" else "python -m orchestrator.run",
        description="Run the VLSM transfer-learning study as Ray Tune trials and tabulate the results.",
        formatter_class=DefaultsHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True,
                             metavar="{grid,report,status,hpo,zeroshot,ablate,ood,plan,new-study}")

    grid = sub.add_parser("grid", help="run a grid of experiments (skips finished ones)",
                          formatter_class=DefaultsHelpFormatter,
                          description="Run every experiment of a profile as a Ray Tune trial. Finished "
                                      "experiments (a DONE marker in --storage) are skipped, so rerunning "
                                      "the same command resumes the grid.")
    grid.add_argument("--profile", choices=sorted(PROFILES), default="demo",
                      help="which grid to run (demo: small CLIPSeg on synthetic shards)")
    grid.add_argument("--block", action="append", metavar="NAME",
                      help="with --profile study: run only this block of the paper's grid (repeatable; "
                           f"{', '.join(STUDY_BLOCKS)}; none: the finetuning blocks); with --study-file, its blocks")
    grid.add_argument("--only", action="append", metavar="PATTERN",
                      help="run only experiments whose id matches PATTERN (glob or substring); repeatable")
    grid.add_argument("--dry-run", action="store_true", help="list the experiments and their status, run nothing")
    grid.add_argument("--data", default=DEFAULT_DATA,
                      help="shard root: a folder or s3://bucket/prefix")
    grid.add_argument("--storage", default=DEFAULT_STORAGE,
                      help="where results, checkpoints and done markers go: a folder or s3://...")
    grid.add_argument("--study", type=name_type, help="name of this study under --storage (none: the profile name)")
    grid.add_argument("--address", help="Ray cluster to join (e.g. auto on a cluster's head; "
                                        "none: start a local Ray on this machine)")
    grid.add_argument("--fake-gpus", type=non_negative_int, metavar="N",
                      help="declare N logical GPUs on a local Ray, to see fractional scheduling without GPUs")
    grid.add_argument("--gpus-per-trial", type=gpu_share, metavar="F",
                      help="GPU share per trial (none: each model's own fraction)")
    grid.add_argument("--cpus-per-trial", type=positive_float, metavar="C",
                      help="CPUs per trial; torch uses max(1, floor(C)) threads (none: a --study-file's "
                           "resources, else 1)")
    grid.add_argument("--max-epochs", type=positive_int, metavar="E",
                      help="cap every experiment's epochs (changes the experiment ids)")
    add_spec_arguments(grid)
    add_cluster_argument(grid)
    add_workers_argument(grid)
    grid.add_argument("--max-failures", type=non_negative_int, default=1, metavar="K",
                      help="times Ray retries a crashed trial from its last checkpoint")
    grid.add_argument("--checkpoint-interval", type=non_negative_float, metavar="S",
                      help="seconds between a trial's checkpoints (none: 30, full-size models 300; "
                           "always one after the last epoch)")
    grid.add_argument("--retry-failed", action="store_true",
                      help="rerun experiments that failed in an earlier launch (FAILED.json); "
                           "without it they are skipped and listed")
    grid.add_argument("--no-dashboard", action="store_true", help="start the local Ray without its dashboard")
    add_tracker_arguments(grid)
    add_force_argument(grid)
    add_verbose_argument(grid)
    grid.set_defaults(func=cmd_grid)

    report = sub.add_parser("report", help="write the results table (Markdown and CSV)",
                            formatter_class=DefaultsHelpFormatter,
                            description="Tabulate mean dice per (model, mode, train set, prompt, eval set) "
                                        "from finished experiments; writes report.md and report.csv under "
                                        "<storage>/<study>/.")
    report.add_argument("--storage", default=DEFAULT_STORAGE, help="results root")
    report.add_argument("--data", default=DEFAULT_DATA,
                        help="shard root whose recorded content hashes flag results on datasets that share images "
                             "or masks with another")
    add_study_arguments(report, sorted(PROFILES), default=None)
    add_study_file_argument(report)
    report.add_argument("--block", action="append", metavar="NAME",
                        help="with --profile study: the paper tables' grid is only this block (repeatable; none: "
                             "every block of the study); finished experiments outside the grid are listed apart")
    report.add_argument("--model", action="append", metavar="NAME",
                        help="the paper tables' grid is only this model's experiments (repeatable; with --profile "
                             "demo, none: the demo of every model the study ran)")
    report.add_argument("--all", action="store_true",
                        help="keep finished experiments that are not in the grid in tables.md, tables.csv and "
                             "prompts.md (without it they are left out and listed apart)")
    report.set_defaults(func=cmd_report)

    plan = sub.add_parser("plan", help="estimate GPU-hours, makespan and cost of a grid or search before running it",
                          formatter_class=DefaultsHelpFormatter,
                          description="Estimate a grid's (or an hpo search's) GPU-hours, makespan and cost on a "
                                      "cluster shape from stored step times, against one experiment at a time "
                                      "on one GPU. See orchestrator/plan.py for the model of a trial's time.")
    from orchestrator.plan import add_plan_arguments, cmd_plan

    add_plan_arguments(plan, DEFAULT_DATA)
    plan.set_defaults(func=cmd_plan)

    status = sub.add_parser("status", help="per block: experiments done, running, failed, pending; best dice; ETA",
                            formatter_class=DefaultsHelpFormatter,
                            description="Where a study stands, from one listing of its storage: per block the "
                                        "experiments done, running, failed and pending, the best validation dice "
                                        "so far, the trial time left and an ETA. Select the experiments as for "
                                        "grid (--profile, --only, --max-epochs).")
    status.add_argument("--storage", default=DEFAULT_STORAGE, help="results root")
    status.add_argument("--study", type=name_type, help="study name under --storage (none: the profile name)")
    status.add_argument("--profile", choices=sorted(PROFILES),
                        help="the grid the study runs (none: the study name, else demo)")
    status.add_argument("--block", action="append", metavar="NAME",
                        help="as for grid: with --profile study (or a --study-file), only this block (repeatable)")
    status.add_argument("--data", default=DEFAULT_DATA,
                        help="shard root where a --study-file's own datasets are found (their prompt types)")
    status.add_argument("--only", action="append", metavar="PATTERN", help="as for grid; repeatable")
    status.add_argument("--max-epochs", type=positive_int, metavar="E",
                        help="as for grid (it changes the experiment ids)")
    add_spec_arguments(status)
    status.set_defaults(func=cmd_status)

    hpo = sub.add_parser("hpo", help="Table 4's hyperparameter search for one model (Optuna TPE + ASHA)",
                         formatter_class=DefaultsHelpFormatter,
                         description="Search Table 4's space (optimizer, learning rate, scheduler, batch size) "
                                     "for one model: each trial trains one setting on every --datasets set, "
                                     "Optuna's TPE proposes settings and ASHA stops weak ones early on mean "
                                     "validation dice. Then the study's rule picks the setting that is best on "
                                     "the most datasets; it is printed and saved with per-dataset evidence to "
                                     "<storage>/<study>/hpo/<model>/selection.json.")
    add_hpo_arguments(hpo, default_data=DEFAULT_DATA, default_storage=DEFAULT_STORAGE)
    hpo.set_defaults(func=cmd_hpo)

    from orchestrator.evaluation import add_commands

    add_commands(sub)  # zeroshot, ablate, ood: orchestrator/evaluation.py

    new_study = sub.add_parser("new-study", help="write NAME.yaml: a commented study file to start from",
                               formatter_class=DefaultsHelpFormatter,
                               description="Write a study file to edit: every key explained, valid as written "
                                           "(the demo's small models on the synthetic sets). Run it with "
                                           "`grid --study-file NAME.yaml`; docs/study.md describes the format.")
    new_study.add_argument("name", type=name_type, help="the study's name, and the file's (NAME.yaml)")
    new_study.add_argument("--dir", default=".", help="folder to write NAME.yaml into")
    new_study.set_defaults(func=cmd_new_study)
    return top


def cmd_new_study(args: argparse.Namespace) -> int:
    from search_spaces.study_file import new_study_text

    path = os.path.join(args.dir, f"{args.name}.yaml")
    try:
        with open(path, "x", encoding="utf-8") as f:  # never over a file of the user's
            f.write(new_study_text(args.name))
    except FileExistsError:
        print(f"{path} exists: choose another NAME or --dir (new-study never overwrites a file)", file=sys.stderr)
        return 1
    print(f"wrote {path}; list its experiments with: python -m orchestrator.run grid --study-file {path} --dry-run")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "study_file", None):
        from search_spaces.study_file import StudyFileError

        try:
            use_study_file(args)
        except StudyFileError as e:
            print(e, file=sys.stderr)
            return 2
    if getattr(args, "study", "") is None and getattr(args, "profile", None):
        args.study = args.profile  # one rule for every command: a study is named after its grid
    from trainables.results import StorageError

    try:
        return args.func(args)
    except (LeaseError, Unplaceable) as e:  # another driver runs this study; a trial fits no node type
        print(e, file=sys.stderr)
        return 2
    except (ShardError, StorageError) as e:  # bad input or a --data / --storage that cannot work
        print(one_line(e), file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:  # a path given (--cluster, weights)
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:  # storage unreachable: no such bucket, no credentials, no permission, a full disk
        print(f"storage error: {one_line(e)} (check --storage, --data and your credentials)", file=sys.stderr)
        return 1


def one_line(error: Exception) -> str:
    """An error's message on one line, for the console (pyarrow's carry a "Detail:" line)."""
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
