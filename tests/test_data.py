"""Dataset loading: the bundled emotion pairs, both layouts, config files, and every bad-input case."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emofast.data import DataError, bundled_path, load_pairs, parse_pair

PAIRS = ["sad_vs_happy", "angry_vs_calm", "fear_vs_confidence", "love_vs_hate", "anxious_vs_relaxed"]


def test_bundled_data_counts_and_balance():
    ds = load_pairs()
    assert [p.name for p in ds.pairs] == PAIRS
    assert len(ds.neutral) >= 60
    total = 0
    for p in ds.pairs:
        for split, need in (("train", 80), ("val", 30), ("test", 30)):
            left, right = p.split(split)
            assert len(left) >= need and len(left) == len(right), (p.name, split)
            total += len(left) + len(right)
            wl = np.array([len(t.split()) for t in left])
            wr = np.array([len(t.split()) for t in right])
            assert 6 <= min(wl.min(), wr.min()) and max(wl.max(), wr.max()) <= 60
            # the two sides are matched in length, so a probe cannot read the side off the length
            assert abs(wl.mean() - wr.mean()) < 2.0, (p.name, split, wl.mean(), wr.mean())
    assert total >= 1400
    assert (bundled_path() / "README.md").is_file()


def test_bundled_splits_do_not_share_texts():
    ds = load_pairs()
    for p in ds.pairs:
        seen = {}
        for split in ("train", "val", "test"):
            for side in (p.left, p.right):
                for _, t in p.texts[split][side]:
                    key = " ".join(t.lower().split())
                    assert key not in seen, (p.name, split, seen.get(key))
                    seen[key] = split


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


def _nested(root, pair="a_vs_b", splits=("train", "val", "test"), n=3):
    left, right = pair.split("_vs_")
    for split in splits:
        for side in (left, right):
            _write(
                root / pair / split / f"{side}.jsonl",
                [{"id": f"{side}-{split}-{i}", "text": f"{side} text {i}"} for i in range(n)],
            )


def test_nested_flat_and_config(tmp_path):
    _nested(tmp_path / "n")
    ds = load_pairs(tmp_path / "n")
    assert [p.name for p in ds.pairs] == ["a_vs_b"] and ds.pairs[0].split("val")[0][0] == "a text 0"
    flat = tmp_path / "f"
    for split in ("train", "val", "test"):
        for side in ("x", "y"):
            _write(flat / f"x_vs_y__{split}__{side}.jsonl", [{"id": f"{side}{split}", "text": f"{side} {split}"}])
    _nested(flat, "c_vs_d")
    _write(flat / "neutral.jsonl", [{"id": "n1", "text": "the bus leaves at nine"}])
    ds = load_pairs(flat)
    assert [p.name for p in ds.pairs] == ["c_vs_d", "x_vs_y"] and len(ds.neutral) == 1
    assert len(ds.hashes) == 13
    ds = load_pairs(flat, pairs=["x:y"])
    assert [p.name for p in ds.pairs] == ["x_vs_y"]
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"root": "f", "pairs": ["x_vs_y", "c_vs_d"], "neutral": None}))
    ds = load_pairs(config=cfg)
    assert [p.name for p in ds.pairs] == ["x_vs_y", "c_vs_d"] and ds.neutral == []
    toml = tmp_path / "cfg.toml"
    toml.write_text('root = "f"\npairs = ["c_vs_d"]\n')
    assert [p.name for p in load_pairs(config=toml).pairs] == ["c_vs_d"]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "1", "text": "ok"', r"left\.jsonl:2: invalid JSON"),
        ('{"text": "no id"}', r"left\.jsonl:2: missing field 'id'"),
        ('{"id": "9"}', r"left\.jsonl:2: missing field 'text'"),
        ('{"id": "9", "text": "   "}', r"left\.jsonl:2: field 'text' is empty"),
        ('{"id": "0", "text": "again"}', r"left\.jsonl:2: duplicate id '0' \(first at .*left\.jsonl:1\)"),
        ('["a", "b"]', r"left\.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, line, message):
    _nested(tmp_path, "left_vs_right")
    f = tmp_path / "left_vs_right" / "val" / "left.jsonl"
    _write(f, [{"id": "0", "text": "fine"}, line])
    with pytest.raises(DataError, match=message):
        load_pairs(tmp_path)


def test_duplicate_id_across_files_of_a_pair(tmp_path):
    _nested(tmp_path, "a_vs_b")
    _write(tmp_path / "a_vs_b" / "test" / "b.jsonl", [{"id": "a-train-0", "text": "copy"}])
    with pytest.raises(DataError, match=r"test/b\.jsonl:1: duplicate id 'a-train-0' \(first at .*train/a\.jsonl:1\)"):
        load_pairs(tmp_path)


def test_missing_side_and_missing_split(tmp_path):
    _nested(tmp_path, "a_vs_b")
    (tmp_path / "a_vs_b" / "val" / "b.jsonl").unlink()
    with pytest.raises(DataError, match=r"side 'a' has a file but side 'b' of pair a_vs_b has none for split val"):
        load_pairs(tmp_path)
    _nested(tmp_path / "s", "a_vs_b", splits=("train", "val"))
    with pytest.raises(DataError, match=r"pair a_vs_b has no test split \(expected .*a_vs_b/test/a\.jsonl"):
        load_pairs(tmp_path / "s")
    assert load_pairs(tmp_path / "s", splits=("train", "val")).pairs[0].name == "a_vs_b"


def test_unbalanced_sides_warn_with_counts(tmp_path):
    _nested(tmp_path, "a_vs_b")
    _write(tmp_path / "a_vs_b" / "train" / "b.jsonl", [{"id": "x", "text": "one"}])
    with pytest.warns(UserWarning, match=r"a_vs_b train: unbalanced sides \(a: 3, b: 1 texts\)"):
        load_pairs(tmp_path)


def test_other_errors(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_pairs(tmp_path / "nope")
    with pytest.raises(DataError, match="no pair folders"):
        load_pairs(tmp_path)
    _nested(tmp_path, "a_vs_b")
    with pytest.raises(DataError, match="pair c_vs_d not found"):
        load_pairs(tmp_path, pairs=["c_vs_d"])
    with pytest.raises(DataError, match="expected LEFT_vs_RIGHT"):
        parse_pair("sadhappy")
    bad = tmp_path / "bad.json"
    bad.write_text('{"pairs": [}')
    with pytest.raises(DataError, match=r"bad\.json:1: invalid JSON"):
        load_pairs(config=bad)
    bad.write_text('{"pairz": ["a_vs_b"]}')
    with pytest.raises(DataError, match="unknown field"):
        load_pairs(config=bad)


def _side_rows(side, split, n):
    return [{"id": f"{side}-{split}-{i}", "text": f"{side} {split} text {i}"} for i in range(n)]


def test_contrast_splits_load_where_present_in_both_layouts(tmp_path):
    # nested: contrast and contrast_train beside the required splits, sides of different sizes (written apart)
    _nested(tmp_path / "n", "a_vs_b")
    for split, n in (("contrast", 4), ("contrast_train", 2)):
        for side in ("a", "b"):
            _write(tmp_path / "n" / "a_vs_b" / split / f"{side}.jsonl", _side_rows(side, split, n))
    _nested(tmp_path / "n", "c_vs_d")  # a pair without contrast texts
    ds = load_pairs(tmp_path / "n")
    ab, cd = ds.pair("a_vs_b"), ds.pair("c_vs_d")
    assert ab.has("contrast") and ab.has("contrast_train") and not cd.has("contrast")
    assert ab.split("contrast")[1][3] == "b contrast text 3" and len(ab.split("contrast_train")[0]) == 2
    assert ab.ids("contrast_train", "b") == ["b-contrast_train-0", "b-contrast_train-1"]
    assert ds.counts()["a_vs_b"]["contrast"] == {"a": 4, "b": 4} and "contrast" not in ds.counts()["c_vs_d"]
    assert ab.swapped().split("contrast")[0][0] == "b contrast text 0"
    assert "a_vs_b/contrast/a.jsonl" in ds.hashes
    # flat: contrast only (a user's folder may have the evaluation part alone)
    flat = tmp_path / "f"
    for split in ("train", "val", "test", "contrast"):
        for side in ("x", "y"):
            _write(flat / f"x_vs_y__{split}__{side}.jsonl", _side_rows(side, split, 3))
    p = load_pairs(flat).pairs[0]
    assert p.has("contrast") and not p.has("contrast_train") and p.split("contrast")[0][2] == "x contrast text 2"


def test_contrast_train_without_contrast_and_one_sided_contrast_are_errors(tmp_path):
    _nested(tmp_path, "a_vs_b")
    for side in ("a", "b"):
        _write(tmp_path / "a_vs_b" / "contrast_train" / f"{side}.jsonl", _side_rows(side, "contrast_train", 2))
    with pytest.raises(DataError, match=r"pair a_vs_b has a contrast_train split but no contrast split \(expected"):
        load_pairs(tmp_path)
    _write(tmp_path / "a_vs_b" / "contrast" / "a.jsonl", _side_rows("a", "contrast", 2))
    with pytest.raises(DataError, match=r"side 'a' has a file but side 'b' of pair a_vs_b has none for split contrast"):
        load_pairs(tmp_path)
    _write(tmp_path / "a_vs_b" / "contrast" / "b.jsonl", [{"id": "a-contrast-0", "text": "reused id"}])
    with pytest.raises(DataError, match=r"contrast/b\.jsonl:1: duplicate id 'a-contrast-0'"):
        load_pairs(tmp_path)
    _write(tmp_path / "a_vs_b" / "contrast" / "b.jsonl", [])
    with pytest.raises(DataError, match=r"contrast/b\.jsonl: no texts"):
        load_pairs(tmp_path)


def test_second_neutral_set(tmp_path):
    _nested(tmp_path, "a_vs_b")
    assert load_pairs(tmp_path).neutral_ood == []  # absent: empty, no error
    _write(tmp_path / "neutral_ood.jsonl", [{"id": "o1", "text": "the printer is on the second floor"}])
    ds = load_pairs(tmp_path)
    assert ds.neutral == [] and ds.neutral_ood == [("o1", "the printer is on the second floor")]
    assert "neutral_ood.jsonl" in ds.hashes and ds.swapped().neutral_ood == ds.neutral_ood
    assert load_pairs(tmp_path, neutral_ood=None).neutral_ood == []
    _write(tmp_path / "other.jsonl", [{"id": "p1", "text": "the shop opens at ten"}, {"id": "p2", "text": "ok then"}])
    (tmp_path / "pairs.json").write_text(json.dumps({"pairs": ["a_vs_b"], "neutral_ood": "other.jsonl"}))
    assert [i for i, _ in load_pairs(tmp_path).neutral_ood] == ["p1", "p2"]
    (tmp_path / "pairs.json").write_text(json.dumps({"neutral_ood": "missing.jsonl"}))
    with pytest.raises(DataError, match=r"missing\.jsonl: neutral file not found"):
        load_pairs(tmp_path)
    (tmp_path / "pairs.json").write_text(json.dumps({"neutral_ood": None}))
    assert load_pairs(tmp_path).neutral_ood == []
    _write(tmp_path / "neutral_ood.jsonl", ['{"id": "o1"}'])
    (tmp_path / "pairs.json").unlink()
    with pytest.raises(DataError, match=r"neutral_ood\.jsonl:1: missing field 'text'"):
        load_pairs(tmp_path)


def test_bundled_optional_splits_and_second_neutral_set():
    """Whatever of the contrast parts and the second neutral set has landed in the bundled data loads, and each
    contrast part that is there has both sides, ids of the form ``{side}-{split}-NNN``."""
    ds = load_pairs()
    for p in ds.pairs:
        assert p.has("ood")
        if p.has("contrast_train"):
            assert p.has("contrast"), p.name
        for split in ("contrast", "contrast_train"):
            if p.has(split):
                for side in (p.left, p.right):
                    assert all(i.startswith(f"{side}-{split}-") for i in p.ids(split, side)), (p.name, split, side)
    assert isinstance(ds.neutral_ood, list)
