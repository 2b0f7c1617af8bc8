"""The emotion space: one direction per emotion, read against a neutral zero.

Per layer ``ℓ``, with ``μ_e`` the mean of emotion ``e``'s train texts and ``μ_all`` the mean over all emotion
train texts:

1. ``v_e = μ_e - μ_all``;
2. the top principal components of the neutral reference texts (as many as explain 50% of their variance) are
   projected out of every ``v_e``, which is then normalised to ``v̂_e``: what neutral text varies along is not
   emotion;
3. the reading of a text is ``z_e(x) = ((x - μ_neutral) · v̂_e) / σ_e``, ``σ_e`` the spread of the neutral texts
   along ``v̂_e``: neutral text reads about 0 on every emotion, in units of neutral spread.

A band of layers (chosen on val by the N-way accuracy of ``argmax_e z_e``) averages ``z``; ``p_e = softmax(z / T)``
with ``T`` fitted on val by NLL. The train means stream through :func:`emofast.accumulate` (no rows kept); only the
neutral texts' rows are held (for the principal components); val and test texts are projected (``E + 1`` numbers
per text and layer).

Example:
    >>> space = EmotionSpace.fit(model, tok, emofast.data.emotions.load_emotions())     # doctest: +SKIP
    >>> space.score(model, tok, ["I can't believe they remembered my birthday."])["top"]  # doctest: +SKIP
    array(['gratitude'], dtype=object)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from .._version import __version__
from ..fileio import write_json
from .defaults import DEFAULT_POSITION

__all__ = ["EmotionSpace", "SPACE_KIND", "neutral_components", "space_directions", "band_candidates"]

SPACE_KIND = "emotion-space"
VARIANCE_EXPLAINED = 0.5
PROBE_FILE, PROBE_JSON = "probe.safetensors", "probe.json"


def neutral_components(rows: torch.Tensor, share: float = VARIANCE_EXPLAINED) -> tuple[torch.Tensor, int]:
    """Top principal components of ``rows`` ``[N, D]`` that together explain at least ``share`` of the variance:
    ``([k, D] orthonormal, k)``."""
    x = rows.double() - rows.double().mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    var = s**2
    k = int(torch.searchsorted(torch.cumsum(var, 0) / var.sum(), torch.tensor(share, dtype=var.dtype)).item()) + 1
    k = min(k, vh.shape[0])
    return vh[:k], k


def space_directions(means: torch.Tensor, neutral: torch.Tensor, share: float = VARIANCE_EXPLAINED, counts=None):
    """Unit directions ``[E, D]`` of one layer from emotion means ``[E, D]`` and neutral rows ``[Nn, D]``, with the
    neutral principal components projected out; also the number of components. ``counts`` ``[E]`` weight the
    means into the mean of all emotion texts (equal weights by default)."""
    w = torch.ones(means.shape[0], dtype=torch.float64) if counts is None else torch.as_tensor(counts).double()
    v = means.double() - (w[:, None] * means.double()).sum(0) / w.sum()
    pcs, k = neutral_components(neutral, share)
    v = v - (v @ pcs.T) @ pcs
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12), k


def band_candidates(n_layers: int, width: int) -> list[list[int]]:
    """Every band of ``width`` consecutive positions in ``0..n_layers-1`` (one band of all when fewer)."""
    width = max(1, min(width, n_layers))
    return [list(range(i, i + width)) for i in range(n_layers - width + 1)]


def reference_parts(means, counts, fit_rows, share: float = VARIANCE_EXPLAINED):
    """Directions ``[E, nL, D]``, neutral mean ``[nL, D]``, spreads ``[E, nL]`` and components per layer from the
    emotions' train means ``[E, nL, D]`` and the neutral reference rows ``[Nn, nL, D]``."""
    mu_n = fit_rows.double().mean(0)
    dirs, sig, ks = [], [], []
    for li in range(fit_rows.shape[1]):
        d, k = space_directions(means[:, li], fit_rows[:, li], share, counts=counts)
        sd = ((fit_rows[:, li].double() - mu_n[li]) @ d.T).std(dim=0)
        # a layer where neutral texts do not vary (e.g. layer 0 at the template's last token, the same token for
        # every text) carries no reading: infinite spread, z = 0 there
        floor = 1e-6 * float(fit_rows[:, li].double().norm(dim=-1).mean())
        sig.append(torch.where(sd > floor, sd, torch.full_like(sd, float("inf"))))
        dirs.append(d)
        ks.append(k)
    return torch.stack(dirs, 1).float(), mu_n.float(), torch.stack(sig, 1), ks


class EmotionSpace:
    """A fitted emotion space.

    Attributes:
        emotions: ``E`` names. layers: the ``nL`` candidate layers.
        directions: ``[E, nL, D]`` unit vectors ``v̂_e`` (float32).
        neutral_mean: ``[nL, D]`` ``μ_neutral``. sigma: ``[E, nL]`` neutral spread along each direction.
        chosen: the layers whose ``z`` are averaged. temperature: ``T`` of ``softmax(z / T)``.
        n_components: ``[nL]`` neutral principal components projected out at each layer.
        meta: how vectors are taken (position, chat template, system prompt), the model, the dataset.
    """

    kind = "space"

    def __init__(
        self,
        emotions,
        layers,
        directions,
        neutral_mean,
        sigma,
        *,
        chosen=None,
        temperature=1.0,
        n_components=None,
        meta=None,
        fit_report=None,
    ):
        self.emotions = [str(e) for e in emotions]
        self.layers = [int(x) for x in layers]
        self.directions = torch.as_tensor(directions, dtype=torch.float32)
        self.neutral_mean = torch.as_tensor(neutral_mean, dtype=torch.float32)
        self.sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if self.directions.shape[:2] != (len(self.emotions), len(self.layers)):
            raise ValueError("directions must be [E, nL, D]")
        self.chosen = [int(x) for x in (chosen or [])]
        self.temperature = float(temperature)
        self.n_components = [int(k) for k in (n_components or [])]
        self.meta = dict(meta or {})
        self.fit_report = fit_report or {}
        self.train_means = None  # (means [E, nL, D], counts [E]) after fit_passes; not saved

    # ------------------------------------------------------------------ the scoring interface
    @property
    def names(self) -> list[str]:
        return self.emotions

    def scoring_layers(self) -> list[int]:
        if not self.chosen:
            raise RuntimeError("this emotion space has no chosen layers yet (fit it first)")
        return list(self.chosen)

    def directions_for(self, layers) -> torch.Tensor:
        """``[len(layers), E, D]`` for :func:`emofast.project`."""
        idx = [self.layers.index(x) for x in layers]
        return self.directions[:, idx].transpose(0, 1).contiguous()

    def extraction(self) -> dict:
        return {k: self.meta[k] for k in ("position", "chat_template", "system_prompt")}

    def offsets(self, layers) -> torch.Tensor:
        """``[nL, E]``: ``μ_neutral · v̂_e``."""
        idx = [self.layers.index(x) for x in layers]
        return torch.einsum("ld,eld->le", self.neutral_mean[idx].double(), self.directions[:, idx].double())

    def layer_z(self, proj: torch.Tensor, layers) -> np.ndarray:
        """``[N, nL, E]`` readings from projections ``[N, nL, E]`` over ``layers``."""
        idx = [self.layers.index(x) for x in layers]
        return ((proj.double() - self.offsets(layers)[None]) / self.sigma[:, idx].T[None]).numpy()

    def band_z(self, layer_z: np.ndarray, layers, chosen=None) -> np.ndarray:
        """``[N, E]``: ``z`` averaged over the chosen layers."""
        pos = {x: i for i, x in enumerate(layers)}
        return layer_z[:, [pos[x] for x in (chosen or self.chosen)]].mean(axis=1)

    def probabilities(self, z: np.ndarray) -> np.ndarray:
        return softmax(z / self.temperature, axis=1)

    def column_names(self) -> list[str]:
        return [f"z_{e}" for e in self.emotions] + [f"p_{e}" for e in self.emotions] + ["top"]

    def columns(self, proj, norms, layers) -> dict:
        """``z_<e>``, ``p_<e>`` per emotion and ``top`` (the argmax label) from projections over ``layers``."""
        z = self.band_z(self.layer_z(proj, layers), layers)
        p = self.probabilities(z)
        out = {f"z_{e}": z[:, k].astype(np.float32) for k, e in enumerate(self.emotions)}
        out.update({f"p_{e}": p[:, k].astype(np.float32) for k, e in enumerate(self.emotions)})
        out["top"] = np.array([self.emotions[k] for k in z.argmax(axis=1)], dtype=object)
        return out

    def score(self, model, tokenizer, texts, *, batch_size=None, max_tokens=None, progress=False, stats=None) -> dict:
        """Score texts: the columns of :meth:`columns`, numpy arrays in input order."""
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
            stats=stats,
            **self.extraction(),
        )
        return self.columns(proj, norms, layers)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit_passes(
        cls,
        model,
        tokenizer,
        data,
        *,
        position=DEFAULT_POSITION,
        chat_template="auto",
        system_prompt=None,
        layers=None,
        batch_size=None,
        max_tokens=None,
        progress=False,
        shuffled=0,
        seed=0,
        share=VARIANCE_EXPLAINED,
        extra_texts=(),
        reference="pooled",
    ):
        """Run the passes and build the space (no layer choice yet) and its shuffled-label twins.

        ``reference``: ``"pooled"`` fits the neutral zero on the train parts of both neutral sets (the dataset's
        ``neutral`` and, where it has one, ``neutral_ood``: more and more varied neutral texts), ``"neutral"`` on
        the first set only.

        Returns ``(space, [shuffled spaces], projections)``; ``projections`` maps ``"val"``, ``"test"``, ``"neutral"``
        and ``"extra"`` to ``[N, nL, E * (1 + shuffled)]`` projections on every space's directions (all candidate
        layers); ``"neutral_rows"`` holds the neutral rows ``[Nn, nL, D]`` and ``"neutral_where"`` the slice of
        each neutral set and split in them (``"neutral:train"``, ..., ``"neutral_ood:test"``).
        """
        from ..capture.api import accumulate_sets, extract, project
        from ..capture.models import model_dtype, model_id, num_layers

        if chat_template == "auto":
            chat_template = getattr(tokenizer, "chat_template", None) is not None
        if not chat_template:
            system_prompt = None
        ex = {"position": position, "chat_template": bool(chat_template), "system_prompt": system_prompt}
        n_layers = num_layers(model)
        layers = list(range(n_layers + 1)) if layers is None else [int(x) % (n_layers + 1) for x in layers]
        kw = {"layers": layers, "batch_size": batch_size, "max_tokens": max_tokens, "progress": progress, **ex}
        _, train_texts, y = data.split("train")
        y = np.asarray(y)
        sets = [[data.emotions[k] for k in y]]
        rng = np.random.default_rng(seed)
        for _ in range(shuffled):
            sets.append([data.emotions[k] for k in rng.permutation(y)])
        accs = accumulate_sets(model, tokenizer, train_texts, sets, label_names=list(data.emotions), **kw)
        # Neutral rows, in this order: the first set's train, val, test, then the second set's train, test. The
        # reference is fitted on the first set's train texts, and with ``reference="pooled"`` also on the second
        # set's train texts; the rest is held out.
        parts = [("neutral", s, data.neutral.get(s, [])) for s in ("train", "val", "test")]
        parts += [("neutral_ood", s, getattr(data, "neutral_ood", {}).get(s, [])) for s in ("train", "test")]
        if reference not in ("pooled", "neutral"):
            raise ValueError(f"reference must be 'pooled' or 'neutral', not {reference!r}")
        rows = extract(model, tokenizer, [t for *_, r in parts for _, t in r], **kw)  # [Nn, nL, D]
        where, start = {}, 0
        for name, split, r in parts:
            where[f"{name}:{split}"] = slice(start, start + len(r))
            start += len(r)
        fit_keys = ["neutral:train"] + (["neutral_ood:train"] if reference == "pooled" else [])
        fit_rows = torch.cat([rows[where[k]] for k in fit_keys])
        spaces = []
        for acc in accs:
            means = acc.means()  # [E, nL, D]
            dirs, mu_n, sig, ks = reference_parts(means, acc.counts, fit_rows, share)
            meta = {
                "model": model_id(model),
                "dtype": str(model_dtype(model)).replace("torch.", ""),
                **ex,
                "dataset": {"root": data.source, "sha256": data.hashes, "counts": data.counts()},
                "variance_explained": share,
                "reference": {"fitted_on": fit_keys, "n": int(len(fit_rows))},
                "emofast_version": __version__,
            }
            spaces.append(cls(data.emotions, layers, dirs, mu_n, sig, n_components=ks, meta=meta))
            spaces[-1].train_means = (means, acc.counts)  # kept (not saved) for other references
        everyone = torch.cat([s.directions_for(layers) for s in spaces], dim=1)  # [nL, E*(1+S), D]
        projections = {}
        texts = {"val": data.split("val")[1], "test": data.split("test")[1], "extra": list(extra_texts)}
        order = [t for k in ("val", "test", "extra") for t in texts[k]]
        proj, _ = project(
            model,
            tokenizer,
            order,
            everyone,
            layers=layers,
            batch_size=batch_size,
            max_tokens=max_tokens,
            progress=progress,
            **ex,
        )
        start = 0
        for k in ("val", "test", "extra"):
            projections[k] = proj[start : start + len(texts[k])]
            start += len(texts[k])
        projections["neutral"] = torch.einsum("nld,lkd->nlk", rows.float(), everyone)
        projections["neutral_rows"], projections["neutral_where"] = rows, where
        return spaces[0], spaces[1:], projections

    def with_reference(self, fit_rows, share: float | None = None) -> EmotionSpace:
        """The same space (train means, chosen layers, temperature) with its neutral reference refitted on other
        neutral rows ``[Nn, nL, D]``; needs the train means that :meth:`fit_passes` keeps."""
        means, counts = self.train_means
        share = self.meta.get("variance_explained", VARIANCE_EXPLAINED) if share is None else share
        dirs, mu_n, sig, ks = reference_parts(means, counts, fit_rows, share)
        meta = {**self.meta, "reference": {"n": int(len(fit_rows))}}
        out = EmotionSpace(self.emotions, self.layers, dirs, mu_n, sig, n_components=ks, meta=meta)
        out.chosen, out.temperature = list(self.chosen), self.temperature
        return out

    def select_and_calibrate(self, val_layer_z: np.ndarray, y_val, *, width: int = 4) -> dict:
        """Choose the band by val N-way accuracy (ties: the lower layers) and fit the temperature by val NLL."""
        y_val = np.asarray(y_val)
        table = []
        for band in band_candidates(len(self.layers), width):
            z = val_layer_z[:, band].mean(axis=1)
            table.append({"layers": [self.layers[i] for i in band], "accuracy": float(np.mean(z.argmax(1) == y_val))})
        best = max(table, key=lambda r: (r["accuracy"], -r["layers"][0]))
        self.chosen = best["layers"]
        z = self.band_z(val_layer_z, self.layers)

        def nll(log_t):
            return -float(np.mean(log_softmax(z / np.exp(log_t), axis=1)[np.arange(len(y_val)), y_val]))

        res = minimize_scalar(nll, bounds=(np.log(1e-2), np.log(1e3)), method="bounded")
        self.temperature = float(np.exp(res.x))
        self.meta.update({"band_width": width})
        self.fit_report = {"selection": table, "val_nll": float(res.fun), "val_accuracy": best["accuracy"]}
        return self.fit_report

    @classmethod
    def fit(cls, model, tokenizer, data, *, width: int = 4, **kwargs) -> EmotionSpace:
        """Fit on ``data`` (an :class:`~emofast.data.emotions.EmotionDataset`): directions from train, the
        neutral reference from the neutral set, the band and temperature on val. Keyword arguments as in
        :meth:`fit_passes` (``position``, ``chat_template``, ``system_prompt``, ``layers``, ``batch_size`` ...)."""
        space, _, proj = cls.fit_passes(model, tokenizer, data, **kwargs)
        E = len(space.emotions)
        space.select_and_calibrate(
            space.layer_z(proj["val"][:, :, :E], space.layers), data.split("val")[2], width=width
        )
        return space

    # ------------------------------------------------------------------ saving
    def spec(self) -> dict:
        return {
            "format": 1,
            "kind": "space",
            "emotions": self.emotions,
            "layers": self.layers,
            "chosen_layers": self.chosen,
            "temperature": self.temperature,
            "neutral_components": self.n_components,
            "hidden_size": int(self.directions.shape[-1]),
            **self.meta,
        }

    _spec = spec  # the name the corpus scorer's probe fingerprint reads

    @property
    def midpoints(self) -> torch.Tensor:
        """The neutral mean, for fingerprints shared with pair probes."""
        return self.neutral_mean

    def save(self, path) -> Path:
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        spec = self.spec()
        tensors = {
            "directions": self.directions.contiguous(),
            "neutral_mean": self.neutral_mean.contiguous(),
            "sigma": self.sigma.float().contiguous(),
        }
        tmp = folder / (PROBE_FILE + ".tmp")
        save_file(tensors, str(tmp), metadata={"emofast": SPACE_KIND, "spec": json.dumps(spec, sort_keys=True)})
        tmp.replace(folder / PROBE_FILE)
        write_json(folder / PROBE_JSON, spec)
        return folder

    @classmethod
    def load(cls, path) -> EmotionSpace:
        from safetensors import safe_open

        path = Path(path)
        file = path / PROBE_FILE if path.is_dir() else path
        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("emofast") != SPACE_KIND:
                raise ValueError(f"{file}: not an emofast emotion space")
            spec = json.loads(header["spec"])
            t = {k: f.get_tensor(k) for k in ("directions", "neutral_mean", "sigma")}
        skip = {
            "format",
            "kind",
            "emotions",
            "layers",
            "chosen_layers",
            "temperature",
            "neutral_components",
            "hidden_size",
        }
        return cls(
            spec["emotions"],
            spec["layers"],
            t["directions"],
            t["neutral_mean"],
            t["sigma"],
            chosen=spec["chosen_layers"],
            temperature=spec["temperature"],
            n_components=spec["neutral_components"],
            meta={k: v for k, v in spec.items() if k not in skip},
        )

    def __repr__(self) -> str:
        return f"EmotionSpace({len(self.emotions)} emotions, chosen={self.chosen}, T={self.temperature:.3g})"
