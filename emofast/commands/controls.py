"""The controls a reviewer would demand of every run (``metrics.json["controls"]``):

- ``lexical``: what the words alone reach (TF-IDF + logistic regression, :mod:`emofast.data.lexical`), fitted on the
  same train split, ``C`` on the same val split, tested on the same test texts; and the paired-bootstrap interval of
  *probe - lexical* (the same resamples for both).
- ``random_init``: the same architecture and tokenizer with freshly initialised (seeded) weights, through the same
  probe pipeline: what a trained model adds over an untrained network of the same shape; *probe - random-init*.
- ``out_of_domain``: the probe (and the lexical baseline) on each pair's ``ood`` split, texts in other registers
  than the training texts, where the data has one.
- ``contrast``: the probe, the lexical baseline and the random-init model on each pair's ``contrast`` split (texts
  whose words point to the other side), where the data has one (:mod:`emofast.commands.contrast`); never
  resampled by scene, since the two sides of a contrast split are written apart.

Balanced accuracy here is that of the reported decision (calibrated ``p_left > 0.5`` for probes, the decision
function's sign for the lexical baseline), so the differences compare like with like.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..data.lexical import LexicalBaseline
from ..probe.paired import PairedProbe, SplitIndex
from ..probe.selection import layer_scale
from ..probe.stats import auroc, balanced_accuracy_ci, bootstrap_ci, paired_difference, scene_keys
from .contrast import CONTRAST, contrast_columns, probe_on_contrast

__all__ = ["CONTROLS", "resolve_controls", "run_controls", "pairs_columns", "RANDOM_INIT_MAX_PARAMS"]

CONTROLS = ("lexical", "shuffled", "random-init")
#: random-init is on by default up to this many parameters (about 1B), opt-in above.
RANDOM_INIT_MAX_PARAMS = 1_100_000_000


def resolve_controls(spec, model) -> list[str]:
    """``"auto"`` (lexical, shuffled, and random-init for models up to ~1B parameters), ``"none"``, or a
    comma-separated list of :data:`CONTROLS`."""
    if spec in (None, "auto"):
        n = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else None
        return ["lexical", "shuffled"] + (["random-init"] if n is not None and n <= RANDOM_INIT_MAX_PARAMS else [])
    if spec in ("none", ""):
        return []
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = sorted(set(items) - set(CONTROLS))
    if bad:
        raise ValueError(f"--controls: unknown control(s) {bad}; expected any of {', '.join(CONTROLS)}")
    return list(dict.fromkeys(items))


def _ci(t) -> dict:
    return {"value": t[0], "ci95": [t[1], t[2]]}


def _compare(y, ours, theirs, keys, n_boot, seed, matched=None) -> dict:
    """The other classifier's balanced accuracy (Wilson/MOVER) and AUROC (BCa), and the paired intervals of
    probe - other (:func:`emofast.probe.stats.paired_difference`: the same resamples, by scene for matched data).

    ``ours``: ``(p_left, score)`` of the probe; ``theirs``: ``(decision, score)`` of the other classifier;
    ``matched=False``: never by scene (the contrast split), None: detected from the ids.
    """
    y = np.asarray(y)
    p_ours, s_ours = ours
    d_theirs, s_theirs = theirs
    scenes = scene_keys(keys, y) if matched is not False else None
    diff = {"ids": keys, "n_boot": n_boot, "seed": seed, "matched": False if scenes is None else None}
    return {
        "balanced_accuracy": _ci(balanced_accuracy_ci(y, np.asarray(d_theirs, dtype=bool), scenes=scenes)),
        "auroc": _ci(bootstrap_ci(auroc, y, s_theirs, n_boot=n_boot, seed=seed, keys=keys, scenes=scenes)),
        "probe_minus": paired_difference(y, np.asarray(p_ours) > 0.5, np.asarray(d_theirs, dtype=bool), **diff),
        "probe_minus_auroc": paired_difference(y, s_ours, s_theirs, metric="auroc", **diff),
        "resample": "scene" if scenes is not None else "stratified",
    }


def _probe_outputs(probe: PairedProbe, layer_scores, layers, index: SplitIndex):
    band = probe.band_scores(layer_scores, layers)
    return band, probe.probabilities(band)


def _lexical(data, probe, band, p_left, test: SplitIndex, n_boot, seed, ood=None, contrast=None) -> dict:
    """The lexical baseline of every pair on test (and ood); with ``contrast=(index, band, p_left, entries)`` also
    on the contrast texts, into ``entries[pair]["lexical"]`` (stratified resamples: the sides are not matched)."""
    out = {}
    for p, pair in enumerate(data.pairs):
        tr_l, tr_r = pair.split("train")
        va_l, va_r = pair.split("val")
        lex = LexicalBaseline.fit(
            tr_l + tr_r, [1] * len(tr_l) + [0] * len(tr_r), va_l + va_r, [1] * len(va_l) + [0] * len(va_r), seed=seed
        )
        idx = test.of_pair(p)
        s = lex.scores([test.texts[i] for i in idx])
        entry = _compare(
            test.y[idx], (p_left[idx, p], band[idx, p]), (s > 0, s), [test.ids[i] for i in idx], n_boot, seed, None
        )
        entry["C"] = lex.C
        if ood is not None and pair.name in ood:
            o_idx, o_index, o_band, o_p = ood[pair.name]
            so = lex.scores([o_index.texts[i] for i in o_idx])
            entry["out_of_domain"] = _compare(
                o_index.y[o_idx],
                (o_p[o_idx, p], o_band[o_idx, p]),
                (so > 0, so),
                [o_index.ids[i] for i in o_idx],
                n_boot,
                seed,
                None,
            )
        if contrast is not None and pair.name in contrast[3]:
            c_index, c_band, c_p, entries = contrast
            c_idx = c_index.of_pair(p)
            sc = lex.scores([c_index.texts[i] for i in c_idx])
            entries[pair.name]["lexical"] = _compare(
                c_index.y[c_idx],
                (c_p[c_idx, p], c_band[c_idx, p]),
                (sc > 0, sc),
                [c_index.ids[i] for i in c_idx],
                n_boot,
                seed,
                matched=False,
            )
        out[pair.name] = entry
    return out


def _random_init(
    model, tok, data, fit_kwargs, band, p_left, test: SplitIndex, n_boot, seed, contrast=None, progress=False
) -> dict:
    """The same pipeline on a freshly initialised model of the same architecture (one pass per text, as the run;
    the contrast texts of ``contrast=(index, band, p_left, entries)`` in the same pass, read into
    ``entries[pair]["random_init"]``)."""
    from transformers import AutoModelForCausalLM

    from ..capture.api import extract
    from .onepass import extraction_of, project_rows

    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    fresh = AutoModelForCausalLM.from_config(model.config, dtype=dtype).to(device).eval()
    # which fresh model this was: the sum of its input embeddings (differs between seeds)
    fingerprint = float(fresh.get_input_embeddings().weight.detach().double().sum())
    fit_keys = ("method", "score", "position", "chat_template", "system_prompt", "batch_size", "max_tokens")
    fk = {k: v for k, v in fit_kwargs.items() if k in fit_keys}
    select = {k: v for k, v in fit_kwargs.items() if k not in fit_keys}  # policy, width, calibration, ...
    splits = {s: SplitIndex.of(data, s) for s in ("train", "val", "test")}
    texts = splits["train"].texts + splits["val"].texts + test.texts
    n_test = len(test.texts)
    if contrast is not None:
        texts = texts + contrast[0].texts
    ex = extraction_of(tok, fk["chat_template"], fk["system_prompt"], fk["position"])
    fresh_rows = extract(
        fresh, tok, texts, batch_size=fk.get("batch_size"), max_tokens=fk.get("max_tokens"), progress=progress, **ex
    )
    del fresh
    n_tr, n_va = len(splits["train"].texts), len(splits["val"].texts)
    # ``model`` only names the model in the probe's metadata here: the rows are the fresh model's
    rprobe, _ = PairedProbe.fit_directions_and_baselines(model, tok, data, rows=fresh_rows[:n_tr], **fk)
    proj, norms = project_rows(fresh_rows, rprobe.directions_for(rprobe.layers))
    del fresh_rows
    raw = rprobe.layer_scores(proj, norms, rprobe.layers, standardise=False)
    rprobe.scales = layer_scale(raw[:n_tr], splits["train"])  # as the run: each layer on its train scale
    ls = raw / rprobe.scales.T[None]
    rprobe.select_and_calibrate(ls[n_tr : n_tr + n_va], splits["val"], **select)
    rband = rprobe.band_scores(ls[n_tr + n_va : n_tr + n_va + n_test], rprobe.layers)
    rp_left = rprobe.probabilities(rband)
    out = {"seed": seed, "chosen_layers": rprobe.chosen, "weights_fingerprint": fingerprint}
    for p, name in enumerate(rprobe.names):
        idx = test.of_pair(p)
        out[name] = _compare(
            test.y[idx],
            (p_left[idx, p], band[idx, p]),
            (rp_left[idx, p] > 0.5, rband[idx, p]),
            [test.ids[i] for i in idx],
            n_boot,
            seed,
            None,
        )
    if contrast is not None:
        c_index, c_band, c_p, entries = contrast
        cband = rprobe.band_scores(ls[n_tr + n_va + n_test :], rprobe.layers)
        cp_left = rprobe.probabilities(cband)
        for p, name in enumerate(rprobe.names):
            if name not in entries:
                continue
            idx = c_index.of_pair(p)
            entries[name]["random_init"] = _compare(
                c_index.y[idx],
                (c_p[idx, p], c_band[idx, p]),
                (cp_left[idx, p] > 0.5, cband[idx, p]),
                [c_index.ids[i] for i in idx],
                n_boot,
                seed,
                matched=False,
            )
    return out


def _across_seeds(runs: list, names) -> dict:
    """Per pair the random-init balanced accuracy of every seed, with mean, sd (ddof 1), min and max."""
    out = {"seeds": [r["seed"] for r in runs], "weights_fingerprint": [r["weights_fingerprint"] for r in runs]}
    for name in names:
        v = np.array([r[name]["balanced_accuracy"]["value"] for r in runs if name in r])
        out[name] = {
            "balanced_accuracy": v.tolist(),
            "auroc": [r[name]["auroc"]["value"] for r in runs if name in r],
            "mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
            "min": float(v.min()),
            "max": float(v.max()),
        }
    return out


def _ood_outputs(model, tok, data, probe, runner, batch_size, max_tokens):
    """Project every pair's ``ood`` texts; ``{pair: (rows of that pair, index, band, p_left)}`` or None."""
    names = [p.name for p in data.pairs if "ood" in p.texts]
    if not names:
        return None
    # an index over the ood split of the pairs that have one (the others get no rows)
    texts, ids, pair_ix, y = [], [], [], []
    for p, pr in enumerate(data.pairs):
        if "ood" not in pr.texts:
            continue
        for side, label in ((pr.left, 1), (pr.right, 0)):
            rows = pr.texts["ood"][side]
            texts += [t for _, t in rows]
            ids += [i for i, _ in rows]
            pair_ix += [p] * len(rows)
            y += [label] * len(rows)
    index = SplitIndex(texts, ids, np.array(pair_ix), np.array(y))
    layers = probe.scoring_layers()
    proj, norms = runner.project(
        model,
        tok,
        texts,
        probe.directions_for(layers),
        layers=layers,
        batch_size=batch_size,
        max_tokens=max_tokens,
        **probe.extraction(),
    )
    ls = probe.layer_scores(proj, norms, layers)
    band = probe.band_scores(ls, layers)
    p_left = probe.probabilities(band)
    return {pr.name: (index.of_pair(p), index, band, p_left) for p, pr in enumerate(data.pairs) if pr.name in names}


def run_controls(
    which,
    model,
    tok,
    data,
    probe,
    test_layer_scores,
    test: SplitIndex,
    *,
    fit_kwargs: dict,
    n_boot: int,
    seed: int,
    timing: dict,
    runner=None,
    contrast=None,
    augment: dict | None = None,
    random_init_seeds: int = 1,
    progress: bool = False,
) -> dict:
    """The controls of :data:`CONTROLS` named in ``which`` (``shuffled`` is run by the workflow itself).

    ``contrast``: ``(index, layer_scores)`` of the contrast texts (from the run's one pass, on the probe's scale),
    or None when the data has no contrast split; ``augment``: the record of
    :func:`emofast.commands.contrast.augment_train` when train was augmented; ``random_init_seeds``: how many
    freshly initialised models (seeds ``seed``, ``seed + 1``, ...); the first gives the per-pair entries, all of
    them the spread in ``random_init["across_seeds"]``; ``progress``: a bar on each random-init pass.

    Returns ``{"lexical": {pair: ...}, "random_init": {...}, "out_of_domain": {pair: ...}, "contrast": {pair: {...,
    "lexical": ..., "random_init": ...}}}`` (what was asked and possible); ``timing`` receives the seconds of each.
    """
    from ..capture.distributed import Runner

    runner = runner or Runner()
    band, p_left = _probe_outputs(probe, test_layer_scores, probe.layers, test)
    out = {}
    con = None
    if contrast is not None:
        t = time.perf_counter()
        c_index, c_scores = contrast
        entries, c_band, c_p = probe_on_contrast(probe, c_scores, c_index, n_boot=n_boot, seed=seed)
        con = (c_index, c_band, c_p, entries)
        out[CONTRAST] = {
            "kind": "evidence",
            "resample": "stratified (the two sides of a contrast split are written apart: never by scene)",
            "train": augment["train_splits"] if augment else ["train"],
            **entries,
        }
        timing["control_contrast_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ood = _ood_outputs(model, tok, data, probe, runner, fit_kwargs.get("batch_size"), fit_kwargs.get("max_tokens"))
    if ood is not None:
        o = {}
        for p, name in enumerate(probe.names):
            if name not in ood:
                continue
            idx, index, ob, op = ood[name]
            y, keys = index.y[idx], [index.ids[i] for i in idx]
            boot = {"n_boot": n_boot, "seed": seed, "keys": keys}
            o[name] = {
                "n": int(len(idx)),
                "balanced_accuracy": _ci(balanced_accuracy_ci(y, op[idx, p] > 0.5, scenes=scene_keys(keys, y))),
                "auroc": _ci(bootstrap_ci(auroc, y, ob[idx, p], **boot)),
            }
        out["out_of_domain"] = o
        timing["control_out_of_domain_s"] = time.perf_counter() - t
    if "lexical" in which:
        t = time.perf_counter()
        out["lexical"] = _lexical(data, probe, band, p_left, test, n_boot, seed, ood, con)
        timing["control_lexical_s"] = time.perf_counter() - t
    if "random-init" in which:
        t = time.perf_counter()
        runs = [
            _random_init(
                model, tok, data, fit_kwargs, band, p_left, test, n_boot, seed + k, con if k == 0 else None, progress
            )
            for k in range(max(1, int(random_init_seeds)))
        ]
        out["random_init"] = {**runs[0], "across_seeds": _across_seeds(runs, probe.names)}
        timing["control_random_init_s"] = time.perf_counter() - t
    return out


def pairs_columns(metrics: dict, name: str) -> dict:
    """The control columns of one ``pairs.csv`` row."""
    c = metrics.get("controls", {})
    row = {}
    for key, label in (("lexical", "lexical"), ("random_init", "random_init")):
        if name in c.get(key, {}):
            e = c[key][name]
            row[f"{label}_balanced_accuracy"] = e["balanced_accuracy"]["value"]
            row[f"probe_minus_{label}"] = e["probe_minus"]["value"]
            row[f"probe_minus_{label}_lo"], row[f"probe_minus_{label}_hi"] = e["probe_minus"]["ci95"]
    if name in c.get("out_of_domain", {}):
        e = c["out_of_domain"][name]
        row["ood_balanced_accuracy"] = e["balanced_accuracy"]["value"]
        row["ood_balanced_accuracy_lo"], row["ood_balanced_accuracy_hi"] = e["balanced_accuracy"]["ci95"]
    row.update(contrast_columns(metrics, name))
    return row
