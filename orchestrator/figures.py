"""The study's figures as PNG files, drawn headless: no display, no pyplot state (but for Optuna's own plots).

Each function takes the tidy results (``orchestrator.results.load``) or a study's storage and writes one PNG
(``hpo_figures``: several), returning the path written, or None (``hpo_figures``: an empty list) when there is
nothing to draw:

- ``figure2``: mean dice (%) by prompt type, a panel per dataset, a line per model and mode (zero-shot,
  frozen, finetuned), 95% bootstrap CIs over images (paper, Figure 2).
- ``figure3``: the ablations: relative change (%) of mean dice when the prompt is perturbed at inference,
  against the unperturbed prompt on the same images, with the CI of the paired difference (Figure 3).
- ``figure4``: the images whose dice dropped most under a perturbation: image, ground truth, the clean
  prompt's and the perturbed prompt's predictions (Figure 4), from the examples an ablation stored
  (``write_mask_examples``: the format below).
- ``table2_heatmap``: model x dataset mean dice, each cell annotated (Table 2).
- ``training_curves``: validation dice and losses by epoch, from what each Tune trial logged
  (``progress.csv``, else ``result.json`` lines) in the study's launch folders.
- ``hpo_figures``: Optuna's optimisation history and parameter importances of a model's hpo search, on
  an Optuna study rebuilt in memory from the search's stored trial records.

Mask examples (Figure 4's input), one folder per ablation with a perturbation,
``<storage>/<study>/evaluations/<ablation id>/masks/``: ``index.json`` (``MASKS_INDEX``) holds the ablation
(evaluation_id, reference_id: the unperturbed ablation of the same source and set, source, model, mode,
eval_set, prompt_type, perturbation) and ``examples``, a list, worst drop first, of {sample_id, dice_clean,
dice_perturbed, drop, prompt_clean, prompt_perturbed, image, truth, clean, perturbed}, the last four
file names in the folder: the image (RGB) and three masks (8-bit, 0/255), all at the image's original size,
the size dice is scored at. Only CSV, JSON and images are read here; never Tune's pickled state.
"""

from __future__ import annotations

import fnmatch
import io
import json
import math
import posixpath
import re
import sys
import textwrap
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from datasets.storage import absolute_uri, filesystem_for, read_if_exists, write_atomically
from prompts.images import open_image

if TYPE_CHECKING:
    import pandas as pd

N_RESAMPLES = 1000  # bootstrap resamples per CI: plenty for a figure's error bars, fast for hundreds of them
DPI = 120
MASKS_DIR = "masks"  # <storage>/<study>/evaluations/<ablation id>/masks/
MASKS_INDEX = "index.json"
MODE_LABELS = {"zeroshot": "zero-shot", "frozen": "frozen encoders", "finetune": "finetuned"}
MODE_STYLES = {"zeroshot": ":", "frozen": "--", "finetune": "-"}
PERTURBATION_KINDS = ("random_word", "opposite", "class_only")  # Figure 3's order, left to right


# ---------------------------------------------------------------- drawing helpers


def _figure(width: float, height: float):
    """A bare Figure on matplotlib's Agg canvas: no display, no pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path, tight: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, **({"bbox_inches": "tight"} if tight else {}))
    return path


def _grid(fig, n: int, ncols: int, **kwargs) -> list:
    """n axes in rows of ncols; the unused cells of the last row left empty."""
    nrows = math.ceil(n / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


def _prompt_key(prompt_type: str) -> tuple:
    """p0, p1, ..., p9, p10, then the rest (random) by name."""
    match = re.fullmatch(r"p(\d+)", str(prompt_type))
    return (0, int(match.group(1)), "") if match else (1, 0, str(prompt_type))


def _dataset_key(name: str) -> tuple:
    """The catalogue's order (then the pools, then any other name by itself)."""
    from datasets.catalogue import DATASETS, POOLS

    order = [*DATASETS, *POOLS]
    return (order.index(name), "") if name in order else (len(order), str(name))


def _perturbation_key(perturbation: str) -> tuple:
    kind, _, attribute = str(perturbation).partition(":")
    rank = PERTURBATION_KINDS.index(kind) if kind in PERTURBATION_KINDS else len(PERTURBATION_KINDS)
    return (rank, kind, attribute)


def _mode_label(model: str, mode: str | None) -> str:
    return f"{model} ({MODE_LABELS.get(mode, mode)})" if mode else str(model)


def _error_bars(y: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
    """matplotlib's yerr (2, n) from the rows' ci_low and ci_high around y; none (0) where a CI is undefined."""
    low, high = rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)
    return np.clip(np.nan_to_num(np.vstack([y - low, high - y])), 0, None)


def _require(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = set(columns) - set(frame.columns)
    if missing:
        raise ValueError(f"{what}: the results lack columns {', '.join(sorted(missing))}")


# ---------------------------------------------------------------- Figure 2: dice by prompt type


def prompt_type_summary(images: pd.DataFrame, kinds: Sequence[str] = ("train", "zeroshot"),
                        confidence: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """What Figure 2 draws: per (model, mode, train_set, prompt_type), on the training set's own test images
    (eval_set == train_set; pools left out), the mean dice in % and its bootstrap CI (``bootstrap_ci``) over
    images, each image's dice first averaged over the seeds of the same spec. Columns: model, mode, train_set,
    prompt_type, n, dice, ci_low, ci_high."""
    import pandas as pd

    from orchestrator.significance import bootstrap_ci

    _require(images, ("kind", "model", "mode", "train_set", "prompt_type", "eval_set", "sample_id", "dice"),
             "figure 2")
    chosen = images[images["kind"].isin(kinds) & (images["eval_set"] == images["train_set"])
                    & images["dice"].notna()]
    keys = ["model", "mode", "train_set", "prompt_type"]
    per_image = chosen.groupby([*keys, "sample_id"], sort=True)["dice"].mean().reset_index()
    rows = []
    for key, group in per_image.groupby(keys, sort=True):
        values = 100 * group["dice"].to_numpy(dtype=float)
        low, high = bootstrap_ci(values, confidence=confidence, n_resamples=n_resamples, seed=seed)
        rows.append({**dict(zip(keys, key)), "n": len(values), "dice": float(values.mean()),
                     "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=[*keys, "n", "dice", "ci_low", "ci_high"])


def figure2(images: pd.DataFrame, path: str | Path, *, kinds: Sequence[str] = ("train", "zeroshot"),
            confidence: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0, ncols: int = 4) -> Path | None:
    """Figure 2: mean dice (%) by prompt type, a panel per dataset (the training set, scored on its own test
    split), a line per model and mode (colour: model; line style: zero-shot dotted, frozen dashed, finetuned
    solid), error bars the ``confidence`` bootstrap CI over images (``prompt_type_summary``). None: no trained
    or zero-shot result."""
    summary = prompt_type_summary(images, kinds, confidence, n_resamples, seed)
    if summary.empty:
        return None
    datasets = sorted(summary["train_set"].unique(), key=_dataset_key)
    series = sorted({(m, mode) for m, mode in zip(summary["model"], summary["mode"])})
    models = sorted({m for m, _ in series})
    colours = {m: f"C{i % 10}" for i, m in enumerate(models)}
    ncols = min(ncols, len(datasets))
    fig = _figure(4.2 * ncols, 3.4 * math.ceil(len(datasets) / ncols) + 0.6)
    axes = _grid(fig, len(datasets), ncols, sharey=True)
    width = 0.6 / max(len(series), 1)  # series side by side around each prompt type, so bars stay apart
    for ax, dataset in zip(axes, datasets):
        here = summary[summary["train_set"] == dataset]
        prompts = sorted(here["prompt_type"].unique(), key=_prompt_key)
        x = {p: i for i, p in enumerate(prompts)}
        for j, (model, mode) in enumerate(series):
            rows = here[(here["model"] == model) & (here["mode"] == mode)]
            if rows.empty:
                continue
            rows = rows.assign(x=rows["prompt_type"].map(x)).sort_values("x")
            xs = rows["x"].to_numpy(dtype=float) + (j - (len(series) - 1) / 2) * width
            y = rows["dice"].to_numpy(dtype=float)
            ax.errorbar(xs, y, yerr=_error_bars(y, rows), color=colours[model], linestyle=MODE_STYLES.get(mode, "-"),
                        marker="o", markersize=3.5, capsize=2, linewidth=1.2, label=_mode_label(model, mode))
        ax.set_xticks(range(len(prompts)), [p.upper() if p.startswith("p") else p for p in prompts], fontsize=8)
        ax.set_title(dataset, fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[::ncols]:
        ax.set_ylabel("Dice (%)")
    handles, labels = [], []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
    fig.suptitle(f"Dice by prompt type ({100 * confidence:g}% bootstrap CI over images)", fontsize=11)
    return _save(fig, path)


# ---------------------------------------------------------------- Figure 3: ablations


def ablation_summary(images: pd.DataFrame, confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
                     seed: int = 0) -> pd.DataFrame:
    """What Figure 3 draws: per ablated (model, mode, train_set, prompt_type, eval_set) and perturbation, the
    relative change (%) of mean dice against the unperturbed prompt (perturbation null) on the images both
    scored (each image's dice first averaged over seeds): 100 x (perturbed - clean) / clean, with the CI of the
    paired mean difference (``paired_diff_ci``) scaled the same way (the clean mean held fixed). Columns: the
    keys, perturbation, n, clean, perturbed (mean dice in %), rel_change, ci_low, ci_high."""
    import pandas as pd

    from orchestrator.significance import paired_diff_ci

    keys = ["model", "mode", "train_set", "prompt_type", "eval_set"]
    columns = [*keys, "perturbation", "n", "clean", "perturbed", "rel_change", "ci_low", "ci_high"]
    if "kind" not in images or "perturbation" not in images:
        return pd.DataFrame(columns=columns)
    _require(images, (*keys, "sample_id", "dice"), "figure 3")
    ablations = images[(images["kind"] == "ablate") & images["dice"].notna()].copy()
    ablations["perturbation"] = ablations["perturbation"].astype(object).where(ablations["perturbation"].notna(), "")
    per_image = ablations.groupby([*keys, "perturbation", "sample_id"], sort=True)["dice"].mean().reset_index()
    rows = []
    for key, group in per_image.groupby(keys, sort=True):
        clean = group[group["perturbation"] == ""][["sample_id", "dice"]]
        if clean.empty:
            continue
        for perturbation, other in group[group["perturbation"] != ""].groupby("perturbation", sort=True):
            pairs = clean.merge(other[["sample_id", "dice"]], on="sample_id", suffixes=("_clean", "_perturbed"))
            if pairs.empty:
                continue
            base = float(pairs["dice_clean"].mean())
            low, high = paired_diff_ci(pairs["dice_perturbed"], pairs["dice_clean"], confidence=confidence,
                                       n_resamples=n_resamples, seed=seed)
            scale = 100 / base if base > 0 else math.nan
            rows.append({**dict(zip(keys, key)), "perturbation": perturbation, "n": len(pairs),
                         "clean": 100 * base, "perturbed": 100 * float(pairs["dice_perturbed"].mean()),
                         "rel_change": scale * float((pairs["dice_perturbed"] - pairs["dice_clean"]).mean()),
                         "ci_low": scale * low, "ci_high": scale * high})
    return pd.DataFrame(rows, columns=columns)


def figure3(images: pd.DataFrame, path: str | Path, *, confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
            seed: int = 0) -> Path | None:
    """Figure 3: relative change (%) of mean dice per perturbation (x: random uncommon word, then opposite value,
    then the class name alone, split by vertical lines), a bar per evaluation set with the CI of the paired
    difference, a panel per ablated model, mode and prompt type (``ablation_summary``). None: no ablation with
    both its unperturbed and a perturbed prompt scored."""
    summary = ablation_summary(images, confidence, n_resamples, seed)
    if summary.empty:
        return None
    panels = sorted({(m, mode, p) for m, mode, p in zip(summary["model"], summary["mode"], summary["prompt_type"])},
                    key=lambda k: (k[0], str(k[1]), _prompt_key(k[2])))
    summary = summary.assign(where=[e if t == e else f"{e} (trained on {t})"
                                    for t, e in zip(summary["train_set"], summary["eval_set"])])
    wheres = sorted(summary["where"].unique(), key=lambda w: _dataset_key(w.split(" ")[0]))
    colours = {w: f"C{i % 10}" for i, w in enumerate(wheres)}
    widest = max(summary.groupby(["model", "mode", "prompt_type"])["perturbation"].nunique())
    fig = _figure(max(6.5, 1.2 * widest * max(1, len(wheres)) ** 0.5 + 1.5), 3.6 * len(panels) + 1.0)
    axes = _grid(fig, len(panels), 1)
    for ax, (model, mode, prompt_type) in zip(axes, panels):
        here = summary[(summary["model"] == model) & (summary["mode"] == mode)
                       & (summary["prompt_type"] == prompt_type)]
        perturbations = sorted(here["perturbation"].unique(), key=_perturbation_key)
        x = {p: i for i, p in enumerate(perturbations)}
        present = [w for w in wheres if w in set(here["where"])]
        width = 0.8 / max(len(present), 1)
        for j, where in enumerate(present):
            rows = here[here["where"] == where]
            xs = np.array([x[p] for p in rows["perturbation"]]) + (j - (len(present) - 1) / 2) * width
            y = rows["rel_change"].to_numpy(dtype=float)
            ax.bar(xs, y, width=width, color=colours[where], label=where, yerr=_error_bars(y, rows), capsize=2,
                   error_kw={"linewidth": 0.8})
        kinds = [_perturbation_key(p)[1] for p in perturbations]
        for i in range(1, len(kinds)):
            if kinds[i] != kinds[i - 1]:
                ax.axvline(i - 0.5, color="0.3", linewidth=0.8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(perturbations)), [p.replace("_", " ") for p in perturbations], rotation=30,
                      ha="right", fontsize=8)
        ax.set_ylabel("relative change in Dice (%)")
        ax.set_title(f"{_mode_label(model, mode)}, prompt {str(prompt_type).upper()}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"Prompts perturbed at inference vs unperturbed\n({100 * confidence:g}% CI of the paired "
                 "difference)", fontsize=11)
    return _save(fig, path)


# ---------------------------------------------------------------- Table 2 as a heatmap


def table2_summary(results: pd.DataFrame, kinds: Sequence[str] = ("train",), prompt: str = "best") -> pd.DataFrame:
    """What ``table2_heatmap`` draws: one row per (training scope, model, mode) and column per evaluation set,
    mean dice in %. The scope is "individual" where a model was trained on the set it is scored on, else the
    training set (a pool). ``results``: the tidy images (mean over images and seeds) or experiments level
    (mean of ``dice_mean`` over seeds). A model trained with several prompt types takes, per cell, the best
    prompt type's mean (``prompt="best"``) or the mean over them (``"mean"``). Returns the wide table, its
    index (scope, model, mode), its columns the evaluation sets."""
    import pandas as pd

    if prompt not in ("best", "mean"):
        raise ValueError(f"prompt {prompt!r}: expected 'best' or 'mean'")
    value = "dice" if "sample_id" in results.columns and "dice" in results.columns else "dice_mean"
    _require(results, ("kind", "model", "mode", "train_set", "prompt_type", "eval_set", value), "table 2")
    chosen = results[results["kind"].isin(kinds) & results[value].notna()]
    if chosen.empty:
        return pd.DataFrame()
    chosen = chosen.assign(scope=np.where(chosen["train_set"] == chosen["eval_set"], "individual",
                                          chosen["train_set"].astype(str)))
    keys = ["scope", "model", "mode", "eval_set"]
    # mean over the images (and seeds) of each prompt type, then the best of (or the mean over) prompt types
    per_prompt = chosen.groupby([*keys, "prompt_type"], sort=True)[value].mean()
    cells = 100 * (per_prompt.groupby(level=keys).max() if prompt == "best" else per_prompt.groupby(level=keys).mean())
    wide = cells.unstack("eval_set")
    wide = wide[sorted(wide.columns, key=_dataset_key)]
    order = sorted(wide.index, key=lambda k: (k[0] != "individual", _dataset_key(k[0]), k[1], str(k[2])))
    return wide.loc[order]


def table2_heatmap(results: pd.DataFrame, path: str | Path, *, kinds: Sequence[str] = ("train",),
                   prompt: str = "best") -> Path | None:
    """Table 2 as a heatmap: rows (training scope, model, mode), columns evaluation sets, colour and annotation
    the mean dice in % (``table2_summary``); blank where a model was not scored on a set. None: no trained
    result."""
    wide = table2_summary(results, kinds, prompt)
    if wide.empty:
        return None
    values = wide.to_numpy(dtype=float)
    multi_mode = wide.reset_index().groupby("model")["mode"].nunique()
    labels = [f"{scope} · {model}" + (f" ({MODE_LABELS.get(mode, mode)})" if multi_mode.get(model, 1) > 1 else "")
              for scope, model, mode in wide.index]
    fig = _figure(max(6.0, 1.0 * values.shape[1] + 3), max(3.2, 0.42 * values.shape[0] + 1.6))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8, color="white" if v < 60 else "black")
    ax.set_xticks(range(values.shape[1]), list(wide.columns), rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(values.shape[0]), labels, fontsize=8)
    fig.colorbar(image, ax=ax, label="Dice (%)", shrink=0.8)
    which = "best prompt type" if prompt == "best" else "mean over prompt types"
    ax.set_title(f"Dice (%) by model and test set ({which})", fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------- training curves


CURVE_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "lr")


def _trial_log(fs, folder: str) -> pd.DataFrame | None:
    """A Tune trial's reports: its ``progress.csv``, else its ``result.json`` (one JSON object a line)."""
    import pandas as pd

    data = read_if_exists(fs, posixpath.join(folder, "progress.csv"))
    if data:
        try:
            return pd.read_csv(io.BytesIO(data))
        except (ValueError, pd.errors.ParserError):
            pass
    data = read_if_exists(fs, posixpath.join(folder, "result.json"))
    if not data:
        return None
    rows = []
    for line in data.decode(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        if isinstance(row, dict):
            rows.append({k: v for k, v in row.items() if not isinstance(v, (dict, list))})
    return pd.DataFrame(rows) if rows else None


def trial_curves(storage: str, study: str) -> pd.DataFrame:
    """Every epoch each experiment's Tune trials reported, from the launch folders
    (``orchestrator.launch.launch_folders``; a trial's folder is named by its experiment id), oldest launch
    first: one row per (experiment_id, epoch), the latest report of an epoch kept (a resumed or retried trial
    repeats some, and an experiment's last report repeats its last epoch). Columns: experiment_id, launch,
    epoch, train_loss, val_loss, val_dice, lr. Trials that report no epoch (evaluations, zero-shot) give
    no rows."""
    import pandas as pd
    import pyarrow.fs as pafs

    from orchestrator.launch import launch_folders

    frames = []
    for order, folder in enumerate(launch_folders(storage, study)):
        fs, root = filesystem_for(folder)
        for info in sorted(fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)), key=lambda i: i.base_name):
            if info.type != pafs.FileType.Directory:
                continue
            log = _trial_log(fs, info.path)
            if log is None or not {"epoch", "val_dice"} <= set(log.columns):
                continue
            log = log[[c for c in CURVE_COLUMNS if c in log.columns]].copy()
            log = log[pd.to_numeric(log["epoch"], errors="coerce").notna()]
            if log.empty:
                continue
            log.insert(0, "launch", posixpath.basename(folder.rstrip("/")))
            log.insert(0, "experiment_id", info.base_name)
            log["_order"] = order
            frames.append(log)
    columns = ["experiment_id", "launch", *CURVE_COLUMNS]
    if not frames:
        return pd.DataFrame(columns=columns)
    curves = pd.concat(frames, ignore_index=True)
    for column in CURVE_COLUMNS:
        curves[column] = pd.to_numeric(curves.get(column), errors="coerce")
    curves["epoch"] = curves["epoch"].astype(int)
    curves = curves.sort_values(["experiment_id", "_order"], kind="stable")
    curves = curves.drop_duplicates(["experiment_id", "epoch"], keep="last")
    return curves.sort_values(["experiment_id", "epoch"], kind="stable", ignore_index=True)[columns]


def training_curves(storage: str, study: str, path: str | Path, ids: Sequence[str] | None = None,
                    max_panels: int = 12, ncols: int = 3) -> Path | None:
    """Small multiples, one panel per experiment (the first ``max_panels`` by id): validation dice (left axis)
    and training and validation loss (right axis) by epoch, from the trials' logged scalars
    (``trial_curves``). ``ids``: experiment ids or glob patterns to draw. None: no trial logged an epoch."""
    from matplotlib.ticker import MaxNLocator

    curves = trial_curves(storage, study)
    if ids:
        wanted = [i for i in curves["experiment_id"].unique()
                  if any(i == p or fnmatch.fnmatchcase(i, p) for p in ids)]
        curves = curves[curves["experiment_id"].isin(wanted)]
    experiments = sorted(curves["experiment_id"].unique())
    if not experiments:
        return None
    shown = experiments[:max_panels]
    ncols = min(ncols, len(shown))
    fig = _figure(4.6 * ncols, 3.0 * math.ceil(len(shown) / ncols) + 0.6)
    axes = _grid(fig, len(shown), ncols)
    for ax, experiment in zip(axes, shown):
        rows = curves[curves["experiment_id"] == experiment]
        ax.plot(rows["epoch"], rows["val_dice"], color="C0", marker=".", label="val dice")
        ax.set_ylim(0, 1)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("val dice", color="C0", fontsize=8)
        ax.tick_params(labelsize=7)
        losses = ax.twinx()
        for column, colour in (("train_loss", "C1"), ("val_loss", "C3")):
            if rows[column].notna().any():
                losses.plot(rows["epoch"], rows[column], color=colour, linewidth=1, label=column.replace("_", " "))
        losses.set_ylabel("loss", fontsize=8)
        losses.tick_params(labelsize=7)
        best = rows["val_dice"].max()
        ax.set_title("\n".join(textwrap.wrap(experiment, 48)) + f"\nbest val dice {best:.3f}", fontsize=7)
        handles = ax.get_legend_handles_labels()[0] + losses.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=6, loc="lower right")
    more = f" (first {len(shown)} of {len(experiments)})" if len(experiments) > len(shown) else ""
    fig.suptitle(f"Training curves{more}", fontsize=11)
    return _save(fig, path)


# ---------------------------------------------------------------- hpo search


def _hpo_folder(storage: str, study: str, model: str, mode: str | None) -> str:
    if mode is None:  # the model's as-run mode: <study>/hpo/<model>, without building the model's card
        return f"{absolute_uri(storage).rstrip('/')}/{study}/hpo/{model}"
    from orchestrator.selection import hpo_uri

    return hpo_uri(absolute_uri(storage), study, model, mode)


def _tune_trial_records(where: str) -> list[dict]:
    """The search's trial records (``orchestrator.hpo.trial_record``) rebuilt from Tune's trial folders, for a
    search without ``selection.json`` (interrupted): each trial's last ``result.json`` line."""
    import pyarrow.fs as pafs

    from orchestrator.selection import trial_record

    fs, root = filesystem_for(f"{where}/tune")
    records = []
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if info.type != pafs.FileType.Directory:
            continue
        data = read_if_exists(fs, posixpath.join(info.path, "result.json"))
        lines = [line for line in (data or b"").decode(errors="replace").splitlines() if line.strip()]
        for line in reversed(lines):
            try:
                last = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(last, dict) and last.get("best_val_dice_by_dataset") and last.get("config"):
                records.append(trial_record(last.get("trial_id", info.base_name), last["config"], last))
            break
    return records


def _intermediate(where: str) -> dict[str, dict[int, float]]:
    """Each trial's mean validation dice by training iteration, the value ASHA compared: trial id -> step ->
    value, from Tune's logs (``<search>/tune/<model>-<trial id>/``)."""
    import pandas as pd
    import pyarrow.fs as pafs

    fs, root = filesystem_for(f"{where}/tune")
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if info.type != pafs.FileType.Directory:
            continue
        log = _trial_log(fs, info.path)
        if log is None or not {"trial_id", "training_iteration", "val_dice"} <= set(log.columns):
            continue
        log = log[pd.to_numeric(log["val_dice"], errors="coerce").notna()]
        for trial_id, rows in log.groupby("trial_id"):
            out[str(trial_id)] = {int(s): float(v) for s, v in zip(rows["training_iteration"], rows["val_dice"])}
    return out


def _distributions(space: dict, settings: Iterable[dict]) -> dict:
    """Optuna distributions of the search space as ``selection.json`` records it (a list: categorical;
    {"loguniform": [low, high]}), widened to hold every recorded value."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    settings = list(settings)
    out = {}
    for name, spec in space.items():
        seen = [s[name] for s in settings if name in s]
        if isinstance(spec, dict) and spec:
            (kind, (low, high)), = spec.items()
            low, high = min([low, *seen]), max([high, *seen])
            out[name] = FloatDistribution(low, high, log=kind.startswith("log"))
        else:
            out[name] = CategoricalDistribution(list(dict.fromkeys([*spec, *seen])))
    return out


def hpo_study(storage: str, study: str, model: str, mode: str | None = None):
    """The model's hpo search as an in-memory Optuna study (direction maximize), or None where there is none.

    Ray Tune's OptunaSearch keeps its Optuna study in memory (and pickled in Tune's searcher state, which is
    not read here), so it is rebuilt from the stored trial records, Optuna's documented way
    (``optuna.trial.create_trial`` and ``Study.add_trials``): the trials of ``selection.json`` (else of Tune's
    trial folders, for a search that stopped before its selection), in trial-id order (Tune's order of
    creation), each with its sampled setting as params, the search space as distributions, its value the mean
    over the datasets of the best validation dice (what the selection rule reads), and as intermediate values
    the mean validation dice it reported at each training iteration (what ASHA cut on)."""
    import optuna

    from orchestrator.selection import SELECTION_FILE, read_json
    from search_spaces.hpo import BATCH_SIZES, ENCODER_LR_SCALE_RANGE, LR_RANGE, OPTIMIZERS, SCHEDULERS

    where = _hpo_folder(storage, study, model, mode)
    record = read_json(f"{where}/{SELECTION_FILE}")
    trials = record["trials"] if record else _tune_trial_records(where)
    trials = [t for t in trials if t.get("mean_best_val_dice") is not None and t.get("setting")]
    if not trials:
        return None
    space = (record or {}).get("search", {}).get("space") or {
        "optimizer": list(OPTIMIZERS), "lr": {"loguniform": list(LR_RANGE)}, "scheduler": list(SCHEDULERS),
        "batch_size": list(BATCH_SIZES), "encoder_lr_scale": {"loguniform": list(ENCODER_LR_SCALE_RANGE)}}
    used = {name for t in trials for name in t["setting"]}
    space = {k: v for k, v in space.items() if k in used}
    distributions = _distributions(space, (t["setting"] for t in trials))
    steps = _intermediate(where)
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        search = optuna.create_study(study_name=f"{study}/hpo/{model}" + (f"-{mode}" if mode else ""),
                                     direction="maximize")
    finally:
        optuna.logging.set_verbosity(previous)
    frozen = []
    for t in sorted(trials, key=lambda t: str(t["trial_id"])):
        params = {k: v for k, v in t["setting"].items() if k in distributions}
        frozen.append(optuna.trial.create_trial(
            params=params, distributions={k: distributions[k] for k in params}, value=float(t["mean_best_val_dice"]),
            intermediate_values=steps.get(str(t["trial_id"]), {}),
            user_attrs={"tune_trial_id": str(t["trial_id"]), "epochs": t.get("epochs"),
                        "best_val_dice": t.get("best_val_dice")}))
    search.add_trials(frozen)
    return search


def hpo_figures(storage: str, study: str, model: str, folder: str | Path, mode: str | None = None) -> list[Path]:
    """Optuna's matplotlib plots of the model's hpo search (``hpo_study``) into ``folder``:
    ``hpo-<model>-history.png`` (each trial's value and the best so far), ``hpo-<model>-importances.png``
    (parameter importances; left out below two trials or where Optuna cannot compute them) and
    ``hpo-<model>-intermediate.png`` (each trial's mean validation dice by iteration, where Tune's logs are
    there). Returns the paths written; empty where the model has no search.

    Optuna draws through pyplot: a process that has not imported pyplot yet gets the Agg backend (no display),
    one that has keeps its own; every figure is closed once saved, and Optuna's style sheet is undone."""
    import matplotlib

    search = hpo_study(storage, study, model, mode)
    if search is None:
        return []
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    name = model if mode is None else f"{model}-{mode}"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots = [("history", ovm.plot_optimization_history)]
    if len(search.trials) >= 2:
        plots.append(("importances", ovm.plot_param_importances))
    if any(t.intermediate_values for t in search.trials):
        plots.append(("intermediate", ovm.plot_intermediate_values))
    written = []
    for what, plot in plots:
        before = set(plt.get_fignums())
        with matplotlib.rc_context(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's "experimental" notes on its matplotlib plots
            try:
                ax = plot(search)
            except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. importances of constant params
                print(f"note: hpo {name}: no {what} plot ({type(e).__name__}: {e})")
                for number in set(plt.get_fignums()) - before:  # what the failed plot had opened
                    plt.close(number)
                continue
            fig = ax.figure
            try:
                fig.set_size_inches(8, 5)
                fig.suptitle(f"hpo search of {name} ({study})", fontsize=11)
                fig.tight_layout()
                written.append(_save(fig, folder / f"hpo-{name}-{what}.png", tight=True))
            finally:
                plt.close(fig)
    return written


# ---------------------------------------------------------------- Figure 4: the worst drops


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_mask_examples(storage: str, study: str, evaluation_id: str, ablation: dict, examples: list[dict]) -> str:
    """Store an ablation's worst-dropped images for Figure 4 (the format in this module's docstring) under
    ``<storage>/<study>/evaluations/<evaluation_id>/masks/``. ``ablation``: reference_id, source, model, mode,
    eval_set, prompt_type, perturbation; ``examples``: each with sample_id, dice_clean, dice_perturbed,
    prompt_clean, prompt_perturbed, and the arrays image (H, W, 3) uint8 (or its encoded bytes, e.g. the
    shard's), truth, clean, perturbed (H, W) bool, at the original size. Stored worst drop first; returns the
    index's URI."""
    uri = f"{storage.rstrip('/')}/{study}/evaluations/{evaluation_id}/{MASKS_DIR}"
    fs, root = filesystem_for(uri)
    fs.create_dir(root, recursive=True)
    ordered = sorted(examples, key=lambda e: (-(e["dice_clean"] - e["dice_perturbed"]), str(e["sample_id"])))
    entries = []
    for rank, example in enumerate(ordered, 1):
        entry = {k: example.get(k) for k in ("sample_id", "dice_clean", "dice_perturbed", "prompt_clean",
                                              "prompt_perturbed")}
        entry["drop"] = example["dice_clean"] - example["dice_perturbed"]
        for part in ("image", "truth", "clean", "perturbed"):
            data = example[part]
            name = f"{rank:02d}-{part}.png"
            write_atomically(fs, posixpath.join(root, name), data if isinstance(data, bytes) else _png(data))
            entry[part] = name
        entries.append(entry)
    index = {"evaluation_id": evaluation_id, **ablation, "examples": entries}
    write_atomically(fs, posixpath.join(root, MASKS_INDEX), json.dumps(index, indent=2, sort_keys=True).encode())
    return f"{uri}/{MASKS_INDEX}"


def mask_examples(storage: str, study: str) -> list[dict]:
    """Every stored mask example of the study's finished ablations, worst drop first: the example's entry of
    its ``index.json`` with its ablation's fields and ``folder`` (the URI of its files' folder)."""
    from trainables.results import ResultStore

    root_uri = f"{absolute_uri(storage).rstrip('/')}/{study}/evaluations"
    fs, root = filesystem_for(root_uri)
    finished = ResultStore(absolute_uri(storage), study, "evaluations").finished_ids()
    out = []
    for evaluation_id in sorted(finished):
        data = read_if_exists(fs, posixpath.join(root, evaluation_id, MASKS_DIR, MASKS_INDEX))
        if not data:
            continue
        try:
            index = json.loads(data)
        except json.JSONDecodeError:
            continue
        meta = {k: v for k, v in index.items() if k != "examples"}
        meta.setdefault("evaluation_id", evaluation_id)
        folder = f"{root_uri}/{evaluation_id}/{MASKS_DIR}"
        out += [{**meta, **example, "folder": folder} for example in index.get("examples", [])]
    return sorted(out, key=lambda e: (-(e.get("drop") or 0.0), e["evaluation_id"], str(e["sample_id"])))


def _read_image(fs, folder: str, name: str) -> np.ndarray | None:
    data = read_if_exists(fs, posixpath.join(folder, name)) if name else None
    if not data:
        return None
    return np.asarray(open_image(data, posixpath.join(folder, name)))


def figure4(storage: str, study: str, path: str | Path, *, k: int = 6, eval_sets: Sequence[str] | None = None,
            perturbations: Sequence[str] | None = None) -> Path | None:
    """Figure 4: the ``k`` images whose dice dropped most when their prompt was perturbed (over the study's
    stored mask examples, ``mask_examples``; ``eval_sets``, ``perturbations``: names or glob patterns to keep),
    a row each: the image, its ground truth, the prediction with the clean prompt and with the perturbed one,
    with their dice and prompts. None: no ablation stored mask examples (or none matches)."""
    def keep(value, patterns) -> bool:
        return not patterns or any(fnmatch.fnmatchcase(str(value), p) for p in patterns)

    examples = [e for e in mask_examples(storage, study)
                if keep(e.get("eval_set"), eval_sets) and keep(e.get("perturbation"), perturbations)][:k]
    if not examples:
        return None
    fig = _figure(11.0, 2.9 * len(examples) + 0.5)
    axes = fig.subplots(len(examples), 4, squeeze=False)
    titles = ("image", "ground truth", "clean prompt", "perturbed prompt")
    for row, example in zip(axes, examples):
        fs, folder = filesystem_for(example["folder"])
        panels = [_read_image(fs, folder, example.get(part)) for part in ("image", "truth", "clean", "perturbed")]
        notes = ["", "", f"Dice {100 * example['dice_clean']:.1f}\n" + _wrap(example.get("prompt_clean")),
                 f"Dice {100 * example['dice_perturbed']:.1f}\n" + _wrap(example.get("prompt_perturbed"))]
        for j, (ax, array, note) in enumerate(zip(row, panels, notes)):
            if array is not None:
                ax.imshow(array, cmap=None if array.ndim == 3 else "gray", vmin=None if array.ndim == 3 else 0,
                          vmax=None if array.ndim == 3 else (1 if array.max() <= 1 else 255))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(note, fontsize=7)
            if row is axes[0]:
                ax.set_title(titles[j], fontsize=9)
        label = (f"{example.get('eval_set')}\n{example.get('model')}\n{example.get('perturbation')}\n"
                 f"drop {100 * (example.get('drop') or 0):.1f}")
        row[0].set_ylabel(label, fontsize=7)
    fig.suptitle("Largest drops in Dice when an attribute value in the prompt is replaced", fontsize=11)
    return _save(fig, path)


def _wrap(text: str | None, width: int = 42) -> str:
    return "\n".join(textwrap.wrap(text or "", width)[:3])
