"""The steering check's parts: strength under a damage budget (the search, and the whole check by default), the
judges behind their interface, and the statistics (rho, steering as a fraction of prompting)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import tiny
from test_workflow import write_pairs

from emofast.data import load_pairs
from emofast.data.prompts import calibration_prompts, instructed, steer_prompts
from emofast.generation.calibrate import AlphaSearch, damage_bounds, find_alpha_range, within_budget
from emofast.generation.effects import boot_fraction, boot_spearman
from emofast.generation.judges import (
    EMPATH_CATEGORIES,
    EmpathJudge,
    JudgeUnavailable,
    get_judge,
    judge_names,
    load_judges,
)
from emofast.generation.steer import steering_vectors
from emofast.generation.verdict import STATUSES, status_of, summarise, write_tables
from emofast.probe import PairedProbe

PAIRS = [("sad", "happy"), ("angry", "calm"), ("fear", "confidence"), ("love", "hate"), ("anxious", "relaxed")]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = write_pairs(tmp_path_factory.mktemp("budget") / "data")
    model, tok = tiny.model("llama"), tiny.tokenizer()
    tok.padding_side, tok.pad_token = "left", "<pad>"
    data = load_pairs(root)
    return model, tok, data, PairedProbe.fit(model, tok, data, width=2)


def _run(search: AlphaSearch, limit: float) -> list[float]:
    """Drive a search against a damage that crosses the budget at ``limit``; the alphas it tried."""
    tried = []
    while not search.done:
        a = search.next
        tried.append(a)
        search.update(a, a <= limit)
    return tried


def test_search_doubles_halves_and_bisects():
    s = AlphaSearch(1.0, 0.125, 16.0, 2)
    assert _run(s, 2.6) == [1.0, 2.0, 4.0, 3.0, 2.5] and s.lo == 2.5
    s = AlphaSearch(1.0, 0.125, 16.0, 2)
    assert _run(s, 0.3) == [1.0, 0.5, 0.25, 0.375, 0.3125] and s.lo == 0.25
    s = AlphaSearch(1.0, 0.125, 16.0, 2)
    assert _run(s, 0.01) == [1.0, 0.5, 0.25, 0.125] and s.lo == 0.0  # not steerable within the budget
    s = AlphaSearch(1.0, 0.125, 16.0, 2)
    assert _run(s, 100.0) == [1.0, 2.0, 4.0, 8.0, 16.0] and s.lo == 16.0  # the cap
    assert within_budget(1.4, 9.0, 1.5, None) and not within_budget(1.4, 9.0, 1.5, 1.0)
    assert not within_budget(float("nan"), 0.0, 1.5, None)


def test_damage_bounds_resample_prompts():
    """The upper bound of the perplexity ratio and the KL: a bootstrap over prompts, steered and unsteered rows of
    the same resampled prompts; at least the point estimate; the point estimate itself at confidence 0."""
    base_nll, n = np.array([6.0, 6.0, 6.0, 6.0]), np.array([3, 3, 3, 3])
    same = damage_bounds(base_nll, n, np.zeros(4), base_nll, n)
    assert same["ppl_ratio"] == pytest.approx(1.0) and same["ppl_ratio_upper"] == pytest.approx(1.0)
    # one prompt carries all the damage: the point estimate hides how much rides on it
    nll, kl = np.array([12.0, 6.0, 6.0, 6.0]), np.array([3.0, 0.0, 0.0, 0.0])
    pt = damage_bounds(nll, n, kl, base_nll, n, confidence=0)
    assert pt["ppl_ratio"] == pytest.approx(np.exp(6 / 12)) and pt["kl"] == pytest.approx(3 / 12)
    assert pt["ppl_ratio_upper"] == pt["ppl_ratio"] and pt["kl_upper"] == pt["kl"]
    b90 = damage_bounds(nll, n, kl, base_nll, n, confidence=0.9)
    b99 = damage_bounds(nll, n, kl, base_nll, n, confidence=0.99)
    assert pt["ppl_ratio"] < b90["ppl_ratio_upper"] <= b99["ppl_ratio_upper"] <= np.exp(6 / 3) + 1e-9
    assert pt["kl"] < b90["kl_upper"] <= 1.0 + 1e-9
    # the same spread over four times the prompts: a tighter bound around the same estimate
    b4 = damage_bounds(np.tile(nll, 4), np.tile(n, 4), np.tile(kl, 4), np.tile(base_nll, 4), np.tile(n, 4))
    assert b4["ppl_ratio"] == pytest.approx(pt["ppl_ratio"]) and b4["ppl_ratio_upper"] < b90["ppl_ratio_upper"]
    # rows without a token are left out; none at all: NaN, which is never within the budget
    nan = damage_bounds([np.nan, 12.0], [0, 3], [np.nan, 3.0], [6.0, 6.0], [3, 3])
    assert nan["ppl_ratio"] == pytest.approx(np.exp(12 / 3 - 12 / 6)) and nan["kl"] == pytest.approx(1.0)
    assert np.isnan(damage_bounds([np.nan], [0], [np.nan], [6.0], [3])["ppl_ratio_upper"])
    with pytest.raises(ValueError, match="confidence"):
        damage_bounds(nll, n, kl, base_nll, n, confidence=1.5)
    with pytest.raises(ValueError, match="one per prompt"):
        damage_bounds(nll, n, kl, base_nll[:3], n[:3])


def test_find_alpha_range_keeps_the_curve_within_budget(fitted):
    model, tok, data, probe = fitted
    name = "angry_vs_calm"
    vecs = steering_vectors(model, tok, probe, data, pairs=[name])
    prompts = [t for _, t in calibration_prompts(4)]
    kw = {"max_ppl_ratio": 1.05, "max_new_tokens": 4, "max_alpha": 64.0}
    res = find_alpha_range(model, tok, prompts, {name: (name, vecs)}, **kw)  # default: the 0.9 upper bound
    point = find_alpha_range(model, tok, prompts, {name: (name, vecs)}, confidence=0, **kw)
    assert res["baseline"]["ppl"] > 1
    assert res["settings"]["confidence"] == 0.9 and point["settings"]["decided_on"] == "point estimate"
    for sign in ("+", "-"):
        r = res[name][sign]
        curve = r["curve"]
        assert curve and all(np.sign(c["alpha"]) == (1 if sign == "+" else -1) for c in curve)
        # the chosen alpha is the largest within budget tried, and it was tried
        ok = [abs(c["alpha"]) for c in curve if c["within"]]
        assert r["alpha"] == (max(ok) if ok else 0.0)
        # the search decides on the upper bound, which is never below the point estimate
        assert all(c["ppl_ratio_upper"] >= c["ppl_ratio"] and c["kl_upper"] >= c["kl"] for c in curve)
        assert all(c["within"] == (c["ppl_ratio_upper"] <= 1.05) for c in curve)
        assert all(c["within_point"] == (c["ppl_ratio"] <= 1.05) for c in curve)
        assert all(c["kl"] >= 0 for c in curve)
        # the margin only makes the chosen strength smaller (greedy: the same alpha gives the same texts)
        assert r["alpha"] <= point[name][sign]["alpha"]
        assert all(c["ppl_ratio_upper"] == c["ppl_ratio"] for c in point[name][sign]["curve"])
    big = [c for c in res[name]["+"]["curve"] if abs(c["alpha"]) >= 16]
    assert not big or max(c["kl"] for c in big) > min(c["kl"] for c in res[name]["+"]["curve"])


def test_sampled_baseline_pools_several_texts_per_prompt(fitted):
    """With sampling, the unsteered baseline is ``baseline_samples`` texts per prompt, in one batch: its
    perplexity is that of those rows pooled."""
    from emofast.generation.damage import generate_rows, pooled_ppl

    model, tok, data, probe = fitted
    name = "sad_vs_happy"
    vecs = steering_vectors(model, tok, probe, data, pairs=[name])
    prompts = [t for _, t in calibration_prompts(2)]
    gen = {"max_new_tokens": 3, "do_sample": True, "seed": 5}
    res = find_alpha_range(
        model, tok, prompts, {name: (name, vecs)}, baseline_samples=3, max_alpha=1.0, bisect=0, min_alpha=1.0, **gen
    )
    assert res["baseline"]["samples_per_prompt"] == 3
    rows = generate_rows(model, tok, [p for p in prompts for _ in range(3)], [{}] * 6, {}, **gen)
    assert len(set(rows["texts"])) > 2  # the samples differ
    assert res["baseline"]["ppl"] == pytest.approx(pooled_ppl(rows["nll"], rows["n_tokens"]))


def test_steer_check_by_default_calibrates_every_pair(fitted, tmp_path):
    from emofast.commands.steer_check import steer_check

    model, tok, data, probe = fitted
    res = steer_check(
        model,
        tok,
        probe,
        None,
        tmp_path / "sc",
        n_prompts=3,
        n_calibration=2,
        max_new_tokens=3,
        n_boot=30,
        data=data,
        judges=("vader",),
        progress=False,
        grid=2,
    )
    assert res["alphas"] == "calibrated" and set(res["verdict"]) == set(probe.names)
    cal = json.loads((tmp_path / "sc" / "calibration.json").read_text())
    assert set(cal["prompt_ids"]).isdisjoint(res["prompt_ids"])  # calibration and evaluation prompts disjoint
    assert cal["settings"]["confidence"] == 0.9  # the margin by default; the curve keeps both numbers
    assert all("ppl_ratio_upper" in c and "ppl_ratio" in c for c in cal[probe.names[0]]["+"]["curve"])
    for arm, v in res["verdict"].items():
        lo, hi = v["alpha_range"]
        assert hi == pytest.approx(cal[arm]["+"]["alpha"], abs=1e-3) and lo == pytest.approx(
            -cal[arm]["-"]["alpha"], abs=1e-3
        )
        alphas = sorted({s["alpha"] for s in res["summary"] if s["arm"] == arm and s["direction"] == "probe"})
        assert alphas[0] >= lo - 1e-9 and alphas[-1] <= hi + 1e-9 and 0.0 in alphas
        assert v["steerable_within_budget"] == (hi > 0 or lo < 0)
        assert v["status"] in STATUSES and v["status_judge"] == "vader" and v["verdict_text"].startswith(arm)
    assert res["judges_skipped"] == {}
    png = (tmp_path / "sc" / "dose_response.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    # the run report's section: one table row per pair, the figure, old-format checks pointed at
    from emofast.report.doc import Doc
    from emofast.report.steering import section_steering, steer_checks

    (tmp_path / "steer-check-old").mkdir()
    (tmp_path / "steer-check-old" / "summary.json").write_text(json.dumps({"pair": "sad_vs_happy"}))
    (tmp_path / "steer-check").mkdir()
    (tmp_path / "steer-check" / "summary.json").write_text((tmp_path / "sc" / "summary.json").read_text())
    doc = Doc("t")
    section_steering(doc, steer_checks(tmp_path))
    md = doc.markdown()
    assert all(f"| {name} |" in md for name in probe.names) and "rho vader" in md and "steer-check-old" in md
    assert "| status |" in md and "Verdicts (status on vader" in md and "90% upper bound" in md
    assert doc.figures


def test_layer_sweep_arms(fitted, tmp_path):
    from emofast.commands.steer_check import steer_check

    model, tok, data, probe = fitted
    res = steer_check(
        model,
        tok,
        probe,
        "angry_vs_calm",
        tmp_path / "sw",
        alphas=(-8, 8),
        layers="sweep",
        sweep_layers="1:3",
        n_prompts=3,
        max_new_tokens=3,
        n_boot=20,
        data=data,
        judges=("vader",),
        progress=False,
    )
    assert set(res["verdict"]) == {"angry_vs_calm@1", "angry_vs_calm@2", "angry_vs_calm@3"}
    assert all(a["layers"] == [int(k.split("@")[1])] for k, a in res["arms"].items())
    assert (tmp_path / "sw" / "layers.png").read_bytes()[:4] == b"\x89PNG"  # the curve over layers
    with pytest.raises(ValueError, match="sweep-layers"):
        steer_check(model, tok, probe, "angry_vs_calm", tmp_path / "x", layers="sweep", sweep_layers="a:b")


def test_judges_interface_signs_and_empath_mapping(monkeypatch):
    assert {"vader", "empath"} <= set(judge_names())
    vader = get_judge("vader")
    # the expected sign per bundled pair: the left side is the unpleasant one except for love/hate
    assert [vader.expected_sign(a, b) for a, b in PAIRS] == [-1, -1, -1, 1, -1]
    assert vader.expected_sign("sad", "angry") is None  # same valence: no verdict
    s = vader.score(["What a wonderful, happy day!", "This is awful and sad.", ""], "sad", "happy")
    assert s[0] > 0 > s[1] and np.isnan(s[2])
    lex = {c: [c] for cats in EMPATH_CATEGORIES.values() for c in cats}
    emp = EmpathJudge(lexicon=lex)
    assert all(emp.expected_sign(a, b) == 1 for a, b in PAIRS)
    got = emp.score(["Sadness, sadness x x", "joy x x x", "contentment", ""], "sad", "happy")
    np.testing.assert_allclose(got[:3], [0.5, -0.25, 0.0])
    assert np.isnan(got[3])
    # calm and relaxed share contentment: a word in both sides counts for neither
    assert EmpathJudge(lexicon=lex).score(["contentment"], "calm", "relaxed")[0] == 0
    with pytest.raises(ValueError, match="no categories"):
        EmpathJudge(lexicon={"sadness": ["x"]})
    # without the optional package: a clear note, the check goes on with the others
    monkeypatch.setitem(sys.modules, "empath", None)
    with pytest.raises(JudgeUnavailable, match="pip install"):
        get_judge("empath")
    judges, skipped = load_judges(["vader", "empath"])
    assert [j.name for j in judges] == ["vader"] and "empath" in skipped
    with pytest.raises(ValueError, match="unknown judge"):
        get_judge("nli")


def test_budget_confidence_option(capsys):
    """``--budget-confidence``: a level in [0, 1) or 'point'; anything else stops at the command line."""
    from emofast.cli import main

    for bad in ("1.2", "high"):
        with pytest.raises(SystemExit):
            main(["steer-check", "--probe", "nowhere", "--budget-confidence", bad])
        assert "--budget-confidence" in capsys.readouterr().err
    assert main(["steer-check", "--probe", "nowhere", "--budget-confidence", "point"]) == 2  # parsed; no run there
    assert "nowhere" in capsys.readouterr().err


def test_prompts_split_and_instructions():
    # the defaults: 20 evaluation and 12 calibration prompts, disjoint
    assert {i for i, _ in calibration_prompts(n_eval=20)}.isdisjoint({i for i, _ in steer_prompts(20)})
    assert len(calibration_prompts(n_eval=20)) == 12
    cal = calibration_prompts(8, n_eval=32)
    assert {i for i, _ in cal}.isdisjoint({i for i, _ in steer_prompts(32)})
    with pytest.raises(ValueError, match="overlap"):
        calibration_prompts(10, n_eval=32)
    assert instructed("Describe a kitchen.", "sad") == "Describe a kitchen. Answer in a sad tone."
    assert instructed("Describe a kitchen.", "anxious").endswith("an anxious tone.")


def test_statistics():
    rng = np.random.default_rng(0)
    A = np.tile([-2.0, -1.0, 0.0, 1.0, 2.0], (30, 1))
    noise = rng.normal(0, 1, A.shape)
    rho, lo, hi = boot_spearman(A, -A + noise, rng, 200)
    assert rho < -0.4 and lo < rho < hi < 0
    rho, lo, hi = boot_spearman(A, noise, rng, 200)
    assert lo < 0 < hi
    assert np.isnan(boot_spearman(A, np.zeros_like(A), rng, 50)[0])  # a constant measure has no rho
    n = 40
    p_hi, p_lo = rng.normal(1.0, 0.2, n), rng.normal(-1.0, 0.2, n)  # prompting moves the judge by 2
    s_hi, s_lo = rng.normal(0.5, 0.2, n), rng.normal(-0.5, 0.2, n)  # steering by 1
    e = boot_fraction(s_hi, s_lo, p_hi, p_lo, rng, 300)
    assert e["fraction"] == pytest.approx(0.5, abs=0.08) and e["fraction_lo"] < 0.5 < e["fraction_hi"]
    e = boot_fraction(s_hi, s_lo, np.zeros(n), np.zeros(n), rng, 50)
    assert np.isnan(e["fraction"])


def test_a_pair_that_cannot_be_steered_within_budget_is_reported(fitted, tmp_path):
    """A budget no alpha can meet (perplexity ratio 0.5): both directions 0, only alpha 0 evaluated, no rho, and
    the report says so instead of hiding the pair."""
    from emofast.commands.steer_check import steer_check
    from emofast.report.doc import Doc
    from emofast.report.steering import section_steering

    model, tok, data, probe = fitted
    res = steer_check(
        model,
        tok,
        probe,
        "sad_vs_happy",
        tmp_path / "sc",
        n_prompts=3,
        n_calibration=2,
        max_new_tokens=3,
        n_boot=20,
        data=data,
        judges=("vader",),
        progress=False,
        max_ppl_ratio=0.5,
    )
    v = res["verdict"]["sad_vs_happy"]
    assert v["steerable_within_budget"] is False and v["alpha_range"] == [0.0, 0.0]
    assert v["status"] == "not steerable within the budget" and v["verdict_text"].startswith("sad_vs_happy: not st")
    assert np.isnan(v["judges"]["vader"]["rho"]) and not v["judges"]["vader"]["meets"]
    doc = Doc("t")
    section_steering(doc, [{**res, "folder": "sc"}])
    assert "**Not steerable within the budget**" in doc.markdown() and "sad_vs_happy" in doc.markdown()


def _rows(rng, n=12, damage=(0.05, 0.7), judge_slope=-0.3):
    """Synthetic check rows for one arm: unsteered, the pair's direction at -1 and +1 (log-perplexity up by
    ``damage``), the random direction at -1 and +1 (no damage); the judge moves with the pair's direction only."""
    rows = []
    for p in range(n):
        for direction, alpha in (("none", 0.0), ("probe", -1.0), ("probe", 1.0), ("random", -1.0), ("random", 1.0)):
            extra = {-1.0: damage[0], 1.0: damage[1]}[alpha] if direction == "probe" else 0.0
            score = (judge_slope * alpha if direction == "probe" else 0.0) + rng.normal(0, 0.1)
            rows.append(
                {
                    "arm": "a",
                    "pair": "sad_vs_happy",
                    "direction": direction,
                    "alpha": alpha,
                    "instructed": None,
                    "prompt_id": f"p{p}",
                    "vader": score,
                    "probe_p_left": 0.5,
                    "n_tokens": 10,
                    "nll": 10 * (1.0 + extra),
                    "kl": 10 * 0.1 * abs(alpha),  # summed over the 10 tokens
                    "empty": 0.0,
                }
            )
    return rows


def test_evaluated_alphas_over_budget_are_flagged_and_named(tmp_path):
    """The budget checked again on the evaluation prompts: +1 costs exp(0.7) = 2.01x, flagged in the table and
    named in the verdict; -1 (1.05x) and the random direction are within it; the status comes from the judge."""
    rng = np.random.default_rng(0)
    kw = dict(
        arms=["a"],
        pair_of={"a": "sad_vs_happy"},
        grids={"a": [-1.0, 0.0, 1.0]},
        judges={"vader": {"a": -1}},
        max_ppl_ratio=1.5,
        max_kl=None,
        n_boot=200,
        seed=0,
    )
    cal = {"a": {"+": {"alpha": 1.0}, "-": {"alpha": 1.0}}}
    res = summarise(_rows(rng), calibration=cal, **kw)
    flags = {(s["direction"], s["alpha"]): s["over_budget"] for s in res["summary"]}
    assert flags == {
        ("probe", -1.0): False,
        ("probe", 0.0): False,
        ("probe", 1.0): True,
        ("random", -1.0): False,
        ("random", 0.0): False,
        ("random", 1.0): False,
    }
    v = res["verdict"]["a"]
    assert [o["alpha"] for o in v["over_budget_alphas"]] == [1.0] and not v["evaluated_within_budget"]
    assert v["over_budget_alphas"][0]["ppl_ratio"] == pytest.approx(np.exp(0.7))
    assert (
        v["status"] == "steers"
        and "over the 1.5x budget" in v["verdict_text"]
        and "alpha +1 (2.01x)" in v["verdict_text"]
    )
    write_tables(tmp_path, res)
    head = (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    assert "over_budget" in head
    # a KL budget flags too (0.1 per token at |alpha| 1 > 0.05), the random direction included
    res = summarise(_rows(rng), calibration=cal, **{**kw, "max_kl": 0.05})
    assert all(s["over_budget"] == (s["alpha"] != 0) for s in res["summary"])
    # a weak judge: below the bar; no movement: not shown; within the budget everywhere: nothing named
    weak = _rows(np.random.default_rng(2), n=80, damage=(0, 0), judge_slope=-0.03)  # rho -0.19 [-0.29, -0.08]
    res = summarise(weak, calibration=cal, **kw)
    v = res["verdict"]["a"]
    assert v["status"] == "moves, below the bar" and v["over_budget_alphas"] == [] and "budget" not in v["verdict_text"]
    res = summarise(_rows(rng, judge_slope=0.0), calibration=None, **kw)
    assert res["verdict"]["a"]["status"] == "not shown"


def test_status_of_each_case():
    jv = {"expected_sign": -1, "rho": -0.45, "lo": -0.6, "hi": -0.3, "meets": True, "random_includes_zero": True}
    assert status_of(jv, True) == "steers" and status_of(jv, None) == "steers"
    assert status_of({**jv, "random_includes_zero": False}, True) == "not shown"  # the random push moves it too
    assert status_of({**jv, "rho": -0.2, "lo": -0.3, "hi": -0.1, "meets": False}, True) == "moves, below the bar"
    assert status_of({**jv, "rho": -0.2, "lo": -0.4, "hi": 0.1, "meets": False}, True) == "not shown"
    assert status_of({**jv, "rho": 0.4, "lo": 0.2, "hi": 0.5, "meets": False}, True) == "not shown"  # wrong sign
    assert status_of({**jv, "expected_sign": None, "meets": False}, True) == "not shown"
    assert status_of({**jv, "rho": float("nan"), "meets": False}, True) == "not shown"
    assert status_of(jv, False) == "not steerable within the budget"
