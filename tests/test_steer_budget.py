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
from emofast.generation.calibrate import AlphaSearch, find_alpha_range, within_budget
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


def test_find_alpha_range_keeps_the_curve_within_budget(fitted):
    model, tok, data, probe = fitted
    name = "angry_vs_calm"
    vecs = steering_vectors(model, tok, probe, data, pairs=[name])
    res = find_alpha_range(
        model,
        tok,
        [t for _, t in calibration_prompts(2)],
        {name: (name, vecs)},
        max_ppl_ratio=1.05,
        max_new_tokens=4,
        max_alpha=64.0,
    )
    assert res["baseline"]["ppl"] > 1
    for sign in ("+", "-"):
        r = res[name][sign]
        curve = r["curve"]
        assert curve and all(np.sign(c["alpha"]) == (1 if sign == "+" else -1) for c in curve)
        # the chosen alpha is the largest within budget tried, and it was tried
        ok = [abs(c["alpha"]) for c in curve if c["within"]]
        assert r["alpha"] == (max(ok) if ok else 0.0)
        assert all(c["ppl_ratio"] <= 1.05 for c in curve if c["within"])
        assert all(c["kl"] >= 0 for c in curve)
    big = [c for c in res[name]["+"]["curve"] if abs(c["alpha"]) >= 16]
    assert not big or max(c["kl"] for c in big) > min(c["kl"] for c in res[name]["+"]["curve"])


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
    for arm, v in res["verdict"].items():
        lo, hi = v["alpha_range"]
        assert hi == pytest.approx(cal[arm]["+"]["alpha"], abs=1e-3) and lo == pytest.approx(
            -cal[arm]["-"]["alpha"], abs=1e-3
        )
        alphas = sorted({s["alpha"] for s in res["summary"] if s["arm"] == arm and s["direction"] == "probe"})
        assert alphas[0] >= lo - 1e-9 and alphas[-1] <= hi + 1e-9 and 0.0 in alphas
        assert v["steerable_within_budget"] == (hi > 0 or lo < 0)
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


def test_prompts_split_and_instructions():
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
    assert np.isnan(v["judges"]["vader"]["rho"]) and not v["judges"]["vader"]["meets"]
    doc = Doc("t")
    section_steering(doc, [{**res, "folder": "sc"}])
    assert "**Not steerable within the budget**" in doc.markdown() and "sad_vs_happy" in doc.markdown()
