"""The README's side-by-side table of real runs: test, lexical, contrast (plain and augmented) and ood per pair.

    python scripts/contrast_table.py "SmolLM2-135M=/work/runs/smollm2,/work/runs/smollm2-aug" \
        "Gemma 3 270M=/work/runs/gemma3-270m"

Each argument is ``LABEL=RUN[,AUGMENTED_RUN]`` (run folders of ``emofast run`` and ``emofast run --augment
contrast``); a missing folder prints ``n/a``. Everything is read from the runs' ``metrics.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _load(path: str | None) -> dict | None:
    if not path or not (Path(path) / "metrics.json").is_file():
        return None
    return json.loads((Path(path) / "metrics.json").read_text())


def _ci(e) -> str:
    return "n/a" if not e else f"{e['value']:.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]"


def _d(e) -> str:
    return "n/a" if not e else f"{e['value']:+.3f} [{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}]"


def _v(e) -> str:
    return "n/a" if not e else f"{e['value']:.3f}"


def _get(m, *keys):
    for k in keys:
        if m is None or k not in m:
            return None
        m = m[k]
    return m


def _refit(e) -> str:
    return "n/a" if not e else f"{_d(e)}, {e['p_holm']:.2g}"


def rows(label: str, plain: dict | None, aug: dict | None) -> list[str]:
    ref = plain or aug
    names = list(ref["pairs_test"])
    out, means = [], {k: [] for k in ("test", "lex", "con", "lexcon", "augcon", "auglexcon", "ood")}
    for n in names:
        c = _get(plain, "controls") or {}
        con = _get(c, "contrast", n)
        vals = {
            "test": _get(plain, "pairs_test", n, "balanced_accuracy"),
            "lex": _get(c, "lexical", n, "balanced_accuracy"),
            "con": _get(con, "balanced_accuracy"),
            "lexcon": _get(con, "lexical", "balanced_accuracy"),
            "augcon": _get(aug, "controls", "contrast", n, "balanced_accuracy"),
            "auglexcon": _get(aug, "controls", "contrast", n, "lexical", "balanced_accuracy"),
            "ood": _get(c, "out_of_domain", n, "balanced_accuracy"),
        }
        for k, e in vals.items():
            if e:
                means[k].append(e["value"])
        out.append(
            f"| {label} | {n.replace('_vs_', ' vs ')} | {_ci(vals['test'])} | {_v(vals['lex'])} | "
            f"{_d(_get(c, 'lexical', n, 'probe_minus'))} | {_ci(vals['con'])} | {_v(vals['lexcon'])} | "
            f"{_d(_get(con, 'lexical', 'probe_minus'))} | {_refit(_get(c, 'refits', 'contrast', n))} | "
            f"{_ci(vals['augcon'])} | {_v(vals['auglexcon'])} | "
            f"{_v(vals['ood'])} |"
        )
    mean = {k: (f"{np.mean(v):.3f}" if len(v) == len(names) else "n/a") for k, v in means.items()}
    out.append(
        f"| {label} | **mean** | **{mean['test']}** | {mean['lex']} | | **{mean['con']}** | {mean['lexcon']} | | | "
        f"**{mean['augcon']}** | {mean['auglexcon']} | {mean['ood']} |"
    )
    return out


def main(argv: list[str]) -> None:
    print(
        "| model | pair | test | lexical | probe − lexical | contrast: probe | contrast: lexical | "
        "contrast: probe − lexical | contrast: over 20 refits, Holm p | augmented, contrast: probe | "
        "augmented, contrast: lexical | out-of-domain |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for arg in argv:
        label, _, paths = arg.partition("=")
        plain, _, aug = paths.partition(",")
        p, a = _load(plain), _load(aug)
        if p is None and a is None:
            print(f"| {label} | (no run folder found) ||||||||||")
            continue
        print("\n".join(rows(label, p, a)))


if __name__ == "__main__":
    main(sys.argv[1:])
