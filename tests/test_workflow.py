"""End to end on a tiny random model: ``emofast run`` then ``emofast score``, and the probe API."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiny
import torch

import emofast
from emofast.cli import main
from emofast.data import load_pairs
from emofast.probe import PairedProbe, load_probe

WORDS = {
    "sad": ["tears", "grey", "alone", "lost", "quiet room"],
    "happy": ["sun", "laughed", "party", "won", "danced"],
    "angry": ["shouted", "slammed", "door", "fist", "red"],
    "calm": ["breathe", "still", "slow", "lake", "tea"],
}


def write_pairs(root, pairs=(("sad", "happy"), ("angry", "calm")), n=(12, 8, 8), seed=0, words=None):
    """A tiny paired dataset: per side, texts built from that side's cue words (and a neutral set)."""
    words = WORDS if words is None else words
    rng = random.Random(seed)
    for left, right in pairs:
        for split, k in zip(("train", "val", "test"), n):
            d = root / f"{left}_vs_{right}" / split
            d.mkdir(parents=True, exist_ok=True)
            for side in (left, right):
                with open(d / f"{side}.jsonl", "w") as f:
                    for i in range(k):
                        text = f"on day {i} the {rng.choice(words[side])} and the {rng.choice(words[side])}"
                        f.write(json.dumps({"id": f"{side}-{split}-{i}", "text": text}) + "\n")
    with open(root / "neutral.jsonl", "w") as f:
        for i in range(6):
            f.write(json.dumps({"id": f"n{i}", "text": f"the meeting is at {i} in room four"}) + "\n")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("wf")
    model = tiny.model("llama")
    tok = tiny.tokenizer()
    model.save_pretrained(base / "model")
    tok.save_pretrained(base / "model")
    write_pairs(base / "data")
    return base


def _run(setup, out, pairs=None) -> int:
    """``emofast run`` on the tiny model (its data, or ``pairs``) into ``out``, quick settings, no report."""
    pairs = setup / "data" if pairs is None else pairs
    args = ["run", "--model", str(setup / "model"), "--pairs", str(pairs), "--out", str(out)]
    return main([*args, "--width", "2", "--n-boot", "200", "--no-progress", "--no-report"])


@pytest.fixture(scope="module")
def ran(setup):
    out = setup / "run"
    rc = _run(setup, out)
    assert rc == 0
    return out


def test_run_writes_the_run_folder(ran, capsys):
    for name in ("probe.safetensors", "probe.json", "metrics.json", "pairs.csv", "profile.csv", "summary.md"):
        assert (ran / name).is_file(), name
    spec = json.loads((ran / "probe.json").read_text())
    for key in (
        "model",
        "model_revision",
        "dtype",
        "template_sha256",
        "system_prompt",
        "position",
        "layer_policy",
        "method",
        "dataset",
        "emofast_version",
        "chosen_layers",
        "calibration",
    ):
        assert key in spec, key
    assert spec["system_prompt"] == "You are a helpful assistant." and spec["chat_template"] is True
    assert spec["position"] == "last-8"  # the default chosen on val (README, "Choosing the defaults")
    assert len(spec["dataset"]["sha256"]) == 13
    metrics = json.loads((ran / "metrics.json").read_text())
    assert set(metrics["pairs_test"]) == {"sad_vs_happy", "angry_vs_calm"}
    m = metrics["pairs_test"]["sad_vs_happy"]
    for key in ("balanced_accuracy", "auroc", "mean_p_left_on_left", "mean_p_right_on_right", "margin_left"):
        lo, hi = m[key]["ci95"]
        assert lo <= m[key]["value"] <= hi
    assert metrics["controls"]["polarity_swap"]["max_abs_deviation"] < 1e-9
    assert set(metrics["controls"]["scoring"]) == {"centered", "cosine"}
    with open(ran / "profile.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["angry", "calm", "sad", "happy"]  # pairs sorted by name
    for a, b in zip(rows[::2], rows[1::2]):
        assert float(a["pct_test"]) + float(b["pct_test"]) == pytest.approx(100, abs=0.02)
    assert "mean balanced accuracy" in (ran / "summary.md").read_text()


def test_same_inputs_same_numbers(setup, ran):
    again = setup / "run2"
    _run(setup, again)
    for name in ("metrics.json", "pairs.csv", "profile.csv", "probe.json"):
        assert (ran / name).read_bytes() == (again / name).read_bytes(), name
    a, b = load_probe(ran), load_probe(again)
    assert torch.equal(a.directions, b.directions)


def test_library_fit_matches_the_run(setup, ran):
    model, tok = emofast.load_model(str(setup / "model"))
    data = load_pairs(setup / "data")
    probe = PairedProbe.fit(model, tok, data, width=2)
    saved = load_probe(ran)
    assert probe.chosen == saved.chosen
    # The run sends every text through the model once, in one length-sorted plan over all splits; the library fit
    # runs the train split alone, so batch companions and padding differ: float-level differences (1.4e-6 seen).
    assert torch.allclose(probe.directions, saved.directions, atol=1e-5)
    for name in probe.names:
        assert probe.calibrators[name].a == pytest.approx(saved.calibrators[name].a, rel=1e-4)


def _close(a: dict, b: dict, flip: bool = False, tol: float = 2e-5):
    f = (lambda v: 1 - v) if flip else (lambda v: v)
    lo, hi = sorted(f(v) for v in b["ci95"])
    return abs(a["value"] - f(b["value"])) <= tol and abs(a["ci95"][0] - lo) <= tol and abs(a["ci95"][1] - hi) <= tol


def test_polarity_swap_mirrors_every_number(setup, ran, tmp_path):
    """The same files with left and right exchanged, run from scratch, give the mirrored numbers (up to the
    float noise of batching the texts in another order)."""
    swapped = tmp_path / "data"
    for left, right in (("sad", "happy"), ("angry", "calm")):
        for split in ("train", "val", "test"):
            d = swapped / f"{right}_vs_{left}" / split
            d.mkdir(parents=True)
            for side in (left, right):
                (d / f"{side}.jsonl").write_bytes(
                    (setup / "data" / f"{left}_vs_{right}" / split / f"{side}.jsonl").read_bytes()
                )
    (swapped / "neutral.jsonl").write_bytes((setup / "data" / "neutral.jsonl").read_bytes())
    out = tmp_path / "run"
    _run(setup, out, pairs=swapped)
    ma, mb = json.loads((ran / "metrics.json").read_text()), json.loads((out / "metrics.json").read_text())
    a, b = ma["pairs_test"], mb["pairs_test"]
    for name, sw in (("sad_vs_happy", "happy_vs_sad"), ("angry_vs_calm", "calm_vs_angry")):
        for key in ("balanced_accuracy", "auroc", "sign_accuracy"):
            assert _close(a[name][key], b[sw][key]), key
        for key, other in (("mean_p_left_on_left", "mean_p_right_on_right"), ("margin_left", "margin_right")):
            assert _close(a[name][key], b[sw][other]), key
            assert _close(a[name][other], b[sw][key]), other
        assert _close(a[name]["mean_p_left"], b[sw]["mean_p_left"], flip=True)
        assert _close(ma["neutral"][name]["mean_p_left"], mb["neutral"][sw]["mean_p_left"], flip=True)
        assert ma["summary"]["chosen_layers"][name] == mb["summary"]["chosen_layers"][sw]


@pytest.mark.parametrize("fmt", ["jsonl", "txt", "csv", "parquet"])
def test_score_every_input_format(setup, ran, tmp_path, fmt):
    texts = ["on day 3 the tears and the grey", "on day 1 the sun and the party", "the fist and the red door"]
    src = tmp_path / f"in.{fmt}"
    if fmt == "jsonl":
        src.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    elif fmt == "txt":
        src.write_text("\n".join(texts) + "\n")
    elif fmt == "csv":
        with open(src, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "text"])
            w.writerows([[f"t{i}", t] for i, t in enumerate(texts)])
    else:
        pq.write_table(pa.table({"text": texts}), src)
    for ext in ("csv", "parquet"):
        out = tmp_path / f"out.{ext}"
        assert main(["score", "--probe", str(ran), "--input", str(src), "--out", str(out), "--no-progress"]) == 0
        table = pq.read_table(out) if ext == "parquet" else pa.csv.read_csv(out)
        cols = table.column_names
        expect = ["angry_vs_calm", "p_angry", "p_calm", "sad_vs_happy", "p_sad", "p_happy"]
        assert cols[0] == "id" and [c for c in cols if c not in ("id", "source", "line")] == expect
        assert table.num_rows == 3
        ids = [str(x) for x in table.column("id").to_pylist()]
        assert ids == (["t0", "t1", "t2"] if fmt in ("jsonl", "csv") else ["1", "2", "3"])
        p = np.array(table.column("p_sad").to_pylist()) + np.array(table.column("p_happy").to_pylist())
        assert np.allclose(p, 1, atol=1e-6)
    # the scores equal the probe's own, row by row
    model, tok = emofast.load_model(str(setup / "model"))
    direct = load_probe(ran).score(model, tok, texts)
    got = pq.read_table(tmp_path / "out.parquet")
    assert np.allclose(got.column("sad_vs_happy").to_numpy(), direct["sad_vs_happy"], atol=1e-6)


def test_score_computes_only_up_to_the_deepest_chosen_layer(setup, ran):
    probe = load_probe(ran)
    model, tok = emofast.load_model(str(setup / "model"))
    deepest = max(probe.scoring_layers())
    ran_blocks = set()
    hooks = [b.register_forward_hook(lambda *a, i=i: ran_blocks.add(i)) for i, b in enumerate(model.model.layers)]
    try:
        probe.score(model, tok, ["on day 3 the tears"])
    finally:
        for h in hooks:
            h.remove()
    assert max(ran_blocks) == min(deepest, len(model.model.layers)) - 1


def test_probe_save_load_roundtrip(setup, ran, tmp_path):
    probe = load_probe(ran)
    probe.save(tmp_path / "copy")
    back = PairedProbe.load(tmp_path / "copy" / "probe.safetensors")
    assert back.chosen == probe.chosen and back.score_kind == probe.score_kind
    assert torch.equal(back.directions, probe.directions) and back.meta == probe.meta
    with pytest.raises(FileNotFoundError, match="no probe here"):
        load_probe(tmp_path)


def test_cli_errors_are_clear(setup, tmp_path, capsys):
    bad = tmp_path / "bad"
    write_pairs(bad)
    (bad / "sad_vs_happy" / "val" / "happy.jsonl").write_text('{"id": 1}\n')
    rc = main(
        ["run", "--model", str(setup / "model"), "--pairs", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "happy.jsonl:1: missing field 'text'" in err
