"""How hard to steer: per steering *arm* (a pair's vectors at its layers, or at one layer) and per direction
(+ toward the left side, - toward the right), the largest |alpha| whose damage stays within a budget.

Damage is measured on calibration prompts (keep them disjoint from the evaluation prompts) against the unsteered
model, for the steered texts (:func:`emofast.generation.damage.generate_rows`):

- the perplexity ratio: pooled perplexity of the steered texts under the unsteered model over the pooled
  perplexity of the unsteered texts (default budget 1.5);
- the mean KL divergence of the steered next-token distributions from the unsteered ones, per generated token
  (reported always; a budget only when ``max_kl`` is given).

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

from .damage import generate_rows, mean_kl, pooled_ppl

__all__ = ["find_alpha_range", "within_budget", "AlphaSearch"]


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
        progress: ``callable(str)`` told about each round, or None.

    Returns:
        ``{"baseline": {"ppl", "kl"}, arm_name: {"+": {"alpha", "curve"}, "-": {...}}}``; ``alpha`` is the chosen
        |alpha| (0: not steerable within the budget), ``curve`` a list of ``{"alpha" (signed), "ppl",
        "ppl_ratio", "kl", "within"}`` sorted by |alpha|.
    """
    t0 = time.perf_counter()
    n = len(prompts)
    base = generate_rows(model, tok, prompts, [{}] * n, {}, **gen)
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
            kl = mean_kl(out["kl"][sl], out["n_tokens"][sl])
            ratio = ppl / base_ppl if base_ppl > 0 else math.nan
            ok = within_budget(ratio, kl, max_ppl_ratio, max_kl)
            signed = alpha if key[1] == "+" else -alpha
            curves[key].append({"alpha": signed, "ppl": ppl, "ppl_ratio": ratio, "kl": kl, "within": ok})
            searches[key].update(alpha, ok)
        if progress:
            progress(f"calibration round {rnd}: {len(active)} arm-directions, {time.perf_counter() - t0:.0f} s")
    result = {"baseline": {"ppl": base_ppl, "kl": 0.0, "n_prompts": n}}
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
        "rounds": rnd,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return result
