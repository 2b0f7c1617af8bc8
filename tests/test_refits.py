"""The refit control and the label resamples behind it and behind the shuffled-label baselines."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
from test_controls import contrast_data  # noqa: F401  (a fixture)
from test_workflow import _run, setup  # noqa: F401  (setup is a fixture)

from emofast.probe.resample import shuffled_labelings, train_resamples


def _matched(n=6):
    ids = [f"sad-train-{k}" for k in range(n)] + [f"happy-train-{k}" for k in range(n)]
    return SimpleNamespace(pair=np.zeros(2 * n, int), y=np.r_[np.ones(n, int), np.zeros(n, int)], ids=ids)


def test_shuffled_labels_stay_within_scenes_for_matched_data():
    ix = _matched()
    labelings = shuffled_labelings(ix, 20, 0)
    flipped = 0
    for y in labelings:
        for k in range(6):  # scene k: text k (left file) and text 6 + k (right file) keep opposite sides
            assert y[k] + y[6 + k] == 1
        flipped += int((y != ix.y).any())
    assert flipped >= 15  # and the sides do get shuffled
    # unmatched ids: a plain permutation within the pair (counts kept)
    un = SimpleNamespace(pair=ix.pair, y=ix.y, ids=[f"t{k}" for k in range(12)])
    assert all(int(y.sum()) == 6 for y in shuffled_labelings(un, 5, 0))


def test_train_resamples_keep_sides_and_draw_scenes_together():
    ix = _matched()
    ix.pair = np.r_[np.zeros(12, int)]
    for idx in train_resamples(ix, 10, 3):
        assert len(idx) == 12 and int(ix.y[idx].sum()) == 6
        scenes = sorted(int(ix.ids[i].rsplit("-", 1)[1]) for i in idx if ix.y[i] == 1)
        assert scenes == sorted(int(ix.ids[i].rsplit("-", 1)[1]) for i in idx if ix.y[i] == 0)
    assert len({tuple(r) for r in train_resamples(ix, 10, 3)}) > 1


@pytest.fixture(scope="module")
def ran_refits(setup):  # noqa: F811
    out = setup / "run_refits"
    assert _run(setup, out) == 0
    return out


def test_refit_control_in_metrics_and_pairs_csv(ran_refits):
    m = json.loads((ran_refits / "metrics.json").read_text())
    rf = m["controls"]["refits"]
    assert rf["refits"] == 20 and rf["kind"] == "evidence"
    pairs = list(m["pairs_test"])
    ps = []
    for name in pairs:
        r = rf[name]
        assert len(r["probe_balanced_accuracy"]) == len(r["lexical_balanced_accuracy"]) == 20
        d = np.array(r["probe_balanced_accuracy"]) - np.array(r["lexical_balanced_accuracy"])
        assert r["value"] == pytest.approx(d.mean(), abs=1e-6)
        lo, hi = r["ci95"]
        assert lo <= hi and 0 < r["p_one_sided"] <= r["p_holm"] <= 1
        ps.append(r["p_one_sided"])
    assert max(rf[n]["p_holm"] for n in pairs) >= max(ps) - 1e-12
    with open(ran_refits / "pairs.csv") as f:
        rows = list(csv.DictReader(f))
    for col in ("probe_minus_lexical_refit", "probe_minus_lexical_refit_lo", "probe_minus_lexical_refit_hi"):
        assert all(row[col] != "" for row in rows), col
    timing = json.loads((ran_refits / "timing.json").read_text())
    assert timing["refits_s"] > 0
    from emofast.report import write_run_report

    write_run_report(ran_refits)
    md = (ran_refits / "report.md").read_text()
    assert "probe - lexical over refits" in md and "Holm p" in md


def test_random_init_over_several_seeds(setup, tmp_path):  # noqa: F811
    """--random-init-seeds 2: two freshly initialised models, their balanced accuracies and spread per pair; the
    first seed's entries are the per-pair random-init control as before."""
    from emofast.cli import main

    out = tmp_path / "run"
    args = ["run", "--model", str(setup / "model"), "--pairs", str(setup / "data"), "--out", str(out)]
    args += ["--width", "2", "--n-boot", "50", "--no-progress", "--no-report", "--controls", "random-init"]
    assert main([*args, "--shuffled", "0", "--random-init-seeds", "2"]) == 0
    ri = json.loads((out / "metrics.json").read_text())["controls"]["random_init"]
    spread = ri["across_seeds"]
    assert spread["seeds"] == [0, 1]
    for name in json.loads((out / "metrics.json").read_text())["pairs_test"]:
        s = spread[name]
        assert len(s["balanced_accuracy"]) == 2 and s["balanced_accuracy"][0] == ri[name]["balanced_accuracy"]["value"]
        assert s["min"] <= s["mean"] <= s["max"] and s["sd"] is not None
        assert len(s["auroc"]) == 2
    assert spread["weights_fingerprint"][0] != spread["weights_fingerprint"][1]  # two different fresh models


def test_identity_refits_reproduce_the_probe_and_the_lexical_control(setup, tmp_path, monkeypatch):  # noqa: F811
    """With every resample the train split itself, each refit is the probe and the lexical baseline again: the
    refit balanced accuracies equal the run's test figures (offsets, column blocks and selection line up)."""
    import emofast.commands.refits as refits_mod
    from emofast.cli import main

    monkeypatch.setattr(refits_mod, "train_resamples", lambda train, n, seed: [np.arange(len(train.y))] * n)
    out = tmp_path / "run"
    args = ["run", "--model", str(setup / "model"), "--pairs", str(setup / "data"), "--out", str(out)]
    args += ["--width", "2", "--n-boot", "50", "--no-progress", "--no-report", "--controls", "lexical"]
    assert main([*args, "--shuffled", "3", "--refits", "2"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for name, t in m["pairs_test"].items():
        r = m["controls"]["refits"][name]
        assert r["probe_balanced_accuracy"] == pytest.approx([t["balanced_accuracy"]["value"]] * 2, abs=1e-9)
        lex = m["controls"]["lexical"][name]["balanced_accuracy"]["value"]
        assert r["lexical_balanced_accuracy"] == pytest.approx([lex] * 2, abs=1e-9)


def test_identity_refits_reproduce_the_contrast_readings(setup, contrast_data, tmp_path, monkeypatch):  # noqa: F811
    """On the contrast split too: with every resample the train split itself, each refit reads the contrast texts
    as the run's probe and lexical baseline do; the columns reach pairs.csv and the report's contrast table."""
    import emofast.commands.refits as refits_mod
    from emofast.cli import main
    from emofast.report import write_run_report

    monkeypatch.setattr(refits_mod, "train_resamples", lambda train, n, seed: [np.arange(len(train.y))] * n)
    out = tmp_path / "run"
    args = ["run", "--model", str(setup / "model"), "--pairs", str(contrast_data), "--out", str(out)]
    args += ["--width", "2", "--n-boot", "50", "--no-progress", "--no-report", "--controls", "lexical"]
    assert main([*args, "--shuffled", "0", "--refits", "2"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    rc = m["controls"]["refits"]["contrast"]
    assert set(rc) == set(m["pairs_test"])
    for name, r in rc.items():
        con = m["controls"]["contrast"][name]
        assert r["probe_balanced_accuracy"] == pytest.approx([con["balanced_accuracy"]["value"]] * 2, abs=1e-9)
        lex = con["lexical"]["balanced_accuracy"]["value"]
        assert r["lexical_balanced_accuracy"] == pytest.approx([lex] * 2, abs=1e-9)
        lo, hi = r["ci95"]
        assert lo <= hi and 0 < r["p_one_sided"] <= r["p_holm"] <= 1
    with open(out / "pairs.csv") as f:
        rows = list(csv.DictReader(f))
    for col in ("probe_minus_lexical_contrast_refit", "probe_minus_lexical_contrast_refit_p_holm"):
        assert all(row[col] != "" for row in rows), col
    write_run_report(out)
    assert "over refits, Holm p" in (out / "report.md").read_text()
