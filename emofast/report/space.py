"""Reports of emotion-space runs (``emofast run --space``): one run, or several models compared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .doc import Doc
from .figures import new_figure, plotting, png_bytes

__all__ = ["is_space_run", "space_doc"]


def is_space_run(path) -> bool:
    f = Path(path) / "metrics.json"
    return f.is_file() and json.loads(f.read_text()).get("kind") == "space"


def _ci(e) -> str:
    return f"{e['value']:.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]"


def _fig_confusion(m: dict) -> bytes:
    conf = np.array(m["test"]["confusion"]["counts"], dtype=float)
    labels = m["test"]["confusion"]["labels"]
    rate = conf / conf.sum(1, keepdims=True).clip(min=1)
    fig = new_figure(6.4, 5.6)
    ax = fig.subplots()
    im = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted (argmax z)")
    ax.set_ylabel("true emotion")
    fig.colorbar(im, ax=ax, label="share of the true emotion's test texts")
    return png_bytes(fig)


def _fig_pca(m: dict, circumplex: dict) -> bytes:
    pca = m["geometry"]["pca"]
    fig = new_figure(5.6, 4.8)
    ax = fig.subplots()
    for e, (x, y) in pca.items():
        v = circumplex.get(e, [0, 0])[0]
        ax.scatter([x], [y], c=["#2ca02c" if v > 0 else "#d62728" if v < 0 else "#7f7f7f"], s=30)
        ax.annotate(e, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    var = m["geometry"]["pca_variance"]
    ax.set_xlabel(f"PC1 ({var[0]:.0%} of the vectors' variance)")
    ax.set_ylabel(f"PC2 ({var[1]:.0%})")
    ax.set_title("emotion vectors, PCA (green: pleasant, red: unpleasant in the textbook circumplex)")
    return png_bytes(fig)


def _fig_neutral(m: dict) -> bytes:
    n = m["neutral"]["held_out"]
    em = list(n["mean"])
    fig = new_figure(6.4, 3.2)
    ax = fig.subplots()
    ax.bar(range(len(em)), [n["mean"][e] for e in em], yerr=[n["sd"][e] for e in em], capsize=2, color="#9ecae1")
    ax.axhspan(-0.5, 0.5, color="#2ca02c", alpha=0.1, label="target: |mean| <= 0.5")
    ax.set_xticks(range(len(em)), em, rotation=90)
    ax.set_ylabel("z on held-out neutral texts\n(mean ± sd)")
    ax.legend()
    return png_bytes(fig)


def space_doc(runs: list[tuple[str, dict]], title: str) -> Doc:
    """The report of one or more space runs: ``runs`` is ``[(label, metrics)]``."""
    doc = Doc(title)
    with plotting():
        doc.h2("Emotion space: summary", "space")
        doc.p(
            "One direction per emotion against the mean of all emotions, with the neutral texts' main directions "
            "projected out; readings z are in units of neutral spread, so neutral text reads about 0. Layers and "
            "temperature are chosen on val; every number below is on test or held-out neutral texts."
        )
        rows = []
        for label, m in runs:
            s, c = m["summary"], m.get("controls", {})
            circ = m["geometry"].get("circumplex", {})
            rows.append(
                [
                    label,
                    str(s["emotions"]),
                    f"{s['chosen_layers'][0]}-{s['chosen_layers'][-1]}",
                    _ci(m["test"]["top1"]),
                    f"{s['top1_over_chance']:.1f}x",
                    f"{s['top3']:.3f}",
                    f"{c['lexical']['top1']['value']:.3f}" if "lexical" in c else "n/a",
                    f"{c['shuffled_labels']['mean']:.3f}" if "shuffled_labels" in c else "n/a",
                    f"{s['neutral_max_abs_mean_z']:.2f}",
                    f"{circ.get('pc1_valence', float('nan')):+.2f} / {circ.get('pc2_arousal', float('nan')):+.2f}",
                ]
            )
        doc.table(
            [
                "model",
                "emotions",
                "layers",
                "top-1 [95% CI]",
                "over chance",
                "top-3",
                "lexical top-1",
                "shuffled top-1",
                "neutral max |mean z|",
                "r(PC1, valence) / r(PC2, arousal)",
            ],
            rows,
        )
        for label, m in runs:
            if len(runs) > 1:
                doc.h3(label)
            t = m["test"]
            n = m["neutral"]["held_out"]
            ind, uns = m["neutral"].get("independent_held_out"), m["neutral"].get("unseen_set")

            def zc(r, e):
                return f"{r['mean'][e]:+.2f} [{r['ci95'][e][0]:+.2f}, {r['ci95'][e][1]:+.2f}]" if r else "n/a"

            doc.table(
                [
                    "emotion",
                    "one-vs-rest AUROC",
                    "neutral mean z",
                    "neutral sd z",
                    "second neutral set, held out: mean z [95% CI]",
                    "second neutral set, zero fitted on the first set only: mean z [95% CI]",
                ],
                [
                    [e, f"{t['auroc'][e]:.3f}", f"{n['mean'][e]:+.2f}", f"{n['sd'][e]:.2f}", zc(ind, e), zc(uns, e)]
                    for e in t["auroc"]
                ],
            )
            if uns:
                doc.p(
                    f"The neutral zero is fitted on {', '.join(m['neutral'].get('fitted_on', []))}. The second "
                    "neutral set was written apart from the first (other topics and registers): its held-out "
                    "third tests the zero on texts like those it was fitted on, and the last column reads all of "
                    "it with a zero fitted on the first set alone, the test of a zero beyond its own sample "
                    "(target: every |mean z| <= 0.5)."
                )
            rec = m.get("pairs_recovered", {})
            if rec:
                doc.p(
                    "The five pairs read from the space (balanced accuracy of z_left > z_right on the pair's test "
                    "texts) beside the dedicated pair probe of the same model, where its run folder was found:"
                )
                doc.table(
                    ["pair", "from the space", "dedicated pair probe"],
                    [[k, _ci(v["space"]), _ci(v["pair_probe"]) if v["pair_probe"] else "n/a"] for k, v in rec.items()],
                )
            safe = label.replace("/", "_")
            doc.figure(f"space_confusion_{safe}.png", _fig_confusion(m), f"{label}: confusion matrix on test.")
            doc.figure(f"space_neutral_{safe}.png", _fig_neutral(m), f"{label}: readings of held-out neutral texts.")
            circ = m["probe"].get("circumplex") or {}
            doc.figure(
                f"space_pca_{safe}.png",
                _fig_pca(m, circ),
                f"{label}: the emotion vectors in their first two principal components.",
            )
    return doc
