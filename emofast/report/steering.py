"""Figures and the report section of generation-time work: the steering check's dose-response, and a trace's
readings over tokens (a figure and a page with the text coloured by the leading reading)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from .figures import new_figure, plotting, png_bytes

__all__ = [
    "fig_dose_response",
    "fig_steer_check",
    "fig_layer_sweep",
    "fig_trace",
    "trace_html",
    "section_steering",
    "steer_checks",
]


def fig_dose_response(summary: list[dict], pair: str, left: str) -> bytes:
    """Judge, probe reading and perplexity against alpha, for the pair's direction and the random one."""
    panels = [
        ("vader", "VADER compound\n(outside judge)"),
        ("probe_p_left", f"probe p({left})\nof the text"),
        ("perplexity", "perplexity\n(unsteered model)"),
    ]
    with plotting():
        fig = new_figure(6.4, 6.6)
        axes = fig.subplots(len(panels), 1, sharex=True)
        for ax, (m, label) in zip(axes, panels):
            for direction, style in (("probe", "-o"), ("random", "--s")):
                rows = [r for r in summary if r["direction"] == direction]
                a = [r["alpha"] for r in rows]
                mean = np.array([r[f"{m}_mean"] for r in rows], dtype=float)
                lo = np.array([r[f"{m}_lo"] for r in rows], dtype=float)
                hi = np.array([r[f"{m}_hi"] for r in rows], dtype=float)
                ax.plot(a, mean, style, label=f"{direction} direction", ms=4)
                ax.fill_between(a, lo, hi, alpha=0.2)
            ax.set_ylabel(label)
        axes[0].legend()
        axes[0].set_title(f"steering {pair}: dose-response (95% bootstrap CIs over prompts)")
        axes[-1].set_xlabel(f"alpha (natural units; positive = toward {left})")
        return png_bytes(fig)


def fig_steer_check(result: dict) -> bytes:
    """One figure for a whole check (``summary.json`` of format 2): a row per arm (pair), a column per judge with
    the dose-response of the pair's direction and of the random one (95% bootstrap intervals over prompts) and the
    prompting baseline's two instructions as horizontal lines, and a last column with the damage (perplexity ratio
    to the unsteered texts, the budget as a dotted line, and the mean KL per token on a second axis)."""
    judges = list(result["judges"])
    arms = list(result["verdict"])
    budget = result["budget"]["max_ppl_ratio"]
    with plotting():
        fig = new_figure(3.0 * (len(judges) + 1), 2.3 * len(arms) + 0.6)
        axes = np.atleast_2d(fig.subplots(len(arms), len(judges) + 1, squeeze=False))
        for r, arm in enumerate(arms):
            mine = [s for s in result["summary"] if s["arm"] == arm]
            left = result["verdict"][arm]["pair"].split("_vs_")[0]
            for c, j in enumerate(judges):
                ax = axes[r, c]
                for direction, style in (("probe", "-o"), ("random", "--s")):
                    rows = [s for s in mine if s["direction"] == direction]
                    a = [s["alpha"] for s in rows]
                    ax.plot(a, [s[f"{j}_mean"] for s in rows], style, ms=3, label=f"{direction} direction")
                    ax.fill_between(a, [s[f"{j}_lo"] for s in rows], [s[f"{j}_hi"] for s in rows], alpha=0.2)
                for side, colour in (("left", "tab:red"), ("right", "tab:green")):
                    p = [s for s in mine if s["direction"] == f"prompt-{side}"]
                    if p:
                        ax.axhline(p[0][f"{j}_mean"], color=colour, ls=":", lw=1.2, label=f"asked: {side} tone")
                v = result["verdict"][arm]["judges"][j]
                ax.set_title(f"{arm}: {j} rho {v['rho']:+.2f}", fontsize=8)
                if r == len(arms) - 1:
                    ax.set_xlabel(f"alpha (+ = toward {left})" if len(arms) == 1 else "alpha (+ = left side)")
            ax = axes[r, -1]
            rows = [s for s in mine if s["direction"] == "probe"]
            a = [s["alpha"] for s in rows]
            ax.plot(a, [s["ppl_ratio"] for s in rows], "-o", ms=3, color="black", label="perplexity ratio")
            ax.axhline(budget, color="grey", ls=":", lw=1)
            ax.set_title(f"{arm}: damage", fontsize=8)
            ax2 = ax.twinx()
            ax2.plot(a, [s["kl"] for s in rows], "-^", ms=3, color="tab:purple", label="KL / token")
            ax2.set_ylabel("KL / token", fontsize=7)
            if r == 0:
                axes[r, 0].legend(fontsize=6)
                ax.legend(fontsize=6, loc="upper left")
                ax2.legend(fontsize=6, loc="upper right")
        fig.suptitle("steer-check: judges against alpha (95% CIs), prompting baseline (dotted), damage")
        return png_bytes(fig)


def fig_layer_sweep(result: dict) -> bytes:
    """A ``--layers sweep`` check as curves over layers, one line per pair: each judge's rho with its interval
    (and the random direction's, dashed), and the chosen alpha range (both directions) under the budget."""
    judges = list(result["judges"])
    by_pair: dict[str, list] = {}
    for arm, v in result["verdict"].items():
        by_pair.setdefault(v["pair"], []).append((result["arms"][arm]["layers"][0], v))
    with plotting():
        fig = new_figure(3.2 * (len(judges) + 1), 3.0)
        axes = fig.subplots(1, len(judges) + 1, squeeze=False)[0]
        for pair, items in by_pair.items():
            items.sort(key=lambda t: t[0])
            layers = [k for k, _ in items]
            for ax, j in zip(axes, judges):
                rho = [v["judges"][j]["rho"] for _, v in items]
                ax.plot(layers, rho, "-o", ms=3, label=pair)
                ax.fill_between(
                    layers,
                    [v["judges"][j]["lo"] for _, v in items],
                    [v["judges"][j]["hi"] for _, v in items],
                    alpha=0.2,
                )
                ax.plot(layers, [v["judges"][j]["random_rho"] for _, v in items], "--", lw=1, color="grey")
                ax.axhline(0, color="black", lw=0.6)
                ax.set_title(f"rho(alpha, {j}) per steered layer", fontsize=8)
                ax.set_xlabel("layer")
            ax = axes[-1]
            ax.plot(layers, [v["alpha_range"][1] for _, v in items], "-^", ms=3, label=f"{pair} +")
            ax.plot(layers, [-v["alpha_range"][0] for _, v in items], "-v", ms=3, label=f"{pair} -")
            ax.set_title("largest |alpha| within the budget", fontsize=8)
            ax.set_xlabel("layer")
        axes[0].legend(fontsize=6)
        axes[-1].legend(fontsize=6)
        return png_bytes(fig)


def _reading_columns(rows: list[dict]) -> list[str]:
    """The columns a person reads in a trace: the per-token ``tz_`` readings when the trace has them (a neutral
    per-token reference), else the raw readings (a pair's name, or an emotion's ``z_`` column)."""
    if not rows:
        return []
    tz = [k for k in rows[0] if k.startswith("tz_")]
    if tz:
        return tz
    return [k for k in rows[0] if ("_vs_" in k and ":" not in k and not k.startswith("p_")) or k.startswith("z_")]


def _finite_range(rows: list[dict], cols: list[str]) -> float:
    """The largest |reading| over non-sink tokens (sinks stay out of axes and colour scales)."""
    vals = [abs(r[c]) for r in rows if not r.get("is_sink") for c in cols if np.isfinite(r[c])]
    return max(vals, default=1.0) or 1.0


def fig_trace(rows: list[dict], prompt_id: str) -> bytes:
    """Readings over the tokens of one prompt (one line per pair or emotion), token strings along the axis.
    Sink positions (``is_sink``) are marked with a grey band and left out of the y-range."""
    mine = [r for r in rows if r["prompt_id"] == prompt_id]
    if not mine:
        raise ValueError(f"the trace has no tokens for prompt {prompt_id!r} (nothing generated and no prompt rows)")
    cols = _reading_columns(mine)
    with plotting():
        fig = new_figure(max(6.0, 0.12 * len(mine)), 3.6)
        ax = fig.subplots()
        x = np.arange(len(mine))
        sink = np.array([bool(r.get("is_sink")) for r in mine])
        for c in cols:
            y = np.array([r[c] for r in mine], dtype=float)
            y[sink] = np.nan  # a sink's reading would flatten every other token's line
            ax.plot(x, y, label=c.removeprefix("tz_"), lw=1.2)
        for k in np.flatnonzero(sink):
            ax.axvspan(k - 0.5, k + 0.5, color="grey", alpha=0.25, lw=0)
        lim = 1.05 * _finite_range(mine, cols)
        ax.set_ylim(-lim, lim)
        first_gen = next((i for i, r in enumerate(mine) if r["is_generated"]), None)
        if first_gen is not None:
            ax.axvline(first_gen - 0.5, color="grey", ls=":", lw=1)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(x)
        ax.set_xticklabels([r["token"].replace("\n", "\\n") for r in mine], rotation=90, fontsize=6)
        unit = "neutral per-token sd; 0 = neutral" if cols and cols[0].startswith("tz_") else "raw score"
        ax.set_ylabel(f"reading ({unit})\npositive = left side")
        ax.set_title(
            f"prompt {prompt_id}: readings per token (dotted: generation starts; grey: attention-sink positions, "
            "not drawn)",
            fontsize=8,
        )
        ax.legend(fontsize=7, ncol=2)
        return png_bytes(fig)


def trace_html(rows: list[dict], title: str = "emofast trace") -> str:
    """A self-contained page: each prompt's tokens, coloured by the reading that leads at that token (its
    strength as the colour's opacity, scaled over the non-sink tokens), the readings in each token's tooltip;
    sink positions are outlined and uncoloured."""
    cols = _reading_columns(rows)
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    colour = {c: palette[i % len(palette)] for i, c in enumerate(cols)}
    scale = _finite_range(rows, cols)
    out = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font:14px/1.7 sans-serif;max-width:60em;margin:2em auto}span.t{border-radius:3px}"
        ".gen{border-bottom:2px solid #999}.sink{outline:1px dashed #888}</style>",
        f"<h1>{html.escape(title)}</h1><p>",
    ]
    out += [
        f"<span class='swatch' style='background:{colour[c]}55;padding:0 4px'>{html.escape(c.removeprefix('tz_'))}"
        "</span> "
        for c in cols
    ]
    unit = "in units of the model's per-token spread on neutral text" if cols and cols[0].startswith("tz_") else ""
    out.append(
        f"</p><p>Background: the reading with the largest magnitude at that token (opacity: its size {unit}); "
        "underlined: generated tokens; dashed outline: attention-sink positions (massive activations), left out of "
        "the colour scale. Percentages are shown only where the probe was calibrated (the last prompt token).</p>"
    )
    for pid in dict.fromkeys(r["prompt_id"] for r in rows):
        out.append(f"<h2>prompt {html.escape(str(pid))}</h2><p>")
        for r in (r for r in rows if r["prompt_id"] == pid):
            finite = [c for c in cols if np.isfinite(r[c])]
            lead = max(finite, key=lambda c: abs(r[c])) if finite and not r.get("is_sink") else None
            alpha = min(1.0, abs(r[lead]) / scale) if lead else 0
            tip = "; ".join(f"{c.removeprefix('tz_')}={r[c]:+.3f}" for c in cols)
            pct = [k for k in r if (k.startswith("p_") or ":p_" in k) and np.isfinite(r[k])]
            if r.get("calibrated") and pct:
                tip += " | " + "; ".join(f"{k}={100 * r[k]:.0f}%" for k in pct)
            bg = f"{colour[lead]}{int(alpha * 255):02x}" if lead else "transparent"
            cls = "t gen" if r["is_generated"] else "t"
            cls += " sink" if r.get("is_sink") else ""
            out.append(
                f"<span class='{cls}' style='background:{bg}' title='{html.escape(tip)}'>"
                f"{html.escape(r['token'])}</span>"
            )
        out.append("</p>")
    return "".join(out)


def steer_checks(run_dir: Path) -> list[dict]:
    """The ``summary.json`` of every steering check saved inside a run folder (``steer-check*/``)."""
    out = []
    for f in sorted(Path(run_dir).glob("steer-check*/summary.json")):
        out.append({**json.loads(f.read_text()), "folder": f.parent.name})
    return out


def section_steering(doc, checks: list[dict]) -> None:
    """The causal check: does steering along a pair's direction move outside judges, within a damage budget, and
    a random direction not; and how does it compare with asking for the tone?"""
    if not checks:
        return
    doc.h2("Causal check: steering", "steering")
    old = [c for c in checks if c.get("format", 1) < 2]
    for c in (c for c in checks if c.get("format", 1) >= 2):
        _section_v2(doc, c)
    if old:
        doc.p(
            "Older checks (one pair, fixed alphas, VADER only) in "
            + ", ".join(f"`{c['folder']}`" for c in old)
            + ": rerun `emofast steer-check` for the budgeted, all-pair version."
        )


def _cell(v: dict, key: str = "") -> str:
    rho, lo, hi = v[f"{key}rho"], v[f"{key}lo"], v[f"{key}hi"]
    return f"{rho:+.2f} [{lo:+.2f}, {hi:+.2f}]" if np.isfinite(rho) else "n/a"


def _section_v2(doc, c: dict) -> None:
    b = c["budget"]
    level = ((c.get("calibration") or {}).get("settings") or {}).get("confidence", 0)
    how = (
        f"strength chosen per pair and direction on {len(c['calibration_prompt_ids'])} calibration prompts as the "
        f"largest |alpha| whose perplexity under the unsteered model stays within {b['max_ppl_ratio']}x that of "
        "the unsteered texts"
        + (f" and whose mean KL stays within {b['max_kl']}" if b.get("max_kl") is not None else "")
        + (
            f", judged on the one-sided {level:.0%} upper bound bootstrapped over those prompts"
            if level
            else ", judged on the point estimate"
        )
        + " (doubling, then bisection); the evaluated alphas lie evenly inside that range"
        if c["alphas"] == "calibrated"
        else f"fixed alphas {c['alphas']}"
    )
    doc.p(
        f"`{c['folder']}`: {c['n_prompts']} evaluation prompts, {how}. Each alpha adds alpha·σ·d at the pair's "
        "layers (positive toward the left side); the same alphas along a random direction of the same layers and "
        "scale are the control; the prompting baseline asks for the left or the right side's tone. rho: Spearman "
        "correlation of alpha with the judge, 95% bootstrap interval over prompts; a judge is met when rho has its "
        f"expected sign, |rho| >= {c['min_rho']} and the interval excludes 0. Steering / prompting: the judge's "
        "change across the evaluated range over its change between the two instructions."
    )
    judges = list(c["judges"])
    eff = {(e["arm"], e["judge"]): e for e in c["effects"]}
    rows = []
    for arm, v in c["verdict"].items():
        row = [arm, f"{v['alpha_range'][0]:+.3g} .. {v['alpha_range'][1]:+.3g}"]
        for j in judges:
            jv = v["judges"][j]
            sign = {1: "+", -1: "-", None: "?"}[jv["expected_sign"]]
            row.append(f"({sign}) {_cell(jv)}{' ✓' if jv['meets'] else ''}")
            row.append(_cell(jv, "random_"))
            e = eff.get((arm, j))
            row.append(
                f"{e['fraction']:.2f} [{e['fraction_lo']:.2f}, {e['fraction_hi']:.2f}]"
                if e and np.isfinite(e["fraction"])
                else "n/a"
            )
        row.append(f"{v['max_ppl_ratio_evaluated']:.2f} / {v['max_kl_evaluated']:.3f}")
        if "status" in v:
            row.append(f"{v['status']}{' (over budget)' if v['over_budget_alphas'] else ''}")
        rows.append(row)
    head = ["arm", "alpha range"]
    for j in judges:
        head += [f"rho {j} (expected sign)", f"rho {j}, random", f"{j}: steering / prompting"]
    head.append("max ppl ratio / KL")
    if rows and len(rows[0]) > len(head):
        head.append("status")
    doc.table(head, rows)
    texts = [v["verdict_text"] for v in c["verdict"].values() if "verdict_text" in v]
    if texts:
        doc.p(
            "Verdicts (status on "
            + str(next(iter(c["verdict"].values())).get("status_judge"))
            + "; a condition whose perplexity ratio on the evaluation prompts exceeds the budget is named): "
            + "; ".join(texts)
            + "."
        )
    cannot = [arm for arm, v in c["verdict"].items() if v["steerable_within_budget"] is False]
    if cannot:
        doc.p(
            f"**Not steerable within the budget** (no alpha passed, down to the smallest tried): {', '.join(cannot)}."
        )
    if c.get("judges_skipped"):
        doc.p("Skipped judges: " + "; ".join(f"{k}: {w}" for k, w in c["judges_skipped"].items()))
    doc.figure(
        f"steer_{c['folder']}.png",
        fig_steer_check(c),
        "Per pair: the judges against alpha for the pair's direction and the random one, the prompting baseline, "
        "and the damage.",
    )
