"""The run's controls: the lexical baseline, the random-init model, the out-of-domain split, and their columns."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from test_workflow import _run, setup, write_pairs  # noqa: F401  (setup is a fixture)

from emofast.cli import main


@pytest.fixture(scope="module")
def ran_ood(setup):  # noqa: F811
    data = setup / "data_ood"
    if not data.exists():
        shutil.copytree(setup / "data", data)
        write_pairs(setup / "ood_src", n=(6, 6, 6), seed=7)
        for pair in ("sad_vs_happy", "angry_vs_calm"):
            shutil.copytree(setup / "ood_src" / pair / "test", data / pair / "ood")
            for f in (data / pair / "ood").glob("*.jsonl"):
                rows = [json.loads(x) for x in f.read_text().splitlines()]
                f.write_text("".join(json.dumps({**r, "id": r["id"].replace("test", "ood")}) + "\n" for r in rows))
    out = setup / "run_ood"
    assert _run(setup, out, pairs=data) == 0
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
