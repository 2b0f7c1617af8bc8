"""The numbers and verdicts of a steering check, from its rows (one per generated text and arm).

A row: ``arm``, ``pair``, ``direction`` (``"none"``: unsteered, ``"probe"``: the pair's vector, ``"random"``: the
control, ``"prompt"``: instructed toward ``instructed`` = ``"left"``/``"right"``), ``alpha``, ``prompt_id``,
one score per judge, ``probe_p_left``, ``n_tokens``, ``nll``, ``kl``, ``empty``.

:func:`summarise` gives, per arm: the mean and 95% bootstrap interval of every measure per direction and alpha;
the damage per alpha (pooled perplexity ratio to the unsteered rows, mean KL per token); Spearman's rho between
alpha and each measure (the unsteered rows count as alpha 0 of both the pair's and the random direction);
steering's effect as a fraction of prompting's; and the verdict: the expected sign of each judge, whether it is met
with |rho| >= :data:`MIN_RHO`, whether the random direction's interval includes 0, and whether the evaluated range
stayed within the damage budget.

The budget is checked again on the evaluation prompts: every steered condition (the pair's direction and the random
one) whose perplexity ratio (or, with a KL budget, mean KL) exceeds it is flagged (``over_budget`` in the summary
table), and the pair's over-budget alphas are named in its verdict. Each arm gets one status
(:data:`STATUSES`, judged on :data:`STATUS_JUDGE`, else the first judge):

- ``"not steerable within the budget"``: calibration found no alpha within the budget on either side;
- ``"steers"``: the judge meets the bar (expected sign, |rho| >= :data:`MIN_RHO`, interval excluding 0) and the
  random direction's interval includes 0;
- ``"moves, below the bar"``: expected sign and an interval excluding 0, the random direction's including 0, but
  |rho| < :data:`MIN_RHO`;
- ``"not shown"``: anything else (the interval includes 0, the wrong sign, no expected sign, or the random
  direction moves the judge too).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .calibrate import within_budget
from .damage import mean_kl, pooled_ppl
from .effects import boot_fraction, boot_mean, boot_spearman

__all__ = ["summarise", "write_tables", "status_of", "MIN_RHO", "STATUSES", "STATUS_JUDGE"]

#: |rho(alpha, judge)| a check needs to call a pair steered (the issue's bar).
MIN_RHO = 0.3

#: The per-arm statuses, strongest first.
STATUSES = ("steers", "moves, below the bar", "not shown", "not steerable within the budget")

#: The judge the status is decided on when the check has it (else the first judge).
STATUS_JUDGE = "vader"


def status_of(jv: dict, steerable: bool | None) -> str:
    """One arm's status (:data:`STATUSES`) from its judge verdict ``jv`` (``expected_sign``, ``rho``, ``lo``,
    ``hi``, ``meets``, ``random_includes_zero``) and whether calibration found any alpha within the budget
    (None: fixed alphas).

    Example:
        >>> jv = {"expected_sign": -1, "rho": -0.2, "lo": -0.3, "hi": -0.1, "meets": False,
        ...       "random_includes_zero": True}
        >>> status_of(jv, True), status_of(jv, False)
        ('moves, below the bar', 'not steerable within the budget')
    """
    if steerable is False:
        return STATUSES[3]
    if not jv["random_includes_zero"] or jv["expected_sign"] is None or not np.isfinite(jv["rho"]):
        return STATUSES[2]
    if jv["meets"]:
        return STATUSES[0]
    if np.sign(jv["rho"]) == jv["expected_sign"] and jv["lo"] * jv["hi"] > 0:
        return STATUSES[1]
    return STATUSES[2]


def _verdict_text(arm: str, v: dict, judge: str | None, budget: float) -> str:
    """One line: the status, the judge's rho and the random direction's, and the alphas over the budget."""
    text = f"{arm}: {v['status']}"
    if judge is not None and v["steerable_within_budget"] is not False:
        jv = v["judges"][judge]
        sign = {1: "+", -1: "-", None: "?"}[jv["expected_sign"]]
        if np.isfinite(jv["rho"]):
            text += (
                f" ({judge} rho {jv['rho']:+.2f} [{jv['lo']:+.2f}, {jv['hi']:+.2f}], expected {sign}; random "
                f"{jv['random_rho']:+.2f} [{jv['random_lo']:+.2f}, {jv['random_hi']:+.2f}])"
            )
        else:
            text += f" ({judge} rho n/a)"
    over = v["over_budget_alphas"]
    if over:
        text += f"; over the {budget}x budget on the evaluation prompts at " + ", ".join(
            f"alpha {o['alpha']:+.3g} ({o['ppl_ratio']:.2f}x)" for o in over
        )
    return text


def _select(rows, arm, direction, alpha=None, side=None):
    out = []
    for r in rows:
        if r["arm"] != arm:
            continue
        if direction in ("probe", "random") and alpha == 0.0:
            if r["direction"] == "none":
                out.append(r)
        elif r["direction"] == direction and (alpha is None or r["alpha"] == alpha) and r["instructed"] == side:
            out.append(r)
    return out


def _by_prompt(rows, measure, pids) -> np.ndarray:
    got = {r["prompt_id"]: r[measure] for r in rows}
    return np.array([got.get(p, np.nan) for p in pids], dtype=float)


def _log_ppl(r) -> float:
    return r["nll"] / r["n_tokens"] if r["n_tokens"] else math.nan


def summarise(rows, *, arms, pair_of, grids, judges, calibration, max_ppl_ratio, max_kl, n_boot, seed) -> dict:
    """The check's tables and verdicts (see the module docstring); ``judges``: ``{judge: {arm: expected sign}}``."""
    rng = np.random.default_rng(seed)
    for r in rows:
        r["log_ppl"] = _log_ppl(r)
    measures = [*judges, "probe_p_left", "log_ppl"]
    pids = list(dict.fromkeys(r["prompt_id"] for r in rows))
    summary, spear, effects, verdict = [], [], [], {}
    for arm in arms:
        base = _select(rows, arm, "probe", 0.0)
        base_ppl = pooled_ppl([r["nll"] for r in base], [r["n_tokens"] for r in base])
        conditions = [(d, a, None) for d in ("probe", "random") for a in grids[arm]]
        conditions += [("prompt", 0.0, s) for s in ("left", "right") if _select(rows, arm, "prompt", 0.0, s)]
        for direction, alpha, side in conditions:
            sel = _select(rows, arm, direction, alpha, side)
            ppl = pooled_ppl([r["nll"] for r in sel], [r["n_tokens"] for r in sel])
            row = {
                "arm": arm,
                "pair": pair_of[arm],
                "direction": direction if side is None else f"prompt-{side}",
                "alpha": alpha,
                "n": len(sel),
                "ppl": ppl,
                "ppl_ratio": ppl / base_ppl if base_ppl > 0 else math.nan,
                "kl": mean_kl([r["kl"] for r in sel], [r["n_tokens"] for r in sel]),
                "empty": float(np.mean([r["empty"] for r in sel])) if sel else math.nan,
            }
            # the budget checked again on these prompts (steered rows only; the unsteered row is the reference)
            row["over_budget"] = (
                None
                if direction == "prompt"
                else bool(alpha != 0.0 and not within_budget(row["ppl_ratio"], row["kl"], max_ppl_ratio, max_kl))
            )
            for m in [*judges, "probe_p_left"]:
                row[f"{m}_mean"], row[f"{m}_lo"], row[f"{m}_hi"] = boot_mean([r[m] for r in sel], rng, n_boot)
            summary.append(row)
        A = np.tile(np.asarray(grids[arm], dtype=float), (len(pids), 1))
        rho_of = {}
        for direction in ("probe", "random"):
            for m in measures:
                Y = np.stack([_by_prompt(_select(rows, arm, direction, a), m, pids) for a in grids[arm]], axis=1)
                rho, lo, hi = boot_spearman(A, Y, rng, n_boot)
                rho_of[(direction, m)] = (rho, lo, hi)
                spear.append(
                    {
                        "arm": arm,
                        "pair": pair_of[arm],
                        "direction": direction,
                        "measure": m,
                        "rho": rho,
                        "lo": lo,
                        "hi": hi,
                    }
                )
        # steering's effect (ends of the evaluated range) against prompting's, toward the left side
        top, bottom = max(grids[arm]), min(grids[arm])
        has_prompt = bool(_select(rows, arm, "prompt", 0.0, "left"))
        for j in judges:
            if not has_prompt or top == bottom:
                continue
            e = boot_fraction(
                _by_prompt(_select(rows, arm, "probe", top), j, pids),
                _by_prompt(_select(rows, arm, "probe", bottom), j, pids),
                _by_prompt(_select(rows, arm, "prompt", 0.0, "left"), j, pids),
                _by_prompt(_select(rows, arm, "prompt", 0.0, "right"), j, pids),
                rng,
                n_boot,
            )
            effects.append({"arm": arm, "pair": pair_of[arm], "judge": j, "alpha_low": bottom, "alpha_high": top, **e})
        # verdict
        ratios = [s["ppl_ratio"] for s in summary if s["arm"] == arm and s["direction"] == "probe"]
        kls = [s["kl"] for s in summary if s["arm"] == arm and s["direction"] == "probe"]
        cal = calibration[arm] if calibration else None
        steerable = None if cal is None else {s: cal[s]["alpha"] > 0 for s in ("+", "-")}
        v = {
            "pair": pair_of[arm],
            "alpha_range": [bottom, top],
            "steerable_within_budget": None if steerable is None else bool(any(steerable.values())),
            "steerable_sides": steerable,
            "max_ppl_ratio_evaluated": float(np.nanmax(ratios)) if ratios else math.nan,
            "max_kl_evaluated": float(np.nanmax(kls)) if kls else math.nan,
            "judges": {},
        }
        v["evaluated_within_budget"] = bool(v["max_ppl_ratio_evaluated"] <= max_ppl_ratio) and (
            max_kl is None or v["max_kl_evaluated"] <= max_kl
        )
        v["over_budget_alphas"] = [
            {"alpha": s["alpha"], "ppl_ratio": s["ppl_ratio"], "kl": s["kl"]}
            for s in summary
            if s["arm"] == arm and s["direction"] == "probe" and s["over_budget"]
        ]
        for j, signs in judges.items():
            rho, lo, hi = rho_of[("probe", j)]
            rr, rlo, rhi = rho_of[("random", j)]
            exp = signs[arm]
            v["judges"][j] = {
                "expected_sign": exp,
                "rho": rho,
                "lo": lo,
                "hi": hi,
                "meets": bool(
                    exp is not None and np.isfinite(rho) and np.sign(rho) == exp and abs(rho) >= MIN_RHO and lo * hi > 0
                ),
                "random_rho": rr,
                "random_lo": rlo,
                "random_hi": rhi,
                "random_includes_zero": bool(not (rlo * rhi > 0)) if np.isfinite(rr) else True,
            }
        judge = STATUS_JUDGE if STATUS_JUDGE in judges else next(iter(judges), None)
        v["status_judge"] = judge
        v["status"] = status_of(v["judges"][judge], v["steerable_within_budget"]) if judge else STATUSES[2]
        v["verdict_text"] = _verdict_text(arm, v, judge, max_ppl_ratio)
        verdict[arm] = v
    return {
        "summary": summary,
        "spearman": spear,
        "effects": effects,
        "calibration": calibration,
        "verdict": verdict,
        "budget": {"max_ppl_ratio": max_ppl_ratio, "max_kl": max_kl},
        "judges": {j: {"expected_sign": s} for j, s in judges.items()},
        "min_rho": MIN_RHO,
    }


def write_tables(out: Path, result: dict) -> None:
    """``summary.csv``, ``spearman.csv`` and ``effects.csv`` in ``out``."""
    for name in ("summary", "spearman", "effects"):
        table = result[name]
        if not table:
            continue
        with open(Path(out) / f"{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
