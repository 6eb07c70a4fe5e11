"""Statistics of the report (orchestrator/significance.py) on data with planted effects; real scipy, no mocks."""

import re

import numpy as np
import pandas as pd
import pytest

from orchestrator.significance import (
    _holm,
    bootstrap_ci,
    compare_prompts,
    critical_difference_figure,
    holm_adjust,
    paired_diff_ci,
    rank_biserial,
    rank_prompts,
    seed_spread,
    summary_lines,
    wilcoxon_p,
)

SPEC = {"model": "clipseg", "mode": "frozen", "train_set": "kvasir_polyp", "eval_set": "kvasir_polyp"}


def rows(dice, prompt_type, seed=0, ids=None, **spec):
    ids = ids if ids is not None else [f"img{i:03d}" for i in range(len(dice))]
    return pd.DataFrame({**SPEC, **spec, "prompt_type": prompt_type, "seed": seed, "sample_id": ids,
                         "dice": np.asarray(dice, dtype=float)})


def planted(seed=0, n=40):
    rng = np.random.default_rng(seed)
    p0 = rng.uniform(0.4, 0.8, n)
    p6 = p0 + 0.05 + rng.normal(0, 0.01, n)  # planted effect: +5 points
    p1 = p0 + rng.normal(0, 0.02, n)  # no effect: symmetric noise around 0
    return p0, p6, p1


def test_planted_effect_beats_baseline_and_no_effect_does_not():
    p0, p6, p1 = planted(seed=0)
    df = pd.concat([rows(p0, "p0"), rows(p6, "p6"), rows(p1, "p1")])
    out = compare_prompts(df).set_index("prompt_type")
    assert list(out.index) == ["p1", "p6"] and set(out["baseline"]) == {"p0"}
    six, one = out.loc["p6"], out.loc["p1"]
    assert six["n"] == 40 and six["mean_diff"] == pytest.approx(np.mean(p6 - p0))
    assert six["mean_baseline"] == pytest.approx(p0.mean()) and six["mean_prompt"] == pytest.approx(p6.mean())
    assert six["wilcoxon_p"] < 0.01 and six["holm_p"] < 0.01
    assert 0 < six["ci_low"] < six["mean_diff"] < six["ci_high"]  # the CI of the difference excludes 0
    assert six["rank_biserial"] == pytest.approx(1.0)  # every difference positive
    assert bool(six["beats_baseline"]) is True
    # With this seed the no-effect CI contains 0 (checked: it does for seeds 0..4).
    assert one["ci_low"] < 0 < one["ci_high"]
    assert one["wilcoxon_p"] > 0.05 and bool(one["beats_baseline"]) is False


def test_seeds_are_averaged_per_image_and_pairs_are_an_inner_join():
    p0, p6, _ = planted(seed=1)
    # p0 ran twice, seed offsets -0.1 / +0.1 cancel in the per-image average; p6 lacks the last 5 images.
    df = pd.concat([rows(p0 - 0.1, "p0", seed=1), rows(p0 + 0.1, "p0", seed=2), rows(p6[:35], "p6")])
    out = compare_prompts(df).iloc[0]
    assert out["n"] == 35
    assert out["mean_baseline"] == pytest.approx(p0[:35].mean())
    assert out["mean_diff"] == pytest.approx(np.mean(p6[:35] - p0[:35]))


def test_identical_prompt_gives_p_one_and_a_point_ci():
    p0, _, _ = planted(seed=2)
    out = compare_prompts(pd.concat([rows(p0, "p0"), rows(p0, "p2")])).iloc[0]
    assert out["wilcoxon_p"] == 1.0 and out["holm_p"] == 1.0 and out["rank_biserial"] == 0.0
    assert (out["ci_low"], out["ci_high"]) == (0.0, 0.0) and bool(out["beats_baseline"]) is False


def test_holm_against_a_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005]
    # Sorted: 0.005, 0.01, 0.03, 0.04; m = 4, times (m - i) = 4, 3, 2, 1:
    #   0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04
    # cumulative max: 0.02, 0.03, 0.06, 0.06; capped at 1: unchanged; back in input order:
    expected = [0.03, 0.06, 0.06, 0.02]
    np.testing.assert_allclose(holm_adjust(p), expected)
    np.testing.assert_allclose(_holm(p), expected)
    from statsmodels.stats.multitest import multipletests  # the kept library agrees

    np.testing.assert_allclose(multipletests(p, method="holm")[1], expected)
    # Capping: 0.4*3 = 1.2 -> 1.
    np.testing.assert_allclose(_holm([0.4, 0.5, 0.9]), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(holm_adjust([0.4, np.nan, 0.01]), [0.4, np.nan, 0.02])  # m = 2, NaN ignored


def test_holm_family_is_the_group():
    p0, p6, p1 = planted(seed=0)
    one = pd.concat([rows(p0, "p0"), rows(p6, "p6"), rows(p1, "p1")])
    other = pd.concat([rows(p0, "p0", eval_set="cvc"), rows(p6, "p6", eval_set="cvc")])
    out = compare_prompts(pd.concat([one, other]))
    alone = out[out["eval_set"] == "cvc"].iloc[0]
    assert alone["holm_p"] == pytest.approx(alone["wilcoxon_p"])  # a family of one: no adjustment
    pair = out[out["eval_set"] == "kvasir_polyp"]
    np.testing.assert_allclose(pair["holm_p"], holm_adjust(pair["wilcoxon_p"]))


def test_rank_biserial_by_hand():
    # |d| = 1, 2, 3, 4 -> ranks 1, 2, 3, 4; R+ = 1 + 2 + 4 = 7, R- = 3; r = (7 - 3) / (7 + 3) = 0.4
    assert rank_biserial([1, 2, -3, 4]) == pytest.approx(0.4)
    # The zero is dropped; |d| = 1, 2, 3 -> R+ = 1 + 3 = 4, R- = 2; r = 2 / 6
    assert rank_biserial([0, 1, -2, 3]) == pytest.approx(1 / 3)
    # Ties: |d| = 1, 1, 2 -> ranks 1.5, 1.5, 3; R+ = 1.5 + 3 = 4.5, R- = 1.5; r = 3 / 6
    assert rank_biserial([1, -1, 2]) == pytest.approx(0.5)
    assert rank_biserial([0, 0]) == 0.0 and rank_biserial([-0.1, -0.2]) == -1.0
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0


def test_bootstrap_ci_of_the_mean():
    x = np.random.default_rng(3).normal(0.7, 0.1, 200)
    low, high = bootstrap_ci(x, n_resamples=2000)
    assert low < x.mean() < high and high - low == pytest.approx(2 * 1.96 * x.std(ddof=1) / np.sqrt(200), rel=0.2)
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)  # deterministic
    pct = bootstrap_ci(x, method="percentile")
    assert pct != (low, high) and pct == pytest.approx((low, high), abs=0.005)
    assert np.isnan(bootstrap_ci([0.5])).all() and bootstrap_ci([0.5, 0.5]) == (0.5, 0.5)
    with pytest.raises(ValueError, match="same length"):
        paired_diff_ci([1, 2], [1])


def test_seed_spread_separates_seed_from_image_spread():
    base = np.random.default_rng(4).uniform(0.2, 0.9, 50)  # images differ a lot
    offsets = [-0.01, 0.0, 0.01]  # seeds shift every image by a little
    df = pd.concat([rows(base + o, "p3", seed=s) for s, o in enumerate(offsets)]
                   + [rows(base, "p4", seed=0)])  # one seed only: no row
    out = seed_spread(df)
    assert len(out) == 1
    row = out.iloc[0]
    assert row["prompt_type"] == "p3" and row["n_seeds"] == 3 and row["n_images"] == 50
    assert row["between_seed_sd"] == pytest.approx(0.01)  # SD of -0.01, 0, 0.01 (ddof=1)
    assert row["between_image_sd"] == pytest.approx(base.std(ddof=1))  # a shift leaves each seed's SD alone
    assert row["mean_dice"] == pytest.approx(base.mean())


def test_friedman_on_planted_ranks_and_the_cd_figure(tmp_path):
    rng = np.random.default_rng(5)
    order = {"p6": 0.80, "p3": 0.75, "p0": 0.70, "p1": 0.65, "p2": 0.60}  # the same order on every dataset
    frames = []
    for d in range(6):
        dataset, shift = f"set{d}", rng.uniform(-0.1, 0.1)
        for pt, level in order.items():
            frames.append(rows(level + shift + rng.normal(0, 0.005, 20), pt, train_set=dataset, eval_set=dataset))
    frames.append(rows(np.full(20, 0.9), "p9", train_set="set0", eval_set="set0"))  # on one dataset only
    result = rank_prompts(pd.concat(frames))
    assert list(result) == [("clipseg", "frozen")]
    r = result[("clipseg", "frozen")]
    assert r.dropped == ["p9"] and r.n_blocks == 6
    assert r.ranks["p6"] == 1.0 and list(r.ranks.index) == ["p6", "p3", "p0", "p1", "p2"]
    assert r.pvalue < 0.001  # perfect concordance: chi2 = n (k - 1) = 24
    assert r.statistic == pytest.approx(24.0)
    assert r.posthoc.shape == (5, 5) and r.posthoc.loc["p6", "p2"] < 0.05
    path = critical_difference_figure(r.ranks, r.posthoc, tmp_path / "figs" / "cd.png", title="clipseg frozen")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1024


def test_summary_lines():
    p0, p6, p1 = planted(seed=0)
    out = compare_prompts(pd.concat([rows(p0, "p0"), rows(p6, "p6"), rows(p1, "p1")]))
    lines = summary_lines(out)
    assert len(lines) == 2
    six = out.iloc[1]
    assert lines[1] == (f"clipseg frozen on kvasir_polyp: p6 beats p0 by +{100 * six['mean_diff']:.1f} points "
                        f"(95% CI {100 * six['ci_low']:.1f} to {100 * six['ci_high']:.1f}; "
                        "Wilcoxon p<0.0001, Holm p<0.0001, r=1.00, n=40)")
    assert re.search(r"by \+5\.\d points", lines[1])
    assert re.search(r"\(95% CI -?\d\.\d to \d\.\d; Wilcoxon p=0\.\d+, Holm p=0\.\d+, r=-?0\.\d\d, n=40\)$", lines[0])
    assert lines[0].startswith("clipseg frozen on kvasir_polyp: p1 does not differ significantly from p0: ")
    cross = compare_prompts(pd.concat([rows(p0, "p0", eval_set="cvc"), rows(p0 - 0.05, "p5", eval_set="cvc")]))
    assert summary_lines(cross)[0].startswith("clipseg frozen (trained on kvasir_polyp) on cvc: p5 trails p0 by -5.0")
