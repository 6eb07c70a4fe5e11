"""Statistics for the study's report: is a prompt type better than the baseline, and by how much.

Pure functions over the tidy results set: a DataFrame with one row per (experiment, eval_set, image) and the
columns model, mode, train_set, prompt_type (p0..p9, random), seed, eval_set, sample_id, dice (0..1).

- `bootstrap_ci` / `paired_diff_ci`: BCa bootstrap CI of a mean / of a paired mean difference.
- `compare_prompts`: every prompt type against the baseline on the same images, per group: mean difference with
  its CI, Wilcoxon signed-rank p, matched-pairs rank-biserial r, Holm-adjusted p within the group.
- `seed_spread`: between-seed vs between-image spread where a spec ran with several seeds.
- `rank_prompts` / `critical_difference_figure`: Friedman test over prompt types across datasets, average ranks,
  Nemenyi post-hoc and its critical-difference diagram.
- `summary_lines`: one sentence per comparison for the report.

scikit-posthocs and matplotlib are imported inside the functions that need them (scikit-posthocs pulls in
seaborn, seconds of import), so importing this module stays cheap.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

BY = ("model", "mode", "train_set", "eval_set")
N_RESAMPLES = 9999  # scipy's default; with the observed statistic, 10,000 values for the quantiles


# ---------------------------------------------------------------- bootstrap


def _rng_kwargs(seed: int) -> dict:
    # scipy >= 1.15 takes `rng`; older releases (pyproject allows scipy>=1.11) only `random_state`.
    name = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
    return {name: np.random.default_rng(seed)}


def bootstrap_ci(values, confidence: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0,
                 method: str = "BCa") -> tuple[float, float]:
    """Bootstrap CI of the mean of `values` (NaNs dropped), via `scipy.stats.bootstrap`.

    BCa by default: it corrects the percentile interval for the bias and the skew of the bootstrap distribution.
    Per-image Dice is bounded in [0, 1] and skewed (a tail of failures near 0), where plain percentile intervals
    under-cover; BCa is second-order accurate at the same cost for a mean. If BCa cannot be computed (a degenerate
    jackknife gives NaN), the percentile interval is returned instead. Fewer than 2 values: (nan, nan); all values
    equal (to 1e-12): (mean, mean). Deterministic for a given `seed`.
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size < 2:
        return (math.nan, math.nan)
    if np.ptp(x) <= 1e-12:  # all equal, up to float noise (e.g. p - 0.05 minus p): every resample has this mean
        return (float(x.mean()), float(x.mean()))
    low = high = math.nan
    for m in dict.fromkeys((method, "percentile")):  # the asked method, then percentile as the fallback
        with warnings.catch_warnings():  # a degenerate BCa warns and gives NaN; the fallback handles it
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", getattr(stats, "DegenerateDataWarning", RuntimeWarning))
            res = stats.bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method=m,
                                  vectorized=True, batch=1000, **_rng_kwargs(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isnan(low) or math.isnan(high)):
            break
    return (low, high)


def paired_diff_ci(treatment, baseline, confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
                   seed: int = 0, method: str = "BCa") -> tuple[float, float]:
    """Bootstrap CI of mean(treatment - baseline) for paired values (same images, same order).

    Resampling the per-image differences is resampling image pairs, so the pairing is kept.
    """
    t, b = np.asarray(treatment, dtype=float), np.asarray(baseline, dtype=float)
    if t.shape != b.shape:
        raise ValueError(f"paired values need the same length, got {t.shape} and {b.shape}")
    return bootstrap_ci(t - b, confidence=confidence, n_resamples=n_resamples, seed=seed, method=method)


# ---------------------------------------------------------------- paired tests


def rank_biserial(differences) -> float:
    """Matched-pairs rank-biserial correlation of paired differences, from the signed ranks.

    r = (R+ - R-) / (R+ + R-)  -- Kerby (2014), "The simple difference formula: an approach to teaching
    nonparametric correlation", Comprehensive Psychology 3:11.IT.3.1 (after King & Minium). R+ / R- are the sums
    of the ranks of |d| over the positive / negative differences; zero differences are dropped and tied |d| get
    average ranks, as in the Wilcoxon test (zero_method="wilcox"). r is in [-1, 1]: +1 when every non-zero
    difference is positive. All differences zero (or none): 0.
    """
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d) & (d != 0)]
    if d.size == 0:
        return 0.0
    ranks = stats.rankdata(np.abs(d))
    r_plus, r_minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((r_plus - r_minus) / (r_plus + r_minus))


def wilcoxon_p(differences) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences (zeros dropped); all differences zero: p = 1."""
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return math.nan
    if np.all(d == 0):
        return 1.0
    return float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def _holm(pvalues) -> np.ndarray:
    """Holm step-down adjustment, written out: sorted p_(i) x (m - i) for i = 0..m-1, running max, capped at 1."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (p.size - np.arange(p.size))))
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out


def holm_adjust(pvalues) -> np.ndarray:
    """Holm-adjusted p-values of one family; NaNs stay NaN and do not count towards m.

    Holm's step-down (`_holm`), the same numbers as statsmodels' `multipletests(method="holm")` (the tests
    compare them); not statsmodels' itself, which collects garbage on every call: a quarter of a full
    study's report time.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = _holm(p[ok])
    return out


def _per_image(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Mean dice per (keys..., sample_id): the average over seeds of the same spec (and NaN dice skipped)."""
    return df.groupby([*keys, "sample_id"], dropna=False, sort=True)["dice"].mean().reset_index()


def compare_prompts(df: pd.DataFrame, baseline: str = "p0", by: Sequence[str] = BY, alpha: float = 0.05,
                    confidence: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """Each prompt type against `baseline` on the same images, per group of `by`.

    Seeds: where a spec ran with several seeds, each image's dice is first averaged over its seeds, so an image
    counts once. Pairs: inner join of the prompt type's and the baseline's images on sample_id (n = the images
    both have). Per comparison: mean dice of each, mean difference (prompt - baseline) with its paired bootstrap
    CI (`paired_diff_ci`), two-sided Wilcoxon signed-rank p (all differences zero: p = 1), matched-pairs
    rank-biserial r (`rank_biserial`). Multiple comparisons: the family is the group (e.g. one model x mode x
    dataset: every prompt type compared with the baseline there); Holm-adjusted p within it (`holm_adjust`).
    beats_baseline: holm_p < alpha and mean_diff > 0. Groups without the baseline give no rows; a prompt type with
    no image in common with the baseline gives a row with n = 0 and NaN statistics.

    Returns one row per (group, prompt type != baseline): the `by` columns, prompt_type, baseline, n,
    mean_baseline, mean_prompt, mean_diff, ci_low, ci_high, wilcoxon_p, rank_biserial, holm_p, beats_baseline.
    """
    by = list(by)
    missing = {*by, "prompt_type", "sample_id", "dice"} - set(df.columns)
    if missing:
        raise ValueError(f"results lack columns: {', '.join(sorted(missing))}")
    images = _per_image(df, [*by, "prompt_type"])
    rows = []
    for key, group in images.groupby(by, dropna=False, sort=True):
        base = group[group["prompt_type"] == baseline][["sample_id", "dice"]]
        if base.empty:
            continue
        family = []
        for prompt_type, other in group[group["prompt_type"] != baseline].groupby("prompt_type", sort=True):
            pairs = base.merge(other[["sample_id", "dice"]], on="sample_id", suffixes=("_base", "_prompt"))
            pairs = pairs.dropna(subset=["dice_base", "dice_prompt"])
            d = (pairs["dice_prompt"] - pairs["dice_base"]).to_numpy()
            low, high = paired_diff_ci(pairs["dice_prompt"], pairs["dice_base"], confidence=confidence,
                                       n_resamples=n_resamples, seed=seed)
            family.append({**dict(zip(by, key)), "prompt_type": prompt_type, "baseline": baseline,
                           "n": len(pairs),
                           "mean_baseline": pairs["dice_base"].mean() if len(pairs) else math.nan,
                           "mean_prompt": pairs["dice_prompt"].mean() if len(pairs) else math.nan,
                           "mean_diff": d.mean() if d.size else math.nan,
                           "ci_low": low, "ci_high": high,
                           "wilcoxon_p": wilcoxon_p(d),
                           "rank_biserial": rank_biserial(d) if d.size else math.nan})
        for row, adjusted in zip(family, holm_adjust([r["wilcoxon_p"] for r in family])):
            row["holm_p"] = adjusted
            row["beats_baseline"] = bool(adjusted < alpha and row["mean_diff"] > 0)
        rows.extend(family)
    columns = [*by, "prompt_type", "baseline", "n", "mean_baseline", "mean_prompt", "mean_diff", "ci_low",
               "ci_high", "wilcoxon_p", "rank_biserial", "holm_p", "beats_baseline"]
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------- seeds


SPEC = ("model", "mode", "train_set", "prompt_type", "eval_set")


def seed_spread(df: pd.DataFrame, spec: Sequence[str] = SPEC, min_seeds: int = 2) -> pd.DataFrame:
    """Between-seed vs between-image spread, per spec that ran with at least `min_seeds` seeds.

    between_seed_sd: SD (ddof=1) over seeds of each seed's mean dice -- how much the headline number moves with
    the seed. between_image_sd: the mean over seeds of each seed's SD (ddof=1) of dice across images -- how much
    images differ. Reported separately; they answer different questions and are not added.

    Returns one row per spec: the `spec` columns, n_seeds, n_images (mean per seed), mean_dice (mean of the seed
    means), between_seed_sd, between_image_sd.
    """
    spec = list(spec)
    per_seed = (df.groupby([*spec, "seed"], dropna=False, sort=True)["dice"]
                .agg(seed_mean="mean", image_sd=lambda s: s.std(ddof=1), n_images="count").reset_index())
    out = (per_seed.groupby(spec, dropna=False, sort=True)
           .agg(n_seeds=("seed", "size"), n_images=("n_images", "mean"), mean_dice=("seed_mean", "mean"),
                between_seed_sd=("seed_mean", lambda s: s.std(ddof=1)),
                between_image_sd=("image_sd", "mean"))
           .reset_index())
    return out[out["n_seeds"] >= min_seeds].reset_index(drop=True)


# ---------------------------------------------------------------- ranking across datasets


@dataclass
class PromptRanking:
    """Friedman test and Nemenyi post-hoc of prompt types for one model (one `per` group)."""

    key: dict  # the `per` columns' values
    matrix: pd.DataFrame  # mean dice: rows = blocks (datasets), columns = prompt types
    ranks: pd.Series  # average rank per prompt type, 1 = best (highest dice), ascending
    statistic: float  # Friedman chi-square; NaN when fewer than 3 prompt types or 2 blocks
    pvalue: float
    posthoc: pd.DataFrame | None  # Nemenyi p-values, prompt type x prompt type; None when not computable
    dropped: list[str] = field(default_factory=list)  # prompt types absent from some block

    @property
    def n_blocks(self) -> int:
        return len(self.matrix)


def rank_prompts(df: pd.DataFrame, per: Sequence[str] = ("model", "mode"),
                 blocks: Sequence[str] = ("train_set", "eval_set")) -> dict[tuple, PromptRanking]:
    """Across datasets, per model: Friedman test over prompt types, average ranks, Nemenyi post-hoc.

    Values: the mean dice of each (block, prompt type) (images averaged over seeds first). Blocks are the distinct
    `blocks` values (datasets); only prompt types present on every block take part (the others are listed in
    `dropped`). The default keeps modes apart (`per` = model x mode): frozen and fine-tuned numbers are not
    exchangeable; pass per=("model",), blocks=("mode", "train_set", "eval_set") to pool them as blocks.
    Friedman: `scipy.stats.friedmanchisquare` (needs >= 3 prompt types and >= 2 blocks, else NaN);
    post-hoc: `scikit_posthocs.posthoc_nemenyi_friedman` (>= 2 prompt types and >= 2 blocks, else None).

    Returns {per values as a tuple: PromptRanking}.
    """
    import scikit_posthocs as sp

    per, blocks = list(per), list(blocks)
    images = _per_image(df, [*per, *blocks, "prompt_type"])
    means = images.groupby([*per, *blocks, "prompt_type"], dropna=False, sort=True)["dice"].mean().reset_index()
    out: dict[tuple, PromptRanking] = {}
    for key, group in means.groupby(per, dropna=False, sort=True):
        wide = group.pivot_table(index=blocks, columns="prompt_type", values="dice", aggfunc="mean")
        complete = [c for c in wide.columns if wide[c].notna().all()]
        dropped = sorted(c for c in wide.columns if c not in complete)
        matrix = wide[complete]
        matrix.columns.name = "prompt_type"
        ranks = matrix.rank(axis=1, ascending=False, method="average").mean().sort_values()
        statistic = pvalue = math.nan
        posthoc = None
        n, k = matrix.shape
        if n >= 2 and k >= 3:
            res = stats.friedmanchisquare(*(matrix[c].to_numpy() for c in matrix.columns))
            statistic, pvalue = float(res.statistic), float(res.pvalue)
        if n >= 2 and k >= 2:
            posthoc = sp.posthoc_nemenyi_friedman(matrix.reset_index(drop=True))
            posthoc.index, posthoc.columns = list(matrix.columns), list(matrix.columns)
        out[tuple(key)] = PromptRanking(key=dict(zip(per, key)), matrix=matrix, ranks=ranks, statistic=statistic,
                                        pvalue=pvalue, posthoc=posthoc, dropped=dropped)
    return out


def critical_difference_figure(ranks: pd.Series | dict, posthoc: pd.DataFrame, path: str | Path,
                               title: str | None = None, alpha: float = 0.05) -> Path:
    """Write a critical-difference diagram (PNG) of average ranks, bars joining prompt types that the post-hoc
    does not tell apart at `alpha`. Drawn on a bare Figure with matplotlib's Agg canvas: no display, no pyplot
    state.
    """
    import scikit_posthocs as sp
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ranks = pd.Series(ranks, dtype=float)
    fig = Figure(figsize=(8, 0.6 + 0.3 * len(ranks)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    sp.critical_difference_diagram(ranks, posthoc.loc[ranks.index, ranks.index], ax=ax, alpha=alpha)
    if title:
        ax.set_title(title, pad=24)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=150, bbox_inches="tight")
    return path


# ---------------------------------------------------------------- sentences


def _fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "=n/a"
    return "<0.0001" if p < 1e-4 else f"={p:.2g}"


def _group_label(row: pd.Series) -> str:
    def value(name):
        v = row.get(name)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)

    model, mode, train_set, eval_set = (value(c) for c in ("model", "mode", "train_set", "eval_set"))
    label = " ".join(v for v in (model, mode) if v)
    if train_set and eval_set and train_set != eval_set:
        label += f" (trained on {train_set})"
    where = eval_set or train_set
    if where:
        label += f" on {where}"
    known = {"model", "mode", "train_set", "eval_set", "prompt_type", "baseline", "n", "mean_baseline",
             "mean_prompt", "mean_diff", "ci_low", "ci_high", "wilcoxon_p", "rank_biserial", "holm_p",
             "beats_baseline"}
    extra = [f"{c}={row[c]}" for c in row.index if c not in known]
    return " ".join([label, *extra]).strip()


def summary_lines(comparisons: pd.DataFrame, alpha: float = 0.05, confidence: float = 0.95) -> list[str]:
    """One sentence per row of `compare_prompts`, in its order (grouped), differences in Dice points (x100), e.g.

    "clipseg frozen on kvasir_polyp: p6 beats p0 by +4.1 points (95% CI 2.0 to 6.3; Wilcoxon p=0.0004,
    Holm p=0.003, r=0.71, n=40)". Holm p < alpha with a negative difference reads "trails"; otherwise
    "does not differ significantly from". `alpha` and `confidence` should be those given to `compare_prompts`.
    """
    lines = []
    for _, row in comparisons.iterrows():
        label, pt, base = _group_label(row), row["prompt_type"], row["baseline"]
        if not row["n"]:
            lines.append(f"{label}: {pt} vs {base}: no images in common")
            continue
        diff = 100 * row["mean_diff"]
        if row["beats_baseline"]:
            verb = f"beats {base} by {diff:+.1f} points"
        elif row["holm_p"] < alpha and diff < 0:
            verb = f"trails {base} by {diff:+.1f} points"
        else:
            verb = f"does not differ significantly from {base}: {diff:+.1f} points"
        low, high = 100 * row["ci_low"], 100 * row["ci_high"]
        level = f"{100 * confidence:g}% CI"
        ci = f"{level} n/a" if math.isnan(low) else f"{level} {low:.1f} to {high:.1f}"
        lines.append(f"{label}: {pt} {verb} ({ci}; Wilcoxon p{_fmt_p(row['wilcoxon_p'])}, "
                     f"Holm p{_fmt_p(row['holm_p'])}, r={row['rank_biserial']:.2f}, n={int(row['n'])})")
    return lines
