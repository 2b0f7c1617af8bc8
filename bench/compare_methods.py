"""Positions x direction methods x layer policies on the bundled pairs: the comparison that chose emofast's
defaults.

    python bench/compare_methods.py [--model smollm2] [--last-k 4,8] [--json out.json]

One pass of the model over every bundled text (train, val, test, and the ``contrast`` split where the data has
one; chat template, all layers) keeps, per text and layer, four vectors: the last prompt token (``last``, the
default), the mean over the prompt's tokens (``mean``) and the mean over its last ``k`` tokens (``last-k``; with
the chat template these are the template's closing tokens before the answer). The pass is a plain transformers
forward of the base model with ``output_hidden_states``; its rows at every position are checked against
``emofast.extract`` at the same position on a few texts before anything is fitted.

Then for each position, direction method and layer policy: directions on train, each layer's score divided by
its within-side spread on train (as ``emofast run`` does), layers chosen on val, and the mean balanced sign
accuracy (centred score > 0) on val (what the defaults are chosen by), test and contrast (shown for information
only; they chose nothing).

Every configuration is compared with the best configuration on val by a paired bootstrap: the same resamples of
each pair's texts for both, the difference of their mean balanced accuracies over pairs, 95% percentile interval;
test resamples by scene (the bundled test texts are matched), contrast by side only (its sides are written
apart). A configuration whose interval spans 0 cannot be told apart from the best one on these texts.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import emofast
from emofast.capture.prompts import render_prompts, tokenize
from emofast.data import load_pairs
from emofast.probe import DEFAULT_SYSTEM_PROMPT, SplitIndex
from emofast.probe.directions import logistic, mean_diff, shrinkage_lda
from emofast.probe.layers import choose_layers
from emofast.probe.selection import layer_scale
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


def extract_positions(model, tok, texts, ks=(4, 8), batch_size=16) -> dict:
    """``{"last", "mean", "last-k"...: [N, L+1, D] float32}`` from one forward of the base model over the
    chat-templated texts (left padding; hidden states 0..L, the last after the final norm)."""
    prompts = render_prompts(tok, texts, True, DEFAULT_SYSTEM_PROMPT)
    ids = tokenize(tok, prompts)
    base = model.base_model
    n_layers = model.config.num_hidden_layers + 1
    d = model.config.hidden_size
    names = ["last", "mean", *(f"last-{k}" for k in ks)]
    out = {n: torch.empty((len(texts), n_layers, d), dtype=torch.float32) for n in names}
    order = np.argsort([-len(x) for x in ids], kind="stable")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            batch = order[s : s + batch_size]
            width = max(len(ids[i]) for i in batch)
            inp = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                inp[r, width - len(ids[i]) :] = torch.tensor(ids[i])
                mask[r, width - len(ids[i]) :] = 1
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            hs = base(input_ids=inp, attention_mask=mask, position_ids=pos, output_hidden_states=True).hidden_states
            h = torch.stack(hs, 1).float()  # [B, L+1, T, D]
            m = mask[:, None, :, None].float()
            out["mean"][batch] = (h * m).sum(2) / m.sum(2)
            out["last"][batch] = h[:, :, -1]
            for k in ks:
                out[f"last-{k}"][batch] = h[:, :, -k:].mean(2)
            done = min(s + batch_size, len(order))
            if (s // batch_size) % 20 == 19 or done == len(order):
                print(f"  {done}/{len(order)} texts, {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def check_against_extract(model, tok, texts, rows) -> float:
    """Largest relative difference of every position's rows (``last``, ``mean``, ``last-k``) from
    :func:`emofast.extract` at the same position (a few texts)."""
    worst = 0.0
    for position in rows:
        ref = emofast.extract(
            model, tok, texts, chat_template=True, system_prompt=DEFAULT_SYSTEM_PROMPT, position=position
        )
        got = rows[position][: len(texts)]
        worst = max(worst, float(((got - ref).norm(dim=-1) / ref.norm(dim=-1).clamp(min=1e-6)).max()))
    return worst


def paired_mean_difference(index, preds_a, preds_b, n_boot=2000, seed=0, matched=True) -> dict:
    """Mean over pairs of ``BA(a) - BA(b)`` on one split, with a paired 95% percentile interval.

    ``preds_*``: per pair, the boolean decisions (True = left) in the split's order of that pair's texts;
    ``matched=False`` resamples by side only (never by scene).
    """
    diffs = np.zeros(n_boot)
    point = []
    for p, (a, b) in enumerate(zip(preds_a, preds_b)):
        idx = index.of_pair(p)
        y = index.y[idx].astype(bool)
        ids = [index.ids[i] for i in idx]
        draws = resample_indices(y, n_boot, seed, ids, scene_keys(ids, y) if matched else None)
        point.append(balanced_accuracy(y, a) - balanced_accuracy(y, b))
        for k, r in enumerate(draws):
            diffs[k] += balanced_accuracy(y[r], a[r]) - balanced_accuracy(y[r], b[r])
    diffs /= len(preds_a)
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return {"value": float(np.mean(point)), "ci95": [float(lo), float(hi)]}


def contrast_index(data):
    """The contrast split of every pair (None if the data has none; pairs without one are skipped in the means)."""
    if not all("contrast" in p.texts for p in data.pairs):
        return None
    return SplitIndex.of(data, "contrast")


def fit_directions(rows, index, n_pairs, fn):
    dirs, mids = [], []
    for p in range(n_pairs):
        idx = index.of_pair(p)
        y = index.y[idx]
        left, right = rows[idx[y == 1]], rows[idx[y == 0]]
        mu_l, mu_r = left.double().mean(0), right.double().mean(0)
        dirs.append((mean_diff(mu_l, mu_r) if fn is None else fn(left, right)).double())
        mids.append((mu_l + mu_r) / 2)
    return torch.stack(dirs), torch.stack(mids)  # [P, nL, D]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--last-k", default="4,8", help="k of the last-k positions (comma-separated)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", default=None, help="also write the table here")
    args = ap.parse_args()
    ks = tuple(int(k) for k in args.last_k.split(",") if k)
    data = load_pairs()
    model, tok = emofast.load_model(args.model)
    splits = ["train", "val", "test"]
    index = {s: SplitIndex.of(data, s) for s in splits}
    cidx = contrast_index(data)
    if cidx is not None:
        splits.append("contrast")
        index["contrast"] = cidx
    texts = [t for s in splits for t in index[s].texts]
    t0 = time.perf_counter()
    allrows = extract_positions(model, tok, texts, ks, args.batch_size)
    seconds = time.perf_counter() - t0
    worst = check_against_extract(model, tok, texts[:8], allrows)
    print(
        f"one pass over {len(texts)} texts: {seconds:.0f} s; largest relative difference from emofast.extract "
        f"({', '.join(allrows)}; 8 texts): {worst:.1e}"
    )
    assert worst < 1e-3, "the bench's own pass does not reproduce emofast.extract"
    start, offsets = 0, {}
    for s in splits:
        offsets[s] = slice(start, start + len(index[s].texts))
        start += len(index[s].texts)
    n_pairs = len(data.pairs)
    table = []
    study = None
    for position, prow in allrows.items():
        rows = {s: prow[offsets[s]] for s in splits}
        n_layers = rows["train"].shape[1]
        if position == "last":
            study = study_method(rows, index, n_pairs, n_layers)
        for method, fn in (("mean-diff", None), ("lda", shrinkage_lda), ("logreg", logistic)):
            d, m = fit_directions(rows["train"], index["train"], n_pairs, fn)
            offs = (d * m).sum(-1)  # [P, nL]
            raw = {s: (torch.einsum("nld,pld->nlp", rows[s].double(), d) - offs.T[None]).numpy() for s in splits}
            scale = layer_scale(raw["train"], index["train"])  # [P, nL], as emofast run scales each layer
            scores = {s: raw[s] / scale.T[None] for s in splits}
            for policy, width in [(p, w) for p, w in POLICIES if w <= n_layers]:
                per = {}
                for p in range(n_pairs):
                    idx = index["val"].of_pair(p)
                    per[p] = (scores["val"][idx, :, p], index["val"].y[idx])
                chosen, _ = choose_layers(per, list(range(n_layers)), policy, width)
                res, preds = {}, {}
                for split in splits[1:]:
                    bas, pr = [], []
                    for p in range(n_pairs):
                        idx = index[split].of_pair(p)
                        sc = scores[split][idx][:, chosen[p], p].mean(axis=1)
                        bas.append(balanced_accuracy(index[split].y[idx], sc > 0))
                        pr.append(sc > 0)
                    res[split], preds[split] = bas, pr
                row = {
                    "position": position,
                    "method": method,
                    "policy": policy,
                    "width": width,
                    "val_mean": float(np.mean(res["val"])),
                    "test_mean": float(np.mean(res["test"])),
                    "test_min": float(np.min(res["test"])),
                    "_preds": preds,
                }
                if "contrast" in res:
                    row["contrast_mean"] = float(np.mean(res["contrast"]))
                    row["contrast_min"] = float(np.min(res["contrast"]))
                table.append(row)
                extra = f"  contrast {row['contrast_mean']:.3f}" if "contrast_mean" in row else ""
                print(
                    f"{position:7s} {method:9s} {policy:11s} w={width}: val {row['val_mean']:.3f}  test "
                    f"{row['test_mean']:.3f} (min {row['test_min']:.3f}){extra}"
                )
    print(
        f"study's method (15 train texts per side, uncentred cosine, global band of 4 chosen on those texts): "
        f"test {study['test_mean']:.3f} (min {study['test_min']:.3f}), on its own training texts "
        f"{study['train_mean']:.3f}"
    )
    best = max(table, key=lambda r: r["val_mean"])
    print(f"best on val: {best['position']} {best['method']} {best['policy']} w={best['width']}")
    for split in splits[1:]:
        note = " (val also chose each configuration's layers, so all are optimistic here)" if split == "val" else ""
        print(
            f"{split}: each configuration minus the best on val (paired bootstrap over the same texts, 95%){note}:"
        )
        for row in sorted(table, key=lambda r: -r["val_mean"]):
            d = paired_mean_difference(
                index[split], row["_preds"][split], best["_preds"][split], matched=split != "contrast"
            )
            row[f"{split}_minus_best"] = d
            lo, hi = d["ci95"]
            verdict = "cannot be told apart" if lo <= 0 <= hi else ("better" if lo > 0 else "worse")
            row[f"{split}_versus_best"] = verdict
            print(
                f"  {row['position']:7s} {row['method']:9s} {row['policy']:11s} w={row['width']}: "
                f"{d['value']:+.3f} [{lo:+.3f}, {hi:+.3f}]  {verdict}"
            )
    for row in table:
        del row["_preds"]
    if args.json:
        with open(args.json, "w") as f:
            out = {"model": args.model, "pass_seconds": seconds, "rows": table, "best_on_val": best, "study": study}
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
