"""``emofast run --space [DIR]``: fit an emotion space (:mod:`emofast.probe.space`), evaluate it on held-out texts,
and write a run folder like a pair run: ``probe.safetensors`` and ``probe.json`` (``"kind": "space"``),
``metrics.json``, ``emotions.csv``, ``confusion.csv``, ``summary.md``, ``timing.json`` and the report."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..data.emotions import load_emotions
from ..data.lexical import C_GRID
from ..fileio import write_json
from ..probe.paired import DEFAULT_POSITION
from ..probe.space import EmotionSpace
from ..probe.space_eval import evaluate_space, geometry, neutral_reference, recovered_pairs, topk_accuracy
from ..probe.stats import bootstrap_ci
from .run import round_floats

__all__ = ["run_space", "default_space_dir"]


def default_space_dir(model_name: str) -> Path:
    """``runs/<model>-space``, beside the pair run's ``runs/<model>``."""
    from .run import default_run_dir

    d = default_run_dir(model_name)
    return d.with_name(d.name + "-space")


def _lexical(data, n_boot, seed) -> dict:
    """N-way TF-IDF + logistic regression on the same splits; C by val accuracy."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    _, tr, ytr = data.split("train")
    _, va, yva = data.split("val")
    ids, te, yte = data.split("test")
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x = vec.fit_transform(tr)
    best = None
    xv, yv = vec.transform(va), np.asarray(yva)
    for C in C_GRID:
        m = LogisticRegression(C=C, max_iter=3000, random_state=seed).fit(x, ytr)
        key = (float(np.mean(m.predict(xv) == yv)), -log_loss(yv, m.predict_proba(xv), labels=m.classes_))
        if best is None or key > best[0]:  # val accuracy, ties by val log-loss
            best = (key, C, m)
    z = best[2].decision_function(vec.transform(te))
    y = np.asarray(yte)
    t1 = bootstrap_ci(lambda y, z: topk_accuracy(z, y, 1), y, z, n_boot=n_boot, seed=seed, keys=ids)
    return {"C": best[1], "top1": {"value": t1[0], "ci95": [t1[1], t1[2]]}, "top3": topk_accuracy(z, y, 3)}


def _pair_run_metrics(pairs_run):
    if pairs_run is None:
        return None
    f = Path(pairs_run) / "metrics.json"
    return json.loads(f.read_text()) if f.is_file() else None


def run_space(
    model="smollm2",
    root=None,
    out=None,
    *,
    tokenizer=None,
    model_name=None,
    emotions=None,
    width=4,
    position=DEFAULT_POSITION,
    chat_template="auto",
    system_prompt="You are a helpful assistant.",
    dtype="auto",
    device=None,
    batch_size=None,
    max_tokens=None,
    n_boot=1000,
    seed=0,
    shuffled=5,
    reference="pooled",
    pairs_run="auto",
    progress=False,
    report=True,
) -> dict:
    """Fit, evaluate and write an emotion-space run folder; returns ``metrics``.

    Args:
        root: an emotion folder (:func:`emofast.data.emotions.load_emotions`; default: the bundled emotions).
        shuffled: shuffled-label spaces (labels permuted over the train texts) fitted from the same pass.
        reference: ``"pooled"`` (the neutral zero fitted on the train parts of both bundled neutral sets) or
            ``"neutral"`` (the first set only); see :meth:`EmotionSpace.fit_passes`.
        pairs_run: a pair run folder of the same model, for the pairs recovered from the space beside the
            dedicated pair probes (``"auto"``: ``runs/<model>`` when it exists; None: none).
    """
    from ..capture.loader import load_model
    from ..capture.models import model_id
    from ..data.pairs import load_pairs

    t0 = time.perf_counter()
    timing = {}
    data = load_emotions(root, emotions)
    if isinstance(model, str):
        name = model
        model, tokenizer = load_model(model, dtype=dtype, device=device)
    else:
        name = model_name or model_id(model)
    out = Path(out) if out is not None else default_space_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    timing["load_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    space, twins, proj = EmotionSpace.fit_passes(
        model,
        tokenizer,
        data,
        position=position,
        chat_template=chat_template,
        system_prompt=system_prompt,
        batch_size=batch_size,
        max_tokens=max_tokens,
        progress=progress,
        shuffled=shuffled,
        seed=seed,
        reference=reference,
    )
    timing["passes_s"] = time.perf_counter() - t
    t = time.perf_counter()
    E = len(space.emotions)
    _, _, yva = data.split("val")
    ids, _, yte = data.split("test")
    part = lambda x, k: x[:, :, k * E : (k + 1) * E]  # noqa: E731
    space.select_and_calibrate(space.layer_z(part(proj["val"], 0), space.layers), yva, width=width)
    z_test = space.band_z(space.layer_z(part(proj["test"], 0), space.layers), space.layers)
    metrics = {"kind": "space", "model": space.meta["model"], "probe": space.spec()}
    metrics["test"] = evaluate_space(space.emotions, z_test, yte, ids, n_boot=n_boot, seed=seed)
    metrics["selection"] = space.fit_report
    metrics["neutral"] = _neutral_readings(space, proj, part(proj["neutral"], 0))
    try:
        pair_names = [(p.left, p.right) for p in load_pairs().pairs] if data.source == "bundled:emotions" else []
    except Exception:  # the bundled pairs are optional here
        pair_names = []
    rec = recovered_pairs(space.emotions, z_test, yte, pair_names, n_boot=n_boot, seed=seed, ids=ids)
    pm = _pair_run_metrics(default_pair_run(name) if pairs_run == "auto" else pairs_run)
    metrics["pairs_recovered"] = {
        k: {"space": v, "pair_probe": (pm or {}).get("pairs_test", {}).get(k, {}).get("balanced_accuracy")}
        for k, v in rec.items()
    }
    if pm and "neutral" in pm:
        metrics["neutral"]["pair_probes_mean_p_left"] = {k: v["mean_p_left"]["value"] for k, v in pm["neutral"].items()}
    idx = [space.layers.index(x) for x in space.chosen]
    vec = space.directions[:, idx].double().mean(1).numpy()
    metrics["geometry"] = geometry(space.emotions, vec, data.circumplex)
    metrics["geometry"]["neutral_components"] = {
        str(x): space.n_components[space.layers.index(x)] for x in space.chosen
    }
    controls = {}
    if twins:
        accs = []
        for k, tw in enumerate(twins, start=1):
            tw.select_and_calibrate(tw.layer_z(part(proj["val"], k), tw.layers), yva, width=width)
            zt = tw.band_z(tw.layer_z(part(proj["test"], k), tw.layers), tw.layers)
            accs.append(topk_accuracy(zt, np.asarray(yte), 1))
        controls["shuffled_labels"] = {"top1": accs, "mean": float(np.mean(accs)), "n": len(accs)}
    t2 = time.perf_counter()
    controls["lexical"] = _lexical(data, n_boot, seed)
    timing["control_lexical_s"] = time.perf_counter() - t2
    metrics["controls"] = controls
    metrics["summary"] = {
        "emotions": E,
        "top1": metrics["test"]["top1"]["value"],
        "top1_over_chance": metrics["test"]["top1"]["value"] * E,
        "top3": metrics["test"]["top3"]["value"],
        "neutral_max_abs_mean_z": metrics["neutral"]["held_out"]["max_abs_mean"],
        "neutral_ood_max_abs_mean_z": metrics["neutral"].get("independent_held_out", {}).get("max_abs_mean"),
        "unseen_neutral_max_abs_mean_z": metrics["neutral"].get("unseen_set", {}).get("max_abs_mean"),
        "chosen_layers": space.chosen,
        "temperature": space.temperature,
    }
    timing["statistics_s"] = time.perf_counter() - t
    space.meta["model_load"] = name
    space.meta["circumplex"] = {e: list(v) for e, v in data.circumplex.items()}
    space.save(out)
    metrics["probe"] = space.spec()
    write_json(out / "metrics.json", round_floats(metrics))
    _write_tables(out, space, metrics, data)
    (out / "summary.md").write_text(summary_markdown(metrics), encoding="utf-8")
    timing["total_s"] = time.perf_counter() - t0
    timing["texts_through_model"] = sum(len(data.split(s)[1]) for s in ("train", "val", "test")) + sum(
        len(v) for v in [*data.neutral.values(), *data.neutral_ood.values()]
    )
    write_json(out / "timing.json", round_floats(timing, 2))
    if report:
        from ..report import write_run_report

        write_run_report(out)
    return metrics


def _neutral_readings(space, proj, neutral_proj) -> dict:
    """z on the neutral sets: the texts the zero was fitted on, the first set's held-out texts, the second set's
    held-out texts, and (the test of a zero beyond its own sample) the whole second set read by a zero fitted on
    the first set alone."""
    where, rows = proj["neutral_where"], proj["neutral_rows"]
    z = space.band_z(space.layer_z(neutral_proj, space.layers), space.layers)
    fitted = space.meta.get("reference", {}).get("fitted_on", ["neutral:train"])

    def pick(keys):
        idx = np.concatenate([np.arange(len(z))[where[k]] for k in keys if k in where])
        return idx

    out = {
        "fitted_on": fitted,
        "fit": neutral_reference(space.emotions, z[pick(fitted)]),
        "held_out": neutral_reference(space.emotions, z[pick(["neutral:val", "neutral:test"])]),
    }
    ood_test = pick(["neutral_ood:test"])
    if len(ood_test):
        out["independent_held_out"] = neutral_reference(space.emotions, z[ood_test])
        first_only = space.with_reference(rows[where["neutral:train"]])
        ood_all = pick(["neutral_ood:train", "neutral_ood:test"])
        dirs = first_only.directions_for(space.layers)  # [nL, E, D]
        pz = torch.einsum("nld,led->nle", rows[ood_all].float(), dirs)
        zu = first_only.band_z(first_only.layer_z(pz, space.layers), space.layers)
        out["unseen_set"] = {
            "reference": "the first neutral set's train texts only",
            **neutral_reference(space.emotions, zu),
        }
    return out


def default_pair_run(name: str) -> Path:
    """Where ``emofast run`` writes a model's pair run by default."""
    from .run import default_run_dir

    return default_run_dir(name)


def _write_tables(out: Path, space, metrics, data) -> None:
    g = metrics["geometry"]
    with open(out / "emotions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "auroc_test", "neutral_mean_z", "neutral_sd_z", "pc1", "pc2", "valence", "arousal"])
        for e in space.emotions:
            circ = data.circumplex.get(e, ("", ""))
            w.writerow(
                [
                    e,
                    round(metrics["test"]["auroc"][e], 4),
                    round(metrics["neutral"]["held_out"]["mean"][e], 4),
                    round(metrics["neutral"]["held_out"]["sd"][e], 4),
                    round(g["pca"][e][0], 4),
                    round(g["pca"][e][1], 4),
                    *circ,
                ]
            )
    conf = metrics["test"]["confusion"]
    with open(out / "confusion.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *conf["labels"]])
        for e, row in zip(conf["labels"], conf["counts"]):
            w.writerow([e, *row])


def summary_markdown(m: dict) -> str:
    s, t = m["summary"], m["test"]
    lines = [
        f"# emofast emotion space: {m['model']}",
        "",
        f"{s['emotions']} emotions; layers {s['chosen_layers'][0]}-{s['chosen_layers'][-1]} (chosen on val), "
        f"temperature {s['temperature']:.3g}.",
        "",
        f"- test top-1 accuracy {t['top1']['value']:.3f} [{t['top1']['ci95'][0]:.3f}, {t['top1']['ci95'][1]:.3f}] "
        f"({s['top1_over_chance']:.1f}x chance of {t['chance']:.3f}); top-3 {t['top3']['value']:.3f}",
        f"- held-out neutral texts: largest |mean z| over emotions {s['neutral_max_abs_mean_z']:.2f} (target <= 0.5)",
    ]
    if s.get("neutral_ood_max_abs_mean_z") is not None:
        lines.append(
            f"- the second neutral set (written apart): largest |mean z| {s['neutral_ood_max_abs_mean_z']:.2f} on its "
            f"held-out third; {s['unseen_neutral_max_abs_mean_z']:.2f} on all of it when the zero is fitted on the "
            "first set alone"
        )
    c = m.get("controls", {})
    if "lexical" in c:
        lines.append(f"- lexical baseline (TF-IDF + logistic regression) top-1 {c['lexical']['top1']['value']:.3f}")
    if "shuffled_labels" in c:
        lines.append(
            f"- shuffled labels top-1 {c['shuffled_labels']['mean']:.3f} (mean of {c['shuffled_labels']['n']})"
        )
    circ = m["geometry"].get("circumplex")
    if circ:
        lines.append(
            f"- geometry: r(PC1, valence) = {circ['pc1_valence']:+.2f}, r(PC2, arousal) = "
            f"{circ['pc2_arousal']:+.2f} over {circ['n']} emotions"
        )
    for k, v in m.get("pairs_recovered", {}).items():
        pp = v["pair_probe"]
        lines.append(
            f"- {k} from the space: {v['space']['value']:.3f}"
            + (f" (dedicated pair probe {pp['value']:.3f})" if pp else "")
        )
    return "\n".join(lines) + "\n"
