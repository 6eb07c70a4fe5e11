"""Experiment trackers: ``--log mlflow`` and ``--log wandb`` on the commands that launch trials, through
Ray Tune's own logger callbacks, which run on the driver beside the console (``orchestrator.launch.fit``).

Each trial is one tracker run, named by the trial's name (an experiment id; an hpo trial's
``<model>-<trial id>``), in the study's experiment (MLflow) or project (W&B): its spec as parameters, every
report's metrics (per epoch, the epoch as the step) and, last, the test dice (``test_dice`` and
``test_dice/<test set>``: trainables/tune_trainable.py ``final_metrics``). Nothing else is logged: no
environment and no credentials (MLflow and W&B read theirs from the environment themselves).

Both packages are optional extras (``pip install -e '.[mlflow]'``, ``'.[wandb]'``); Ray, MLflow
and W&B are imported only once a launch asks for a tracker, so ``--help`` and ``--dry-run`` import none.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from datasets.storage import absolute_uri, is_remote

# --log NAME: the module each tracker imports, and the extra (and plain package) that provides it.
TRACKERS = {"mlflow": ("mlflow", "mlflow", "mlflow-skinny"), "wandb": ("wandb", "wandb", "wandb")}
# Tune's bookkeeping in every result that is not a measurement of the run: not logged as metrics
# (Tune's result also repeats the trial's config, which MLflow has as parameters).
NOT_METRICS = ("config", "pid", "timestamp", "date", "hostname", "node_ip", "trial_id", "experiment_tag",
               "done", "should_checkpoint", "checkpoint_dir_name")


class TrackerError(ValueError):
    """A tracker that cannot log: its package is not installed, or its store cannot hold the metrics."""


def add_tracker_arguments(p: argparse.ArgumentParser) -> None:
    """--log and --mlflow-uri, the same for every command that launches trials."""
    p.add_argument("--log", action="append", choices=sorted(TRACKERS), metavar="{mlflow,wandb}",
                   help="also log every trial to this experiment tracker (repeatable): mlflow (the optional "
                        "extra .[mlflow]) or wandb (the extra .[wandb]; offline unless WANDB_MODE says "
                        "otherwise, in <storage>/<study>/wandb/); one run per trial, named by its experiment "
                        "id, with its spec as parameters, every epoch's metrics and the test dice")
    p.add_argument("--mlflow-uri", metavar="URI",
                   help="MLflow tracking URI for --log mlflow: a server (http://...) or a database "
                        "(sqlite:///...), not a file:// mlruns folder (none: MLFLOW_TRACKING_URI, else "
                        "sqlite:///<storage>/<study>/mlflow.db for a local --storage, ./mlflow.db otherwise)")


def check_installed(names: list[str] | None) -> None:
    """Raise TrackerError, in one line naming the extra to install, for the first tracker whose package
    is missing."""
    for name in names or []:
        module, extra, package = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise TrackerError(f"--log {name} needs the {module} package: pip install -e '.[{extra}]' in the "
                               f"repository (or pip install {package})")


def study_folder(storage: str, study: str) -> Path | None:
    """``<storage>/<study>`` as a local folder; None where the storage is not on this machine's disk."""
    uri = absolute_uri(storage)
    if uri.startswith("file://"):
        uri = uri.removeprefix("file://")
    elif is_remote(uri):
        return None
    return Path(uri) / study


def is_file_store(uri: str) -> bool:
    """Whether MLflow takes ``uri`` for its file store (a path or file: URI), as MLflow itself decides;
    "databricks", a database or a server are not."""
    from mlflow.utils.uri import is_local_uri  # --log mlflow only: MLflow is installed (check_installed)

    return is_local_uri(uri)


def mlflow_tracking_uri(storage: str, study: str, uri: str | None = None) -> str:
    """The MLflow store a launch logs to: ``uri`` (--mlflow-uri), else MLflow's own MLFLOW_TRACKING_URI,
    else a SQLite file beside the study's results when they are local (``./mlflow.db`` when they are in
    object storage). SQLite, not a ``mlruns`` folder: MLflow's file store keeps a metric in a file named
    by its key, so it cannot hold ``test_dice`` beside ``test_dice/<test set>`` (and MLflow 3 keeps it in
    maintenance mode, refused unless MLFLOW_ALLOW_FILE_STORE is set); raises TrackerError for one."""
    given = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if given and is_file_store(given):
        source = f"--mlflow-uri {given}" if uri else f"MLFLOW_TRACKING_URI={given}"
        raise TrackerError(f"{source}: MLflow's file store cannot hold test_dice beside test_dice/<test set>; "
                           "use a database (sqlite:///PATH/mlflow.db) or a tracking server (http://HOST:5000)")
    if given:
        return given
    folder = study_folder(storage, study)
    return f"sqlite:///{(folder if folder is not None else Path.cwd()) / 'mlflow.db'}"


def tracker_callbacks(names: list[str] | None, *, storage: str, study: str,
                      mlflow_uri: str | None = None) -> list:
    """Ray Tune callbacks for ``names`` (``--log``), logging into the study's experiment (MLflow) or
    project (W&B). Raises TrackerError, before anything starts, where a tracker's package is not installed
    or its store cannot work."""
    check_installed(names)
    callbacks = []
    for name in dict.fromkeys(names or []):  # --log mlflow twice logs once
        if name == "mlflow":
            callbacks.append(mlflow_callback(mlflow_tracking_uri(storage, study, mlflow_uri), study))
        else:
            callbacks.append(wandb_callback(storage, study))
    return callbacks


def mlflow_callback(uri: str, study: str):
    """Ray's MLflowLoggerCallback into experiment ``study`` at ``uri``, logging each trial's spec as its
    parameters (flattened: ``model``, ``lr``, ...) and, of each result, the measurements alone."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.result import TIMESTEPS_TOTAL, TRAINING_ITERATION

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)

    class SpecLogger(MLflowLoggerCallback):
        def setup(self, *args, **kwargs) -> None:
            super().setup(*args, **kwargs)
            self._logged: dict = {}  # trial -> (the last step logged, the values logged at it)

        def log_trial_start(self, trial) -> None:
            if trial in self._trial_runs:  # a retried trial goes on in its run
                return
            name = str(trial)  # the trial's name: its experiment id
            run = self.mlflow_util.start_run(tags={**self.tags, "trial_name": name}, run_name=name)
            self._trial_runs[trial] = run.info.run_id
            self.mlflow_util.log_params(run_id=run.info.run_id, params_to_log=spec_params(trial.config))

        def log_trial_result(self, iteration: int, trial, result: dict) -> None:
            metrics = {k: v for k, v in result.items() if k not in NOT_METRICS}
            # The last report repeats the last epoch's metrics beside the test dice, at the same step:
            # a value already logged at this step is not logged twice.
            step_key = TIMESTEPS_TOTAL if result.get(TIMESTEPS_TOTAL) else TRAINING_ITERATION  # as Ray's
            step = result[step_key]
            last_step, logged = self._logged.get(trial, (None, {}))
            if step == last_step:
                metrics = {k: v for k, v in metrics.items() if logged.get(k) != v}
            else:
                logged = {}
            self._logged[trial] = (step, {**logged, **metrics})
            super().log_trial_result(iteration, trial, {**metrics, step_key: step})

    return SpecLogger(uri, experiment_name=study)


def spec_params(config: dict) -> dict:
    """What a trial's MLflow parameters are: its spec (``config["spec"]``: every field and its ``id``; an
    evaluation trial's source experiment's), or, for an hpo trial, which has none, its sampled setting."""
    from orchestrator.launch import SPEC

    return dict(config.get(SPEC) or config)


def wandb_callback(storage: str, study: str):
    """Ray's WandbLoggerCallback into project ``study``: offline (WANDB_MODE, default offline here, so no
    API key is needed and nothing leaves the machine; ``wandb sync`` uploads later), its files under
    WANDB_DIR, else ``<storage>/<study>/wandb/`` for a local --storage (``./wandb/`` otherwise)."""
    from ray.air.integrations.wandb import WandbLoggerCallback

    # Ray reads the mode from the environment to decide whether an API key is needed; its logging actors
    # get the mode from wandb.init's own argument too, for a joined cluster's nodes.
    mode = os.environ.setdefault("WANDB_MODE", "offline")
    folder = os.environ.get("WANDB_DIR") or str(study_folder(storage, study) or Path.cwd())
    Path(folder).mkdir(parents=True, exist_ok=True)
    return WandbLoggerCallback(project=study, mode=mode, dir=folder)
