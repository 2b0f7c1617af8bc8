"""Paired probes: a direction per concept pair and layer, the layers that carry it, and a calibration.

``PairedProbe.fit`` streams the training split through :func:`emofast.accumulate` (per-side sums, no rows kept)
for the ``mean-diff`` method, projects the validation split on every layer's directions with
:func:`emofast.project`, chooses layers (:mod:`emofast.layer_policy`) and fits the calibration on the validation
split. The test split is never touched here (see :mod:`emofast.evaluation`).

Scores (positive means the left side):

* ``centered`` (default): ``(x - (mu_left + mu_right) / 2) . d``
* ``cosine``: ``cos(x, d)``, as in the original study.

A band's score is the mean of its layers' scores; ``p_left = sigmoid(a * score + b)``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..data.pairs import PairedDataset
from ..fileio import write_json
from .calibration import Calibrator
from .defaults import DEFAULT_POSITION
from .directions import METHODS, logistic, mean_diff, shrinkage_lda
from .resample import shuffled_labelings
from .selection import layer_scale, select_and_calibrate

__all__ = [
    "PairedProbe",
    "load_probe",
    "SplitIndex",
    "DEFAULT_SYSTEM_PROMPT",
    "DEFAULT_METHOD",
    "DEFAULT_POSITION",
    "DEFAULT_POLICY",
    "DEFAULT_WIDTH",
    "SCORES",
    "side_columns",
    "fit_rows",
]

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_METHOD = "lda"  # best on val across the bundled pairs (see README, "Choosing the defaults")
DEFAULT_POLICY = "per-pair"
DEFAULT_WIDTH = 4
SCORES = ("centered", "cosine")
CALIBRATIONS = ("platt", "temperature")
PROBE_FILE = "probe.safetensors"
PROBE_JSON = "probe.json"


@dataclass
class SplitIndex:
    """The texts of one split of every pair, concatenated: ``pair[i]`` (pair index) and ``y[i]`` (1 = left)."""

    texts: list
    ids: list
    pair: np.ndarray
    y: np.ndarray

    @classmethod
    def of(cls, data: PairedDataset, split: str, skip_missing: bool = False) -> SplitIndex:
        """``split`` of every pair; ``skip_missing``: pairs without it get no rows (``pair`` keeps positions)."""
        texts, ids, pair, y = [], [], [], []
        for p, pr in enumerate(data.pairs):
            if skip_missing and split not in pr.texts:
                continue
            for side, label in ((pr.left, 1), (pr.right, 0)):
                rows = pr.texts[split][side]
                texts += [t for _, t in rows]
                ids += [i for i, _ in rows]
                pair += [p] * len(rows)
                y += [label] * len(rows)
        return cls(texts, ids, np.array(pair, dtype=np.int64), np.array(y, dtype=np.int64))

    def of_pair(self, p: int) -> np.ndarray:
        return np.flatnonzero(self.pair == p)

    def shifted(self, offset: int) -> np.ndarray:
        """Row positions of this split inside a concatenation where it starts at ``offset``."""
        return np.arange(len(self.texts)) + offset


def side_columns(pairs: list[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Output column names ``p_<left>``, ``p_<right>`` per pair; a side name used by several pairs becomes
    ``<pair>:p_<side>`` so that columns never collide."""
    counts: dict[str, int] = {}
    for left, right in pairs:
        for side in (left, right):
            counts[side] = counts.get(side, 0) + 1
    out = {}
    for left, right in pairs:
        name = f"{left}_vs_{right}"
        out[name] = tuple(f"p_{s}" if counts[s] == 1 else f"{name}:p_{s}" for s in (left, right))
    return out


class PairedProbe:
    """Directions, midpoints, chosen layers and calibration for a set of concept pairs.

    Attributes:
        pairs: ``[(left, right), ...]``, ``P`` pairs.
        layers: candidate layers with a direction, ``nL`` of them.
        directions: ``[P, nL, D]`` unit vectors (float32).
        midpoints: ``[P, nL, D]`` ``(mu_left + mu_right) / 2`` (float32).
        chosen: ``{pair_name: [layer, ...]}`` layers whose scores are averaged.
        calibrators: ``{pair_name: Calibrator}``.
        score_kind: ``"centered"`` or ``"cosine"``.
        scales: ``[P, nL]`` each layer's score unit: the pooled within-side spread of the pair's train scores
            (:func:`~emofast.probe.selection.layer_scale`); scores of the probe's own kind are divided by it, so
            the layers of a band are averaged on a common scale (ones: raw units).
        meta: how the vectors are taken (``position``, ``chat_template``, ``system_prompt``), the model, the
            method, the policy, the dataset hashes, the emofast version.
        fit_report: validation tables of the fit (per-layer accuracy, calibration quality); not saved.

    Example:
        >>> probe = PairedProbe.fit(model, tok, emofast.data.load_pairs())     # doctest: +SKIP
        >>> probe.score(model, tok, ["I miss her every day."])["sad_vs_happy"]  # doctest: +SKIP
        array([0.41], dtype=float32)
    """

    def __init__(
        self,
        pairs,
        layers,
        directions,
        midpoints,
        chosen=None,
        calibrators=None,
        *,
        score_kind="centered",
        meta=None,
        fit_report=None,
        scales=None,
    ):
        if score_kind not in SCORES:
            raise ValueError(f"score {score_kind!r}: expected one of {', '.join(SCORES)}")
        self.pairs = [(str(a), str(b)) for a, b in pairs]
        self.layers = [int(x) for x in layers]
        self.directions = torch.as_tensor(directions, dtype=torch.float32)
        self.midpoints = torch.as_tensor(midpoints, dtype=torch.float32)
        expect = (len(self.pairs), len(self.layers))
        if self.directions.shape[:2] != expect or self.midpoints.shape != self.directions.shape:
            raise ValueError(f"directions and midpoints must be [P, nL, D] with P, nL = {expect}")
        self.chosen = {k: [int(x) for x in v] for k, v in (chosen or {}).items()}
        self.calibrators = dict(calibrators or {})
        self.score_kind = score_kind
        self.meta = dict(meta or {})
        self.fit_report = fit_report or {}
        self.scales = np.ones(expect) if scales is None else np.asarray(scales, dtype=np.float64).reshape(expect)

    # -------------------------------------------------------------- basics
    @property
    def names(self) -> list[str]:
        return [f"{a}_vs_{b}" for a, b in self.pairs]

    @property
    def offsets(self) -> torch.Tensor:
        """``[P, nL]``: ``midpoint . direction``, subtracted from a projection to centre it."""
        return (self.midpoints.double() * self.directions.double()).sum(-1)

    def scoring_layers(self) -> list[int]:
        """The union of the chosen layers, sorted: what :meth:`score` computes (up to the deepest)."""
        if not self.chosen:
            raise RuntimeError("this probe has no chosen layers yet (fit it first)")
        return sorted({x for v in self.chosen.values() for x in v})

    def directions_for(self, layers) -> torch.Tensor:
        """``[len(layers), P, D]``: every pair's direction at each of ``layers``, for :func:`emofast.project`."""
        idx = [self.layers.index(x) for x in layers]
        return self.directions[:, idx].transpose(0, 1).contiguous()

    def extraction(self) -> dict:
        """Keyword arguments of :func:`emofast.extract` that reproduce how the probe's vectors were taken."""
        return {k: self.meta[k] for k in ("position", "chat_template", "system_prompt")}

    # -------------------------------------------------------------- scores
    def layer_scores(
        self, proj: torch.Tensor, norms: torch.Tensor, layers, kind: str | None = None, standardise: bool = True
    ) -> np.ndarray:
        """Per-layer scores ``[N, len(layers), P]`` from :func:`emofast.project` output over ``layers``.

        Scores of the probe's own kind are divided by :attr:`scales` (unless ``standardise=False``); another
        ``kind`` comes in raw units (its scale is not this probe's).
        """
        own = kind is None or kind == self.score_kind
        kind = kind or self.score_kind
        idx = [self.layers.index(x) for x in layers]
        proj = proj.double()
        if kind == "centered":
            s = proj - self.offsets[:, idx].T[None]
        elif kind == "cosine":
            s = proj / norms.double().clamp(min=1e-12)[..., None]
        else:
            raise ValueError(f"score {kind!r}: expected one of {', '.join(SCORES)}")
        s = s.numpy()
        return s / self.scales[:, idx].T[None] if own and standardise else s

    def band_scores(self, layer_scores: np.ndarray, layers, chosen: dict | None = None) -> np.ndarray:
        """``[N, P]``: each pair's score averaged over its chosen layers."""
        chosen = chosen or self.chosen
        pos = {x: i for i, x in enumerate(layers)}
        out = np.empty((layer_scores.shape[0], len(self.pairs)))
        for p, name in enumerate(self.names):
            out[:, p] = layer_scores[:, [pos[x] for x in chosen[name]], p].mean(axis=1)
        return out

    def probabilities(self, band: np.ndarray) -> np.ndarray:
        """``[N, P]`` calibrated ``p_left`` from :meth:`band_scores`."""
        return np.stack([self.calibrators[n](band[:, p]) for p, n in enumerate(self.names)], axis=1)

    def column_names(self) -> list[str]:
        """Names of the columns :meth:`score` returns, in order."""
        cols = side_columns(self.pairs)
        return [c for name in self.names for c in (name, *cols[name])]

    def score(
        self, model, tokenizer, texts, *, batch_size=None, max_tokens=None, progress=False, stats: dict | None = None
    ) -> dict:
        """Score texts: per pair ``P`` the raw signed score and the calibrated probabilities of each side.

        Only the layers up to the deepest chosen layer are computed.

        Returns:
            ``{P: [N] raw score (positive = left), "p_<left>": [N], "p_<right>": [N], ...}``: numpy arrays in
            input order, columns in pair order (see :func:`side_columns` for shared side names). ``stats``, if a
            dict, receives the pass's ``texts``, ``tokens`` and ``seconds``.
        """
        from ..capture.api import project

        layers = self.scoring_layers()
        proj, norms = project(
            model,
            tokenizer,
            texts,
            self.directions_for(layers),
            layers=layers,
            batch_size=batch_size,
            max_tokens=max_tokens,
            progress=progress,
            **self.extraction(),
        )
        return self.columns(proj, norms, layers)

    def columns(self, proj, norms, layers) -> dict:
        """Output columns (see :meth:`score`) from projections over ``layers``."""
        band = self.band_scores(self.layer_scores(proj, norms, layers), layers)
        p_left = self.probabilities(band)
        cols = side_columns(self.pairs)
        out = {}
        for p, name in enumerate(self.names):
            out[name] = band[:, p].astype(np.float32)
            out[cols[name][0]] = p_left[:, p]
            out[cols[name][1]] = 1.0 - p_left[:, p]
        return out

    # -------------------------------------------------------------- fitting
    @classmethod
    def fit(
        cls,
        model,
        tokenizer,
        data: PairedDataset,
        *,
        method: str = DEFAULT_METHOD,
        policy: str = DEFAULT_POLICY,
        width: int = DEFAULT_WIDTH,
        score: str = "centered",
        calibration: str = "platt",
        position=DEFAULT_POSITION,
        chat_template="auto",
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        layers=None,
        batch_size=None,
        max_tokens=None,
        progress: bool = False,
        runner=None,
        val_use: str = "halves",
    ) -> PairedProbe:
        """Fit on ``data``'s train split (directions) and val split (layers, calibration).

        Args:
            model, tokenizer: as for :func:`emofast.extract`.
            data: a :class:`~emofast.data.PairedDataset` with train and val splits.
            method: ``mean-diff`` (streamed), ``lda`` or ``logreg`` (these two hold the train rows).
            policy, width: see :mod:`emofast.layer_policy`.
            score: ``centered`` or ``cosine``.
            calibration: ``platt`` or ``temperature``.
            position, chat_template, system_prompt: how vectors are taken; ``chat_template="auto"`` uses the
                template when the tokenizer has one (and then the system prompt), plain texts otherwise.
            layers: candidate layers (default all ``0..L``).
            runner: a :class:`emofast.distributed.ShardedRunner` to share the passes among ranks.
            val_use: ``halves`` (layers on one half of val, calibration on the other) or ``shared``.

        The train split is projected with val, to put every layer's scores on the train spread's scale.
        """
        from ..capture.distributed import Runner

        runner = runner or Runner()
        probe = cls.fit_directions(
            model,
            tokenizer,
            data,
            method=method,
            score=score,
            position=position,
            chat_template=chat_template,
            system_prompt=system_prompt,
            layers=layers,
            batch_size=batch_size,
            max_tokens=max_tokens,
            progress=progress,
            runner=runner,
        )
        val, train = SplitIndex.of(data, "val"), SplitIndex.of(data, "train")
        proj, norms = runner.project(
            model,
            tokenizer,
            train.texts + val.texts,
            probe.directions_for(probe.layers),
            layers=probe.layers,
            batch_size=batch_size,
            max_tokens=max_tokens,
            progress=progress,
            **probe.extraction(),
        )
        raw = probe.layer_scores(proj, norms, probe.layers, standardise=False)
        n = len(train.texts)
        probe.scales = layer_scale(raw[:n], train)
        probe.select_and_calibrate(
            raw[n:] / probe.scales.T[None], val, policy=policy, width=width, calibration=calibration, val_use=val_use
        )
        return probe

    @classmethod
    def fit_directions(cls, model, tokenizer, data: PairedDataset, **kwargs) -> PairedProbe:
        """Directions and midpoints from the train split (no layer choice, no calibration yet).

        Keyword arguments as in :meth:`fit` (``method``, ``score``, ``position``, ``chat_template``,
        ``system_prompt``, ``layers``, ``batch_size``, ``max_tokens``, ``progress``, ``runner``).
        """
        return cls.fit_directions_and_baselines(model, tokenizer, data, shuffled=0, **kwargs)[0]

    @classmethod
    def fit_directions_and_baselines(
        cls,
        model,
        tokenizer,
        data: PairedDataset,
        *,
        method=DEFAULT_METHOD,
        score="centered",
        position=DEFAULT_POSITION,
        chat_template="auto",
        system_prompt=DEFAULT_SYSTEM_PROMPT,
        layers=None,
        batch_size=None,
        max_tokens=None,
        progress=False,
        shuffled: int = 0,
        seed: int = 0,
        runner=None,
        rows=None,
    ):
        """:meth:`fit_directions`, plus *shuffled-label baselines* fitted from the same pass.

        Args:
            shuffled: how many baselines: the side labels are shuffled within each pair, within scenes for matched
                data (:func:`~emofast.probe.resample.shuffled_labelings`; seeds ``seed``, ``seed + 1``, ...), so
                that their accuracy shows chance level.
            runner: an :mod:`emofast.distributed` runner that shards the pass over ranks.
            rows: the train split's rows ``[N_train, nL, D]`` (over ``layers``) when the caller already ran the
                model over them (``emofast run`` runs every text once); then no pass runs here.
            (the rest as in :meth:`fit`)

        Returns:
            ``(probe, [baseline probes])``.
        """
        from ..capture.distributed import Runner
        from ..capture.models import model_dtype, model_id, num_layers

        runner = runner or Runner()
        if method not in METHODS:
            raise ValueError(f"direction method {method!r}: expected one of {', '.join(METHODS)}")
        if chat_template == "auto":
            chat_template = getattr(tokenizer, "chat_template", None) is not None
        if not chat_template:
            system_prompt = None
        ex = {"position": position, "chat_template": bool(chat_template), "system_prompt": system_prompt}
        n_layers = num_layers(model)
        layers = list(range(n_layers + 1)) if layers is None else [int(x) % (n_layers + 1) for x in layers]
        train = SplitIndex.of(data, "train")
        labelings = [train.y, *shuffled_labelings(train, shuffled, seed)]
        names = [p.name for p in data.pairs]
        conv: list = []  # logistic-regression convergence, per pair and layer
        kw = {"layers": layers, "batch_size": batch_size, "max_tokens": max_tokens, "progress": progress, **ex}
        if rows is not None:  # the caller ran the pass: train rows [N_train, nL, D] in train order
            if len(rows) != len(train.texts):
                raise ValueError(f"rows holds {len(rows)} texts; the train split has {len(train.texts)}")
            fn = {"mean-diff": None, "lda": shrinkage_lda, "logreg": partial(logistic, report=conv)}[method]
            fits = [fit_rows(rows, train, y, fn) for y in labelings]
        elif method == "mean-diff":
            label_names = [f"{n}|{s}" for n in names for s in "LR"]
            sets = [[f"{names[p]}|{'L' if side else 'R'}" for p, side in zip(train.pair, y)] for y in labelings]
            accs = runner.accumulate_sets(model, tokenizer, train.texts, sets, label_names=label_names, **kw)
            fits = [_mean_diff_fit(acc, names) for acc in accs]
        else:
            rows = runner.extract(model, tokenizer, train.texts, **kw)
            fn = shrinkage_lda if method == "lda" else partial(logistic, report=conv)
            fits = [fit_rows(rows, train, y, fn) for y in labelings]
        meta = {
            "model": model_id(model),
            "model_revision": getattr(getattr(model, "config", None), "_commit_hash", None),
            "dtype": str(model_dtype(model)).replace("torch.", ""),
            "template_sha256": _template_hash(tokenizer) if chat_template else None,
            **ex,
            "method": method,
            **({"logreg_convergence": _convergence(conv)} if method == "logreg" else {}),
            "score": score,
            "dataset": {"root": data.source, "sha256": data.hashes, "counts": data.counts()},
            "emofast_version": __version__,
        }
        pairs = [(p.left, p.right) for p in data.pairs]
        probes = [
            cls(
                pairs,
                layers,
                d,
                m,
                score_kind=score,
                meta={**meta, "shuffled_labels_seed": None if k == 0 else seed + k - 1},
            )
            for k, (d, m) in enumerate(fits)
        ]
        return probes[0], probes[1:]

    def select_and_calibrate(
        self,
        val_scores: np.ndarray,
        val: SplitIndex,
        *,
        policy=DEFAULT_POLICY,
        width=DEFAULT_WIDTH,
        calibration="platt",
        val_use="halves",
    ) -> None:
        """Choose layers and fit calibrators from validation scores ``[N_val, nL, P]`` (all candidate layers, on
        the probe's scale); ``val_use`` as in :meth:`fit` (:func:`emofast.probe.selection.select_and_calibrate`)."""
        if calibration not in CALIBRATIONS:
            raise ValueError(f"calibration {calibration!r}: expected one of {', '.join(CALIBRATIONS)}")
        select_and_calibrate(
            self, val_scores, val, policy=policy, width=width, calibration=calibration, val_use=val_use
        )

    def swapped(self) -> PairedProbe:
        """The mirrored probe: every pair's sides exchanged (directions negated, calibration mirrored)."""
        pairs = [(b, a) for a, b in self.pairs]
        rename = {f"{a}_vs_{b}": f"{b}_vs_{a}" for a, b in self.pairs}
        return PairedProbe(
            pairs,
            self.layers,
            -self.directions,
            self.midpoints,
            {rename[k]: v for k, v in self.chosen.items()},
            {rename[k]: c.swapped() for k, c in self.calibrators.items()},
            score_kind=self.score_kind,
            meta=self.meta,
            scales=self.scales,
        )

    # -------------------------------------------------------------- saving
    def save(self, path) -> Path:
        """Write ``probe.safetensors`` (tensors and everything needed to score) and ``probe.json`` (readable
        description) into the folder ``path``. Files are written to temporaries and renamed."""
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        spec = self._spec()
        tensors = {
            "directions": self.directions.contiguous(),
            "midpoints": self.midpoints.contiguous(),
            "scales": torch.from_numpy(np.ascontiguousarray(self.scales)),
        }
        tmp = folder / (PROBE_FILE + ".tmp")
        save_file(tensors, str(tmp), metadata={"emofast": "paired-probe", "spec": json.dumps(spec, sort_keys=True)})
        tmp.replace(folder / PROBE_FILE)
        write_json(folder / PROBE_JSON, spec)
        return folder

    def _spec(self) -> dict:
        return {
            "format": 1,
            "pairs": [list(p) for p in self.pairs],
            "layers": self.layers,
            "chosen_layers": self.chosen,
            "calibration": {k: c.to_dict() for k, c in self.calibrators.items()},
            "score": self.score_kind,
            "hidden_size": int(self.directions.shape[-1]),
            **{k: v for k, v in self.meta.items() if k != "score"},
        }

    @classmethod
    def load(cls, path) -> PairedProbe:
        """Load from a run folder (or the ``probe.safetensors`` file itself)."""
        from safetensors import safe_open

        path = Path(path)
        file = path / PROBE_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no probe here (expected a run folder holding {PROBE_FILE})")
        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("emofast") != "paired-probe":
                raise ValueError(f"{file}: not an emofast probe file")
            spec = json.loads(header["spec"])
            directions, midpoints = f.get_tensor("directions"), f.get_tensor("midpoints")
            scales = f.get_tensor("scales").numpy() if "scales" in f.keys() else None
        meta = {
            k: v
            for k, v in spec.items()
            if k not in ("format", "pairs", "layers", "chosen_layers", "calibration", "hidden_size")
        }
        return cls(
            spec["pairs"],
            spec["layers"],
            directions,
            midpoints,
            spec["chosen_layers"],
            {k: Calibrator.from_dict(v) for k, v in spec["calibration"].items()},
            score_kind=spec["score"],
            meta=meta,
            scales=scales,
        )

    def __repr__(self) -> str:
        chosen = {k: (v[0], v[-1]) for k, v in self.chosen.items()}
        return f"PairedProbe(pairs={self.names}, score={self.score_kind!r}, chosen={chosen})"


def _mean_diff_fit(acc, names):
    dirs, mids = [], []
    for n in names:
        mu_l, mu_r = acc.mean(f"{n}|L"), acc.mean(f"{n}|R")
        dirs.append(mean_diff(mu_l, mu_r))
        mids.append(((mu_l + mu_r) / 2).float())
    return torch.stack(dirs), torch.stack(mids)


def fit_rows(rows, train: SplitIndex, y: np.ndarray, fn):
    """``([P, nL, D] directions, [P, nL, D] midpoints)`` from held rows ``[N, nL, D]`` of ``train`` with labels
    ``y`` (1 = left); ``fn`` fits one layer's direction from (left, right) rows, None for the mean difference."""
    dirs, mids = [], []
    for p in range(int(train.pair.max()) + 1):
        idx = train.of_pair(p)
        left = torch.as_tensor(np.asarray(rows[idx[y[idx] == 1]]))
        right = torch.as_tensor(np.asarray(rows[idx[y[idx] == 0]]))
        mu_l, mu_r = left.double().mean(0), right.double().mean(0)
        dirs.append(mean_diff(mu_l, mu_r) if fn is None else fn(left, right))
        mids.append(((mu_l + mu_r) / 2).float())
    return torch.stack(dirs), torch.stack(mids)


def load_probe(path):
    """Load a probe saved by ``emofast run`` (a :class:`PairedProbe`) or ``emofast run --space`` (an
    :class:`~emofast.probe.space.EmotionSpace`), from its run folder or its ``probe.safetensors``."""
    from safetensors import safe_open

    from .space import SPACE_KIND, EmotionSpace

    path = Path(path)
    file = path / PROBE_FILE if path.is_dir() else path
    if file.is_file():
        with safe_open(str(file), framework="pt") as f:
            if (f.metadata() or {}).get("emofast") == SPACE_KIND:
                return EmotionSpace.load(file)
    return PairedProbe.load(path)


def _convergence(report: list) -> dict:
    """Summary of the logistic-regression fits' convergence (every pair, layer and labelling)."""
    bad = [r for r in report if not r["converged"]]
    return {"fits": len(report), "not_converged": len(bad), "messages": sorted({r["message"] for r in bad})[:5]}


def _template_hash(tokenizer) -> str | None:
    tpl = getattr(tokenizer, "chat_template", None)
    if tpl is None:
        return None
    return hashlib.sha256(str(tpl).encode()).hexdigest()
