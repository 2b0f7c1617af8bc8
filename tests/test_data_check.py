"""``emofast data check``: planted cues and near-duplicates are caught, clean data passes, bad folders are named."""

from __future__ import annotations

import json

from emofast.cli import main
from emofast.data.check import check_dataset
from emofast.data.cues import cue_auroc, cue_counts, label_word_counts

SCENES = [
    "the bus was late on {d} and {n} waited by the bakery",
    "{n} opened the letter from the council on {d}",
    "on {d} {n} repainted the fence behind the garage",
    "{n} called her brother about the move on {d}",
    "the team met in the small room on {d} with {n}",
    "{n} walked the dog along the canal on {d}",
]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "april", "may", "june"]
NAMES = ["ana", "ben", "chloe", "dev", "emma", "farid", "gus", "hana", "ivan", "jo", "kai", "lena"]


def write(root, left_extra="", right_extra="", dup=False):
    """One pair, matched lines; ``left_extra`` appended to every left text (a planted cue)."""
    k = 0
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        d = root / "glum_vs_glad" / split
        d.mkdir(parents=True, exist_ok=True)
        rows = {"glum": [], "glad": []}
        for _ in range(n):
            base = SCENES[k % len(SCENES)].format(d=DAYS[k % len(DAYS)], n=NAMES[k % len(NAMES)]) + f" number {k}"
            k += 1
            rows["glum"].append(base + " and felt heavy" + left_extra)
            rows["glad"].append(base + " and felt light" + right_extra)
        if dup and split == "test":
            rows["glum"][0] = json.loads((root / "glum_vs_glad/train/glum.jsonl").read_text().splitlines()[0])["text"]
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


def test_the_bundled_data_passes_its_own_check():
    """The rebuilt bundled pairs: no style cue separates the sides (AUROC <= 0.60 on every split and pair), the
    sizes the card states, no cross-split near-duplicate, and a neutral set in the pairs' registers."""
    from emofast.data.cues import STYLE_CUES

    r = check_dataset()
    assert r["warnings"] == []
    for name, e in r["pairs"].items():
        assert set(e["splits"]) == {"train", "val", "test", "ood"}, name
        for split, s in e["splits"].items():
            for cue in STYLE_CUES:
                assert s["auroc"][cue] <= 0.60, (name, split, cue, s["auroc"][cue])
        sizes = {split: min(s["texts"].values()) for split, s in e["splits"].items()}
        assert sizes["train"] >= 96 and sizes["val"] >= 48 and sizes["test"] >= 64 and sizes["ood"] >= 32, name
        pr = e["pairing"]["test"]
        assert pr["matched_jaccard"] > 2 * pr["random_jaccard"]
    assert r["near_duplicates"] == []
    n = r["neutral"]
    assert (
        n["texts"] >= 160
        and n["rates"]["negation"] > 0.1
        and n["rates"]["exclaim"] > 0
        and n["rates"]["question"] > 0.05
    )


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
