"""Emotion datasets for the emotion space (:class:`emofast.EmotionSpace`): one set of texts per emotion, with
train, val and test splits, plus a neutral reference set.

Layouts of a user's folder: ``{emotion}/{split}.jsonl`` or flat ``{emotion}__{split}.jsonl``, and the neutral
set as ``neutral/{split}.jsonl``, ``neutral__{split}.jsonl`` or one ``neutral.jsonl`` (then split by position:
the first two thirds fit the reference, the last third is held out); optionally ``neutral_ood.jsonl``, a second
neutral set written apart from the first (split the same way; see :class:`EmotionDataset`). Lines
``{"id": ..., "text": ...}``.

The bundled set (``space.json`` beside the bundled pairs) reuses the ten pair labels' texts and adds emotions of
its own; it also lists each emotion's textbook circumplex position (valence, arousal).

Example:
    >>> ds = load_emotions()
    >>> len(ds.emotions) >= 3 and "neutral" not in ds.emotions
    True
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .pairs import DataError, bundled_path, load_jsonl
from .textio import sha256_file

__all__ = ["EmotionDataset", "load_emotions", "SPACE_MANIFEST", "EMOTION_SPLITS"]

SPACE_MANIFEST = "space.json"
EMOTION_SPLITS = ("train", "val", "test")
_NAME = re.compile(r"^[A-Za-z0-9][\w\-]*$")
_FLAT = re.compile(r"^(?P<emotion>[A-Za-z0-9][\w\-]*?)__(?P<split>[a-z]+)\.jsonl$")


@dataclass
class EmotionDataset:
    """``texts[emotion][split]`` and ``neutral[split]`` are lists of ``(id, text)``; neutral splits are ``train``
    (fits the reference) and ``test`` (held out), plus ``val`` when given. ``neutral_ood[split]``: an optional
    second neutral set written apart from the first (other topics and registers; ``train`` and ``test``, split two
    thirds / one third), which shows whether the neutral zero holds beyond its own sample."""

    emotions: list[str]
    texts: dict
    neutral: dict
    root: str
    hashes: dict = field(default_factory=dict)
    circumplex: dict = field(default_factory=dict)
    neutral_ood: dict = field(default_factory=dict)

    @property
    def source(self) -> str:
        return "bundled:emotions" if Path(self.root) == bundled_path() else self.root

    def split(self, split: str) -> tuple[list[str], list[str], list[int]]:
        """``(ids, texts, labels)`` of a split over every emotion, labels as indices into :attr:`emotions`."""
        ids, texts, labels = [], [], []
        for k, e in enumerate(self.emotions):
            for i, t in self.texts[e][split]:
                ids.append(i)
                texts.append(t)
                labels.append(k)
        return ids, texts, labels

    def counts(self) -> dict:
        return (
            {e: {s: len(v) for s, v in self.texts[e].items()} for e in self.emotions}
            | {"neutral": {s: len(v) for s, v in self.neutral.items()}}
            | ({"neutral_ood": {s: len(v) for s, v in self.neutral_ood.items()}} if self.neutral_ood else {})
        )


def _split_single(rows: list) -> dict:
    cut = (2 * len(rows)) // 3
    return {"train": rows[:cut], "test": rows[cut:]}


def _from_manifest(path: Path) -> EmotionDataset:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    root = path.parent
    texts, hashes = {}, {}
    for e, splits in spec["emotions"].items():
        texts[e] = {}
        for s in EMOTION_SPLITS:
            if s not in splits:
                raise DataError(f"{path}: emotion {e!r} has no {s} split")
            files = splits[s] if isinstance(splits[s], list) else [splits[s]]
            rows = []
            for f in files:
                rows += load_jsonl(root / f)
                hashes[f] = sha256_file(root / f)
            texts[e][s] = rows
    nfile = root / spec["neutral"]
    neutral = _split_single(load_jsonl(nfile))
    hashes[spec["neutral"]] = sha256_file(nfile)
    circ = {e: tuple(v) for e, v in spec.get("circumplex", {}).items()}
    ood = _neutral_ood(root / spec["neutral_ood"], hashes) if spec.get("neutral_ood") else {}
    return EmotionDataset(list(texts), texts, neutral, str(root), hashes, circ, ood)


def _neutral_ood(path: Path, hashes: dict) -> dict:
    """The optional second neutral set, split two thirds / one third; ``{}`` when the file is absent."""
    if not path.is_file():
        return {}
    hashes[path.name] = sha256_file(path)
    return _split_single(load_jsonl(path))


def load_emotions(root=None, emotions=None) -> EmotionDataset:
    """Load an emotion dataset (default: the bundled one).

    Args:
        root: a folder in one of the layouts of the module docstring, or one holding a ``space.json``.
        emotions: which emotions, in order (default: all found, sorted; the manifest's order for a manifest).

    Raises:
        DataError: fewer than three emotions, no neutral set, an emotion without a train, val or test split, or a
            bad line (named by file and line).
    """
    root = bundled_path() if root is None else Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if (root / SPACE_MANIFEST).is_file():
        ds = _from_manifest(root / SPACE_MANIFEST)
    else:
        found: dict = {}
        for d in sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)):
            for f in sorted(d.glob("*.jsonl")):
                found.setdefault(d.name, {})[f.stem] = f
        for f in sorted(root.glob("*.jsonl")):
            m = _FLAT.match(f.name)
            if m:
                files = found.setdefault(m.group("emotion"), {})
                if m.group("split") in files:
                    raise DataError(
                        f"{f}: {m.group('emotion')} {m.group('split')} is also given as {files[m.group('split')]}"
                    )
                files[m.group("split")] = f
        neutral_files = found.pop("neutral", None)
        if neutral_files is None and (root / "neutral.jsonl").is_file():
            neutral = _split_single(load_jsonl(root / "neutral.jsonl"))
            hashes = {"neutral.jsonl": sha256_file(root / "neutral.jsonl")}
        elif neutral_files is None:
            raise DataError(
                f"{root}: no neutral set (expected neutral/train.jsonl + neutral/test.jsonl, "
                "neutral__train.jsonl + neutral__test.jsonl, or neutral.jsonl)"
            )
        else:
            missing = [s for s in ("train", "test") if s not in neutral_files]
            if missing:
                raise DataError(f"{root}: the neutral set has no {' or '.join(missing)} split")
            unknown = sorted(set(neutral_files) - set(EMOTION_SPLITS))
            if unknown:
                raise DataError(f"{root}: unknown neutral split(s) {unknown}; expected train, val, test")
            # a fixed order: the reference is fitted on train, the rest is held out
            neutral = {s: load_jsonl(neutral_files[s]) for s in EMOTION_SPLITS if s in neutral_files}
            hashes = {str(f.relative_to(root)): sha256_file(f) for f in neutral_files.values()}
        texts = {}
        for e, files in found.items():
            missing = [s for s in EMOTION_SPLITS if s not in files]
            if missing:
                raise DataError(
                    f"{root}: emotion {e!r} has no {', '.join(missing)} split "
                    f"(expected {root / e / (missing[0] + '.jsonl')} or {root / f'{e}__{missing[0]}.jsonl'})"
                )
            seen: dict = {}
            texts[e] = {s: load_jsonl(files[s], seen) for s in EMOTION_SPLITS}
            hashes.update({str(files[s].relative_to(root)): sha256_file(files[s]) for s in EMOTION_SPLITS})
        ood = _neutral_ood(root / "neutral_ood.jsonl", hashes)
        ds = EmotionDataset(sorted(texts), texts, neutral, str(root), hashes, {}, ood)
    if emotions is not None:
        unknown = [e for e in emotions if e not in ds.texts]
        if unknown:
            raise DataError(f"{root}: no emotion(s) {unknown}; have {ds.emotions}")
        ds.emotions = list(emotions)
    if len(ds.emotions) < 3:
        raise DataError(
            f"{root}: an emotion space needs at least three emotions, found {len(ds.emotions)} "
            f"({', '.join(ds.emotions) or 'none'})"
        )
    for e in ds.emotions:
        for s in EMOTION_SPLITS:
            if not ds.texts[e][s]:
                raise DataError(f"{root}: emotion {e!r} has an empty {s} split")
    return ds
