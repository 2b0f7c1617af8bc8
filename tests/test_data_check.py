"""``emofast data check``: planted cues and near-duplicates are caught, clean data passes, bad folders are named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emofast.cli import main
from emofast.data.check import CONTRAST_MAX_BA, WARN_AUROC, WORD_P, check_dataset, family_max
from emofast.data.cues import (
    cue_auroc,
    cue_counts,
    initial_word_counts,
    initial_words,
    label_word_counts,
    label_word_score,
    sentences,
    shape_counts,
    top_initial_words,
    word_balance,
)
from emofast.data.matching import broken_lines
from emofast.data.neutral_check import check_neutral
from emofast.data.pairs import UNMATCHED_SPLITS

POOL = [
    f"{a}{b}" for a in ("ba", "ko", "mi", "tu", "re", "sa", "lo", "ne") for b in ("dan", "rik", "mol", "sep", "vat")
]


def scene(k: int) -> str:
    """A scene of seven words drawn at random (seeded by ``k``) from 40 made-up words: scenes share few words."""
    rng = np.random.default_rng(k)
    return " ".join(rng.choice(POOL, 7, replace=False))


def write(root, left_extra="", right_extra="", dup=False, n=(12, 6, 6), edit=None):
    """One pair, matched lines; ``left_extra`` appended to every left text (a planted cue); ``edit(split, rows)``
    may change the texts before they are written."""
    k = 0
    for split, count in zip(("train", "val", "test"), n):
        d = root / "glum_vs_glad" / split
        d.mkdir(parents=True, exist_ok=True)
        rows = {"glum": [], "glad": []}
        for _ in range(count):
            base = scene(k)
            k += 1
            rows["glum"].append(base + " and felt heavy" + left_extra)
            rows["glad"].append(base + " and felt light" + right_extra)
        if dup and split == "test":
            rows["glum"][0] = json.loads((root / "glum_vs_glad/train/glum.jsonl").read_text().splitlines()[0])["text"]
        if edit is not None:
            edit(split, rows)
        for side, texts in rows.items():
            with open(d / f"{side}.jsonl", "w") as f:
                for i, t in enumerate(texts):
                    f.write(json.dumps({"id": f"{side}-{split}-{i}", "text": t}) + "\n")
    return root


def test_cue_counts_and_auroc():
    c = cue_counts(["I didn't go!", "Will we? Again and again.", "nothing"])
    assert list(c["negation"]) == [1, 0, 1] and list(c["exclaim"]) == [1, 0, 0]
    assert list(c["question"]) == [0, 1, 0] and list(c["repetition"]) == [0, 2, 0] and list(c["future"]) == [0, 1, 0]
    assert list(label_word_counts(["so sad", "sadness and sorrow", "fine"], "sad")) == [1, 2, 0]
    assert cue_auroc([1, 1, 1], [0, 0, 0]) == 1.0 and cue_auroc([0, 0], [0, 0]) == 0.5


def test_clean_data_has_no_cue_warning(tmp_path):
    r = check_dataset(write(tmp_path))
    s = r["pairs"]["glum_vs_glad"]["splits"]["test"]
    assert all(s["auroc"][c] == 0.5 for c in ("negation", "exclaim", "question", "future", "repetition"))
    assert not [w for w in r["warnings"] if "cue" in w]
    p = r["pairs"]["glum_vs_glad"]["pairing"]["train"]
    assert p["matched_jaccard"] > p["random_jaccard"]


def test_planted_cue_and_near_duplicate_are_reported(tmp_path, capsys):
    root = write(tmp_path, left_extra="!", dup=True)
    r = check_dataset(root)
    assert r["pairs"]["glum_vs_glad"]["splits"]["train"]["auroc"]["exclaim"] == 1.0
    assert any("'exclaim'" in w and "train" in w for w in r["warnings"])
    assert any(d["split_a"] != d["split_b"] for d in r["near_duplicates"])
    out = tmp_path / "out"
    assert main(["data", "check", str(root), "--out", str(out)]) == 0
    assert main(["data", "check", str(root), "--strict"]) == 1
    printed = capsys.readouterr().out
    assert "warning: glum_vs_glad train: the cue 'exclaim'" in printed and "near-duplicate" in printed
    assert json.loads((out / "check.json").read_text())["warnings"]
    assert "## glum_vs_glad" in (out / "check.md").read_text()


def test_bad_folders_are_named(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nope")]) == 2
    assert "nope: not a folder" in capsys.readouterr().err
    root = write(tmp_path / "d")
    (root / "glum_vs_glad/val/glad.jsonl").unlink()
    assert main(["data", "check", str(root)]) == 2
    assert "glad" in capsys.readouterr().err
    (root / "glum_vs_glad/val/glad.jsonl").write_text("{not json\n")
    assert main(["data", "check", str(root)]) == 2
    assert "glad.jsonl:1" in capsys.readouterr().err


def test_shapes_and_sentence_initial_words():
    assert sentences("We left at six. Why? Because.\nThen rain") == ["We left at six.", "Why?", "Because.", "Then rain"]
    assert initial_words('"So," she said. Then we left... and I stayed! Mr. Li came.') == ["so", "then", "mr"]
    c = shape_counts(["It rained, so I stayed in. But then it stopped.", "It rained and then we left because."])
    assert list(c["so_i_we"]) == [1, 0] and list(c["so"]) == [1, 0] and list(c["but"]) == [1, 0]
    assert list(c["and_then"]) == [0, 1] and list(c["then"]) == [1, 1] and list(c["because"]) == [0, 1]
    assert list(c["sentences"]) == [2, 1] and list(c["comma"]) == [1, 0]
    assert top_initial_words(["Then a. Then b. So c."], ["It d. So e. So f."], k=1) == ["then", "so"]
    assert list(initial_word_counts(["Then a. Then b.", "So c."], ["then"])["then"]) == [2, 0]


@pytest.mark.parametrize(
    "extra, cue",
    [
        (", so I left", "so_i_we"),
        (" and then left", "and_then"),
        (". It rained", "sentences"),
        ("; the end", "semicolon"),
    ],
)
def test_a_planted_sentence_shape_is_reported(tmp_path, extra, cue):
    r = check_dataset(write(tmp_path, left_extra=extra))
    s = r["pairs"]["glum_vs_glad"]["splits"]["test"]
    assert s["shape_auroc"][cue] == 1.0 and family_max(s)["shape"] == 1.0
    what = "the number of sentences" if cue == "sentences" else f"the sentence shape '{cue}'"
    assert any(f"test: {what} alone separates" in w for w in r["warnings"])
    assert all(v == 0.5 for c, v in s["auroc"].items() if c not in ("length", "first_person"))


def test_a_planted_sentence_start_is_reported(tmp_path):
    def edit(split, rows):
        rows["glum"][:] = ["Then " + t for t in rows["glum"]]

    r = check_dataset(write(tmp_path, edit=edit))
    s = r["pairs"]["glum_vs_glad"]["splits"]["train"]
    assert s["shape_auroc"]["starts:then"] == 1.0 and s["initial_words"]["then"]["rate"] == {"glum": 1.0, "glad": 0.0}
    assert any("train: the sentence start 'then' alone separates" in w for w in r["warnings"])


def test_label_words_are_scored_alike_for_both_sides(tmp_path):
    """Each side naming its own feeling as often: the old score (left texts left-minus-right, right texts
    right-minus-left) gave 0.5; scored alike it separates the sides perfectly."""

    def edit(split, rows):
        rows["glum"][:] = [t + ", glum" for t in rows["glum"]]
        rows["glad"][:] = [t + ", glad" for t in rows["glad"]]

    r = check_dataset(write(tmp_path, edit=edit))
    assert r["pairs"]["glum_vs_glad"]["splits"]["test"]["auroc"]["label_words"] == 1.0
    assert any("test: the cue 'label_words' alone separates" in w for w in r["warnings"])
    assert label_word_score(["glum", "glad", "glum glum"], "glum", "glad").tolist() == [1, -1, 2]


def test_words_are_balanced_one_by_one(tmp_path):
    """'always' on one side and 'again' on the other: the repetition category is balanced in total (AUROC 0.5),
    each word is not."""

    def edit(split, rows):
        if split == "train":
            rows["glum"][:10] = [t + " again" for t in rows["glum"][:10]]
            rows["glad"][:10] = [t + " always" for t in rows["glad"][:10]]

    r = check_dataset(write(tmp_path, n=(24, 6, 6), edit=edit))
    s = r["pairs"]["glum_vs_glad"]["splits"]["train"]
    assert s["auroc"]["repetition"] == 0.5
    assert s["words"]["always"]["n_right"] == 10 and s["words"]["always"]["n_left"] == 0
    assert s["words"]["always"]["p"] < 0.01 and s["words"]["every"]["p"] == 1.0
    flagged = [w for w in r["warnings"] if "sits on one side" in w]
    assert len(flagged) == 2 and any("'always' sits on one side (glum 0/24 texts, glad 10/24" in w for w in flagged)
    wb = word_balance(["again"] * 3, ["again"] * 3)
    assert wb["again"]["left"] == 1.0 and wb["again"]["p"] == 1.0 and wb["again"]["auroc"] == 0.5


def test_repeated_line_shifts_the_pairing_and_is_caught(tmp_path):
    """Like sad/happy ood before the fix: a right line repeats the one before it, every later line is shifted, and
    the last left line has no partner left."""

    def edit(split, rows):
        if split == "test":
            rows["glad"][:] = [rows["glad"][0], rows["glad"][0].replace("felt light", "felt so light")] + rows["glad"][
                1:-1
            ]

    r = check_dataset(write(tmp_path, edit=edit))
    pr = r["pairs"]["glum_vs_glad"]["pairing"]
    broken = pr["test"]["broken_lines"]
    assert [b["line"] for b in broken] == [2, 3, 4, 5, 6] and pr["train"]["broken_lines"] == []
    assert broken[1] == {**broken[1], "left_id": "glum-test-2", "better_id": "glad-test-3"}
    assert any(w.startswith("glum_vs_glad test: line 2 does not pair") for w in r["warnings"])
    dups = r["within_split_duplicates"]
    assert [(d["id_a"], d["id_b"]) for d in dups] == [("glum_vs_glad/glad-test-0", "glum_vs_glad/glad-test-1")]
    assert any(w.startswith("near-duplicate within glum_vs_glad test") for w in r["warnings"])
    assert broken_lines(["ab", "cd", "ef"], ["ab", "cd"], ["l1", "l2", "l3"], ["r1", "r2"])[0]["line"] == 3
    assert broken_lines(["a", "b"], ["c", "d"], ["l1", "l2"], ["r1", "r2"]) == []


def _contrast(root, glum, glad, split="contrast"):
    for side, texts in (("glum", glum), ("glad", glad)):
        d = root / "glum_vs_glad" / split
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{side}.jsonl").write_text(
            "".join(json.dumps({"id": f"{side}-{split}-{i:03d}", "text": t}) + "\n" for i, t in enumerate(texts))
        )


def test_contrast_split_fools_the_lexical_baseline_and_keeps_label_word_rules(tmp_path, capsys):
    root = write(tmp_path)
    # glum texts in glad words and the reverse: the lexical baseline (fitted on train) is fooled (BA 0)
    glum = [scene(100 + k) + " and everyone else felt light" for k in range(8)]
    glad = [scene(200 + k) + " and the others felt heavy" for k in range(8)]
    _contrast(root, glum, glad)
    ct_glum = [scene(300 + k) + " while the room felt light" for k in range(6)]
    ct_glad = [scene(400 + k) + " while the room felt heavy" for k in range(5)] + [ct_glum[0] + " again"]
    _contrast(root, ct_glum, ct_glad, "contrast_train")
    r = check_dataset(root)
    e = r["pairs"]["glum_vs_glad"]
    assert e["lexical"]["contrast_balanced_accuracy"] == 0.0 and "contrast_train_balanced_accuracy" in e["lexical"]
    assert "contrast" not in e["pairing"] and e["splits"]["contrast"]["label_words_by_design"]
    assert family_max(e["splits"]["contrast"])["label_words"] is None
    assert e["contrast"]["own_label_word_texts"] == [] and r["near_duplicates"] == []
    # the contrast parts' sides are written apart: a text repeated across its sides is a within-split duplicate
    dups = [(d["id_a"], d["id_b"]) for d in r["within_split_duplicates"]]
    assert dups == [("glum_vs_glad/glum-contrast_train-000", "glum_vs_glad/glad-contrast_train-005")]
    assert not [w for w in r["warnings"] if "lexical" in w or "label word" in w]
    # texts in their own side's words do not fool it; a contrast text naming its own feeling breaks the rules
    own_glum = [t.replace("felt light", "felt heavy") for t in glum[:-1]] + ["I was glum all day"]
    _contrast(root, own_glum, [t.replace("felt heavy", "felt light") for t in glad])
    r = check_dataset(root)
    e = r["pairs"]["glum_vs_glad"]
    assert e["lexical"]["contrast_balanced_accuracy"] > 0.55
    assert any("contrast: the lexical baseline (fitted on train) is not fooled" in w for w in r["warnings"])
    assert [o["id"] for o in e["contrast"]["own_label_word_texts"]] == ["glum-contrast-007"]
    assert any("contrast: glum-contrast-007 uses a label word of its own side (glum)" in w for w in r["warnings"])
    # a contrast text copied from train is a cross-split near-duplicate
    train0 = json.loads((root / "glum_vs_glad/train/glad.jsonl").read_text().splitlines()[0])["text"]
    _contrast(root, glum, glad[:-1] + [train0])
    r = check_dataset(root)
    assert any({d["split_a"], d["split_b"]} == {"train", "contrast"} for d in r["near_duplicates"])
    assert main(["data", "check", str(root), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    md = (tmp_path / "o" / "check.md").read_text()
    assert "contrast" in out and "Lexical baseline" in md and "| contrast | " in md and "always" in md


def test_neutral_sets_against_the_pair_texts(tmp_path):
    root = write(tmp_path)
    short = [{"id": f"n{k}", "text": f"{POOL[k]} {POOL[k + 1]}"} for k in range(10)]
    long = [{"id": f"o{k}", "text": scene(500 + k) + " and felt fine, then " + scene(600 + k)} for k in range(10)]
    (root / "neutral.jsonl").write_text("".join(json.dumps(x) + "\n" for x in short))
    (root / "neutral_ood.jsonl").write_text("".join(json.dumps(x) + "\n" for x in long))
    r = check_dataset(root)
    n, o = r["neutral"], r["neutral_ood"]
    assert n["length_auroc"] == 1.0 and n["mean_words"] == 2.0 and n["texts"] == 10
    assert o["length_auroc"] == 1.0 and o["mean_words"] > o["pair_mean_words"]
    assert 0.5 < n["tfidf_auroc"] <= 1.0 and 0.0 <= n["tfidf_balanced_accuracy"] <= 1.0
    assert any(w.startswith("neutral: length alone separates") for w in r["warnings"])
    assert any(w.startswith("neutral_ood: length alone separates") for w in r["warnings"])
    same = check_neutral(["alpha beta gamma", "delta omega zeta"] * 5, ["alpha beta gamma", "delta omega zeta"] * 5)
    assert same["length_auroc"] == 0.5 and abs(same["tfidf_auroc"] - 0.5) < 0.3
    assert np.isnan(check_neutral(["one text"], ["two texts here"])["tfidf_auroc"])


@pytest.fixture(scope="module")
def bundled_check():
    return check_dataset()


def test_the_bundled_data_passes_its_own_check(bundled_check):
    """The bundled pairs pass every check: no cue of any family (style, sentence shape, single word, label words
    scored alike, length) above AUROC 0.60 on any matched split; no broken line pairing; no near-duplicate within
    or across splits; the lexical baseline fooled on every contrast split (<= 0.55); no contrast text naming its own
    side's feeling; both neutral sets length-matched to the pair texts; no cue above the bar on the contrast parts
    either (per pair, below)."""
    r = bundled_check
    assert r["warnings"] == []
    for name, e in r["pairs"].items():
        assert {"train", "val", "test", "ood"} <= set(e["splits"]), name
        for split, s in e["splits"].items():
            if split in UNMATCHED_SPLITS:
                continue
            fm = family_max(s)
            assert all(v is None or v <= WARN_AUROC for v in fm.values()), (name, split, fm)
            assert all(d["p"] >= WORD_P for d in s["words"].values()), (name, split)
        sizes = {split: min(s["texts"].values()) for split, s in e["splits"].items()}
        assert sizes["train"] >= 96 and sizes["val"] >= 48 and sizes["test"] >= 64 and sizes["ood"] >= 32, name
        if "contrast" in e["splits"]:
            assert sizes["contrast"] >= 48 and e["lexical"]["contrast_balanced_accuracy"] <= CONTRAST_MAX_BA, name
            assert e["contrast"]["own_label_word_texts"] == [], name
        for split, pr in e["pairing"].items():
            assert pr["broken_lines"] == [], (name, split)
            assert pr["matched_jaccard"] > 2 * pr["random_jaccard"], (name, split)
    assert r["near_duplicates"] == [] and r["within_split_duplicates"] == []
    n = r["neutral"]
    assert (
        n["texts"] >= 160
        and n["rates"]["negation"] > 0.1
        and n["rates"]["exclaim"] > 0
        and n["rates"]["question"] > 0.05
        and n["length_auroc"] <= WARN_AUROC
    )
    if "neutral_ood" in r:
        assert r["neutral_ood"]["texts"] >= 96 and r["neutral_ood"]["length_auroc"] <= WARN_AUROC


@pytest.mark.parametrize(
    "pair", ["sad_vs_happy", "angry_vs_calm", "fear_vs_confidence", "love_vs_hate", "anxious_vs_relaxed"]
)
def test_the_bundled_contrast_parts_have_no_cue_above_the_bar(bundled_check, pair):
    """Every cue of every family (label words aside: they point the other way by design) at or under AUROC 0.60
    on a pair's contrast parts, and no single word on one side, where the pair has them."""
    e = bundled_check["pairs"][pair]
    for split in UNMATCHED_SPLITS:
        if split in e["splits"]:
            s = e["splits"][split]
            fm = family_max(s)
            assert fm["label_words"] is None
            assert all(v is None or v <= WARN_AUROC for v in fm.values()), (pair, split, fm)
            assert all(d["p"] >= WORD_P for d in s["words"].values()), (pair, split)
    assert not [w for w in bundled_check["warnings"] if w.startswith(f"{pair} contrast")]


def test_the_bundled_emotions_pass_their_check(capsys):
    from emofast.data.check import check_emotions
    from emofast.data.cues import STYLE_CUES

    r = check_emotions()
    assert len(r["emotions"]) >= 16 and r["warnings"] == [] and r["near_duplicates"] == []
    for e, splits in r["emotions"].items():
        assert splits["train"]["texts"] >= 96 and splits["val"]["texts"] >= 32 and splits["test"]["texts"] >= 48, e
        for s in splits.values():
            # under the warning level; love and hate use repetition words more than the other emotions
            # (AUROC 0.61-0.63 against the rest, stated in the dataset card)
            assert max(s["auroc"][c] for c in STYLE_CUES) < 0.65, e
    assert main(["data", "check", "--space", "--strict"]) == 0
    assert "no warnings" in capsys.readouterr().out
