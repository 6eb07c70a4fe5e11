"""How long a trial runs: the step-time table (``step_times.json``, per device type), the epochs an
early-stopped run is expected to take (the paper's, on each model card), the ratios that scale a time
to what the project runs (``time_factors.json``: feature cache, bf16, Ray Train's efficiency, each with
its source), and a trial priced from them (``trial_time``, ``charge_builds``, ``with_workers``). Read
by ``plan`` to price a grid, by ``grid`` for its launch order and by ``hpo`` to set its cosine horizon.

Step times live in two files. The shipped table, ``search_spaces/step_times.json`` (``STEP_TIMES``), changes only in a
commit. This user's measurements, which ``plan --calibrate`` and ``python -m benchmarks gpu --save``
write, go to ``step_times.json`` in the node cache folder (``$VLSM_CACHE``, default
``~/.cache/vlsm-tune``; ``user_step_times``), never into the source tree. ``load_step_times()``
reads the shipped table with the user's devices laid over it; an explicit path reads that file alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from dataclasses import dataclass

from datasets.cache import cache_root, file_lock
from datasets.catalogue import POOLS
from datasets.shards import ShardStore
from datasets.synthetic import SYNTHETIC_DATASETS
from trainables.models import card

STEP_TIMES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "step_times.json")
USER_FILE = "step_times.json"  # in the node cache folder (datasets.cache.cache_root)
USER_ABOUT = ("This user's measured step times (`plan --calibrate`, `python -m benchmarks gpu --save`), laid over "
              "the shipped search_spaces/step_times.json per device type and entry. To ship figures, copy a "
              "device's entries into that file in a commit.")


def user_step_times() -> str:
    """This user's step-time file: ``step_times.json`` in the node cache folder (``$VLSM_CACHE``,
    default ``~/.cache/vlsm-tune``), beside the caches of the machine it measured."""
    return os.path.join(cache_root(), USER_FILE)


def load_step_times(path: str | None = None) -> dict:
    """The step-time table. ``path``: exactly that file, a whole table. None: the shipped table with
    this user's measured entries laid over it, per device type and per entry."""
    table = _read(path or STEP_TIMES)
    if not isinstance(table.get("devices"), dict):
        raise ValueError(f"{path or STEP_TIMES}: expected an object 'devices' at the top level")
    if path is None:
        user = _read_user(user_step_times())
        if user is not None:
            _overlay(table, user)
    return table


def save_step_times(measured: dict, path: str | None = None) -> str:
    """Store measured entries, ``{"devices": {type: {"model/mode/size": entry}}, "grid_start_s":
    {type: seconds}}`` (the latter optional), each replacing the entry of its key; returns the file
    written. ``path`` None: this user's file (created, with its folders), holding measured devices
    only; else exactly that file, a whole table. Written to a temporary file renamed over the old one,
    so a reader never sees half of one."""
    if path is None:
        path = user_step_times()
        with file_lock(path + ".lock"):  # two calibrations on one node: neither loses the other's entries
            table = _read_user(path) or {"about": USER_ABOUT, "devices": {}}
            _write(_overlay(table, measured), path)
    else:
        _write(_overlay(load_step_times(path), measured), path)
    return path


def ship_hint(device: str) -> str:
    """What to do with measurements stored in this user's file to ship them with the project."""
    return (f"(this user's step times, read over the shipped table; to ship them, copy the {device!r} entries "
            f"into search_spaces/step_times.json in a commit)")


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read step times from {path}: {e}") from None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a JSON object of step times, found {type(table).__name__}")
    return table


def _read_user(path: str) -> dict | None:
    """This user's file, checked; None when there is none yet."""
    if not os.path.lexists(path):
        return None
    table = _read(path)

    def number(value, least: float = 0.0) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= least

    devices, starts = table.get("devices"), table.get("grid_start_s", {})
    if not (isinstance(devices, dict) and all(isinstance(e, dict) for e in devices.values())
            and all(isinstance(v, dict) and number(v.get("batch"), 1) and number(v.get("step_ms"))
                    for e in devices.values() for v in e.values())
            and isinstance(starts, dict) and all(number(s) for s in starts.values())):
        raise ValueError(f"{path}: expected a user step-time file: an object 'devices' of device types, each "
                         "an object of entries ('model/mode/size': an object with numbers 'batch' and 'step_ms'), "
                         "and optionally 'grid_start_s' (device type: seconds). Fix it, or remove it to use the "
                         "shipped table alone")
    if extra := sorted(set(table) - {"about", "devices", "grid_start_s"}):
        raise ValueError(f"{path}: unexpected {', '.join(map(repr, extra))} in a user step-time file, which holds "
                         f"only measured devices ('devices', 'grid_start_s'); shipped figures go in {STEP_TIMES}")
    return table


def _overlay(table: dict, measured: dict) -> dict:
    """``measured``'s entries over ``table``'s, per device type and per entry; returns ``table``."""
    for device, entries in measured.get("devices", {}).items():
        table["devices"].setdefault(device, {}).update(entries)
    if measured.get("grid_start_s"):
        table.setdefault("grid_start_s", {}).update(measured["grid_start_s"])
    return table


def _write(table: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w") as f:
            f.write(_dump(table))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _dump(table: dict) -> str:
    """The table as JSON with one line per entry, so a diff shows which entries a calibration changed."""
    def block(entries: dict, indent: str) -> str:
        if not entries:
            return "{}"
        return "{\n" + ",\n".join(f"{indent}  {json.dumps(k)}: {json.dumps(v)}" for k, v in entries.items()) \
            + f"\n{indent}}}"

    parts = []
    for key, value in table.items():
        if key == "devices" and value:
            devices = ",\n".join(f"    {json.dumps(d)}: {block(e, '    ')}" for d, e in value.items())
            parts.append(f'  "devices": {{\n{devices}\n  }}')
        elif isinstance(value, dict):
            parts.append(f"  {json.dumps(key)}: {block(value, '  ')}")
        else:
            parts.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def expected_epochs(spec: dict, table: dict, override: int | None = None) -> int:
    if override:
        return min(override, spec["max_epochs"])
    paper = card(spec["model"]).paper_time
    guess = paper[1] if paper and spec["size"] == "full" else 2 * spec["patience"]
    return max(1, min(spec["max_epochs"], guess))


# -- what a trial costs ------------------------------------------------------------------------------

TIME_FACTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "time_factors.json")
# Rows per split (train, val, test): DATA-FACTS; used when the shards are not at --data.
DATASET_ROWS: dict[str, tuple[int, int, int]] = {
    "kvasir_polyp": (800, 100, 100), "clinicdb_polyp": (490, 61, 61), "bkai_polyp": (800, 100, 100),
    "isic": (810, 90, 379), "dfu": (1600, 200, 200), "busi": (624, 78, 78), "camus": (4800, 600, 600),
    "chexlocalize": (1279, 446, 452), "cvc300_polyp": (0, 0, 60), "colondb_polyp": (0, 0, 380),
    "etis_polyp": (0, 0, 196),
    # Appendix F.2: 1,141 images; the split is not given, so 80/10/10 is assumed.
    "mimic_cxr_lungs": (913, 114, 114),
}
# The paper's eight training datasets, over whose mean rows its minutes per experiment are spread.
PAPER_DATASETS = ("kvasir_polyp", "clinicdb_polyp", "bkai_polyp", "isic", "dfu", "busi", "camus", "chexlocalize")
EVAL_FRACTION = 1 / 3  # an evaluation batch (forward only) against a training step, when not measured


@dataclass
class TrialTime:
    """One trial as the planner prices it: ``seconds`` on ``workers`` GPUs (``share`` of them in all),
    of which ``epochs_s`` is the epochs' training passes (what data-parallel workers divide: each of them
    validates the whole split, so validation does not shrink) and ``build_s`` the
    caches this trial builds first; ``source``: the labels of the figures used (``FIGURES`` says what each is)."""
    name: str
    seconds: float
    share: float  # of a GPU (or CPUs, on --gpu-type cpu); a multi-worker trial: its GPUs
    epochs: float
    source: str | tuple[str, ...]
    block: str = ""
    epochs_s: float = 0.0
    build_s: float = 0.0
    workers: int = 1
    efficiency: float = 1.0  # per worker, of a multi-worker trial
    builds: tuple = ()  # (cache key, seconds): what this trial builds if it is the first to need it

    @property
    def labels(self) -> tuple[str, ...]:
        return (self.source,) if isinstance(self.source, str) else self.source

    @property
    def alone_s(self) -> float:
        """Its time on one GPU alone (one worker)."""
        return self.seconds - self.epochs_s + self.epochs_s * self.workers * self.efficiency


def load_time_factors(path: str | None = None) -> dict:
    """The shipped ratios that scale a time to what the project runs (``time_factors.json``): each
    figure with its source, date and hardware, or marked an assumption."""
    factors = _read(path or TIME_FACTORS)
    for name in ("feature_cache", "regime", "text_share", "decode", "bf16", "ddp_efficiency"):
        if not isinstance(factors.get(name), dict):
            raise ValueError(f"{path or TIME_FACTORS}: expected an object {name!r} (see its 'about')")
    return factors


def split_rows(dataset: str, data: str | None, manifests: dict | None = None) -> tuple[int, int, int]:
    """(train, val, test) rows: from the shards' manifest at ``data`` if there, else DATA-FACTS. A pool
    has its members' train and val rows. ``manifests`` keeps what was read, per dataset."""
    if dataset in POOLS:
        rows = [split_rows(m, data, manifests) for m in POOLS[dataset].members]
        return sum(r[0] for r in rows), sum(r[1] for r in rows), 0
    manifests = {} if manifests is None else manifests
    if data and dataset not in manifests:
        try:
            manifest = ShardStore(data, cache=False).manifest(dataset)
            manifests[dataset] = tuple(manifest.splits.get(s, {}).get("rows", 0) for s in ("train", "val", "test"))
        except Exception:  # not there: fall back to the study's numbers
            manifests[dataset] = None
    if manifests.get(dataset):
        return manifests[dataset]
    if dataset in SYNTHETIC_DATASETS:
        sizes = SYNTHETIC_DATASETS[dataset]["split_sizes"]
        return sizes["train"], sizes["val"], sizes["test"]
    if dataset not in DATASET_ROWS:
        raise ValueError(f"no row counts for dataset {dataset!r}: not at --data and not in DATA-FACTS")
    return DATASET_ROWS[dataset]


@dataclass(frozen=True)
class Figures:
    """Seconds per sample of one kind of trial, and the labels of where they come from."""
    train_s: float  # one training sample, one epoch
    eval_s: float  # one evaluated sample
    fixed_s: float  # the trial process's start and the trial's setup
    image_build_s: float  # encoding one image for the feature cache (0: no cache)
    text_build_s: float  # encoding one prompt string for it
    labels: tuple[str, ...]


def uses_feature_cache(spec: dict, factors: dict) -> bool:
    """As trainables.experiment.prepare decides: frozen mode, a model with a cache path, not a pool."""
    return spec["mode"] == "frozen" and spec["model"] in factors["feature_cache"] and spec.get("train_set") not in POOLS


def figures(spec: dict, table: dict, factors: dict, device: str) -> Figures:
    """A trial's per-sample seconds: measured on ``device`` where the table has its (model, mode, size),
    else the paper's minutes per experiment; a cached frozen trial's from the live path's scaled by
    ``bench frozen``'s measured ratios, where the measurement is not of the cached path itself."""
    key = f"{spec['model']}/{spec['mode']}/{spec['size']}"
    entry = table["devices"].get(device, {}).get(key)
    cached = uses_feature_cache(spec, factors)
    if entry:
        train = entry["step_ms"] / 1000 / entry["batch"]
        evaluate = entry.get("eval_step_ms", entry["step_ms"] * EVAL_FRACTION) / 1000 / entry["batch"]
        fixed = entry.get("start_s", 0.0) + entry.get("setup_s", 0.0)
        labels = [f"{device} measured"]
        live = entry.get("features") == "live"  # a frozen entry timed with the encoders every step
        build = entry.get("cache_build_ms_per_row", 0.0) / 1000
    else:
        model = spec["model"] if card(spec["model"]).paper_time else "clipseg"
        minutes, epochs = card(model).paper_time
        # The paper's minutes cover train and validation epochs over its eight datasets' mean rows.
        rows = sum(sum(DATASET_ROWS[d][:2]) for d in PAPER_DATASETS) / len(PAPER_DATASETS)
        train = evaluate = minutes * 60 / epochs / rows
        fixed, build = 0.0, 0.0
        labels = [f"paper {model}" if model == spec["model"] else "guess: paper clipseg"]
        # The paper's time is of the model's as-run regime (the CLIPSeg family: encoders frozen but run
        # every step; CRIS end to end): what else a spec trains is priced as that, and said so.
        live = spec["mode"] == "frozen"
        regime = factors["regime"].get(model, {})
        if spec["mode"] == "frozen" and card(model).as_run_mode == "finetune" and "frozen_over_finetune" in regime:
            train = evaluate = train * regime["frozen_over_finetune"]  # no backward through the encoders
            labels.append(f"regime {model}")
        elif spec["mode"] != card(model).as_run_mode and spec["mode"] != "zeroshot":
            labels.append(f"as {card(model).as_run_mode}")
        if device in factors["bf16"]["devices"]:
            speedup = factors["bf16"]["speedup"]
            train, evaluate = train / speedup, evaluate / speedup
            labels.append("bf16")
    image_build = text_build = 0.0
    if cached and spec["size"] == "full":
        ratios = factors["feature_cache"][spec["model"]]
        if live:  # the encoders-every-step time scaled to the decoder alone, and the build derived from it
            build = train * (ratios["build_s"] - ratios["cached_s"]) / ratios["live_s"]
            train, evaluate = (s * ratios["cached_s"] / ratios["live_s"] for s in (train, evaluate))
            labels.append(f"feature cache {spec['model']}")
        share = factors["text_share"][spec["model"]]["share"]
        image_build, text_build = build * (1 - share), build * share
        labels += [f"text share {spec['model']}", "one string per row"]
    elif cached and build:  # a measured small model: its build as measured, images and text together
        image_build = build
    return Figures(train, evaluate, fixed, image_build, text_build, tuple(labels))


def trial_time(spec: dict, table: dict, factors: dict, device: str, data: str | None, epochs_override: int | None,
               share: float, manifests: dict | None = None) -> TrialTime:
    """One trial's time on one worker, without the caches it may build (``builds`` lists them: the
    caller charges each to the first trial that needs it)."""
    found = figures(spec, table, factors, device)
    rows = {d: split_rows(d, data, manifests) for d in {spec["train_set"], *spec["eval_sets"]}}
    train_rows, val_rows, _ = rows[spec["train_set"]]
    test_rows = sum(rows[d][2] for d in spec["eval_sets"])
    epochs = 0 if spec["mode"] == "zeroshot" else expected_epochs(spec, table, epochs_override)
    epochs_s = epochs * train_rows * found.train_s  # what data-parallel workers divide
    validation_s = epochs * val_rows * found.eval_s
    # What the trial reads, (dataset, split, rows): its train set's train and val splits (a pool's
    # members'), unless it trains nothing, and its test sets.
    read = []
    if spec["mode"] != "zeroshot":
        for dataset in POOLS[spec["train_set"]].members if spec["train_set"] in POOLS else [spec["train_set"]]:
            train, val, _ = split_rows(dataset, data, manifests)
            read += [(dataset, "train", train), (dataset, "val", val)]
    read += [(d, "test", rows[d][2]) for d in spec["eval_sets"]]
    size = card(spec["model"]).inputs[spec["size"]].input_size
    decode = factors["decode"]["ms_per_row"] / 1000
    builds = [(("decoded", d, s, size), n * decode) for d, s, n in read]
    labels = found.labels + ("decoded cache",)
    if found.image_build_s:
        # Keyed as trainables.feature_cache keys its entries: the encoders' weights (a random init's by
        # its seed), the dataset and split for images; the prompt strings (per dataset and prompt type) for text.
        encoders = (spec["model"], spec["size"], spec["weights"], spec["seed"] if spec["weights"] is None else None)
        builds += [(("image", encoders, d, s), n * found.image_build_s) for d, s, n in read]
        builds += [(("text", encoders, d, spec["prompt_type"]), sum(n for dd, _, n in read if dd == d)
                    * found.text_build_s) for d in dict.fromkeys(d for d, _, _ in read)]
    seconds = found.fixed_s + epochs_s + validation_s + test_rows * found.eval_s
    return TrialTime(spec["id"], seconds, share, epochs, labels, epochs_s=epochs_s, builds=tuple(builds))


def charge_builds(trials: list[TrialTime]) -> list[TrialTime]:
    """Each cache built once, by the first trial (in this order) that needs it: its time added to that trial's."""
    seen: set = set()
    charged = []
    for trial in trials:
        paid = sum(seconds for key, seconds in trial.builds if key not in seen)
        seen.update(key for key, _ in trial.builds)
        charged.append(dataclasses.replace(trial, seconds=trial.seconds - trial.build_s + paid, build_s=paid))
    return charged


def with_workers(trial: TrialTime, workers: int, efficiency: float) -> TrialTime:
    """``trial`` (on one worker) as a data-parallel trial of ``workers`` whole GPUs: its epochs take
    1 / (workers x efficiency) of the time; its start, setup, cache builds, validation (every worker validates
    the whole split) and test evaluation do not shrink. A trial that trains nothing (zero-shot) stays on one."""
    if trial.workers != 1:
        raise ValueError(f"{trial.name} already has {trial.workers} workers: price it on one first")
    if workers == 1 or not trial.epochs_s:
        return trial
    epochs_s = trial.epochs_s / (workers * efficiency)
    return dataclasses.replace(trial, seconds=trial.seconds - trial.epochs_s + epochs_s, epochs_s=epochs_s,
                               workers=workers, share=float(workers), efficiency=efficiency,
                               source=trial.labels + ("ddp efficiency",))
