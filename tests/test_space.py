"""The emotion space on a tiny random model: the data loader's errors, the math of z (neutral reads 0), the run
folder, scoring and tracing with a space probe."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import tiny
import torch

import emofast
from emofast.cli import main
from emofast.data.emotions import load_emotions
from emofast.data.pairs import DataError
from emofast.probe import load_probe
from emofast.probe.space import EmotionSpace, neutral_components, space_directions

WORDS = {
    "grief": ["tears", "grey", "alone", "lost"],
    "glee": ["sun", "laughed", "party", "danced"],
    "rage": ["shouted", "slammed", "fist", "red"],
    "ease": ["breathe", "still", "lake", "tea"],
}


def write_emotions(root, flat=False, n=(10, 6, 6), neutral=12):
    rng = random.Random(0)
    for e, words in WORDS.items():
        for split, k in zip(("train", "val", "test"), n):
            path = root / (f"{e}__{split}.jsonl" if flat else f"{e}/{split}.jsonl")
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as f:
                for i in range(k):
                    t = f"on day {i} the {rng.choice(words)} and the {rng.choice(words)}"
                    f.write(json.dumps({"id": f"{e}-{split}-{i}", "text": t}) + "\n")
    with open(root / "neutral.jsonl", "w") as f:
        for i in range(neutral):
            f.write(json.dumps({"id": f"n{i}", "text": f"the meeting is at {i} in room {i % 5}"}) + "\n")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("space")
    model, tok = tiny.model("llama"), tiny.tokenizer()
    model.save_pretrained(base / "model")
    tok.save_pretrained(base / "model")
    write_emotions(base / "data")
    return base


@pytest.fixture(scope="module")
def ran(setup):
    out = setup / "run"
    args = ["run", "--space", str(setup / "data"), "--model", str(setup / "model"), "--out", str(out)]
    assert main([*args, "--width", "2", "--n-boot", "100", "--no-progress"]) == 0
    return out


def test_loader_layouts_and_errors(tmp_path):
    nested = load_emotions(write_emotions(tmp_path / "a"))
    flat = load_emotions(write_emotions(tmp_path / "b", flat=True))
    assert nested.emotions == flat.emotions == sorted(WORDS)
    assert len(nested.neutral["train"]) == 8 and len(nested.neutral["test"]) == 4
    root = write_emotions(tmp_path / "c")
    (root / "ease" / "val.jsonl").unlink()
    with pytest.raises(DataError, match="emotion 'ease' has no val split"):
        load_emotions(root)
    root = write_emotions(tmp_path / "d")
    (root / "neutral.jsonl").unlink()
    with pytest.raises(DataError, match="no neutral set"):
        load_emotions(root)
    with pytest.raises(DataError, match="at least three emotions, found 2"):
        load_emotions(write_emotions(tmp_path / "e"), emotions=["grief", "glee"])
    root = write_emotions(tmp_path / "f")
    (root / "rage" / "test.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(DataError, match="test.jsonl:1: missing field 'text'"):
        load_emotions(root)


def test_directions_are_orthogonal_to_the_neutral_components():
    g = torch.Generator().manual_seed(0)
    neutral = torch.randn(40, 16, generator=g) * torch.linspace(5, 0.1, 16)
    means = torch.randn(5, 16, generator=g)
    pcs, k = neutral_components(neutral, 0.5)
    assert 1 <= k < 16 and torch.allclose(pcs @ pcs.T, torch.eye(k, dtype=pcs.dtype), atol=1e-8)
    d, k2 = space_directions(means, neutral, 0.5)
    assert k2 == k and torch.allclose(d.norm(dim=-1), torch.ones(5, dtype=d.dtype))
    assert (d @ pcs.T).abs().max() < 1e-10


def test_z_is_the_formula_and_neutral_fit_texts_read_zero(setup):
    model, tok = tiny.model("llama"), tiny.tokenizer()
    tok.padding_side, tok.pad_token = "left", "<pad>"
    data = load_emotions(setup / "data")
    space, _, proj = EmotionSpace.fit_passes(model, tok, data)
    E = len(space.emotions)
    z_neutral = space.layer_z(proj["neutral"][:, :, :E], space.layers)
    n_fit = len(data.neutral["train"])
    np.testing.assert_allclose(z_neutral[:n_fit].mean(0), 0, atol=1e-5)  # mean 0 on the fit texts, by construction
    live = torch.isfinite(space.sigma).all(0).numpy()  # layer 0: the same template token for every text
    assert not live[0] and live[1:].all()
    np.testing.assert_allclose(z_neutral[:n_fit, live].std(0, ddof=1), 1, atol=1e-5)  # and unit spread
    # z from extract, by the formula
    texts = data.split("test")[1][:5]
    x = emofast.extract(
        model, tok, texts, chat_template=True, system_prompt=None, position=space.extraction()["position"]
    )  # [N, L+1, D]
    li = 2
    manual = ((x[:, li].double() - space.neutral_mean[li].double()) @ space.directions[:, li].double().T) / space.sigma[
        :, li
    ]
    got = space.layer_z(proj["test"][:5, :, :E], space.layers)[:, li]
    np.testing.assert_allclose(got, manual.numpy(), rtol=1e-4, atol=1e-4)


def test_run_folder(ran):
    m = json.loads((ran / "metrics.json").read_text())
    assert m["kind"] == "space" and json.loads((ran / "probe.json").read_text())["kind"] == "space"
    t = m["test"]
    assert t["n"] == 24 and sum(map(sum, t["confusion"]["counts"])) == 24
    assert 0 <= t["top1"]["ci95"][0] <= t["top1"]["value"] <= t["top1"]["ci95"][1] <= 1
    assert t["top3"]["value"] >= t["top1"]["value"]
    assert set(m["neutral"]["held_out"]["mean"]) == set(WORDS)
    assert abs(m["neutral"]["fit"]["max_abs_mean"]) < 1e-4
    assert len(m["controls"]["shuffled_labels"]["top1"]) == 5 and "lexical" in m["controls"]
    assert m["summary"]["temperature"] > 0
    for f in ("emotions.csv", "confusion.csv", "summary.md", "timing.json", "report.html", "report.md"):
        assert (ran / f).is_file(), f
    assert "Emotion space: summary" in (ran / "report.md").read_text()


def test_score_and_trace_with_a_space_probe(setup, ran, tmp_path):
    space = load_probe(ran)
    assert isinstance(space, EmotionSpace)
    model, tok = emofast.load_model(str(setup / "model"))
    cols = space.score(model, tok, ["on day 3 the tears and the grey", "the sun and the party"])
    assert set(cols) == set(space.column_names())
    p = np.stack([cols[f"p_{e}"] for e in space.emotions], 1)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
    assert list(cols["top"]) == [
        space.emotions[k] for k in np.stack([cols[f"z_{e}"] for e in space.emotions], 1).argmax(1)
    ]
    t = emofast.trace(model, tok, ["the sun"], space, max_new_tokens=3)
    assert "z_glee" in t.column_names and "top" in t.column_names
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        "".join(
            json.dumps({"id": f"t{i}", "text": f"the {w} again"}) + "\n" for i, w in enumerate(["sun", "fist", "tea"])
        )
    )
    out = tmp_path / "s.csv"
    assert (
        main(
            [
                "score",
                "--probe",
                str(ran),
                "--model",
                str(setup / "model"),
                "--input",
                str(inp),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    import csv

    rows = list(csv.DictReader(open(out)))
    assert [r["id"] for r in rows] == ["t0", "t1", "t2"] and rows[0]["top"] in WORDS


def test_compare_space_runs(ran, tmp_path):
    assert main(["compare", str(ran), str(ran), "--out", str(tmp_path / "cmp")]) == 0
    assert "emotion space" in (tmp_path / "cmp" / "report.md").read_text()


def test_second_neutral_set_pooled_reference_and_unseen_set(setup, tmp_path):
    """A second neutral set (``neutral_ood.jsonl``) is loaded, split 2/3 : 1/3; the pooled zero is fitted on both
    sets' train parts (z mean 0 there); the run reports the held-out third and the whole set read by a zero fitted
    on the first set alone, which equals a space fitted with ``reference="neutral"``."""
    import shutil

    data_dir = tmp_path / "data"
    shutil.copytree(setup / "data", data_dir)
    with open(data_dir / "neutral_ood.jsonl", "w") as f:
        for i in range(9):
            f.write(json.dumps({"id": f"o{i}", "text": f"please file form {i} before the bus at {i + 3} pm"}) + "\n")
    data = load_emotions(data_dir)
    assert [len(data.neutral_ood[s]) for s in ("train", "test")] == [6, 3]
    model, tok = tiny.model("llama"), tiny.tokenizer()
    tok.padding_side, tok.pad_token = "left", "<pad>"
    space, _, proj = EmotionSpace.fit_passes(model, tok, data)
    where = proj["neutral_where"]
    assert space.meta["reference"]["fitted_on"] == ["neutral:train", "neutral_ood:train"]
    E = len(space.emotions)
    z = space.layer_z(proj["neutral"][:, :, :E], space.layers)
    fit = np.r_[np.arange(len(z))[where["neutral:train"]], np.arange(len(z))[where["neutral_ood:train"]]]
    np.testing.assert_allclose(z[fit].mean(0), 0, atol=1e-5)
    first, _, _ = EmotionSpace.fit_passes(model, tok, data, reference="neutral")
    again = space.with_reference(proj["neutral_rows"][where["neutral:train"]])
    np.testing.assert_allclose(again.neutral_mean, first.neutral_mean, atol=1e-6)
    np.testing.assert_allclose(again.directions, first.directions, atol=1e-5)
    with pytest.raises(ValueError, match="reference"):
        EmotionSpace.fit_passes(model, tok, data, reference="median")
    out = tmp_path / "run"
    args = ["run", "--space", str(data_dir), "--model", str(setup / "model"), "--out", str(out)]
    assert main([*args, "--width", "2", "--n-boot", "50", "--shuffled", "0", "--no-progress", "--no-report"]) == 0
    m = json.loads((out / "metrics.json").read_text())["neutral"]
    assert m["independent_held_out"]["n"] == 3 and m["unseen_set"]["n"] == 9
    for e in WORDS:
        lo, hi = m["unseen_set"]["ci95"][e]
        assert lo <= m["unseen_set"]["mean"][e] <= hi
    assert abs(m["fit"]["max_abs_mean"]) < 1e-4
