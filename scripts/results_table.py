"""The README's results table of one real run (every pair: test, lexical, refits, random-init, ood, contrast,
neutral), and the random-init control over several seeds where the run has them.

    python scripts/results_table.py /work/runs/smollm2

Everything is read from the run's ``pairs.csv`` and ``metrics.json``; a missing column prints ``n/a``.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path


def _f(row, key, fmt="{:.3f}") -> str:
    v = row.get(key, "")
    try:
        x = float(v)
    except ValueError:
        return "n/a"
    return "n/a" if math.isnan(x) else fmt.format(x)


def _ci(row, key, signed=False) -> str:
    fmt = "{:+.3f}" if signed else "{:.3f}"
    v, lo, hi = (_f(row, k, fmt) for k in (key, key + "_lo", key + "_hi"))
    return "n/a" if v == "n/a" else f"{v} [{lo}, {hi}]".replace("-", "−")


def _layers(s: str) -> str:
    ls = [int(x) for x in s.replace(";", " ").replace(",", " ").split() if x.strip().lstrip("-").isdigit()]
    return s if not ls else (f"{min(ls)}-{max(ls)}" if ls == list(range(min(ls), max(ls) + 1)) else s)


def results_table(run: Path) -> str:
    rows = list(csv.DictReader((run / "pairs.csv").open()))
    head = (
        "| pair | layers | balanced accuracy [95% CI] | lexical | probe − lexical [95% CI] | over refits [95% CI], "
        "Holm p | random-init | probe − random-init | out-of-domain | contrast | neutral read as left |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    out = []
    for r in rows:
        refit = _ci(r, "probe_minus_lexical_refit", signed=True)
        if refit != "n/a":
            refit += f", {_f(r, 'probe_minus_lexical_refit_p_holm', '{:.2f}')}"
        neutral = _f(r, "neutral_mean_p_left", "{:.0%}")
        out.append(
            f"| {r['left']} vs {r['right']} | {_layers(r['layers'])} | {_ci(r, 'balanced_accuracy')} | "
            f"{_f(r, 'lexical_balanced_accuracy')} | {_ci(r, 'probe_minus_lexical', True)} | {refit} | "
            f"{_f(r, 'random_init_balanced_accuracy')} | {_ci(r, 'probe_minus_random_init', True)} | "
            f"{_f(r, 'ood_balanced_accuracy')} | {_f(r, 'contrast_balanced_accuracy')} | {neutral} |"
        )
    return head + "\n".join(out) + "\n"


def seeds_table(run: Path) -> str | None:
    m = json.loads((run / "metrics.json").read_text())
    seeds = (m.get("controls", {}).get("random_init") or {}).get("across_seeds")
    if not seeds or len(seeds.get("seeds", [])) < 2:
        return None
    names = [k for k in seeds if isinstance(seeds[k], dict)]
    cols = " | ".join(f"seed {s}" for s in seeds["seeds"])
    head = f"| pair | {cols} | mean | sd | min-max |\n|---|{'---|' * len(seeds['seeds'])}---|---|---|\n"
    out = []
    for n in names:
        e = seeds[n]
        vals = " | ".join(f"{v:.3f}" for v in e["balanced_accuracy"])
        out.append(f"| {n} | {vals} | {e['mean']:.3f} | {e['sd']:.3f} | {e['min']:.3f}-{e['max']:.3f} |")
    return head + "\n".join(out) + "\n"


def main(argv: list[str]) -> None:
    for arg in argv:
        run = Path(arg)
        print(results_table(run))
        s = seeds_table(run)
        if s:
            print(s)


if __name__ == "__main__":
    main(sys.argv[1:])
