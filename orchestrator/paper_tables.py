"""The paper's tables from the study's tidy results: our mean Dice with its CI beside the published number.

Pure functions over the tidy images DataFrame (``orchestrator.results.load(storage, study)``: one row per
record, evaluation set and image, with every spec field) and the published cells (``orchestrator.published``):

- ``Grid``, ``grid_for``: the experiments the report's grid defines (the profile's blocks, as ``grid`` builds
  them; ``--profile study`` reads every block of the study unless ``--block`` names some); ``split`` leaves out
  the records that are not in it, listed apart (``keep_all``: ``report --all`` keeps them).
- ``Cells``: per (model, mode, train set, prompt type, evaluation set) and source (an experiment's own test
  sets, or an ``ood`` evaluation), the per-image Dice (averaged over the records of the cell first: seeds, and
  any repeat) and, on demand, its mean, SD and 95% bootstrap CI (``significance.bootstrap_ci``, BCa,
  ``CELL_RESAMPLES`` resamples).
- One ``PaperTable`` per table, in the paper's layout (rows and columns as printed, labels from
  ``published.json``): ``table2`` (individual, pooled, endoscopy pooled), ``table3`` (out of distribution),
  ``table6`` / ``table7`` (CRIS / CLIPSeg on frozen encoders, by prompt type), ``table8`` (MIMIC-CXR lungs),
  ``figure2`` (zero-shot and finetuned Dice by prompt type: the paper prints no numbers), and
  ``generic_table`` (model x test set, for a profile with no paper tables: the demo).
  Which experiments feed which cell comes from the study's blocks (``search_spaces.grid.STUDY_BLOCKS``).
- ``prompt_comparisons``: every prompt type against P0 per (model, mode, train set, test set)
  (``significance.compare_prompts``); ``prompts_markdown`` / ``prompts_csv`` write them, in %.
- Renderers: ``PaperTable.markdown``, ``tables_markdown``, ``tables_csv`` (one row per cell).

Units: Dice in % (0-100) in every output, as the paper prints it; a table's long frame (``PaperTable.cells``)
has the columns of ``CELL_COLUMNS``. A cell's status is ``ok``, ``no run yet`` (the grid has it, nothing
finished), ``not in this grid`` (the paper prints it, the report's grid has no such experiment) or
``literature`` (Table 2's SOTA* row: the paper's, not an experiment).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from datasets.catalogue import ALL_POOL, DATASETS, ENDOSCOPY_POOL, INDIVIDUAL
from orchestrator import published
from orchestrator.significance import bootstrap_ci, compare_prompts, summary_lines
from search_spaces.experiment import ExperimentSpec
from search_spaces.grid import MIMIC, STUDY_BLOCKS, profile_specs
from trainables.models import card
from trainables.results import SPEC_COLUMNS

CELL_RESAMPLES = 2000  # bootstrap resamples per cell and per prompt comparison (scipy's default is 9999)
CONFIDENCE = 0.95
ALPHA = 0.05
BASELINE = "p0"
DEFAULT_SEED = ExperimentSpec.__dataclass_fields__["seed"].default
EXPERIMENT, OOD = "experiment", "ood"
# Which records feed the tables: an experiment's own test sets (trained or zero-shot) and ood evaluations;
# ablations are Figure 3's (report.md's evaluation table).
SOURCES = {"train": EXPERIMENT, "zeroshot": EXPERIMENT, "ood": OOD}
CELL_KEY = ("source", "model", "mode", "train_set", "prompt_type", "eval_set")
GRID_KEY = ("model", "mode", "train_set", "prompt_type", "eval_sets")  # what a grid's block fixes

OK, NO_RUN, NOT_IN_GRID, LITERATURE = "ok", "no run yet", "not in this grid", "literature"
P0_VARIANT, BEST_VARIANT = "P0", "best prompt"
CELL_COLUMNS = ["table", "group", "row", "variant", "column", "model", "mode", "train_set", "prompt_type",
                "eval_set", "ours_mean_%", "ci_low_%", "ci_high_%", "ours_std_%", "n_images", "n_runs", "n_seeds",
                "published_%", "published_std_%", "difference_%", "status", "note"]
LEFT_OUT_COLUMNS = ["record_id", "experiment_id", "kind", "model", "mode", "train_set", "prompt_type",
                    "eval_sets", "seed"]


def prompt_order(prompt: str) -> tuple:
    """p0, p1, ..., p9, p10, then other names (random) alphabetically."""
    match = re.fullmatch(r"p(\d+)", str(prompt))
    return (0, int(match.group(1)), "") if match else (1, 0, str(prompt))


# ---------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Grid:
    """The experiments a report's grid defines.

    ``exact``: a record belongs when its spec's id, seed aside, is a spec's id (for specs built with the
    launch's own flags, e.g. ``orchestrator.common.build_specs``). Otherwise it belongs when its model, mode,
    train set, prompt type and evaluation sets are a spec's: what the grid's blocks fix, whatever the launch
    changed (--max-epochs, --set, --as-released, hpo selections, seeds)."""

    name: str
    specs: tuple[ExperimentSpec, ...]
    exact: bool = False

    @functools.cached_property
    def keys(self) -> frozenset:
        if self.exact:
            return frozenset(_seedless_id(s) for s in self.specs)
        return frozenset((s.model, s.mode, s.train_set, s.prompt_type, ",".join(s.eval_sets)) for s in self.specs)

    @functools.cached_property
    def cells(self) -> frozenset[tuple[str, str, str, str, str]]:
        """(model, mode, train set, prompt type, evaluation set) of every spec and each of its test sets."""
        return frozenset((s.model, s.mode, s.train_set, s.prompt_type, e) for s in self.specs for e in s.eval_sets)

    def has(self, model: str, mode: str, train_set: str, prompt_type: str, eval_set: str) -> bool:
        return (model, mode, train_set, prompt_type, eval_set) in self.cells

    def holds(self, record: dict) -> bool:
        """Whether a record (a row of the tidy set: its spec's fields, ``experiment_id``) is in the grid."""
        if not self.exact:
            return tuple(record.get(k) for k in GRID_KEY) in self.keys
        seed = record.get("seed")
        if seed is None or seed == DEFAULT_SEED:
            return record.get("experiment_id") in self.keys
        return _seedless_id(_spec_of(record)) in self.keys


def _seedless_id(spec: ExperimentSpec) -> str:
    if spec.seed == DEFAULT_SEED:
        return spec.id
    return ExperimentSpec.from_dict({**spec.to_dict(), "seed": DEFAULT_SEED}).id


def _spec_of(record: dict) -> ExperimentSpec:
    fields = {k: record.get(k) for k in SPEC_COLUMNS if record.get(k) is not None}
    fields["eval_sets"] = tuple(str(fields.get("eval_sets", "")).split(",")) if fields.get("eval_sets") else ()
    return ExperimentSpec.from_dict(fields)


def grid_for(profile: str, blocks: Sequence[str] | None = None, models: Sequence[str] | None = None) -> Grid:
    """The grid a report reads: the profile's experiments (``search_spaces.grid.profile_specs``), where
    ``study`` without ``blocks`` is every block of the study (the finetuning blocks ``grid`` runs by default
    and the ones it runs with ``--block``: cnn, zeroshot, zeroshot_mimic, end_to_end)."""
    if profile == "study" and not blocks:
        blocks = list(STUDY_BLOCKS)
    specs = profile_specs(profile, list(blocks) if blocks else None, list(models) if models else None)
    what = f"profile {profile}" + (f", blocks {', '.join(blocks)}" if blocks else "") + (
        f", models {', '.join(models)}" if models else "")
    return Grid(what, tuple(specs))


def known_models(names: Iterable[str]) -> list[str]:
    """The names that are registered models (a model card), in sorted order."""
    known = []
    for name in sorted(set(names)):
        try:
            card(name)
        except ValueError:
            continue
        known.append(name)
    return known


def _plain(value):
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def records_of(images: pd.DataFrame) -> pd.DataFrame:
    """One row per record of the tidy images frame (its first row: the spec's fields, kind, ids)."""
    return images.drop_duplicates("record_id", ignore_index=True)


def split(images: pd.DataFrame, grid: Grid | None, keep_all: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows the tables read (the records of ``SOURCES`` kinds in the grid; with ``keep_all`` or no grid,
    every one of them) and the records not in the grid, one row each (``LEFT_OUT_COLUMNS``)."""
    images = images[images["kind"].isin(list(SOURCES))]
    if grid is None:
        return images, pd.DataFrame(columns=LEFT_OUT_COLUMNS)
    records = records_of(images)
    columns = ["experiment_id", *SPEC_COLUMNS]
    inside = {r["record_id"] for r in records[["record_id", *columns]].to_dict("records")
              if grid.holds({k: _plain(v) for k, v in r.items()})}
    left_out = records[~records["record_id"].isin(inside)][LEFT_OUT_COLUMNS].reset_index(drop=True)
    kept = images if keep_all else images[images["record_id"].isin(inside)]
    return kept, left_out


# ---------------------------------------------------------------- cells


class Cells:
    """Per-image Dice of every cell of the tidy set, and each cell's statistics (computed once, on demand).

    A cell is (source, model, mode, train set, prompt type, evaluation set); its per-image Dice is the mean
    over the cell's records (seeds, and any repeat with other launch settings), NaN skipped."""

    def __init__(self, images: pd.DataFrame, n_resamples: int = CELL_RESAMPLES, confidence: float = CONFIDENCE):
        self.n_resamples, self.confidence = n_resamples, confidence
        frame = images[images["kind"].isin(list(SOURCES))].assign(source=lambda f: f["kind"].map(SOURCES))
        keys = list(CELL_KEY)
        per_image = frame.groupby([*keys, "sample_id"], sort=True, observed=True)["dice"].mean()
        self._values: dict[tuple, np.ndarray] = {
            tuple(key): values.to_numpy(dtype=float)
            for key, values in per_image.groupby(level=keys, sort=False, observed=True)}
        runs = frame.drop_duplicates(["record_id", "eval_set"]).groupby(keys, sort=False, observed=True).agg(
            n_runs=("record_id", "nunique"), n_seeds=("seed", "nunique"))
        self._runs = {tuple(k): (int(r.n_runs), int(r.n_seeds)) for k, r in runs.iterrows()}
        self._prompts: dict[tuple, list[str]] = {}
        for key in self._values:
            self._prompts.setdefault((*key[:4], key[5]), []).append(key[4])
        self._stats: dict[tuple, dict] = {}

    def __len__(self) -> int:
        return len(self._values)

    def has(self, key: tuple) -> bool:
        return key in self._values

    def keys(self) -> list[tuple]:
        """Every cell with results, as ``CELL_KEY`` tuples."""
        return list(self._values)

    def prompts(self, source: str, model: str, mode: str, train_set: str, eval_set: str) -> list[str]:
        """The prompt types with results for this cell's other fields."""
        return sorted(self._prompts.get((source, model, mode, train_set, eval_set), []), key=prompt_order)

    def values(self, key: tuple) -> np.ndarray | None:
        return self._values.get(key)

    def stats(self, key: tuple) -> dict | None:
        """mean, std, ci_low, ci_high (fractions of 1), n_images, n_runs, n_seeds; None without results."""
        if key not in self._values:
            return None
        if key not in self._stats:
            x = self._values[key]
            x = x[~np.isnan(x)]
            low, high = bootstrap_ci(x, confidence=self.confidence, n_resamples=self.n_resamples)
            n_runs, n_seeds = self._runs.get(key, (0, 0))
            self._stats[key] = {"mean": float(x.mean()) if x.size else math.nan,
                                "std": float(x.std(ddof=1)) if x.size > 1 else math.nan,
                                "ci_low": low, "ci_high": high, "n_images": int(x.size),
                                "n_runs": n_runs, "n_seeds": n_seeds}
        return self._stats[key]

    def mean(self, key: tuple) -> float:
        x = self._values.get(key)
        return math.nan if x is None or not np.isfinite(x).any() else float(np.nanmean(x))


# ---------------------------------------------------------------- tables


@dataclass
class PaperTable:
    """One table: its long frame (``cells``, one row per cell, ``CELL_COLUMNS``), in the paper's row order,
    and how it prints."""

    key: str  # table2, table3, table6, table7, table8, figure2, demo
    title: str
    source: str  # where in the paper
    caption: str
    group_label: str  # header of the row-group column ("" when the table has no groups)
    row_label: str
    columns: list[str]  # column labels in the printed order
    cells: pd.DataFrame
    blank: str = "-"  # what a cell the table does not have prints (the paper's "-" or "N/A")
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str]]:
        """(group, row label with its variant) in the table's order."""
        return list(dict.fromkeys(zip(self.cells["group"], _row_labels(self.cells))))

    def wide(self) -> pd.DataFrame:
        """The table as printed: one row per (group, row [variant]), one column per printed column, each cell
        its text (``cell_text``)."""
        labels = _row_labels(self.cells)
        texts = {(g, r, c): cell_text(row) for (g, r, c), row in
                 zip(zip(self.cells["group"], labels, self.cells["column"]), self.cells.to_dict("records"))}
        rows = self.rows()
        data = [[texts.get((g, r, c), self.blank) for c in self.columns] for g, r in rows]
        index = pd.MultiIndex.from_tuples(rows, names=[self.group_label or "group", self.row_label])
        return pd.DataFrame(data, index=index, columns=self.columns)

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", self.caption, ""]
        heads = ([self.group_label] if self.group_label else []) + [self.row_label, *self.columns]
        lines += ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
        wide = self.wide()
        previous = None
        for (group, row), values in zip(wide.index, wide.itertuples(index=False)):
            first = [group if group != previous else ""] if self.group_label else []
            previous = group
            lines.append("| " + " | ".join([*first, row, *values]) + " |")
        if self.cells.empty:
            lines.append("(no cells: the grid has none of this table's experiments)")
        lines += [""] + [f"{note}" for note in self.notes] + ([""] if self.notes else [])
        return "\n".join(lines)


def _row_labels(cells: pd.DataFrame) -> list[str]:
    return [f"{r} ({v})" if v else r for r, v in zip(cells["row"], cells["variant"])]


def _fmt(value, digits: int = 1) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def cell_text(cell: dict) -> str:
    """A cell as printed: ``87.1 [85.0, 89.0] (paper 88.00, -0.9)``, ``... at p6 ...`` for a best-prompt
    cell, ``no run yet (paper 88.00)``, ``not in this grid (paper 88.00)``, ``paper 95.02 (literature)``."""
    paper = None if _missing(cell.get("published_%")) else f"paper {cell['published_%']:.2f}"
    status = cell["status"]
    if status == LITERATURE:
        return f"{paper} (literature)"
    if status != OK:
        return status + (f" ({paper})" if paper else "")
    text = f"{_fmt(cell['ours_mean_%'])} [{_fmt(cell['ci_low_%'])}, {_fmt(cell['ci_high_%'])}]"
    if cell.get("variant") == BEST_VARIANT:
        text += f" at {cell['prompt_type']}"
    if paper:
        text += f" ({paper}, {cell['difference_%']:+.1f})"
    return text


class _Builder:
    """Collects one table's cells."""

    def __init__(self, table: str, cells: Cells, grid: Grid):
        self.table, self.data, self.grid = table, cells, grid
        self.rows: list[dict] = []

    def add(self, *, group: str, row: str, column: str, variant: str = "", source: str = EXPERIMENT,
            model: str | None, mode: str | None, train_set: str | None, eval_set: str,
            prompts: Sequence[str] = (), published_cell: dict | None = None, grid_eval: str | None = None,
            status: str | None = None, note: str = "", widen: bool = True) -> None:
        """One cell: of ``prompts`` (one, or the candidates of a best-prompt cell) the one with results (the
        best by mean Dice; ``widen``: a best-prompt cell also weighs prompt types with results that
        ``prompts`` does not list, e.g. kept by --all); ``grid_eval``: the test set whose spec says the cell
        is in the grid (an ood cell's source experiment's own test set). Not added when no result, no grid
        spec and no published number."""
        pub = published_cell or {}
        record = {"table": self.table, "group": group, "row": row, "variant": variant, "column": column,
                  "model": model, "mode": mode, "train_set": train_set, "prompt_type": None, "eval_set": eval_set,
                  "ours_mean_%": None, "ci_low_%": None, "ci_high_%": None, "ours_std_%": None, "n_images": 0,
                  "n_runs": 0, "n_seeds": 0, "published_%": pub.get("dice"), "published_std_%": pub.get("std"),
                  "difference_%": None, "status": status, "note": note}
        if status == LITERATURE:
            self.rows.append(record)
            return
        candidates = list(prompts)
        if variant == BEST_VARIANT and widen:  # every prompt type with results counts (--all may keep more)
            candidates = sorted(dict.fromkeys([*candidates, *self.data.prompts(source, model, mode, train_set,
                                                                              eval_set)]), key=prompt_order)
        done = [p for p in candidates if self.data.has((source, model, mode, train_set, p, eval_set))]
        in_grid = any(self.grid.has(model, mode, train_set, p, grid_eval or eval_set) for p in prompts)
        if done:
            chosen = max(done, key=lambda p: (self.data.mean((source, model, mode, train_set, p, eval_set)),
                                              -candidates.index(p)))
            s = self.data.stats((source, model, mode, train_set, chosen, eval_set))
            mean = 100 * s["mean"]
            record.update({"prompt_type": chosen, "ours_mean_%": mean, "ci_low_%": 100 * s["ci_low"],
                           "ci_high_%": 100 * s["ci_high"], "ours_std_%": 100 * s["std"],
                           "n_images": s["n_images"], "n_runs": s["n_runs"], "n_seeds": s["n_seeds"],
                           "status": OK})
            if pub.get("dice") is not None:
                record["difference_%"] = mean - pub["dice"]
            if variant == BEST_VARIANT:
                planned = [p for p in prompts if self.grid.has(model, mode, train_set, p, grid_eval or eval_set)]
                run = [p for p in done if p in planned]
                if len(run) < len(planned):
                    record["note"] = " ".join(filter(None, [note, f"best of {len(run)} of {len(planned)} "
                                                                  "prompt types run"]))
            if not self.grid.has(model, mode, train_set, chosen, grid_eval or eval_set):
                record["note"] = " ".join(filter(None, [record["note"], "not in the grid (kept: --all)"]))
        elif in_grid:
            record.update({"prompt_type": prompts[0] if len(prompts) == 1 else None, "status": NO_RUN})
        elif pub.get("dice") is not None:
            record.update({"prompt_type": prompts[0] if len(prompts) == 1 else None, "status": NOT_IN_GRID})
        else:
            return
        self.rows.append(record)

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows, columns=CELL_COLUMNS)
        numbers = [c for c in CELL_COLUMNS if c.endswith("_%")]
        return frame.astype({**dict.fromkeys(numbers, float), "n_images": int, "n_runs": int, "n_seeds": int})


def _block_specs(name: str) -> list[ExperimentSpec]:
    return STUDY_BLOCKS[name].specs()


@functools.cache
def _block_index(name: str) -> dict[tuple[str, str], tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """(model, train set) -> (mode, prompt types, evaluation sets) of a study block's specs."""
    index: dict[tuple[str, str], tuple[str, tuple[str, ...], tuple[str, ...]]] = {}
    for s in _block_specs(name):
        mode, prompts, evals = index.get((s.model, s.train_set), (s.mode, (), s.eval_sets))
        index[(s.model, s.train_set)] = (mode, (*prompts, s.prompt_type), evals)
    return index


def _models_of(name: str) -> list[str]:
    return list(dict.fromkeys(s.model for s in _block_specs(name)))


def _published(table: int) -> list[dict]:
    return published.load(table)


def _ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _published_columns(cells: list[dict]) -> list[str]:
    """Printed column order: that of the published row with the most cells, then any other."""
    by_row: dict[tuple, list[str]] = {}
    for c in cells:
        by_row.setdefault((c.get("group"), c["row"]), []).append(c["column"])
    longest = max(by_row.values(), key=len) if by_row else []
    return _ordered([*longest, *(c["column"] for c in cells)])


def _lookup(cells: list[dict], **keys) -> dict | None:
    found = [c for c in cells if all(c.get(k) == v for k, v in keys.items())]
    return found[0] if found else None


@functools.cache
def dataset_labels() -> dict[str, str]:
    """Project dataset name -> the paper's printed label (Tables 2, 3, 6, 7, 8), else the catalogue's title."""
    labels = {name: info.title for name, info in DATASETS.items()}
    for c in published.load(6) + published.load(2):
        labels[c["dataset"]] = c["row"] if c["table"] == "6" else c["column"]
    return labels


@functools.cache
def model_labels() -> dict[str, str]:
    """Project model name -> the paper's printed label (e.g. unetpp: UNet++), else the model card's title."""
    labels = {}
    for c in published.load(2):
        if c.get("model"):
            labels.setdefault(c["model"], c["row"])
    return labels


def model_label(model: str) -> str:
    try:
        return model_labels().get(model) or card(model).title
    except (KeyError, ValueError):  # a model no card names any more: its name
        return model


def _common_caption(n_resamples: int, confidence: float = CONFIDENCE) -> str:
    return (f"Each cell: our mean Dice (%) over the test set's images (each image's Dice averaged over the "
            f"cell's runs, e.g. seeds, first) and its {100 * confidence:g}% BCa bootstrap CI over images "
            f"({n_resamples} resamples, scipy.stats.bootstrap); where the paper prints a number, that number "
            "and the difference ours - paper in Dice points. 'no run yet': in the grid, not finished; "
            "'not in this grid': printed by the paper, but the report's grid (--profile, --block, --model) "
            "has no such experiment.")


BEYOND = "†"  # a row the paper's table does not print (Table 2: BiomedCLIPSeg, BiomedCLIPSeg-D)
BEST_NOTE = ("The paper does not say which prompt its VLSM cells used: ours are shown at P0 and at our best "
             "prompt type by mean test Dice (named in the cell: 'at pN'). Picked on the very test scores it "
             "reports, the best-prompt value is optimistic.")


def table2(cells: Cells, grid: Grid, n_resamples: int = CELL_RESAMPLES) -> PaperTable:
    """Table 2: models x test sets, trained on each dataset (Individual), on all datasets pooled (Pooled) and
    on the pooled endoscopy sets (Endoscopy Pooled). Sources: the individual block (VLSMs, each at P0 and at
    its best prompt), the cnn block (CNNs, P0) and the pooled block (VLSMs, prompt type random)."""
    pub = _published(2)
    columns = _published_columns(pub)
    label_to_set = {c["column"]: c["dataset"] for c in pub}
    build = _Builder("table2", cells, grid)
    groups = {"Individual": None, "Pooled": ALL_POOL, "Endoscopy Pooled": ENDOSCOPY_POOL}
    printed = {g: _ordered(c["row"] for c in pub if c["group"] == g) for g in groups}
    row_model = {c["row"]: c["model"] for c in pub}
    for group, pool in groups.items():
        blocks = ("individual", "cnn") if pool is None else ("pooled", "cnn")
        block_models = _ordered(m for b in blocks for m in _models_of(b))
        rows = [(r, row_model[r]) for r in printed[group]]
        rows += [(f"{model_label(m)}{BEYOND}", m) for m in block_models if m not in row_model.values()]
        for row, model in rows:
            for column in columns:
                dataset = label_to_set[column]
                pub_cell = _lookup(pub, group=group, row=row, column=column)
                if model is None:  # SOTA*: the literature's number
                    if pub_cell:
                        build.add(group=group, row=row, column=column, model=None, mode=None, train_set=None,
                                  eval_set=dataset, published_cell=pub_cell, status=LITERATURE)
                    continue
                train = dataset if pool is None else pool
                block = next((b for b in blocks if (model, train) in _block_index(b)), None)
                if block is None:
                    if pub_cell:
                        build.add(group=group, row=row, column=column, model=model, mode=None, train_set=train,
                                  eval_set=dataset, published_cell=pub_cell)
                    continue
                mode, prompts, evals = _block_index(block)[(model, train)]
                if dataset not in evals:
                    continue
                common = {"group": group, "row": row, "column": column, "model": model, "mode": mode,
                          "train_set": train, "eval_set": dataset, "published_cell": pub_cell}
                if len(prompts) > 1 and BASELINE in prompts:
                    build.add(**common, variant=P0_VARIANT, prompts=(BASELINE,))
                    build.add(**common, variant=BEST_VARIANT, prompts=prompts)
                else:
                    build.add(**common, prompts=prompts)
    about = published.about()["tables"]["table2"]
    caption = (f"{about['caption']} (the paper's Table 2, main text). {_common_caption(n_resamples)} "
               f"{BEST_NOTE} Pooled VLSM rows train with prompt type 'random' (each sample one of its own "
               "dataset's P1..PN), the grid's one pooled setting; CNNs read no prompt (P0). SOTA*: the "
               "literature's best, printed by the paper (its footnote 5: other splits, except CAMUS and ISIC).")
    frame = build.frame()
    notes = [f"{BEYOND} not in the paper's Table 2: the individual block trains it too (Figure 2)."] \
        if frame["row"].str.endswith(BEYOND).any() else []
    return PaperTable("table2", "Table 2: finetuning on individual and pooled datasets", "main text, Table 2",
                      caption, "Finetuned dataset", "Model", columns, frame, notes=notes)


def table3(cells: Cells, grid: Grid, n_resamples: int = CELL_RESAMPLES) -> PaperTable:
    """Table 3: trained on one endoscopy set (group), scored on all six: the ood evaluations, and on the
    diagonal the training experiment's own test set. VLSM rows at P0 and at the prompt type that is best on
    the training set's own test split (one prompt per row: the same weights across it)."""
    pub = _published(3)
    columns = _published_columns(pub)
    label_to_set = {c["column"]: c["dataset"] for c in pub}
    build = _Builder("table3", cells, grid)
    for group in _ordered(c["group"] for c in pub):
        train = next(c["train"] for c in pub if c["group"] == group)
        for row in _ordered(c["row"] for c in pub if c["group"] == group):
            model = next(c["model"] for c in pub if c["group"] == group and c["row"] == row)
            block = next((b for b in ("individual", "cnn") if (model, train) in _block_index(b)), None)
            mode, prompts, _ = _block_index(block)[(model, train)] if block else (None, (BASELINE,), ())
            variants = [("", prompts)]
            if len(prompts) > 1 and BASELINE in prompts:
                done = [p for p in prompts if cells.has((EXPERIMENT, model, mode, train, p, train))]
                best = max(done, key=lambda p: cells.mean((EXPERIMENT, model, mode, train, p, train)), default=None)
                variants = [(P0_VARIANT, (BASELINE,)), (BEST_VARIANT, (best,) if best else prompts)]
            for variant, chosen in variants:
                for column in columns:
                    dataset = label_to_set[column]
                    source = EXPERIMENT if dataset == train else OOD
                    note = "prompt chosen on the training set's own test split" if variant == BEST_VARIANT else ""
                    build.add(group=group, row=row, column=column, variant=variant, source=source, model=model,
                              mode=mode, train_set=train, eval_set=dataset, prompts=chosen, grid_eval=train,
                              published_cell=_lookup(pub, group=group, row=row, column=column), note=note,
                              widen=False)  # the row's prompt, not each cell's best
    frame = build.frame()
    about = published.about()["tables"]["table3"]
    caption = (f"{about['caption']} (the paper's Table 3, main text). {_common_caption(n_resamples)} Off the "
               "diagonal: `ood` evaluations (the experiment's best weights on another endoscopy test set); on "
               "it (in distribution, shaded in the paper): the experiment's own test set. VLSM rows at P0 and at "
               "the prompt type best on the training set's own test split, one prompt per row (the same "
               "weights across it): the paper does not say which prompt it used.")
    return PaperTable("table3", "Table 3: out-of-distribution endoscopy", "main text, Table 3", caption,
                      "Finetuned on", "Model", columns, frame)


def _by_prompt_table(key: str, number: int, model: str, cells: Cells, grid: Grid, n_resamples: int) -> PaperTable:
    pub = _published(number)
    columns = _published_columns(pub)
    build = _Builder(key, cells, grid)
    index = _block_index("frozen")
    for row in _ordered(c["row"] for c in pub):
        dataset = next(c["dataset"] for c in pub if c["row"] == row)
        mode, prompts, _ = index.get((model, dataset), ("frozen", (), ()))
        for column in columns:
            prompt = column.lower()
            if prompt not in prompts and not _lookup(pub, row=row, column=column):
                continue
            build.add(group="", row=row, column=column, model=model, mode=mode, train_set=dataset,
                      eval_set=dataset, prompts=(prompt,), published_cell=_lookup(pub, row=row, column=column))
    about = published.about()["tables"][key]
    caption = (f"{about['caption']} (the paper's Table {number}, Appendix F.1: the frozen block, decoder trained "
               f"on frozen CLIP encoders, each model trained and tested on the row's dataset). "
               f"{_common_caption(n_resamples)} The paper prints ± after each number (published_std_% in "
               "tables.csv; ours_std_% is our SD over images). N/A: the dataset has no such prompt type.")
    return PaperTable(key, f"Table {number}: {model_label(model)} with frozen encoders, by prompt type",
                      f"Appendix F.1, Table {number}", caption, "", "Dataset", columns, build.frame(), blank="N/A")


def table6(cells: Cells, grid: Grid, n_resamples: int = CELL_RESAMPLES) -> PaperTable:
    """Table 6: CRIS with frozen encoders, datasets x prompt types (the frozen block)."""
    return _by_prompt_table("table6", 6, "cris", cells, grid, n_resamples)


def table7(cells: Cells, grid: Grid, n_resamples: int = CELL_RESAMPLES) -> PaperTable:
    """Table 7: CLIPSeg with frozen encoders, datasets x prompt types (the frozen block; CLIPSeg's individual
    experiments are the same specs)."""
    return _by_prompt_table("table7", 7, "clipseg", cells, grid, n_resamples)


def table8(cells: Cells, grid: Grid, n_resamples: int = CELL_RESAMPLES) -> PaperTable:
    """Table 8: MIMIC-CXR lungs, zero-shot (the zeroshot_mimic block) and finetuned (the mimic block), P0 and P1."""
    pub = _published(8)
    columns = _published_columns(pub)
    build = _Builder("table8", cells, grid)
    blocks = {"Zero-shot": "zeroshot_mimic", "Finetuning": "mimic"}
    for group in _ordered(c["group"] for c in pub):
        model = next(c["model"] for c in pub if c["group"] == group)
        for row in _ordered(c["row"] for c in pub if c["group"] == group):
            mode, prompts, _ = _block_index(blocks[row]).get((model, MIMIC), (None, (), ()))
            for column in columns:
                prompt = column.lower()
                build.add(group=group, row=row, column=column, model=model, mode=mode, train_set=MIMIC,
                          eval_set=MIMIC, prompts=(prompt,),
                          published_cell=_lookup(pub, group=group, row=row, column=column))
    about = published.about()["tables"]["table8"]
    caption = (f"{about['caption']} (the paper's Table 8, Appendix F.2). {_common_caption(n_resamples)} "
               "Zero-shot: the pretrained weights (block zeroshot_mimic); Finetuning: the mimic block, trained "
               "as the study's code trained it. The paper prints ± after each number (published_std_% in "
               "tables.csv).")
    return PaperTable("table8", "Table 8: MIMIC-CXR lungs, zero-shot and finetuned", "Appendix F.2, Table 8",
                      caption, "Model", "Experiment", columns, build.frame())


def figure2(cells: Cells, grid: Grid, n_resamples: int = CELL_RESAMPLES) -> PaperTable:
    """Figure 2's values: zero-shot (the zeroshot block) and finetuned (the individual block) Dice by prompt
    type, per dataset (group) and model; the paper prints no numbers."""
    settings = [("zero-shot", "zeroshot"), ("finetuned", "individual")]
    prompts_all = sorted({s.prompt_type for b in ("zeroshot", "individual") for s in _block_specs(b)},
                         key=prompt_order)
    columns = [p.upper() for p in prompts_all]
    build = _Builder("figure2", cells, grid)
    for dataset in INDIVIDUAL:
        for setting, block in settings:
            for model in _models_of(block):
                entry = _block_index(block).get((model, dataset))
                if entry is None:
                    continue
                mode, prompts, _ = entry
                for prompt in prompts:
                    build.add(group=dataset_labels()[dataset], row=f"{model_label(model)} {setting}",
                              column=prompt.upper(), model=model, mode=mode, train_set=dataset, eval_set=dataset,
                              prompts=(prompt,))
    caption = ("Figure 2's values (the paper draws them as bars and prints no numbers): zero-shot (block "
               "zeroshot, the pretrained weights) and finetuned (block individual, trained as the study's code "
               f"trained them: CRIS end to end, the CLIPSeg family's decoder alone) Dice by prompt type. "
               f"{_common_caption(n_resamples)}")
    return PaperTable("figure2", "Figure 2: zero-shot and finetuned Dice by prompt type", "main text, Figure 2",
                      caption, "Dataset", "Model", columns, build.frame(), blank="")


PAPER_TABLES = {"table2": table2, "table3": table3, "table6": table6, "table7": table7, "table8": table8,
                "figure2": figure2}


def generic_table(cells: Cells, grid: Grid | None, n_resamples: int = CELL_RESAMPLES) -> PaperTable:
    """For a profile without paper tables (the demo): Table 2's shape, rows model and mode (and the training
    set where it is not the test set), columns the test sets; a row with several prompt types at P0 and at
    its best prompt type."""
    spec_cells = set(grid.cells) if grid else set()
    data_cells = {(m, mo, t, p, e) for (src, m, mo, t, p, e) in cells.keys() if src == EXPERIMENT}
    everything = sorted(spec_cells | data_cells, key=lambda c: (c[0], c[1], c[2], prompt_order(c[3]), c[4]))
    columns = _ordered(e for *_, e in everything)
    prompts: dict[tuple, list[str]] = {}
    for model, mode, train, prompt, eval_set in everything:
        prompts.setdefault((model, mode, train, eval_set), []).append(prompt)
    rows = _ordered((m, mo, "" if t == e else t) for (m, mo, t, e) in prompts)
    build = _Builder("demo", cells, grid or Grid("none", ()))
    for model, mode, trained_on in rows:
        row = f"{model_label(model)} {mode}" + (f", trained on {trained_on}" if trained_on else "")
        for column in columns:
            train = trained_on or column
            candidates = prompts.get((model, mode, train, column))
            if not candidates:
                continue
            common = {"group": "", "row": row, "column": column, "model": model, "mode": mode, "train_set": train,
                      "eval_set": column}
            if len(candidates) > 1 and BASELINE in candidates:
                build.add(**common, variant=P0_VARIANT, prompts=(BASELINE,))
                build.add(**common, variant=BEST_VARIANT, prompts=tuple(candidates))
            elif len(candidates) > 1:
                build.add(**common, variant=BEST_VARIANT, prompts=tuple(candidates))
            else:
                build.add(**common, prompts=tuple(candidates))
    caption = (f"Mean Dice (%) by model and test set, in Table 2's shape (this profile has no table in the "
               f"paper). {_common_caption(n_resamples)} A row with several prompt types is shown at P0 and at "
               "its best prompt type by mean test Dice (named in the cell; optimistic, picked on the test scores "
               "themselves); prompts.md tests each prompt type against P0.")
    return PaperTable("demo", "Dice by model and test set (Table 2's shape)", "none: no paper table",
                      caption, "", "Model", columns, build.frame())


def build_tables(cells: Cells, grid: Grid | None, layout: str = "study",
                 n_resamples: int = CELL_RESAMPLES) -> dict[str, PaperTable]:
    """Every table of ``layout``: "study" (Tables 2, 3, 6, 7, 8 and Figure 2's values) or "generic"."""
    if layout == "study":
        return {key: make(cells, grid, n_resamples) for key, make in PAPER_TABLES.items()}
    return {"demo": generic_table(cells, grid, n_resamples)}


# ---------------------------------------------------------------- prompt comparisons


def prompt_comparisons(images: pd.DataFrame, baseline: str = BASELINE, n_resamples: int = CELL_RESAMPLES,
                       alpha: float = ALPHA, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Every prompt type against ``baseline`` on the same images, per (model, mode, train set, test set): the
    experiments' own test sets (not ood, not ablations); ``significance.compare_prompts``'s frame, in [0, 1]."""
    frame = images[images["kind"].map(SOURCES) == EXPERIMENT]
    columns = ["model", "mode", "train_set", "eval_set", "prompt_type", "sample_id", "dice", "seed"]
    return compare_prompts(frame[columns], baseline=baseline, alpha=alpha, confidence=confidence,
                           n_resamples=n_resamples)


PERCENT = ("mean_baseline", "mean_prompt", "mean_diff", "ci_low", "ci_high")


def comparisons_percent(comparisons: pd.DataFrame) -> pd.DataFrame:
    """``compare_prompts``' frame with the Dice columns in % (renamed ``..._%``), as prompts.csv writes it."""
    out = comparisons.copy()
    for name in PERCENT:
        out[name] = 100 * out[name].astype(float)
    return out.rename(columns={name: f"{name}_%" for name in PERCENT})


def prompts_csv(comparisons: pd.DataFrame) -> str:
    return comparisons_percent(comparisons).to_csv(index=False, float_format="%.6g")


def prompts_markdown(comparisons: pd.DataFrame, title: str, n_resamples: int = CELL_RESAMPLES,
                     alpha: float = ALPHA, confidence: float = CONFIDENCE) -> str:
    """Per (model, mode, test set): which prompt types beat P0 and by how much, then one sentence per
    comparison with its test (``significance.summary_lines``)."""
    lines = [f"# {title}", "",
             f"Each prompt type against P0 on the same test images, per model, mode, training set and test set "
             f"(a family): the mean paired difference in Dice points with its {100 * confidence:g}% BCa bootstrap "
             f"CI over images ({n_resamples} resamples), the two-sided Wilcoxon signed-rank p, its Holm "
             f"adjustment within the family, and the matched-pairs rank-biserial r. A prompt type beats P0 when "
             f"Holm p < {alpha:g} and the difference is positive. An image's Dice is averaged over seeds first. "
             "The same numbers, in %, are in prompts.csv.", ""]
    if comparisons.empty:
        return "\n".join([*lines, "No family has P0 and another prompt type finished yet.", ""])
    sentences = dict(zip(comparisons.index, summary_lines(comparisons, alpha=alpha, confidence=confidence)))
    keys = ["model", "mode", "train_set", "eval_set"]
    for (model, mode, train, eval_set), family in comparisons.groupby(keys, sort=False, dropna=False):
        where = eval_set if train == eval_set else f"{eval_set} (trained on {train})"
        winners = family[family["beats_baseline"]].sort_values("mean_diff", ascending=False)
        beat = ", ".join(f"{r.prompt_type} (+{100 * r.mean_diff:.1f} points, Holm p{_p(r.holm_p)})"
                         for r in winners.itertuples()) or "none"
        lines += [f"## {model_label(model)} {mode} on {where}", "", f"Beat P0: {beat}.", ""]
        lines += [f"- {sentences[i]}" for i in family.index]
        lines.append("")
    return "\n".join(lines)


def _p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"={p:.2g}"


# ---------------------------------------------------------------- whole outputs


def tables_csv(tables: dict[str, PaperTable]) -> str:
    """Every table's cells, one row per cell (``CELL_COLUMNS``), Dice in %."""
    frames = [t.cells for t in tables.values() if not t.cells.empty]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CELL_COLUMNS)
    return frame.to_csv(index=False, float_format="%.4f")


def left_out_markdown(left_out: pd.DataFrame, grid: Grid | None, keep_all: bool, limit: int = 50) -> str:
    """The short section listing records not in the current grid."""
    if grid is None or left_out.empty:
        return ""
    what = "kept in the tables above (--all)" if keep_all else "left out of the tables above (--all keeps them)"
    lines = ["## Not in the current grid", "",
             f"{len(left_out)} finished record{'s are' if len(left_out) > 1 else ' is'} not an experiment of the "
             f"current grid ({grid.name}): {what}; report.md and report.csv list every record.", ""]
    for r in left_out.head(limit).to_dict("records"):
        what = f"{r['kind']} of {r['experiment_id']}" if r["record_id"] != r["experiment_id"] else r["kind"]
        lines.append(f"- `{r['record_id']}` ({what}: {r['model']} {r['mode']} {r['train_set']} {r['prompt_type']}, "
                     f"seed {r['seed']})")
    if len(left_out) > limit:
        lines.append(f"- ... and {len(left_out) - limit} more")
    return "\n".join(lines) + "\n"


def tables_markdown(tables: dict[str, PaperTable], title: str, intro: str = "", extra: Sequence[str] = ()) -> str:
    parts = [f"# {title}", ""] + ([intro, ""] if intro else [])
    parts += [t.markdown() for t in tables.values()]
    parts += [e for e in extra if e]
    return "\n".join(parts).rstrip("\n") + "\n"


@dataclass
class Analysis:
    """What ``analyse`` gives the report (and figures or an HTML page): the tables, the prompt comparisons
    (``compare_prompts``' frame, Dice in [0, 1]), the records left out as not in the grid, and the texts of
    tables.md, tables.csv, prompts.md and prompts.csv."""

    tables: dict[str, PaperTable]
    comparisons: pd.DataFrame
    left_out: pd.DataFrame
    grid: Grid | None
    layout: str
    texts: dict[str, str]


def layout_of(profile: str | None, images: pd.DataFrame) -> str:
    """"study" (the paper's tables) for --profile study, "generic" for another profile; with no profile,
    "study" when a record trained on one of the study's datasets or pools."""
    if profile is not None:
        return "study" if profile == "study" else "generic"
    trained = set(images["train_set"].dropna().unique()) if len(images) else set()
    return "study" if trained & {*DATASETS, ALL_POOL, ENDOSCOPY_POOL} else "generic"


def analyse(images: pd.DataFrame, study: str, grid: Grid | None, layout: str, keep_all: bool = False,
            n_resamples: int = CELL_RESAMPLES) -> Analysis:
    """The tables and prompt comparisons of a study's tidy images frame (``orchestrator.results.load``)."""
    kept, left_out = split(images, grid, keep_all)
    cells = Cells(kept, n_resamples=n_resamples)
    tables = build_tables(cells, grid, layout, n_resamples)
    comparisons = prompt_comparisons(kept, n_resamples=n_resamples)
    where = f"the grid of {grid.name}" if grid else "every finished record (no profile names this study)"
    intro = (f"Study `{study}`: {where}. Dice in % everywhere (tables.csv: one row per cell, the same numbers). "
             f"Bootstrap CIs use {n_resamples} resamples per cell (BCa, scipy.stats.bootstrap over images).")
    prompts_md = prompts_markdown(comparisons, f"Prompt types against P0: {study}", n_resamples)
    extra = [left_out_markdown(left_out, grid, keep_all)]
    if layout != "study":  # a small grid: its comparisons beside its table
        extra.insert(0, "\n".join(["## Prompt types against P0", ""] + prompts_md.split("\n")[2:]).replace(
            "\n## ", "\n### "))
    texts = {"tables.md": tables_markdown(tables, f"Results in the paper's tables: {study}"
                                          if layout == "study" else f"Results: {study}", intro, extra),
             "tables.csv": tables_csv(tables), "prompts.md": prompts_md, "prompts.csv": prompts_csv(comparisons)}
    return Analysis(tables, comparisons, left_out, grid, layout, texts)
