"""How hard to steer: per steering *arm* (a pair's vectors at its layers, or at one layer) and per direction
(+ toward the left side, - toward the right), the largest |alpha| whose damage stays within a budget.

Damage is measured on calibration prompts (keep them disjoint from the evaluation prompts) against the unsteered
model, for the steered texts (:func:`emofast.generation.damage.generate_rows`):

- the perplexity ratio: pooled perplexity of the steered texts under the unsteered model over the pooled
  perplexity of the unsteered texts (default budget 1.5);
- the mean KL divergence of the steered next-token distributions from the unsteered ones, per generated token
  (reported always; a budget only when ``max_kl`` is given).

A handful of calibration prompts estimate these with noise, and a search that takes the largest alpha within the
budget lands on the boundary where the noise is largest. So "within the budget" is decided on a one-sided upper
confidence bound (``confidence``, default 0.9; 0: the point estimate, as before) from a bootstrap over the
calibration prompts (:func:`damage_bounds`: resample prompts, recompute the pooled ratio of the steered texts of
those prompts to the unsteered texts of the same prompts, take the ``confidence`` quantile; never below the point
estimate). The unsteered baseline every ratio divides by is itself a sample: with sampling, ``baseline_samples``
(4) unsteered texts per prompt, pooled per prompt, so that its noise (shared by every ratio of the search) is
smaller.

Search (all arms and both directions in the same batches, one batch per round): start at ``start`` (1.0); double
while within budget (up to ``max_alpha``), halve while not (down to ``min_alpha``: below it the direction is
reported as not steerable within the budget, alpha 0); then ``bisect`` bisection steps between the last alpha
within budget and the first beyond. Every alpha tried is kept: that is the damage curve.

Example:
    >>> arms = {"sad_vs_happy": ("sad_vs_happy", vecs)}                                # doctest: +SKIP
    >>> res = find_alpha_range(model, tok, prompts, arms, max_ppl_ratio=1.5)           # doctest: +SKIP
    >>> res["sad_vs_happy"]["+"]["alpha"], res["sad_vs_happy"]["-"]["alpha"]          # doctest: +SKIP
    (1.25, 0.75)
"""

from __future__ import annotations

import math
import time

import numpy as np

from .damage import generate_rows, mean_kl, pooled_ppl

__all__ = ["find_alpha_range", "within_budget", "damage_bounds", "AlphaSearch", "DEFAULT_CONFIDENCE"]

#: One-sided level of the upper bound the budget is checked on (0: the point estimate).
DEFAULT_CONFIDENCE = 0.9


def _pooled(x, n, idx) -> np.ndarray:
    """``sum x[idx] / sum n[idx]`` per bootstrap row of ``idx [B, m]`` (rows without tokens count as 0)."""
    return x[idx].sum(axis=1) / n[idx].sum(axis=1)


def damage_bounds(
    nll, n_tokens, kl, base_nll, base_n_tokens, *, confidence: float = DEFAULT_CONFIDENCE, n_boot: int = 1000, rng=None
) -> dict:
    """The perplexity ratio and mean KL of steered rows against the unsteered rows of the same prompts, with
    one-sided upper bounds from a bootstrap over prompts.

    Args:
        nll, n_tokens, kl: ``[n]`` the steered rows (row ``i``: prompt ``i``; summed over its generated tokens,
            as :func:`~emofast.generation.damage.generate_rows` returns them).
        base_nll, base_n_tokens: ``[n]`` the unsteered rows of the same prompts, in the same order.
        confidence: one-sided level of the upper bounds (the ``confidence`` quantile of the bootstrap values, at
            least the point estimate); 0: the bounds are the point estimates.
        n_boot: bootstrap resamples of the ``n`` prompts; rng: a ``numpy.random.Generator`` (default: seed 0).

    Returns:
        ``{"ppl_ratio", "ppl_ratio_upper", "kl", "kl_upper"}`` (NaN where no row has a token; a resample whose
        rows have no token is left out).

    Example:
        >>> b = damage_bounds([9.0, 1.0], [3, 3], [0.3, 0.3], [3.0, 3.0], [3, 3], confidence=0.9)
        >>> round(b["ppl_ratio"], 3), b["ppl_ratio_upper"] > b["ppl_ratio"]
        (1.948, True)
    """
    if not 0 <= confidence < 1:
        raise ValueError(f"confidence={confidence}: expected a level in [0, 1) (0: the point estimate)")
    arrs = [np.asarray(a, dtype=float) for a in (nll, n_tokens, kl, base_nll, base_n_tokens)]
    if len({len(a) for a in arrs}) != 1:
        raise ValueError(f"damage_bounds: rows of different lengths {[len(a) for a in arrs]}; give one per prompt")
    nll, n, kl, bnll, bn = arrs
    ok, bok = (n > 0) & np.isfinite(nll), (bn > 0) & np.isfinite(bnll)
    nll, n, bnll, bn = np.where(ok, nll, 0.0), np.where(ok, n, 0.0), np.where(bok, bnll, 0.0), np.where(bok, bn, 0.0)
    kok = (n > 0) & np.isfinite(kl)
    kl, kn = np.where(kok, kl, 0.0), np.where(kok, n, 0.0)
    base = pooled_ppl(bnll, bn)
    ratio = pooled_ppl(nll, n) / base if base > 0 else math.nan
    out = {"ppl_ratio": ratio, "ppl_ratio_upper": ratio, "kl": mean_kl(kl, kn), "kl_upper": mean_kl(kl, kn)}
    if confidence == 0 or len(n) == 0:
        return out
    rng = np.random.default_rng(0) if rng is None else rng
    idx = rng.integers(0, len(n), size=(n_boot, len(n)))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.exp(_pooled(nll, n, idx) - _pooled(bnll, bn, idx))
        k = _pooled(kl, kn, idx)
    for key, boots in (("ppl_ratio", r), ("kl", k)):
        boots = boots[np.isfinite(boots)]
        if boots.size and math.isfinite(out[key]):
            out[f"{key}_upper"] = max(out[key], float(np.quantile(boots, confidence)))
    return out


def within_budget(ppl_ratio: float, kl: float, max_ppl_ratio: float, max_kl: float | None) -> bool:
    """Both measures within their budgets (NaN, e.g. a direction that wrote nothing, is not within)."""
    if not (math.isfinite(ppl_ratio) and ppl_ratio <= max_ppl_ratio):
        return False
    return max_kl is None or (math.isfinite(kl) and kl <= max_kl)


class AlphaSearch:
    """Doubling/halving, then bisection, for one arm and direction."""

    def __init__(self, start, min_alpha, max_alpha, bisect):
        self.next, self.lo, self.hi = start, 0.0, None
        self.min_alpha, self.max_alpha, self.bisect_left = min_alpha, max_alpha, bisect
        self.done = False

    def update(self, alpha: float, ok: bool):
        if ok:
            self.lo = max(self.lo, alpha)
        else:
            self.hi = alpha if self.hi is None else min(self.hi, alpha)
        if self.hi is None:  # still doubling
            if alpha * 2 > self.max_alpha:
                self.done = True
            else:
                self.next = alpha * 2
            return
        if self.lo == 0.0:  # still halving
            if alpha / 2 < self.min_alpha:
                self.done = True
            else:
                self.next = alpha / 2
            return
        if self.bisect_left <= 0:
            self.done = True
            return
        self.bisect_left -= 1
        self.next = (self.lo + self.hi) / 2


def find_alpha_range(
    model,
    tok,
    prompts: list[str],
    arms: dict,
    *,
    max_ppl_ratio: float = 1.5,
    max_kl: float | None = None,
    start: float = 1.0,
    min_alpha: float = 0.125,
    max_alpha: float = 16.0,
    bisect: int = 2,
    confidence: float = DEFAULT_CONFIDENCE,
    n_boot: int = 1000,
    baseline_samples: int = 4,
    progress=None,
    **gen,
) -> dict:
    """The largest within-budget |alpha| per arm and direction, and the damage curve.

    Args:
        prompts: the calibration prompts ``[n]``.
        arms: ``{arm_name: (pair_name, vector_table)}``; the arm steers ``pair_name`` with ``vector_table``
            (``{pair: {layer: (d, sigma)}}``).
        gen: generation settings for :func:`~emofast.generation.damage.generate_rows` (system prompt, chat template,
            max_new_tokens, do_sample, seed, batch_size, temperature, top_p).
        confidence, n_boot: the budget is checked on the one-sided ``confidence`` upper bounds of the perplexity
            ratio and the KL (:func:`damage_bounds`, ``n_boot`` resamples of the prompts); 0: on the point estimates.
        baseline_samples: with sampling, unsteered texts per prompt (pooled per prompt; greedy: 1). Every ratio
            of the search divides by the same baseline, so its sampling noise is shared by all of them; ``k``
            samples cost ``k * n`` rows once (a search round costs ``arm-directions * n``).
        progress: ``callable(str)`` told about each round, or None.

    Returns:
        ``{"baseline": {"ppl", "kl"}, arm_name: {"+": {"alpha", "curve"}, "-": {...}}}``; ``alpha`` is the chosen
        |alpha| (0: not steerable within the budget), ``curve`` a list of ``{"alpha" (signed), "ppl",
        "ppl_ratio", "ppl_ratio_upper", "kl", "kl_upper", "within" (the bounds within the budget: what the search
        used), "within_point" (the point estimates within it)}`` sorted by |alpha|.
    """
    if not 0 <= confidence < 1:
        raise ValueError(f"confidence={confidence}: expected a level in [0, 1) (0: the point estimate)")
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    n = len(prompts)
    k = max(1, int(baseline_samples)) if gen.get("do_sample") else 1  # greedy: k copies of the same text
    plain = generate_rows(model, tok, [p for p in prompts for _ in range(k)], [{}] * (n * k), {}, **gen)
    ok = np.asarray(plain["n_tokens"]) > 0
    base = {  # per prompt: its k unsteered texts pooled (sums of nll and tokens)
        "nll": np.where(ok, plain["nll"], 0.0).reshape(n, k).sum(1),
        "n_tokens": np.where(ok, plain["n_tokens"], 0).reshape(n, k).sum(1),
    }
    base_ppl = pooled_ppl(base["nll"], base["n_tokens"])
    searches = {(a, s): AlphaSearch(start, min_alpha, max_alpha, bisect) for a in arms for s in ("+", "-")}
    curves: dict = {key: [] for key in searches}
    rnd = 0
    while True:
        active = [k for k, s in searches.items() if not s.done]
        if not active:
            break
        rnd += 1
        rows_prompts, settings, tables, owner = [], [], [], []
        for key in active:
            arm, sign = key
            pair, table = arms[arm]
            alpha = searches[key].next * (1 if sign == "+" else -1)
            for p in prompts:
                rows_prompts.append(p)
                settings.append({pair: alpha})
                tables.append(table)
                owner.append(key)
        out = generate_rows(model, tok, rows_prompts, settings, tables, **gen)
        for j, key in enumerate(active):
            sl = slice(j * n, (j + 1) * n)
            alpha = searches[key].next
            ppl = pooled_ppl(out["nll"][sl], out["n_tokens"][sl])
            b = damage_bounds(
                out["nll"][sl],
                out["n_tokens"][sl],
                out["kl"][sl],
                base["nll"],
                base["n_tokens"],
                confidence=confidence,
                n_boot=n_boot,
                rng=rng,
            )
            ok = within_budget(b["ppl_ratio_upper"], b["kl_upper"], max_ppl_ratio, max_kl)
            signed = alpha if key[1] == "+" else -alpha
            curves[key].append(
                {
                    "alpha": signed,
                    "ppl": ppl,
                    **b,
                    "within": ok,
                    "within_point": within_budget(b["ppl_ratio"], b["kl"], max_ppl_ratio, max_kl),
                }
            )
            searches[key].update(alpha, ok)
        if progress:
            progress(f"calibration round {rnd}: {len(active)} arm-directions, {time.perf_counter() - t0:.0f} s")
    result = {"baseline": {"ppl": base_ppl, "kl": 0.0, "n_prompts": n, "samples_per_prompt": k}}
    for arm in arms:
        result[arm] = {}
        for sign in ("+", "-"):
            s = searches[(arm, sign)]
            result[arm][sign] = {
                "alpha": s.lo,
                "curve": sorted(curves[(arm, sign)], key=lambda r: abs(r["alpha"])),
            }
    result["settings"] = {
        "max_ppl_ratio": max_ppl_ratio,
        "max_kl": max_kl,
        "start": start,
        "min_alpha": min_alpha,
        "max_alpha": max_alpha,
        "bisect": bisect,
        "confidence": confidence,
        "n_boot": n_boot if confidence else 0,
        "decided_on": "upper bound" if confidence else "point estimate",
        "rounds": rnd,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return result
