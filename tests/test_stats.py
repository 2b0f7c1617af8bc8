"""Hand-computed checks of every statistical piece: directions, scores, layer choice, calibration, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import expit

from emofast.probe import PairedProbe, directions, side_columns, stats
from emofast.probe import calibration as cal
from emofast.probe.layers import band_table, choose_layers

# ------------------------------------------------------------------------------------------ directions


def test_mean_diff_direction_by_hand():
    mu_l = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    mu_r = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    d = directions.mean_diff(mu_l, mu_r)
    assert torch.allclose(d[0], torch.tensor([0.0, 2.0, 2.0]) / 8**0.5)
    assert torch.equal(d[1], torch.zeros(3))  # identical sides: zero, not NaN


def _rows(n, d, shift, seed, cov=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, d))
    if cov is not None:
        x = x @ cov
    return torch.tensor(x + shift, dtype=torch.float32)


def test_lda_equals_explicit_shrunk_solve():
    d = 12
    rng = np.random.default_rng(1)
    mix = rng.standard_normal((d, d)) * 0.5 + np.eye(d)
    left, right = _rows(30, d, 0.5, 2, mix), _rows(25, d, -0.5, 3, mix)
    got = directions.shrinkage_lda(left, right)[0].double()
    a, b = left[:, 0].double().numpy(), right[:, 0].double().numpy()
    xc = np.concatenate([a - a.mean(0), b - b.mean(0)])
    s = xc.T @ xc / len(xc)
    g = directions.ledoit_wolf_shrinkage(xc)
    nu = np.trace(s) / d
    w = np.linalg.solve((1 - g) * s + g * nu * np.eye(d), a.mean(0) - b.mean(0))
    assert 0 < g < 1
    assert np.allclose(got.numpy(), w / np.linalg.norm(w), atol=1e-5)


def test_ledoit_wolf_matches_its_definition():
    rng = np.random.default_rng(5)
    xc = rng.standard_normal((20, 7)) * np.arange(1, 8)
    xc -= xc.mean(0)
    n, d = xc.shape
    s = xc.T @ xc / n
    nu = np.trace(s) / d
    d2 = np.sum((s - nu * np.eye(d)) ** 2)
    b2 = sum(np.sum((np.outer(x, x) - s) ** 2) for x in xc) / n**2
    assert directions.ledoit_wolf_shrinkage(xc) == pytest.approx(min(b2 / d2, 1.0), rel=1e-9)


def test_logistic_direction_separates_and_is_unit():
    left, right = _rows(40, 6, 1.0, 7), _rows(40, 6, -1.0, 8)
    w = directions.logistic(left, right)[0]
    assert w.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert (left[:, 0] @ w > right[:, 0] @ w).float().mean() > 0.5
    assert torch.cosine_similarity(w, torch.ones(6), dim=0) > 0.8


# ------------------------------------------------------------------------------------------ scores


def _probe(direction, mid, score="centered"):
    d = torch.tensor(direction, dtype=torch.float32).reshape(1, 1, -1)
    m = torch.tensor(mid, dtype=torch.float32).reshape(1, 1, -1)
    return PairedProbe(
        [("a", "b")], [3], d, m, {"a_vs_b": [3]}, {"a_vs_b": cal.Calibrator("platt", 2.0, 0.5)}, score_kind=score
    )


def test_centered_and_cosine_scores_by_hand():
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    p = _probe([0.6, 0.8], [1.0, 1.0])
    proj = (x @ torch.tensor([0.6, 0.8]))[:, None, None]
    norms = x.norm(dim=-1)[:, None]
    centered = p.layer_scores(proj, norms, [3])[:, 0, 0]
    assert np.allclose(centered, [(3 - 1) * 0.6 + (4 - 1) * 0.8, (1 - 1) * 0.6 + (0 - 1) * 0.8])
    cosine = p.layer_scores(proj, norms, [3], kind="cosine")[:, 0, 0]
    assert np.allclose(cosine, [1.0, 0.6])
    cols = p.columns(proj, norms, [3])
    assert list(cols) == ["a_vs_b", "p_a", "p_b"]
    assert np.allclose(cols["p_a"], expit(2.0 * centered + 0.5)) and np.allclose(cols["p_a"] + cols["p_b"], 1)


def test_side_columns_never_collide():
    cols = side_columns([("angry", "calm"), ("anxious", "calm")])
    assert cols["angry_vs_calm"] == ("p_angry", "angry_vs_calm:p_calm")
    assert cols["anxious_vs_calm"] == ("p_anxious", "anxious_vs_calm:p_calm")


# ------------------------------------------------------------------------------------------ layer policies


def test_band_table_by_hand():
    y = np.array([1, 1, 0, 0])
    s = np.array([[1.0, -1.0, 2.0, 1.0], [1.0, 1.0, -3.0, 1.0], [-1.0, 1.0, -1.0, 1.0], [-1.0, -2.0, -1.0, 1.0]])
    ba1, _ = band_table(s, y, 1)
    assert ba1.tolist() == [1.0, 0.5, 0.75, 0.5]
    ba2, sep2 = band_table(s, y, 2)
    # band means: [0, 1, -0... ] computed by hand
    means = (s[:, :-1] + s[:, 1:]) / 2
    assert ba2.tolist() == [stats.balanced_accuracy(y, means[:, i] > 0) for i in range(3)]
    assert sep2[0] == pytest.approx(stats.separation(y, means[:, 0]))
    with pytest.raises(ValueError, match="band width 5"):
        band_table(s, y, 5)


def _pair(ba_pattern, n=8):
    """Scores whose balanced sign accuracy at each layer is set by how many texts per side are flipped."""
    y = np.array([1] * n + [0] * n)
    cols = []
    for wrong in ba_pattern:
        s = np.where(y == 1, 1.0, -1.0)
        s[:wrong] *= -1
        cols.append(s)
    return np.stack(cols, axis=1), y


def test_policies_and_tie_breaks():
    layers = [10, 11, 12, 13]
    a = _pair([4, 0, 0, 4])  # best single layers 11 and 12 (tie): lower index wins
    b = _pair([0, 4, 4, 4])
    chosen, table = choose_layers({"a": a, "b": b}, layers, "per-pair", width=1)
    assert chosen == {"a": [11], "b": [10]}
    chosen, _ = choose_layers({"a": a, "b": b}, layers, "single")
    # mean BA: layer 10: (.75+1)/2, 11: (1+.75)/2, 12: same as 11, 13: .75 -> tie 10/11/12 on BA; separation
    # equal too (same flipped counts) -> lowest index
    assert chosen == {"a": [10], "b": [10]}
    chosen, _ = choose_layers({"a": a, "b": b}, layers, "band", width=2)
    assert chosen["a"] == chosen["b"] and len(chosen["a"]) == 2
    chosen, table = choose_layers({"a": a, "b": b, "c": _pair([4, 0, 0, 4])}, layers, "global-band", width=2)
    # best bands: a -> 11-12, b -> 10-11, c -> 11-12: two votes for 11-12
    assert table["votes"] == [1, 2, 0] and chosen["b"] == [11, 12]


def test_global_band_vote_tie_goes_to_mean_accuracy_then_lower_index():
    layers = [0, 1, 2]
    a = _pair([0, 4, 4])  # votes band 0 (width 1)
    b = _pair([4, 0, 3])  # votes band 1
    chosen, table = choose_layers({"a": a, "b": b}, layers, "global-band", width=1)
    assert table["votes"] == [1, 1, 0]
    # mean BA: layer 0 = (1 + .75)/2, layer 1 = (.75 + 1)/2: tie -> separation (symmetric) -> lower index
    assert chosen == {"a": [0], "b": [0]}
    c = _pair([0, 4, 4])
    d = _pair([2, 0, 4])
    chosen, table = choose_layers({"c": c, "d": d}, layers, "global-band", width=1)
    # votes tie 1-1; mean BA at 0 = (1 + .875)/2 beats layer 1 = (.75 + 1)/2
    assert table["votes"] == [1, 1, 0] and chosen["c"] == [0]


def test_unknown_policy():
    with pytest.raises(ValueError, match="layer policy"):
        choose_layers({"a": _pair([0])}, [0], "best")


# ------------------------------------------------------------------------------------------ calibration


def test_platt_closed_form_on_two_valued_scores():
    # scores +-1; at the optimum sigmoid(a + b) and sigmoid(-a + b) equal the mean target of each group
    s = np.array([1.0] * 10 + [-1.0] * 10)
    y = np.array([1] * 8 + [0] * 2 + [1] * 3 + [0] * 7)
    c = cal.fit_platt(s, y, smooth=False)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    a = (logit(0.8) - logit(0.3)) / 2
    b = (logit(0.8) + logit(0.3)) / 2
    assert c.a == pytest.approx(a, abs=1e-6) and c.b == pytest.approx(b, abs=1e-6)
    t = cal.platt_targets(y)
    c2 = cal.fit_platt(s, y)
    assert expit(c2.a + c2.b) == pytest.approx(t[:10].mean(), abs=1e-6)
    assert expit(-c2.a + c2.b) == pytest.approx(t[10:].mean(), abs=1e-6)


def test_platt_and_temperature_against_scipy_nelder_mead():
    rng = np.random.default_rng(0)
    s = np.concatenate([rng.normal(1, 1, 50), rng.normal(-0.5, 1, 50)])
    y = np.array([1] * 50 + [0] * 50)
    t = cal.platt_targets(y)

    def nll(params):
        z = params[0] * s + (params[1] if len(params) > 1 else 0.0)
        p = np.clip(expit(z), 1e-15, 1 - 1e-15)
        return -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))

    ref2 = minimize(nll, [1.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14}).x
    ref1 = minimize(nll, [1.0], method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14}).x
    platt, temp = cal.fit_platt(s, y), cal.fit_temperature(s, y)
    assert [platt.a, platt.b] == pytest.approx(list(ref2), abs=1e-5)
    assert temp.a == pytest.approx(ref1[0], abs=1e-5) and temp.b == 0.0


def test_calibration_stays_finite_on_separable_scores():
    s = np.array([2.0, 3.0, -2.0, -3.0])
    y = np.array([1, 1, 0, 0])
    c = cal.fit_platt(s, y)
    p = c(s)
    assert np.isfinite(c.a) and 0.5 < p[0] < 0.9  # targets 3/4 and 1/4, not 1 and 0


def test_ece_brier_nll_by_hand():
    y = [1, 0, 1, 1]
    p = [0.9, 0.1, 0.6, 0.8]
    # bins of width 0.5: [0.1] -> |0 - .1| ; [.9, .6, .8] -> |1 - .7667|
    assert cal.ece(y, p, bins=2, strategy="width") == pytest.approx(0.25 * 0.1 + 0.75 * (1 - (0.9 + 0.6 + 0.8) / 3))
    # equal-mass bins of 2: [.1, .6] -> |.5 - .35| ; [.8, .9] -> |1 - .85|
    assert cal.ece(y, p, bins=2) == pytest.approx(0.5 * 0.15 + 0.5 * 0.15)
    assert cal.brier(y, p) == pytest.approx((0.01 + 0.01 + 0.16 + 0.04) / 4)
    assert cal.nll(y, p) == pytest.approx(-np.mean(np.log([0.9, 0.9, 0.6, 0.8])))
    rep = cal.calibration_report(y, [2.0, -2.0, 0.4, 1.4], {"x": cal.Calibrator("platt", 1.0, 0.0)})
    assert rep["constant"] == {"nll": pytest.approx(np.log(2)), "brier": 0.25, "ece": None}
    assert rep["raw"]["nll"] == pytest.approx(cal.nll(y, expit(np.array([2.0, -2.0, 0.4, 1.4]))))
    assert rep["x"]["brier"] == pytest.approx(cal.brier(y, expit(np.array([2.0, -2.0, 0.4, 1.4]))))
    with pytest.raises(ValueError, match="non-finite"):
        cal.fit_platt([0.1, np.nan, -1.0, 1.0], [1, 1, 0, 0])


# ------------------------------------------------------------------------------------------ metrics


def test_balanced_accuracy_and_auroc_by_hand():
    assert stats.balanced_accuracy([1, 1, 1, 0, 0], [1, 1, 0, 0, 1]) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert stats.auroc([1, 1, 0, 0], [0.9, 0.4, 0.4, 0.1]) == 0.875
    assert stats.auroc([1, 0], [0.0, 1.0]) == 0.0
    with pytest.raises(ValueError):
        stats.balanced_accuracy([1, 1], [1, 0])


def test_bootstrap_ci_is_stratified_reproducible_and_shrinks():
    rng = np.random.default_rng(3)
    y_small = np.array([1] * 20 + [0] * 20)
    s_small = np.where(y_small == 1, 0.5, -0.5) + rng.normal(0, 1, 40)
    y_big = np.array([1] * 400 + [0] * 400)
    s_big = np.where(y_big == 1, 0.5, -0.5) + rng.normal(0, 1, 800)
    a = stats.bootstrap_ci(stats.auroc, y_small, s_small, n_boot=500, seed=1)
    assert a == stats.bootstrap_ci(stats.auroc, y_small, s_small, n_boot=500, seed=1)
    assert a[1] <= a[0] <= a[2]
    b = stats.bootstrap_ci(stats.auroc, y_big, s_big, n_boot=500, seed=1)
    assert (b[2] - b[1]) < (a[2] - a[1]) / 2
    idx = stats.stratified_indices(y_small, 50, 0)
    assert (y_small[idx].sum(axis=1) == 20).all()  # every resample keeps 20 per side
    # exchanging the labels draws the same resamples (what makes the polarity swap an exact mirror)
    assert np.array_equal(idx, stats.stratified_indices(1 - y_small, 50, 0))


def test_bootstrap_percentiles_by_hand():
    # statistic = mean of the left scores; with 2 left texts valued 0 and 1, resample means are 0, .5 or 1
    est, lo, hi = stats.bootstrap_ci(
        lambda y, s: float(s[y == 1].mean()), [1, 1, 0], [0.0, 1.0, 5.0], n_boot=4000, seed=0
    )
    assert est == 0.5 and lo == 0.0 and hi == 1.0


# ------------------------------------------------------------------------------------------ intervals that cover


def _covers(lo, hi, truth) -> float:
    return float(np.mean((lo <= truth + 1e-12) & (truth <= hi + 1e-12)))


@pytest.mark.parametrize("n", [32, 64])
@pytest.mark.parametrize("ba", [0.85, 0.95])
def test_balanced_accuracy_interval_covers_by_simulation(n, ba):
    """Nominal 95% Wilson/MOVER intervals cover >= 93% at the sizes of the bundled data. Exact and vectorised:
    the interval depends only on the two hit counts, so every outcome is weighed by its binomial probability."""
    from scipy.stats import binom

    y = np.array([1] * n + [0] * n)
    k1, k0 = (v.ravel() for v in np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij"))
    lo, hi = stats.balanced_accuracy_interval(k1, n, k0, n)
    for a, b in ((n, 0), (n - 3, n // 2), (5, n - 1)):  # the vectorised form is the function's
        pred = np.r_[np.arange(n) < a, np.arange(n) >= b]
        i = a * (n + 1) + b
        assert stats.balanced_accuracy_ci(y, pred)[1:] == pytest.approx((lo[i], hi[i]))
    for t1, t0 in ((ba, ba), (min(ba + 0.04, 1.0), ba - 0.04)):
        weight = binom.pmf(k1, n, t1) * binom.pmf(k0, n, t0)
        truth = (t1 + t0) / 2
        coverage = float(np.sum(weight * ((lo <= truth) & (truth <= hi))))
        assert coverage >= 0.93, (n, t1, t0, coverage)
    # perfect separation no longer gives [1, 1]
    est, lo1, hi1 = stats.balanced_accuracy_ci(y, y == 1)
    assert est == 1.0 and hi1 == 1.0 and lo1 < 0.97


def test_matched_scenes_widen_the_interval_and_resample_together():
    ids = [f"sad-test-{i:03d}" for i in range(32)] + [f"happy-test-{i:03d}" for i in range(32)]
    y = np.array([1] * 32 + [0] * 32)
    scenes = stats.scene_keys(ids, y)
    assert scenes is not None and scenes[0] == scenes[32] == "test-0"
    assert stats.scene_keys(ids[:31] + ["happy-test-999"] + ids[32:], y) is None
    idx = stats.resample_indices(y, 200, 0, ids, scenes)
    assert np.array_equal(idx[:, :32] + 32, idx[:, 32:])  # scene k's left and right texts travel together
    # hits correlated within scenes: the scene-aware interval is wider
    rng = np.random.default_rng(0)
    easy = rng.random(32) < 0.8
    pred = np.r_[easy, ~easy]
    indep = stats.balanced_accuracy_ci(y, pred)
    joint = stats.balanced_accuracy_ci(y, pred, scenes=scenes)
    assert joint[0] == indep[0] and joint[2] - joint[1] > (indep[2] - indep[1]) * 1.2


def test_scene_bootstrap_covers_a_correlated_lean():
    """mean p_left with scene correlation 0.5: the scene resample covers, the stratified one under-covers."""
    n, reps, rho = 32, 300, 0.5
    rng = np.random.default_rng(1)
    ids = [f"a-test-{i}" for i in range(n)] + [f"b-test-{i}" for i in range(n)]
    y = np.array([1] * n + [0] * n)
    scenes = stats.scene_keys(ids, y)
    hit = {"scene": 0, "stratified": 0}
    for r in range(reps):
        shared = rng.normal(size=n)
        q = np.r_[shared, shared] * np.sqrt(rho) + rng.normal(size=2 * n) * np.sqrt(1 - rho)
        mean = lambda y, v: float(v.mean())  # noqa: E731
        for kind, sc in (("scene", scenes), ("stratified", None)):
            _, lo, hi = stats.bootstrap_ci(mean, y, q, n_boot=300, seed=r, keys=ids, scenes=sc, method="percentile")
            hit[kind] += lo <= 0 <= hi
    assert hit["scene"] / reps >= 0.91
    assert hit["stratified"] < hit["scene"]


def test_bca_mirrors_and_matches_percentile_on_symmetric_data():
    rng = np.random.default_rng(2)
    y = np.array([1] * 30 + [0] * 30)
    q = rng.beta(2, 5, 60)
    f = lambda y, v: float(v.mean())  # noqa: E731
    a = stats.bootstrap_ci(f, y, q, n_boot=2000, seed=3)
    b = stats.bootstrap_ci(f, 1 - y, 1 - q, n_boot=2000, seed=3)
    assert a[0] == pytest.approx(1 - b[0]) and a[1] == pytest.approx(1 - b[2]) and a[2] == pytest.approx(1 - b[1])
    s = rng.normal(size=60)
    bca = stats.bootstrap_ci(f, y, s, n_boot=4000, seed=0)
    pct = stats.bootstrap_ci(f, y, s, n_boot=4000, seed=0, method="percentile")
    assert bca[1] == pytest.approx(pct[1], abs=0.03) and bca[2] == pytest.approx(pct[2], abs=0.03)


def test_paired_difference_cancels_what_two_classifiers_share():
    rng = np.random.default_rng(4)
    y = np.array([1] * 40 + [0] * 40)
    ids = [f"l-test-{i}" for i in range(40)] + [f"r-test-{i}" for i in range(40)]
    a = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.2, 80)
    b = a.copy()
    b[:4] = -np.abs(b[:4])  # b misses the first four left texts that a may get
    d = stats.paired_difference(y, a, b, ids=ids, n_boot=1000)
    assert d["resample"] == "scene" and d["value"] == pytest.approx(d["a"] - d["b"])
    assert d["value"] > 0 and d["ci95"][0] >= 0  # b is never better than a on any resample
    same = stats.paired_difference(y, a, a, ids=ids, n_boot=200)
    assert same["value"] == 0 and same["ci95"] == [0.0, 0.0]
    auc = stats.paired_difference(y, a, -a, metric="auroc", ids=ids, n_boot=300, matched=False)
    assert auc["resample"] == "stratified" and auc["ci95"][0] > 0
    with pytest.raises(ValueError, match="non-finite"):
        stats.paired_difference(y, np.r_[a[:-1], np.nan], b, ids=ids)


def test_permutation_p_and_holm():
    y = np.array([1] * 32 + [0] * 32)
    ids = [f"l-test-{i}" for i in range(32)] + [f"r-test-{i}" for i in range(32)]
    perfect = stats.permutation_p(y, y == 1, ids=ids)
    assert perfect == pytest.approx(1 / 10_001)
    rng = np.random.default_rng(5)
    # under the null the p-values are roughly uniform: about 5% below 0.05
    ps = [stats.permutation_p(y, rng.random(64) < 0.5, n_perm=400, seed=k) for k in range(200)]
    assert 0.01 <= np.mean(np.array(ps) <= 0.05) <= 0.11
    sc = stats.scene_keys(ids, y)
    assert stats.permutation_p(y, y == 1, scenes=sc, n_perm=2000) == pytest.approx(1 / 2001)
    # the swap of sides gives the same p
    pred = rng.random(64) < 0.6
    assert stats.permutation_p(y, pred, ids=ids) == stats.permutation_p(1 - y, ~pred, ids=ids)
    assert stats.holm([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]
    assert stats.holm([0.5, 0.001]) == [0.5, 0.002]


def test_non_finite_scores_are_refused_with_names():
    with pytest.raises(ValueError, match="pair a_vs_b, split test: 1 non-finite.*b-test-2"):
        stats.require_finite([0.1, np.inf], "pair a_vs_b, split test", ["a-test-1", "b-test-2"])
    with pytest.raises(ValueError, match="non-finite"):
        stats.auroc([1, 0], [np.nan, 0.0])


def test_evaluate_split_refuses_nan_naming_pair_split_and_ids():
    from emofast.probe import SplitIndex
    from emofast.probe.evaluation import evaluate_split

    p = _probe([1.0, 0.0], [0.0, 0.0])
    ids = ["a-test-1", "a-test-2", "b-test-1", "b-test-2"]
    index = SplitIndex(["t"] * 4, ids, np.zeros(4, dtype=np.int64), np.array([1, 1, 0, 0]))
    scores = np.array([1.0, np.nan, -1.0, -2.0]).reshape(4, 1, 1)
    with pytest.raises(ValueError, match="pair a_vs_b, split test: 1 non-finite.*a-test-2"):
        evaluate_split(p, scores, [3], index, n_boot=10, n_perm=10)
    ok = evaluate_split(p, np.nan_to_num(scores, nan=2.0), [3], index, n_boot=50, n_perm=100)["a_vs_b"]
    assert ok["resample"] == "scene" and ok["balanced_accuracy"]["value"] == 1.0
    assert set(ok["calibration"]) == {"constant", "raw", "calibrated", "ece_noise_floor"}
    assert 0 < ok["permutation_p"] <= 1


@pytest.mark.parametrize("n", [32, 48, 64])
def test_balanced_accuracy_interval_coverage_over_a_grid(n):
    """Exact coverage over every pair of true hit rates in [0.5, 1] (step 0.01): the chosen interval (Wilson
    below, Clopper-Pearson above) keeps every grid point >= 0.92 and averages about 0.95 or more; Wilson alone
    misses on the upper side near BA 1 (the reason for the choice), which this test also shows."""
    chosen = stats.balanced_accuracy_coverage(n)
    assert chosen["coverage"].min() >= 0.92, chosen["coverage"].min()
    assert chosen["coverage"].mean() >= 0.95
    wilson = stats.balanced_accuracy_coverage(n, upper="wilson")
    top = wilson["ba"] > 0.95
    assert wilson["coverage"][top].min() < 0.92  # the defect: misses above 0.95 ...
    assert wilson["miss_high"][top].max() > 0.05  # ... on the upper side
    assert chosen["miss_high"][top].max() < wilson["miss_high"][top].max()
    # the mix's lower limit is Wilson's: no wider below than before
    lo_w, _ = stats.balanced_accuracy_interval(np.arange(n + 1), n, n // 2, n, upper="wilson")
    lo_c, _ = stats.balanced_accuracy_interval(np.arange(n + 1), n, n // 2, n)
    np.testing.assert_allclose(lo_c, lo_w)


def test_calibration_reference_is_the_raw_sigmoid_not_the_constant():
    """A 3x over-confident probe: its raw sigmoid loses to the calibrated fit on NLL; the constant 0.5 has no
    ECE (uninformative on balanced data); the ECE noise floor at 128 texts is what the review measured."""
    rng = np.random.default_rng(0)
    n = 64
    y = np.r_[np.ones(n), np.zeros(n)]
    true_logit = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.0, 2 * n)
    score = 3.0 * true_logit  # over-confident raw scores
    platt = cal.fit_platt(score, y)
    rep = cal.calibration_report(y, score, {"calibrated": platt}, n_sim=300)
    assert rep["calibrated"]["nll"] < rep["raw"]["nll"]
    assert rep["constant"]["ece"] is None
    floor = rep["ece_noise_floor"]
    assert floor["n"] == 128 and 0.03 < floor["mean"] < 0.10 and floor["q95"] > floor["mean"]
