"""The combined CSV tables a comparison report writes beside its HTML and Markdown."""

from __future__ import annotations

import csv
from pathlib import Path

from .common import Run, layer_span

__all__ = ["write_csvs"]


def _write_rows(path: Path, rows: list[dict]) -> None:
    """Rows with possibly different keys, as one CSV (columns in order of first appearance, blanks for missing)."""
    fields = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)


def _controls_rows(r: Run) -> list[dict]:
    """One row per pair of a run: every control's numbers (CSV)."""
    c = r.metrics["controls"]
    rows = []
    for pair in r.names:
        test = r.metrics["pairs_test"][pair]["balanced_accuracy"]
        train = r.metrics["pairs_train"][pair]["balanced_accuracy"]["value"]
        row = {
            "run": r.label,
            "pair": pair,
            "score_used": r.metrics["probe"]["score"],
            "polarity_swap_max_abs_deviation": c["polarity_swap"]["max_abs_deviation"],
            "polarity_swap_same_layers": c["polarity_swap"]["same_layers"],
            "train_balanced_accuracy": train,
            "test_balanced_accuracy": test["value"],
            "train_test_gap": round(train - test["value"], 6),
        }
        for kind, entry in sorted(c["scoring"].items()):
            ba = entry["per_pair"][pair]
            row[f"{kind}_balanced_accuracy"] = ba["value"]
            row[f"{kind}_balanced_accuracy_lo"], row[f"{kind}_balanced_accuracy_hi"] = ba["ci95"]
            row[f"{kind}layer_span"] = layer_span(entry["chosen_layers"][pair])
            if "neutral_mean_p_left" in entry:
                row[f"{kind}_neutral_mean_p_left"] = entry["neutral_mean_p_left"][pair]
        if r.neutral is not None:
            m = r.neutral[pair]
            row["neutral_n"] = m["n"]
            row["neutral_mean_p_left"] = m["mean_p_left"]["value"]
            row["neutral_mean_p_left_lo"], row["neutral_mean_p_left_hi"] = m["mean_p_left"]["ci95"]
            row["neutral_share_left"] = m["share_left"]
        if r.shuffled is not None:
            vals = r.shuffled["balanced_accuracy"][pair]
            row["shuffled_seeds"] = " ".join(map(str, r.shuffled["seeds"]))
            row["shuffled_balanced_accuracy"] = " ".join(f"{v:g}" for v in vals)
            row["shuffled_balanced_accuracy_mean"] = round(sum(vals) / len(vals), 6)
        con = c.get("contrast", {}).get(pair)
        if con:
            row["contrast_fitted_on"] = "+".join(c["contrast"].get("train", ["train"]))
            row["contrast_n"] = con["n_left"] + con["n_right"]
            for key, e in (
                ("contrast", con),
                *((f"{k}_contrast", con[k]) for k in ("lexical", "random_init") if k in con),
            ):
                ba = e["balanced_accuracy"]
                row[f"{key}_balanced_accuracy"] = ba["value"]
                row[f"{key}_balanced_accuracy_lo"], row[f"{key}_balanced_accuracy_hi"] = ba["ci95"]
                if "probe_minus" in e:
                    row[f"probe_minus_{key}"] = e["probe_minus"]["value"]
                    row[f"probe_minus_{key}_lo"], row[f"probe_minus_{key}_hi"] = e["probe_minus"]["ci95"]
        rows.append(row)
    return rows


def write_csvs(runs: list[Run], out: Path) -> None:
    """``profile.csv``, ``pairs.csv``, ``controls.csv``, ``cross_reading.csv``, ``direction_cosines.csv``."""
    _write_rows(out / "profile.csv", [{"run": r.label, **row} for r in runs for row in r.profile_csv])
    _write_rows(out / "pairs.csv", [{"run": r.label, **row} for r in runs for row in r.pairs_csv])
    _write_rows(out / "controls.csv", [row for r in runs for row in _controls_rows(r)])
    cross, cosines = [], []
    for r in runs:
        cr, dc = r.metrics["cross_reading_test"], r.metrics["direction_cosines"]
        for d, row in zip(cr["directions"], cr["auroc"]):
            cross += [{"run": r.label, "direction": d, "texts": t, "auroc": v} for t, v in zip(cr["texts"], row)]
        for a, row in zip(dc["pairs"], dc["cosine"]):
            cosines += [{"run": r.label, "pair_a": a, "pair_b": b, "cosine": v} for b, v in zip(dc["pairs"], row)]
    _write_rows(out / "cross_reading.csv", cross)
    _write_rows(out / "direction_cosines.csv", cosines)
