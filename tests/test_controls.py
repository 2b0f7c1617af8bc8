"""The run's controls: the lexical baseline, the random-init model, the out-of-domain split, and their columns."""

from __future__ import annotations

import csv
import json
import math
import random
import shutil

import numpy as np
import pytest
from test_workflow import WORDS, _run, ran, setup, write_pairs  # noqa: F401  (setup and ran are fixtures)

from emofast.cli import main

#: contrast texts: each side's texts are written in the other side's words
OTHER = {"sad": "happy", "happy": "sad", "angry": "calm", "calm": "angry"}


def _write_contrast(data, split, n, seed):
    """A ``contrast``-like split per pair: each side's texts use the other side's cue words. The sides are NOT
    matched, but the ids ``{side}-{split}-{i}`` look matched, so scene detection would pair them up if asked."""
    rng = random.Random(seed)
    for left, right in (("sad", "happy"), ("angry", "calm")):
        d = data / f"{left}_vs_{right}" / split
        d.mkdir(parents=True, exist_ok=True)
        for side in (left, right):
            with open(d / f"{side}.jsonl", "w") as f:
                for i in range(n):
                    w = WORDS[OTHER[side]]
                    text = f"at {rng.randint(1, 99)} they saw {rng.choice(w)} and {rng.choice(w)}, but not me"
                    f.write(json.dumps({"id": f"{side}-{split}-{i:03d}", "text": text}) + "\n")


@pytest.fixture(scope="module")
def contrast_data(setup):  # noqa: F811
    """The tiny data plus an ``ood`` split, a ``contrast`` split (8 per side) and a ``contrast_train`` split."""
    data = setup / "data_ood"
    if not data.exists():
        shutil.copytree(setup / "data", data)
        write_pairs(setup / "ood_src", n=(6, 6, 6), seed=7)
        for pair in ("sad_vs_happy", "angry_vs_calm"):
            shutil.copytree(setup / "ood_src" / pair / "test", data / pair / "ood")
            for f in (data / pair / "ood").glob("*.jsonl"):
                rows = [json.loads(x) for x in f.read_text().splitlines()]
                f.write_text("".join(json.dumps({**r, "id": r["id"].replace("test", "ood")}) + "\n" for r in rows))
        _write_contrast(data, "contrast", 8, seed=11)
        _write_contrast(data, "contrast_train", 6, seed=12)
    return data


@pytest.fixture(scope="module")
def ran_ood(setup, contrast_data):  # noqa: F811
    out = setup / "run_ood"
    assert _run(setup, out, pairs=contrast_data) == 0
    return out


@pytest.fixture(scope="module")
def ran_aug(setup, contrast_data):  # noqa: F811
    out = setup / "run_aug"
    args = ["run", "--model", str(setup / "model"), "--pairs", str(contrast_data), "--out", str(out)]
    rc = main([*args, "--augment", "contrast", "--width", "2", "--n-boot", "200", "--no-progress", "--no-report"])
    assert rc == 0
    return out


def test_lexical_random_init_and_ood_in_metrics(ran_ood):
    m = json.loads((ran_ood / "metrics.json").read_text())
    c = m["controls"]
    assert c["run"] == ["lexical", "shuffled", "random-init"]
    for pair in ("sad_vs_happy", "angry_vs_calm"):
        lex = c["lexical"][pair]
        # the tiny data is built from side-specific words: the words alone solve it
        assert lex["balanced_accuracy"]["value"] >= 0.9
        lo, hi = lex["probe_minus"]["ci95"]
        assert lo <= lex["probe_minus"]["value"] <= hi
        probe_ba = m["pairs_test"][pair]["balanced_accuracy"]["value"]
        assert lex["probe_minus"]["value"] == pytest.approx(probe_ba - lex["balanced_accuracy"]["value"], abs=1e-6)
        ri = c["random_init"][pair]
        assert 0 <= ri["balanced_accuracy"]["value"] <= 1
        assert ri["probe_minus"]["value"] == pytest.approx(probe_ba - ri["balanced_accuracy"]["value"], abs=1e-6)
        ood = c["out_of_domain"][pair]
        assert ood["n"] == 12 and 0 <= ood["balanced_accuracy"]["value"] <= 1
        assert "out_of_domain" in lex
    timing = json.loads((ran_ood / "timing.json").read_text())
    assert timing["control_random_init_s"] > 0 and timing["control_lexical_s"] > 0


def test_pairs_csv_has_the_control_columns(ran_ood):
    with open(ran_ood / "pairs.csv") as f:
        rows = list(csv.DictReader(f))
    for col in (
        "lexical_balanced_accuracy",
        "probe_minus_lexical",
        "probe_minus_lexical_lo",
        "probe_minus_lexical_hi",
        "random_init_balanced_accuracy",
        "probe_minus_random_init",
        "ood_balanced_accuracy",
    ):
        assert all(r[col] != "" for r in rows), col


def test_controls_none_and_bad_names(setup, tmp_path, capsys):  # noqa: F811
    args = [
        "run",
        "--model",
        str(setup / "model"),
        "--pairs",
        str(setup / "data"),
        "--width",
        "2",
        "--n-boot",
        "50",
        "--no-progress",
        "--no-report",
    ]
    assert main([*args, "--out", str(tmp_path / "r"), "--controls", "none"]) == 0
    c = json.loads((tmp_path / "r" / "metrics.json").read_text())["controls"]
    assert "lexical" not in c and "random_init" not in c and "shuffled_labels" not in c
    assert main([*args, "--out", str(tmp_path / "r2"), "--controls", "lexical,typo"]) == 2
    assert "unknown control(s) ['typo']" in capsys.readouterr().err


def test_report_section_what_the_model_adds(ran_ood):
    from emofast.report import write_run_report
    from emofast.report.adds import adds_sentence

    write_run_report(ran_ood)
    md = (ran_ood / "report.md").read_text()
    assert "## What the model adds" in md and "| pair | probe | lexical | random-init |" in md
    c = {
        "lexical": {"p": {"probe_minus": {"value": 0.1, "ci95": [0.02, 0.2]}}},
        "random_init": {"p": {"probe_minus": {"value": 0.05, "ci95": [-0.03, 0.12]}}},
    }
    s = adds_sentence("p", c)
    assert "beats the words alone by +0.100" in s and "cannot be told apart from an untrained network" in s
    c["lexical"]["p"]["probe_minus"] = {"value": -0.2, "ci95": [-0.3, -0.1]}
    assert "is below the words alone by 0.200" in adds_sentence("p", c)


CONTRAST_COLUMNS = (
    "contrast_balanced_accuracy",
    "contrast_balanced_accuracy_lo",
    "contrast_balanced_accuracy_hi",
    "lexical_contrast_balanced_accuracy",
    "probe_minus_lexical_contrast",
    "probe_minus_lexical_contrast_lo",
    "probe_minus_lexical_contrast_hi",
    "random_init_contrast_balanced_accuracy",
    "probe_minus_random_init_contrast",
)


def _pairs_csv(run):
    with open(run / "pairs.csv") as f:
        return list(csv.DictReader(f))


def test_contrast_split_in_metrics_and_pairs_csv(ran_ood):
    m = json.loads((ran_ood / "metrics.json").read_text())
    c = m["controls"]["contrast"]
    assert c["train"] == ["train"] and m["augment"] is None and m["probe"]["augment"] is None
    assert m["controls"]["kinds"]["contrast"] == "evidence"
    for pair in ("sad_vs_happy", "angry_vs_calm"):
        e = c[pair]
        assert e["n_left"] == e["n_right"] == 8
        for entry in (e["balanced_accuracy"], e["auroc"], e["lexical"]["balanced_accuracy"]):
            lo, hi = entry["ci95"]
            assert lo <= entry["value"] <= hi
        for key in ("lexical", "random_init"):
            d = e[key]["probe_minus"]
            assert d["value"] == pytest.approx(e["balanced_accuracy"]["value"] - e[key]["balanced_accuracy"]["value"])
            assert d["ci95"][0] <= d["value"] <= d["ci95"][1]
        # written in the other side's words: the words alone are fooled
        assert e["lexical"]["balanced_accuracy"]["value"] <= 0.25
    rows = _pairs_csv(ran_ood)
    for r in rows:
        for col in CONTRAST_COLUMNS:
            assert math.isfinite(float(r[col])), col
        assert float(r["contrast_balanced_accuracy_lo"]) <= float(r["contrast_balanced_accuracy"])
        assert float(r["contrast_balanced_accuracy"]) <= float(r["contrast_balanced_accuracy_hi"])
        assert float(r["probe_minus_lexical_contrast_lo"]) <= float(r["probe_minus_lexical_contrast"])
        assert float(r["probe_minus_lexical_contrast"]) <= float(r["probe_minus_lexical_contrast_hi"])
    assert "## Contrast split" in (ran_ood / "summary.md").read_text()


def test_contrast_never_resamples_by_scene(ran_ood, contrast_data):
    """The contrast ids look matched ({side}-contrast-NNN on both sides, as many on each): scene detection must
    refuse them, alone and mixed into an augmented train split."""
    from emofast.data import load_pairs
    from emofast.probe.stats import balanced_accuracy_ci, scene_keys

    data = load_pairs(contrast_data)
    pair = data.pair("sad_vs_happy")
    ids = pair.ids("contrast", "sad") + pair.ids("contrast", "happy")
    y = [1] * 8 + [0] * 8
    assert scene_keys([i.replace("contrast", "test") for i in ids], y) is not None  # the trap is real
    assert scene_keys(ids, y) is None
    train = pair.ids("train", "sad") + pair.ids("train", "happy")
    assert scene_keys(train, [1] * 12 + [0] * 12) is not None
    mixed = pair.ids("train", "sad") + pair.ids("contrast_train", "sad")
    mixed += pair.ids("train", "happy") + pair.ids("contrast_train", "happy")
    assert scene_keys(mixed, [1] * 18 + [0] * 18) is None
    m = json.loads((ran_ood / "metrics.json").read_text())
    e = m["controls"]["contrast"]["sad_vs_happy"]
    assert e["resample"] == "stratified"
    for key in ("lexical", "random_init"):
        assert e[key]["resample"] == "stratified"
        assert e[key]["probe_minus"]["resample"] == "stratified"
        assert e[key]["probe_minus_auroc"]["resample"] == "stratified"
    # the reported interval is the independent-sides Wilson/MOVER one, recomputed from the stored decisions
    o = m["outputs_contrast"]["sad_vs_happy"]
    assert o["ids"][:8] == pair.ids("contrast", "sad")
    v, lo, hi = balanced_accuracy_ci(np.array(o["y"]), np.array(o["p_left"]) > 0.5, scenes=None)
    ba = e["balanced_accuracy"]
    assert [v, lo, hi] == pytest.approx([ba["value"], *ba["ci95"]], abs=1e-6)
    assert m["pairs_test"]["sad_vs_happy"]["resample"] == "scene"


def test_augment_contrast_changes_the_train_set(ran_ood, ran_aug):
    from emofast.probe import load_probe

    plain, aug = (json.loads((r / "metrics.json").read_text()) for r in (ran_ood, ran_aug))
    assert aug["augment"]["augment"] == "contrast" and aug["probe"]["augment"] == "contrast"
    assert aug["augment"]["counts"]["sad_vs_happy"]["contrast_train"] == {"sad": 6, "happy": 6}
    assert aug["controls"]["contrast"]["train"] == ["train", "contrast_train"]
    for pair in ("sad_vs_happy", "angry_vs_calm"):
        # train grew by the 6 + 6 contrast_train texts (12 + 12 before), evaluation splits did not
        assert plain["pairs_train"][pair]["n_left"] == 12 and aug["pairs_train"][pair]["n_left"] == 18
        assert aug["pairs_train"][pair]["resample"] == "stratified"
        assert aug["pairs_test"][pair]["n_left"] == plain["pairs_test"][pair]["n_left"]
        assert aug["controls"]["contrast"][pair]["n_left"] == 8
    assert not np.allclose(load_probe(ran_ood).directions, load_probe(ran_aug).directions)
    # the lexical baseline saw the contrast_train texts: it is no longer fooled as much
    lex = [m["controls"]["contrast"]["sad_vs_happy"]["lexical"]["balanced_accuracy"]["value"] for m in (plain, aug)]
    assert lex[1] > lex[0]
    assert "train + contrast_train" in (ran_aug / "summary.md").read_text()


def test_a_folder_without_contrast_is_unchanged(setup, ran, tmp_path, capsys):  # noqa: F811
    m = json.loads((ran / "metrics.json").read_text())
    assert "contrast" not in m["controls"] and m["augment"] is None
    assert not any(k.startswith("contrast") or "_contrast" in k for k in _pairs_csv(ran)[0])
    assert "## Contrast split" not in (ran / "summary.md").read_text()
    args = ["run", "--model", str(setup / "model"), "--pairs", str(setup / "data"), "--out", str(tmp_path / "r")]
    assert main([*args, "--augment", "contrast", "--no-progress", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "--augment contrast needs a contrast_train split" in err and "sad_vs_happy" in err


def test_report_and_compare_carry_the_contrast_split(ran_ood, ran_aug, tmp_path):
    from emofast.report import compare, write_run_report
    from emofast.report.adds import contrast_sentence

    write_run_report(ran_ood)
    md = (ran_ood / "report.md").read_text()
    assert "### Meaning or words: the contrast split" in md and "figures/contrast.png" in md
    assert (ran_ood / "figures" / "contrast.png").stat().st_size > 1000
    out = compare([ran_ood, ran_aug], tmp_path / "cmp")
    md = (out / "report.md").read_text()
    assert "[run_ood] | train | angry_vs_calm | 16 |" in md and "[run_aug] | train + contrast_train |" in md
    for name in ("pairs.csv", "controls.csv"):
        with open(out / name) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 4 and all(math.isfinite(float(r["contrast_balanced_accuracy"])) for r in rows), name
        assert all(math.isfinite(float(r["probe_minus_lexical_contrast_lo"])) for r in rows), name
    e = {
        "balanced_accuracy": {"value": 0.3, "ci95": [0.2, 0.42]},
        "lexical": {"balanced_accuracy": {"value": 0.1}, "probe_minus": {"value": 0.2, "ci95": [0.08, 0.3]}},
    }
    s = contrast_sentence("p", e)
    assert "is fooled by the words (0.300" in s and "beats the words alone (0.100) by +0.200" in s
    e["balanced_accuracy"] = {"value": 0.7, "ci95": [0.6, 0.8]}
    assert "reads the meaning over the words" in contrast_sentence("p", e)
