"""Paired text sets: loading, validation, and the bundled emotion data.

A dataset folder holds one JSONL file per pair, split and side, in either layout:

* nested: ``ROOT/{left}_vs_{right}/{split}/{side}.jsonl``
* flat: ``ROOT/{left}_vs_{right}__{split}__{side}.jsonl``

Each line is ``{"id": ..., "text": ...}``. Every pair needs ``train``, ``val`` and ``test``; the optional splits
(:data:`OPTIONAL_SPLITS`) are loaded where a pair has them: ``ood`` (out-of-domain test texts), ``contrast``
(texts whose words point to the other side while the meaning does not; evaluation only) and ``contrast_train``
(more such texts, added to train on request; it needs ``contrast``). An optional ``ROOT/neutral.jsonl`` holds
emotionally neutral texts for controls, an optional ``ROOT/neutral_ood.jsonl`` a second, independently written
neutral set, and an optional ``ROOT/pairs.json`` (a config, see :func:`load_pairs`) fixes the pairs and their
order. Errors name the file, the line and the problem; unbalanced sides give a warning with the counts.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .textio import sha256_file

__all__ = [
    "DataError",
    "Pair",
    "PairedDataset",
    "load_pairs",
    "load_jsonl",
    "bundled_path",
    "parse_pair",
    "SPLITS",
    "OPTIONAL_SPLITS",
    "UNMATCHED_SPLITS",
]

SPLITS = ("train", "val", "test")
#: Splits loaded when a pair has them: ``ood``, an out-of-domain test split in other registers than the rest;
#: ``contrast``, texts full of the other side's words whose meaning is unambiguous (evaluation only); and
#: ``contrast_train``, more such texts that ``--augment contrast`` adds to train (only together with ``contrast``).
OPTIONAL_SPLITS = ("ood", "contrast", "contrast_train")
#: Optional splits whose two sides are written apart (line ``k`` of one side does not pair with line ``k`` of the
#: other); the other splits are line-matched.
UNMATCHED_SPLITS = ("contrast", "contrast_train")
_PAIR_RE = re.compile(r"^(?P<left>[A-Za-z0-9][\w\-]*?)_vs_(?P<right>[A-Za-z0-9][\w\-]*)$")
_FLAT_RE = re.compile(r"^(?P<pair>.+_vs_.+?)__(?P<split>[^_]+)__(?P<side>.+)\.jsonl$")


class DataError(ValueError):
    """Invalid dataset content; the message names the file, the line and the field."""


@dataclass
class Pair:
    """One concept pair and its texts: ``texts[split][side]`` is a list of ``(id, text)``."""

    left: str
    right: str
    texts: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.left}_vs_{self.right}"

    def split(self, split: str) -> tuple[list[str], list[str]]:
        """``(left_texts, right_texts)`` of a split."""
        return [t for _, t in self.texts[split][self.left]], [t for _, t in self.texts[split][self.right]]

    def ids(self, split: str, side: str) -> list[str]:
        return [i for i, _ in self.texts[split][side]]

    def has(self, split: str) -> bool:
        """Whether the pair has ``split`` (the optional ones, such as ``"contrast"``, may be absent)."""
        return split in self.texts

    def swapped(self) -> Pair:
        """The same texts with left and right exchanged."""
        return Pair(self.right, self.left, self.texts, self.files)


@dataclass
class PairedDataset:
    """Pairs (in a fixed order), an optional neutral set, and the SHA-256 of every file read.

    ``neutral`` and ``neutral_ood`` are lists of ``(id, text)``; ``neutral_ood`` is a second neutral set written
    apart from the first (other topics and registers), empty when the dataset has none.
    """

    pairs: list[Pair]
    neutral: list[tuple[str, str]]
    root: str
    hashes: dict
    neutral_ood: list[tuple[str, str]] = field(default_factory=list)

    @property
    def source(self) -> str:
        """Where the data came from, portable across machines for the bundled set."""
        return "bundled:emotions" if Path(self.root) == bundled_path() else self.root

    def pair(self, name: str) -> Pair:
        for p in self.pairs:
            if p.name == name:
                return p
        raise KeyError(f"no pair {name!r}; have {[p.name for p in self.pairs]}")

    def swapped(self) -> PairedDataset:
        return PairedDataset([p.swapped() for p in self.pairs], self.neutral, self.root, self.hashes, self.neutral_ood)

    def counts(self) -> dict:
        return {
            p.name: {s: {side: len(p.texts[s][side]) for side in (p.left, p.right)} for s in p.texts}
            for p in self.pairs
        }


def parse_pair(spec: str) -> tuple[str, str]:
    """``"sad_vs_happy"`` or ``"sad:happy"`` -> ``("sad", "happy")``."""
    spec = spec.strip()
    if ":" in spec:
        left, _, right = spec.partition(":")
    else:
        m = _PAIR_RE.match(spec)
        if not m:
            raise DataError(f"pair {spec!r}: expected LEFT_vs_RIGHT or LEFT:RIGHT")
        left, right = m.group("left"), m.group("right")
    left, right = left.strip(), right.strip()
    if not left or not right or left == right:
        raise DataError(f"pair {spec!r}: needs two different, non-empty side names")
    return left, right


def load_jsonl(path, seen: dict | None = None) -> list[tuple[str, str]]:
    """Read ``{"id", "text"}`` lines; raise :class:`DataError` naming ``file:line`` and the problem.

    ``seen`` maps ids already read (in other files of the same pair) to where they were, to catch duplicates.
    """
    path = Path(path)
    seen = {} if seen is None else seen
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object with 'id' and 'text', got {type(obj).__name__}")
            for key in ("id", "text"):
                if key not in obj:
                    raise DataError(f"{where}: missing field '{key}'")
            text, tid = obj["text"], obj["id"]
            if not isinstance(text, str):
                raise DataError(f"{where}: field 'text' must be a string, got {type(text).__name__}")
            if not text.strip():
                raise DataError(f"{where}: field 'text' is empty")
            if not isinstance(tid, (str, int)) or isinstance(tid, bool) or (isinstance(tid, str) and not tid):
                raise DataError(f"{where}: field 'id' must be a non-empty string or an integer")
            tid = str(tid)
            if tid in seen:
                raise DataError(f"{where}: duplicate id {tid!r} (first at {seen[tid]})")
            seen[tid] = where
            rows.append((tid, text))
    return rows


def bundled_path() -> Path:
    """Folder of the bundled emotion data (five pairs, train/val/test, and a neutral set)."""
    return Path(str(resources.files("emofast.data.datasets") / "emotions"))


def _discover(root: Path) -> dict[str, dict[tuple[str, str], Path]]:
    """``{pair_name: {(split, side): path}}`` for both layouts."""
    found: dict[str, dict[tuple[str, str], Path]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and _PAIR_RE.match(p.name)):
        for f in sorted(d.glob("*/*.jsonl")):
            found.setdefault(d.name, {})[(f.parent.name, f.stem)] = f
        found.setdefault(d.name, {})
    for f in sorted(root.glob("*.jsonl")):
        m = _FLAT_RE.match(f.name)
        if m and _PAIR_RE.match(m.group("pair")):
            files = found.setdefault(m.group("pair"), {})
            key = (m.group("split"), m.group("side"))
            if key in files:
                raise DataError(f"{f}: pair {m.group('pair')} {key[0]}/{key[1]} is also given as {files[key]}")
            files[key] = f
    return found


def load_pairs(
    root=None,
    pairs=None,
    *,
    splits=SPLITS,
    neutral="auto",
    neutral_ood="auto",
    config=None,
) -> PairedDataset:
    """Load a paired dataset.

    Args:
        root: the folder (default: the bundled emotion data).
        pairs: which pairs, in order, as ``"left_vs_right"`` / ``"left:right"`` strings or ``(left, right)``
            tuples (default: every pair found, sorted by name).
        splits: the splits every pair must have; the optional splits (``ood``, ``contrast``, ``contrast_train``)
            are loaded too where a pair has them. ``contrast_train`` without ``contrast`` is an error (its fits
            are reported on ``contrast``).
        neutral: path of a neutral JSONL, None for none, ``"auto"`` for ``ROOT/neutral.jsonl`` if present.
        neutral_ood: path of a second neutral JSONL, None for none, ``"auto"`` for ``ROOT/neutral_ood.jsonl`` if
            present.
        config: a JSON or TOML file with any of ``root``, ``pairs``, ``neutral``, ``neutral_ood`` (relative paths
            are taken from the config file's folder); explicit arguments win. Default: ``ROOT/pairs.json`` if it
            exists.

    Returns:
        A :class:`PairedDataset`.

    Example:
        >>> ds = load_pairs()
        >>> [p.name for p in ds.pairs][:2], len(ds.pairs[0].split("train")[0]) >= 80
        (['sad_vs_happy', 'angry_vs_calm'], True)
    """
    if config is None and root is not None and (Path(root) / "pairs.json").is_file():
        config = Path(root) / "pairs.json"
    if config is None and root is None:
        config = bundled_path() / "pairs.json"
    if config is not None:
        cfg_path = Path(config)
        cfg = _read_config(cfg_path)
        base = cfg_path.parent
        if root is None:
            root = base / cfg.get("root", ".")
        if pairs is None and "pairs" in cfg:
            pairs = cfg["pairs"]
        if neutral == "auto" and "neutral" in cfg:
            neutral = None if cfg["neutral"] in (None, False, "") else base / cfg["neutral"]
        if neutral_ood == "auto" and "neutral_ood" in cfg:
            neutral_ood = None if cfg["neutral_ood"] in (None, False, "") else base / cfg["neutral_ood"]
    root = bundled_path() if root is None else Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    found = _discover(root)
    if pairs is None:
        wanted = [parse_pair(name) for name in sorted(found)]
        if not wanted:
            raise DataError(f"{root}: no pair folders LEFT_vs_RIGHT/ or files LEFT_vs_RIGHT__SPLIT__SIDE.jsonl")
    else:
        wanted = [parse_pair(p) if isinstance(p, str) else tuple(p) for p in pairs]
    hashes = {}
    out = []
    for left, right in wanted:
        name = f"{left}_vs_{right}"
        files = found.get(name)
        if files is None:
            raise DataError(f"{root}: pair {name} not found (expected {root / name}/ or {root / name}__train__...)")
        pair = Pair(left, right)
        seen: dict = {}
        present = {s for (s, _) in files}
        if "contrast_train" in present and "contrast" not in present and "contrast_train" not in splits:
            raise DataError(
                f"{root}: pair {name} has a contrast_train split but no contrast split (expected "
                f"{root / name / 'contrast' / (left + '.jsonl')} or {root / f'{name}__contrast__{left}.jsonl'}): "
                "contrast_train is only added to train, and both fits are reported on contrast"
            )
        for split in [*splits, *(s for s in OPTIONAL_SPLITS if s in present and s not in splits)]:
            have = {side for (s, side) in files if s == split}
            if not have:
                raise DataError(
                    f"{root}: pair {name} has no {split} split (expected {root / name / split / (left + '.jsonl')} "
                    f"or {root / f'{name}__{split}__{left}.jsonl'})"
                )
            extra = have - {left, right}
            if extra:
                raise DataError(f"{root}: pair {name} {split} has files for unknown side(s) {sorted(extra)}")
            for side in (left, right):
                if side not in have:
                    other = right if side == left else left
                    raise DataError(
                        f"{files[(split, other)]}: side {other!r} has a file but side {side!r} of pair {name} "
                        f"has none for split {split}"
                    )
            pair.texts[split] = {}
            for side in (left, right):
                path = files[(split, side)]
                rows = load_jsonl(path, seen)
                if not rows:
                    raise DataError(f"{path}: no texts")
                pair.texts[split][side] = rows
                pair.files[(split, side)] = str(path)
                hashes[str(path.relative_to(root))] = sha256_file(path)
            nl, nr = len(pair.texts[split][left]), len(pair.texts[split][right])
            if nl != nr:
                warnings.warn(
                    f"pair {name} {split}: unbalanced sides ({left}: {nl}, {right}: {nr} texts)",
                    UserWarning,
                    stacklevel=2,
                )
        out.append(pair)
    neutral_rows = _neutral(root, neutral, "neutral.jsonl", hashes)
    neutral_ood_rows = _neutral(root, neutral_ood, "neutral_ood.jsonl", hashes)
    return PairedDataset(out, neutral_rows, str(root), hashes, neutral_ood_rows)


def _neutral(root: Path, spec, default_name: str, hashes: dict) -> list:
    if spec == "auto":
        spec = root / default_name if (root / default_name).is_file() else None
    if spec is None:
        return []
    npath = Path(spec)
    if not npath.is_file():
        raise DataError(f"{npath}: neutral file not found")
    rows = load_jsonl(npath)
    hashes[npath.name if npath.parent == root else str(npath)] = sha256_file(npath)
    return rows


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        import tomllib

        try:
            cfg = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise DataError(f"{path}: invalid TOML ({exc})") from None
    else:
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(cfg, dict):
        raise DataError(f"{path}: expected a table/object with root, pairs, neutral")
    unknown = set(cfg) - {"root", "pairs", "neutral", "neutral_ood"}
    if unknown:
        raise DataError(f"{path}: unknown field(s) {sorted(unknown)}; expected root, pairs, neutral, neutral_ood")
    if "pairs" in cfg and not (isinstance(cfg["pairs"], list) and cfg["pairs"]):
        raise DataError(f"{path}: field 'pairs' must be a non-empty list such as [\"sad_vs_happy\"]")
    return cfg
