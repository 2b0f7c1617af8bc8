"""Direction methods x layer policies on the bundled pairs: the comparison that chose emofast's defaults.

    python bench/compare_methods.py [--position last] [--model smollm2]

Extracts every bundled text once (all splits, all layers), then for each direction method and layer policy
fits on train, selects on val, and reports the mean balanced sign accuracy (score > 0) on val (what the
defaults are chosen by) and on test (shown for information only; it chose nothing).

Every configuration's test accuracy is compared with the best configuration on val by a paired bootstrap: the
same resamples of each pair's test texts (by scene: the bundled texts are matched) for both, the difference of
their mean balanced accuracies over pairs, 95% percentile interval. A configuration whose interval spans 0 cannot
be told apart from the best one on these texts; the table says so.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import emofast
from emofast.data import load_pairs
from emofast.probe import DEFAULT_SYSTEM_PROMPT, SplitIndex
from emofast.probe.directions import logistic, mean_diff, shrinkage_lda
from emofast.probe.layers import choose_layers
from emofast.probe.stats import balanced_accuracy, resample_indices, scene_keys

POLICIES = [
    ("per-pair", 1),
    ("per-pair", 2),
    ("per-pair", 4),
    ("per-pair", 8),
    ("band", 4),
    ("global-band", 4),
    ("single", 1),
]


def study_method(rows, index, n_pairs, n_layers, per_side=15) -> dict:
    """The original study's recipe: mean-diff directions from its first 15 train texts per side, uncentred
    cosine scores, one band of 4 layers for all pairs by votes, all chosen on those same training texts."""
    dirs, per = [], {}
    for p in range(n_pairs):
        idx = index["train"].of_pair(p)
        y = index["train"].y[idx]
        sel = np.concatenate([idx[y == 1][:per_side], idx[y == 0][:per_side]])
        left, right = idx[y == 1][:per_side], idx[y == 0][:per_side]
        d = mean_diff(rows["train"][left].double().mean(0), rows["train"][right].double().mean(0)).double()
        dirs.append(d)
        x = rows["train"][sel].double()
        per[p] = ((torch.einsum("nld,ld->nl", x, d) / x.norm(dim=-1)).numpy(), index["train"].y[sel])
    chosen, _ = choose_layers(per, list(range(n_layers)), "global-band", 4)
    test, train = [], []
    for p in range(n_pairs):
        idx = index["test"].of_pair(p)
        x = rows["test"][idx].double()
        cos = (torch.einsum("nld,ld->nl", x, dirs[p]) / x.norm(dim=-1)).numpy()[:, chosen[p]].mean(axis=1)
        test.append(balanced_accuracy(index["test"].y[idx], cos > 0))
        c, y = per[p]
        train.append(balanced_accuracy(y, c[:, chosen[p]].mean(axis=1) > 0))
    return {
        "layers": chosen[0],
        "test_mean": float(np.mean(test)),
        "test_min": float(np.min(test)),
        "train_mean": float(np.mean(train)),
    }


def paired_mean_difference(index, preds_a, preds_b, n_boot=2000, seed=0) -> dict:
    """Mean over pairs of ``BA(a) - BA(b)`` on the test split, with a paired 95% percentile interval.

    ``preds_*``: per pair, the boolean test decisions (True = left) in the split's order of that pair's texts.
    """
    diffs = np.zeros(n_boot)
    point = []
    for p, (a, b) in enumerate(zip(preds_a, preds_b)):
        idx = index.of_pair(p)
        y = index.y[idx].astype(bool)
        ids = [index.ids[i] for i in idx]
        draws = resample_indices(y, n_boot, seed, ids, scene_keys(ids, y))
        point.append(balanced_accuracy(y, a) - balanced_accuracy(y, b))
        for k, r in enumerate(draws):
            diffs[k] += balanced_accuracy(y[r], a[r]) - balanced_accuracy(y[r], b[r])
    diffs /= len(preds_a)
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return {"value": float(np.mean(point)), "ci95": [float(lo), float(hi)]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--position", default="last")
    ap.add_argument("--json", default=None, help="also write the table here")
    args = ap.parse_args()
    position = int(args.position) if args.position.lstrip("-").isdigit() else args.position
    data = load_pairs()
    model, tok = emofast.load_model(args.model)
    rows, index = {}, {}
    for split in ("train", "val", "test"):
        index[split] = SplitIndex.of(data, split)
        rows[split] = emofast.extract(
            model,
            tok,
            index[split].texts,
            chat_template=True,
            system_prompt=DEFAULT_SYSTEM_PROMPT,
            position=position,
            progress=True,
        )
    n_layers = rows["train"].shape[1]
    table = []
    for method, fn in (("mean-diff", None), ("lda", shrinkage_lda), ("logreg", logistic)):
        dirs, mids = [], []
        for p in range(len(data.pairs)):
            idx = index["train"].of_pair(p)
            y = index["train"].y[idx]
            left, right = rows["train"][idx[y == 1]], rows["train"][idx[y == 0]]
            mu_l, mu_r = left.double().mean(0), right.double().mean(0)
            dirs.append((mean_diff(mu_l, mu_r) if fn is None else fn(left, right)).double())
            mids.append((mu_l + mu_r) / 2)
        d, m = torch.stack(dirs), torch.stack(mids)  # [P, nL, D]
        offsets = (d * m).sum(-1)  # [P, nL]
        scores = {
            s: (torch.einsum("nld,pld->nlp", rows[s].double(), d) - offsets.T[None]).numpy() for s in ("val", "test")
        }
        for policy, width in POLICIES:
            per = {}
            for p in range(len(data.pairs)):
                idx = index["val"].of_pair(p)
                per[p] = (scores["val"][idx, :, p], index["val"].y[idx])
            chosen, _ = choose_layers(per, list(range(n_layers)), policy, width)
            res, preds = {}, []
            for split in ("val", "test"):
                bas = []
                for p in range(len(data.pairs)):
                    idx = index[split].of_pair(p)
                    s = scores[split][idx][:, chosen[p], p].mean(axis=1)
                    bas.append(balanced_accuracy(index[split].y[idx], s > 0))
                    if split == "test":
                        preds.append(s > 0)
                res[split] = bas
            table.append(
                {
                    "method": method,
                    "policy": policy,
                    "width": width,
                    "val_mean": float(np.mean(res["val"])),
                    "test_mean": float(np.mean(res["test"])),
                    "test_min": float(np.min(res["test"])),
                    "_test_preds": preds,
                }
            )
            print(
                f"{method:9s} {policy:11s} w={width}: val {np.mean(res['val']):.3f}  test {np.mean(res['test']):.3f}"
                f" (min {np.min(res['test']):.3f})"
            )
    study = study_method(rows, index, len(data.pairs), n_layers)
    print(
        f"study's method (15 train texts per side, uncentred cosine, global band of 4 chosen on those texts): "
        f"test {study['test_mean']:.3f} (min {study['test_min']:.3f}), on its own training texts "
        f"{study['train_mean']:.3f}"
    )
    best = max(table, key=lambda r: r["val_mean"])
    print(f"best on val: {best['method']} {best['policy']} w={best['width']}")
    print("test: each configuration minus the best on val (paired bootstrap over the same test texts, 95%):")
    for row in table:
        d = paired_mean_difference(index["test"], row["_test_preds"], best["_test_preds"])
        row["test_minus_best"] = d
        lo, hi = d["ci95"]
        verdict = "cannot be told apart" if lo <= 0 <= hi else ("better" if lo > 0 else "worse")
        row["versus_best"] = verdict
        print(
            f"  {row['method']:9s} {row['policy']:11s} w={row['width']}: {d['value']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            f"  {verdict}"
        )
    for row in table:
        del row["_test_preds"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"position": args.position, "rows": table, "best_on_val": best, "study": study}, f, indent=1)


if __name__ == "__main__":
    main()
