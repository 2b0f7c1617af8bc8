"""``emofast steer-check``: does pushing the residual stream along a pair's direction change what the model writes,
as judged by something that knows nothing of the model?

For each alpha (the same prompts and the same sampling seeds every time), generate with the pair's direction
added at its chosen layers (:class:`emofast.Steering`), and again along a random unit direction of the same layers
and the same scale (the directions control). Measure each text with the outside judge (VADER compound valence),
the unsteered probe's reading of the text, fluency (perplexity under the unsteered model, given the prompt) and
distinct-2. Summarise per alpha (mean and 95% bootstrap interval over prompts) and as Spearman's rho between alpha
and each measure, with a bootstrap interval that resamples prompts (all alphas of a prompt together).

Writes ``DIR/steer.jsonl`` (one row per generated text), ``DIR/summary.csv`` (per direction and alpha),
``DIR/spearman.csv`` (per direction and measure), ``DIR/summary.json`` (both, plus the settings and the verdict)
and ``DIR/dose_response.png``.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from ..fileio import write_json

__all__ = ["steer_check", "DEFAULT_ALPHAS", "MEASURES"]

DEFAULT_ALPHAS = (-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0)
MEASURES = ("vader", "probe_score", "probe_p_left", "perplexity", "distinct_2", "empty")


def _boot_mean(x: np.ndarray, rng, n_boot: int) -> tuple[float, float, float]:
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return (float("nan"),) * 3
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    return float(x.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _boot_spearman(alpha: np.ndarray, y: np.ndarray, rng, n_boot: int) -> tuple[float, float, float]:
    """rho(alpha, y) over [n_prompts, n_alphas] arrays; the interval resamples prompts (rows). NaN where the
    measure does not vary (rho is undefined)."""

    def rho(a, b):
        keep = np.isfinite(b)
        if keep.sum() < 3 or np.ptp(b[keep]) == 0 or np.ptp(a[keep]) == 0:
            return float("nan")
        return float(spearmanr(a[keep], b[keep]).statistic)

    est = rho(alpha.ravel(), y.ravel())
    if not np.isfinite(est):
        return (float("nan"),) * 3
    boots = [rho(alpha[r].ravel(), y[r].ravel()) for r in rng.integers(0, y.shape[0], size=(n_boot, y.shape[0]))]
    boots = [b for b in boots if np.isfinite(b)]
    lo, hi = np.quantile(boots, [0.025, 0.975]) if boots else (np.nan, np.nan)
    return est, float(lo), float(hi)


def steer_check(
    model,
    tok,
    probe,
    pair: str,
    out,
    *,
    alphas=DEFAULT_ALPHAS,
    n_prompts: int = 32,
    max_new_tokens: int = 40,
    do_sample: bool = True,
    seed: int = 0,
    batch_size: int | None = None,
    n_boot: int = 1000,
    data=None,
    kind: str = "mean-diff",
    progress: bool = True,
) -> dict:
    """Run the causal check for one pair of a fitted probe; returns the ``summary.json`` content.

    Example:
        >>> steer_check(model, tok, load_probe(run), "sad_vs_happy", run / "steer-check")  # doctest: +SKIP
    """
    from ..data.prompts import steer_prompts
    from ..generation.hooks import input_device
    from ..generation.judge import VALENCE, distinct_2, perplexity, vader_compound
    from ..generation.steer import Steering, generate_texts, random_vectors, steering_vectors
    from ..generation.trace import encode_prompts

    if pair not in probe.names:
        raise ValueError(f"unknown pair {pair!r}; this probe has {probe.names}")
    alphas = [float(a) for a in alphas]
    if 0.0 not in alphas:
        alphas = sorted([*alphas, 0.0])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prompts = steer_prompts(n_prompts)
    pids, ptexts = [i for i, _ in prompts], [t for _, t in prompts]
    vectors = steering_vectors(model, tok, probe, data, pairs=[pair], kind=kind, batch_size=batch_size)
    rand = random_vectors(vectors, seed=seed)
    sys_prompt = probe.extraction().get("system_prompt")
    chat = getattr(tok, "chat_template", None) is not None and probe.extraction().get("chat_template", True)
    gen = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "seed": seed,
        "batch_size": batch_size,
        "system_prompt": sys_prompt if chat else None,
        "chat_template": chat,
    }
    rows = []
    conditions = [("probe", a) for a in alphas] + [("random", a) for a in alphas if a != 0.0]
    texts_of = {}
    for k, (direction, alpha) in enumerate(conditions):
        with Steering(model, probe, {pair: alpha}, vectors=rand if direction == "random" else vectors):
            texts_of[(direction, alpha)] = generate_texts(model, tok, ptexts, **gen)
        if progress:
            print(
                f"  [{k + 1}/{len(conditions)}] {direction} alpha={alpha:+g}: {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
    texts_of.update({("random", 0.0): texts_of[("probe", 0.0)]})
    # measures, all under the unsteered model
    enc_ids, enc_mask = encode_prompts(
        tok, ptexts, chat_template=chat, system_prompt=gen["system_prompt"], device=input_device(model)
    )
    prompt_ids = [ids[m.bool()].tolist() for ids, m in zip(enc_ids.cpu(), enc_mask.cpu())]
    p = probe.names.index(pair)
    left = probe.pairs[p][0]
    for (direction, alpha), texts in sorted(texts_of.items()):
        ok = [i for i, t in enumerate(texts) if t.strip()]
        score = np.full(len(texts), np.nan)
        p_left = np.full(len(texts), np.nan)
        if ok:
            cols = probe.score(model, tok, [texts[i] for i in ok], batch_size=batch_size)
            score[ok] = cols[pair]
            p_left[ok] = cols[f"p_{left}"] if f"p_{left}" in cols else cols[probe.column_names()[3 * p + 1]]
        ppl = perplexity(model, tok, prompt_ids, texts)
        vader = vader_compound(texts)
        for i, t in enumerate(texts):
            rows.append(
                {
                    "direction": direction,
                    "alpha": alpha,
                    "prompt_id": pids[i],
                    "text": t,
                    "vader": float(vader[i]) if t.strip() else float("nan"),  # an empty text has no valence
                    "probe_score": float(score[i]),
                    "probe_p_left": float(p_left[i]),
                    "perplexity": float(ppl[i]),
                    "distinct_2": float(distinct_2(t)),
                    "empty": float(not t.strip()),  # generation that collapsed to nothing: counted, not hidden
                }
            )
    with open(out / "steer.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    rng = np.random.default_rng(seed)
    summary, spear = [], []
    for direction in ("probe", "random"):
        for alpha in alphas:
            sel = [r for r in rows if r["direction"] == direction and r["alpha"] == alpha]
            row = {"direction": direction, "alpha": alpha, "n": len(sel)}
            for m in MEASURES:
                row[f"{m}_mean"], row[f"{m}_lo"], row[f"{m}_hi"] = _boot_mean(
                    np.array([r[m] for r in sel], dtype=float), rng, n_boot
                )
            summary.append(row)
        A = np.array([[a for a in alphas] for _ in pids])
        for m in MEASURES:
            by = {(r["prompt_id"], r["alpha"]): r[m] for r in rows if r["direction"] == direction}
            Y = np.array([[by[(pid, a)] for a in alphas] for pid in pids], dtype=float)
            rho, lo, hi = _boot_spearman(A, Y, rng, n_boot)
            spear.append({"direction": direction, "measure": m, "rho": rho, "lo": lo, "hi": hi})
    base_ppl = next(r["perplexity_mean"] for r in summary if r["direction"] == "probe" and r["alpha"] == 0.0)
    ppl_ratio = {str(r["alpha"]): r["perplexity_mean"] / base_ppl for r in summary if r["direction"] == "probe"}
    left_v, right_v = VALENCE.get(probe.pairs[p][0]), VALENCE.get(probe.pairs[p][1])
    expected = None if left_v is None or right_v is None or left_v == right_v else int(np.sign(left_v - right_v))
    sp = {(s["direction"], s["measure"]): s for s in spear}
    judge, control = sp[("probe", "vader")], sp[("random", "vader")]
    verdict = {
        "expected_vader_sign": expected,
        "judge_moves": bool(
            expected is not None and judge["lo"] * judge["hi"] > 0 and np.sign(judge["rho"]) == expected
        ),
        "random_direction_moves_judge": bool(control["lo"] * control["hi"] > 0),
        "probe_reading_moves": bool(sp[("probe", "probe_score")]["lo"] > 0),
        "perplexity_ratio_at_abs_alpha_le_4": max(v for a, v in ppl_ratio.items() if abs(float(a)) <= 4),
    }
    result = {
        "pair": pair,
        "alphas": alphas,
        "n_prompts": len(pids),
        "generation": {**gen, "system_prompt": gen["system_prompt"]},
        "vector": kind,
        "sigma": {str(k): s for k, (_, s) in vectors[pair].items()},
        "judge": "VADER compound (vaderSentiment)",
        "summary": summary,
        "spearman": spear,
        "perplexity_ratio": ppl_ratio,
        "verdict": verdict,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    for name, table in (("summary.csv", summary), ("spearman.csv", spear)):
        with open(out / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
    write_json(out / "summary.json", result)
    from ..report.steering import fig_dose_response

    (out / "dose_response.png").write_bytes(fig_dose_response(summary, pair, left))
    return result
