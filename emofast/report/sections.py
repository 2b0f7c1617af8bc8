"""The report sections: each adds headings, sentences, tables and figures for one or more runs to a ``Doc``."""

from __future__ import annotations

from .adds import section_model_adds
from .common import NA, RELATED_PAIRS, Run, ci3, f3, layer_span, pair_order, pair_sides, pct, pct_ci
from .doc import Doc
from .figures import (
    fig_accuracy_controls,
    fig_grouped_bars,
    fig_layers,
    fig_profile,
    fig_relations,
    fig_reliability,
    fig_scoring,
    plotting,
)
from .versus import section_model_differences

__all__ = [
    "section_runs",
    "section_profile",
    "section_accuracy",
    "section_layers",
    "section_calibration",
    "section_relations",
    "section_controls",
    "build_doc",
]


def section_runs(doc: Doc, runs: list[Run]) -> None:
    """Each run's settings, and its headline numbers."""
    doc.h2("Runs", "runs")
    rows = []
    for r in runs:
        p = r.metrics["probe"]
        counts = p.get("dataset", {}).get("counts", {})
        n_test = sorted({min(c["test"].values()) for c in counts.values()}) if counts else []
        rows.append(
            [
                r.label,
                str(r.path),
                p.get("method", NA),
                p.get("score", NA),
                f"{p.get('layer_policy', NA)} (width {p.get('band_width', NA)})",
                p.get("calibration_method", NA),
                str(p.get("dtype", NA)),
                str(p.get("position", NA)),
                "on" if p.get("chat_template") else "off",
                ", ".join(map(str, n_test)) or NA,
                "yes" if r.neutral is not None else "no",
                str(len(r.shuffled["seeds"])) if r.shuffled is not None else "0",
            ]
        )
    doc.table(
        [
            "model",
            "run folder",
            "directions",
            "score",
            "layer policy",
            "calibration",
            "dtype",
            "position",
            "chat template",
            "test texts per side",
            "neutral set",
            "shuffled baselines",
        ],
        rows,
    )
    doc.h3("At a glance (held-out test split)")
    rows = []
    for r in runs:
        s, c = r.metrics["summary"], r.metrics["controls"]
        rows.append(
            [
                r.label,
                f3(s["mean_balanced_accuracy"]),
                f3(s["min_balanced_accuracy"]),
                f3(s["mean_auroc"]),
                f"{s['mean_train_test_gap']:+.3f}",
                f3(r.shuffled["mean_balanced_accuracy"]) if r.shuffled is not None else NA,
                f"{c['polarity_swap']['max_abs_deviation']:.2e}",
            ]
        )
    doc.table(
        [
            "model",
            "mean balanced accuracy",
            "lowest pair",
            "mean AUROC",
            "train-test gap",
            "shuffled-label accuracy",
            "polarity-swap deviation",
        ],
        rows,
    )


def section_profile(doc: Doc, runs: list[Run], pairs: list[str]) -> None:
    """The heatmap of held-out percentages, the profile table and the top 3 labels per model."""
    sides = pair_sides(runs)
    columns = [(p, side, label) for p in pairs for side, label in zip(("left", "right"), sides[p])]
    lefts = ", ".join(sides[p][0] for p in pairs)
    doc.h2("Emotion profile", "profile")
    doc.p(
        "Each pair's held-out test texts are balanced: as many left texts as right texts. On them an unbiased "
        "instrument gives every side label 50%, so the percentages below measure how far the instrument leans "
        "to one side of a pair, not how much of an emotion a model holds. A label's own-side percentage (over "
        "its own test texts only) is how well it is recognised; the neutral percentage is its reading on the "
        "neutral control texts."
    )
    doc.figure(
        "profile_heatmap.png",
        fig_profile(runs, columns),
        "Models x side labels: mean % on the pair's balanced held-out test texts with the 95% bootstrap "
        "interval; white is 50% (no lean), red leans to the label, blue away from it; grey: pair not in the run.",
    )
    rows = []
    for r in runs:
        for pair, side, label in columns:
            row = r.profile_row(pair, side)
            if row is None:
                continue
            rows.append(
                [
                    r.label,
                    pair,
                    label,
                    side,
                    pct(row["pct_test"], row["pct_test_lo"], row["pct_test_hi"]),
                    pct(row["pct_own_side"], row["pct_own_side_lo"], row["pct_own_side_hi"]),
                    pct(row.get("pct_neutral"), row.get("pct_neutral_lo"), row.get("pct_neutral_hi")),
                ]
            )
    doc.table(["model", "pair", "label", "side", "test % [95% CI]", "own side % [95% CI]", "neutral % [95% CI]"], rows)

    doc.h3("Top 3 labels per model")
    doc.p(
        "The study ranked each model's labels and reported the top 3. Ranked here by the held-out test "
        "percentage: on balanced texts an unbiased instrument puts every label at 50%, so a top 3 of labels "
        "within a few points of 50, with intervals that include 50, is noise. The study found the left side of "
        "each of its pairs (sad, angry, fear, love, anxious: the first-named words) on top for every model; the "
        f"left sides here are {lefts}. A lean that follows the order in which the pairs are written rather than "
        "their meaning, and repeats in every model, points at the instrument (an uncentred score such as the raw "
        "cosine, or texts the directions were fitted on), not at the models; the controls below tell the two "
        "apart."
    )
    rows, n_top, n_left_top, n_left, n_right = [], 0, 0, 0, 0
    for r in runs:
        top = sorted(r.profile, key=lambda row: -row["pct_test"])[:3]
        cells = [f"{t['label']} ({t['side']}) {pct(t['pct_test'], t['pct_test_lo'], t['pct_test_hi'])}" for t in top]
        left_rows = [row for row in r.profile if row["side"] == "left"]
        left_top = sum(t["side"] == "left" for t in top)
        lean_left = sum(row["pct_test_lo"] > 50 for row in left_rows)
        lean_right = sum(row["pct_test_hi"] < 50 for row in left_rows)
        rows.append(
            [
                r.label,
                *cells,
                *[NA] * (3 - len(cells)),
                f"{left_top} of {len(top)}",
                f"{sum(row['pct_test'] > 50 for row in left_rows)} of {len(left_rows)}",
                f"{lean_left} / {lean_right}",
            ]
        )
        n_top, n_left_top, n_left, n_right = (
            n_top + len(top),
            n_left_top + left_top,
            n_left + lean_left,
            n_right + lean_right,
        )
    doc.table(
        [
            "model",
            "1st",
            "2nd",
            "3rd",
            "left sides in top 3",
            "pairs with the left side above 50%",
            "pairs leaning left / right beyond the 95% CI",
        ],
        rows,
    )
    doc.p(
        f"Across {len(runs)} model{'s' if len(runs) > 1 else ''}: left sides among the top-3 labels: {n_left_top} "
        f"of {n_top} (about half when the leans are noise); pair readings that lean beyond their 95% interval: "
        f"{n_left} to the left side, {n_right} to the right side."
    )


def section_accuracy(doc: Doc, runs: list[Run], pairs: list[str]) -> None:
    """Balanced accuracy per pair and model (bars), and the per-pair test metrics."""
    doc.h2("Accuracy per pair", "accuracy")
    doc.p(
        "Balanced accuracy of the calibrated probability (p(left) > 0.5) on the held-out test split, with 95% "
        "MOVER intervals (each side's hit rate gets a Wilson lower and a Clopper-Pearson upper limit, which "
        "keeps exact coverage >= 0.94 over BA 0.5-1; for matched data, where line k of "
        "the left and right files is one scene, the two hits' correlation widens it); 0.5 is chance. AUROC "
        "measures the ranking of the raw score (BCa bootstrap interval, resampling scenes when the data is "
        "matched), sign accuracy the raw score's sign before calibration. Permutation p: the test labels "
        "permuted 10,000 times on the fixed decisions (within scenes for matched data); Holm: corrected across "
        "the run's pairs."
    )

    def get(r, pair):
        m = r.metrics["pairs_test"].get(pair)
        return None if m is None else (m["balanced_accuracy"]["value"], *m["balanced_accuracy"]["ci95"])

    doc.figure(
        "balanced_accuracy.png",
        fig_grouped_bars(
            runs,
            pairs,
            get,
            title="Held-out balanced accuracy per pair (95% CI)",
            ylabel="balanced accuracy (test)",
            ylim=(0, 1.08),
            ref=0.5,
            ref_label="chance (0.5)",
        ),
        "Balanced accuracy per pair and model on the test split with 95% bootstrap intervals; dashed: chance.",
    )
    rows = []
    for r in runs:
        for pair in r.names:
            m = r.metrics["pairs_test"][pair]
            rows.append(
                [
                    r.label,
                    pair,
                    layer_span(r.chosen[pair]),
                    ci3(m["balanced_accuracy"]),
                    ci3(m["auroc"]),
                    ci3(m["sign_accuracy"]),
                    pct_ci(m["mean_p_left_on_left"]),
                    pct_ci(m["mean_p_right_on_right"]),
                    f"{m['n_left']}/{m['n_right']}",
                    _p(m.get("permutation_p")),
                    _p(m.get("permutation_p_holm")),
                ]
            )
    doc.table(
        [
            "model",
            "pair",
            "layers",
            "balanced accuracy",
            "AUROC",
            "sign accuracy",
            "p(left) on left %",
            "p(right) on right %",
            "test texts left/right",
            "permutation p",
            "Holm",
        ],
        rows,
    )


def _p(v) -> str:
    return NA if v is None else f"{v:.2g}"


def section_layers(doc: Doc, runs: list[Run]) -> None:
    """Per-layer val and test curves of every model."""
    doc.h2("Layers", "layers")
    doc.p(
        "Per layer, the balanced accuracy of the score's sign and the separation (standardised difference of "
        "the left and right mean scores) on the validation split, which chose the layers (shaded), and on the "
        "held-out test split. A test curve that follows the val curve means the choice generalises."
    )
    for i, r in enumerate(runs):
        doc.figure(f"layers_{i + 1}.png", fig_layers(r), f"{r.label}: per-layer val and test curves per pair.")


def section_calibration(doc: Doc, runs: list[Run]) -> None:
    """Reliability diagrams before and after calibration, and the calibration metrics."""
    doc.h2("Calibration", "calibration")
    doc.p(
        "Calibration quality on the test split, NLL and Brier first (lower is better), against two references: "
        "the raw sigmoid of the score with no fit (the score is in units of the train within-side spread; this is "
        "what an uncalibrated probe would claim) and the temperature-only fit (p = sigmoid(k * score)). The "
        "constant p(left) = 0.5 is a weak reference (NLL 0.693, Brier 0.25; a 3x over-confident probe can beat "
        "it) and has no informative ECE (0 on balanced texts whatever the data), so its ECE is not shown. ECE "
        "uses 5 equal-mass bins and is noisy at these sizes: the last column gives the ECE that a perfectly "
        "calibrated predictor gets at the same number of test texts (labels simulated from the calibrated "
        "probabilities); an ECE below its 95th percentile cannot be told from perfect. Reliability diagrams: "
        "per equal-mass bin of predicted p(left), the share of texts that are left; points on the diagonal are "
        "calibrated. The calibration is fitted on val (on the half of val that did not choose the layers, when "
        "the run says val use: halves)."
    )
    for i, r in enumerate(runs):
        doc.figure(f"reliability_{i + 1}.png", fig_reliability(r), f"{r.label}: reliability before and after.")
    rows = []
    for r in runs:
        for pair in r.names:
            fit = r.metrics["probe"]["calibration"][pair]
            test = r.metrics["pairs_test"][pair]["calibration"]
            # references: the raw sigmoid (no fit) and the temperature-only fit; the constant 0.5 only for NLL and
            # Brier (its ECE is 0 on balanced data whatever the data: uninformative)
            trio = [test.get(k) for k in ("raw", "temperature", "calibrated")]
            floor = test.get("ece_noise_floor") or {}

            def cells(key, trio=trio):
                return " / ".join(f3(q[key]) if q and q.get(key) is not None else NA for q in trio)

            rows.append(
                [
                    r.label,
                    pair,
                    f"{fit['method']} a={fit['a']:.4g} b={fit['b']:.4g}",
                    cells("nll"),
                    cells("brier"),
                    cells("ece"),
                    f"{f3(floor.get('mean'))} / {f3(floor.get('q95'))}" if floor else NA,
                ]
            )
    doc.table(
        [
            "model",
            "pair",
            "fit (on val)",
            "test NLL: raw sigmoid / temperature / calibrated (0.5: 0.693)",
            "test Brier: raw sigmoid / temperature / calibrated (0.5: 0.250)",
            "test ECE (5 equal-mass bins): raw sigmoid / temperature / calibrated",
            "ECE of a perfectly calibrated predictor at this n: mean / 95%",
        ],
        rows,
    )


def section_relations(doc: Doc, runs: list[Run]) -> None:
    """The related pairs' cross-reading, and each model's cross-reading and direction-cosine matrices."""
    doc.h2("Related pairs", "relations")
    doc.p(
        "Cross-reading: the AUROC of one pair's direction (at its chosen layers) separating another pair's "
        "left and right test texts; 0.5 means it does not read them, 1 as well as a perfect probe, below 0.5 "
        "reversed. Cosine: the similarity of two pairs' directions, averaged over the layers either pair uses. "
        "Related concepts (fear and anxiety, confidence and relaxation) may share a direction; unrelated pairs "
        "should read near 0.5."
    )
    rows = []
    for r in runs:
        cr, dc = r.metrics["cross_reading_test"], r.metrics["direction_cosines"]
        for a, b in RELATED_PAIRS:
            if a in r.names and b in r.names:
                cells = [
                    _cell(cr, "auroc", "directions", "texts", a, b),
                    _cell(cr, "auroc", "directions", "texts", b, a),
                ]
                cells.append(_cell(dc, "cosine", "pairs", "pairs", a, b))
                rows.append([r.label, a, b, *map(f3, cells)])
    if rows:
        doc.table(
            ["model", "pair A", "pair B", "A's direction on B's texts", "B's direction on A's texts", "cosine"], rows
        )
    else:
        pairs_text = "; ".join(f"{a} with {b}" for a, b in RELATED_PAIRS)
        doc.p(f"No run has both pairs of a related set ({pairs_text}); the full matrices follow.")
    for i, r in enumerate(runs):
        cr, dc = r.metrics["cross_reading_test"], r.metrics["direction_cosines"]
        doc.h3(r.label)
        doc.figure(
            f"relations_{i + 1}.png",
            fig_relations(r),
            f"{r.label}: cross-reading AUROC (rows: direction, columns: texts) and direction cosines.",
        )
        doc.table(
            ["direction \\ texts", *cr["texts"]], [[d, *map(f3, row)] for d, row in zip(cr["directions"], cr["auroc"])]
        )
        doc.table(["cosine", *dc["pairs"]], [[d, *map(f3, row)] for d, row in zip(dc["pairs"], dc["cosine"])])


def section_controls(doc: Doc, runs: list[Run], pairs: list[str]) -> None:
    """Neutral texts, polarity swap, centred against cosine scoring, train/test gap, shuffled labels."""
    doc.h2("Controls", "controls")
    doc.p(
        "These separate what the models do from what the instrument does. Evidence (each can come out against "
        "the probe): the neutral texts (neither side of a pair), centred against cosine scoring on the same "
        "directions, the train/test gap (how much the fitted texts flatter the probe), the shuffled-label "
        "baselines (the chance level of the whole pipeline), and, below, the lexical, random-init and "
        "out-of-domain controls. Software self-test (cannot fail on any data, only on a bug): the in-run polarity "
        "swap. Every difference is given with its 95% interval: paired bootstrap (BCa, the same resamples of the "
        "same test texts) for centred - cosine; train - test is descriptive (in-sample train accuracy)."
    )
    doc.h3("Neutral texts")
    with_neutral = [r for r in runs if r.neutral is not None]
    if with_neutral:
        doc.p(
            "Mean p(left side) on the neutral control texts, with 95% intervals, and the share of them read as "
            "left, under the run's scoring and under both scorings side by side. Neutral texts should not "
            "systematically read as one side; the same side in every pair and every model is an instrument effect."
        )

        def get(r, pair):
            m = r.neutral.get(pair) if r.neutral is not None else None
            return None if m is None else tuple(100 * v for v in (m["mean_p_left"]["value"], *m["mean_p_left"]["ci95"]))

        doc.figure(
            "neutral.png",
            fig_grouped_bars(
                runs,
                pairs,
                get,
                title="Neutral texts: mean % read as the left side (95% CI)",
                ylabel="p(left side) on neutral texts, %",
                ylim=(0, 105),
                ref=50,
                ref_label="50%",
            ),
            "Mean p(left side) on the neutral set per pair and model, with 95% bootstrap intervals.",
        )
        kinds = sorted(with_neutral[0].metrics["controls"]["scoring"])
        rows = []
        for r in with_neutral:
            scoring = r.metrics["controls"]["scoring"]
            for pair in r.names:
                m = r.neutral[pair]
                alt = [f"{100 * scoring[k]['neutral_mean_p_left'][pair]:.1f}" for k in kinds]
                rows.append(
                    [r.label, pair, str(m["n"]), pct_ci(m["mean_p_left"]), f"{100 * m['share_left']:.1f}", *alt]
                )
        doc.table(
            ["model", "pair", "texts", "p(left) % [95% CI]", "% read as left", *(f"p(left) % with {k}" for k in kinds)],
            rows,
        )
    missing = [r.label for r in runs if r.neutral is None]
    if missing:
        doc.p(f"Without a neutral set (run with neutral texts to get this control): {', '.join(missing)}.")

    doc.h3("Polarity swap (software self-test, not evidence)")
    doc.p(
        "The run's statistics are redone with every pair's left and right exchanged (directions negated, labels "
        "mirrored, layers and calibration chosen again on val). This is zero by construction: negated directions, "
        "the same midpoints, mirrored resamples and a symmetric calibration objective. It checks the software, "
        "not the models or the data: a deviation means a bug that treats the first-named side differently. The "
        "real check that the data's order does not matter is the test suite's refit from swapped files."
    )
    doc.table(
        ["model", "largest deviation from the mirror", "same layers chosen"],
        [
            [
                r.label,
                f"{r.metrics['controls']['polarity_swap']['max_abs_deviation']:.2e}",
                "yes" if r.metrics["controls"]["polarity_swap"]["same_layers"] else "no",
            ]
            for r in runs
        ],
    )

    doc.h3("Centred and cosine scoring")
    doc.p(
        "The same directions scored two ways, each with its own layer choice and calibration on val: centred "
        "(the projection minus the midpoint of the two sides' means) and the uncentred cosine the study used. "
        "The cosine keeps the component that all hidden states share, which can push every text toward the "
        "same side of a pair; a lean that appears under one scoring and not the other is the instrument's, not "
        "the model's."
    )
    doc.figure(
        "scoring.png",
        fig_scoring(runs),
        "Per model, under centred and cosine scoring: held-out balanced accuracy per pair (95% CI) and the mean "
        "p(left side) on the neutral texts.",
    )
    rows = []
    for r in runs:
        sc = r.metrics["controls"]["scoring"]
        kinds = sorted(sc)
        for pair in r.names:
            cells = []
            for k in kinds:
                cells += [ci3(sc[k]["per_pair"][pair]), layer_span(sc[k]["chosen_layers"][pair])]
            rows.append([r.label, pair, r.metrics["probe"]["score"], *cells])
    kinds = sorted(runs[0].metrics["controls"]["scoring"])
    header = ["model", "pair", "used"]
    for k in kinds:
        header += [f"{k}: balanced accuracy", f"{k}: layers"]
    doc.table(header, rows)
    diffs = [
        [r.label, pair, _diff(r.metrics["controls"]["centered_minus_cosine"][pair])]
        for r in runs
        if "centered_minus_cosine" in r.metrics["controls"]
        for pair in r.names
    ]
    if diffs:
        doc.p(
            "Centred - cosine: the difference of the two balanced accuracies on the same test texts, with its "
            "paired 95% interval; an interval that spans 0 means the two scorings cannot be told apart here."
        )
        doc.table(["model", "pair", "centred - cosine [95% CI]"], diffs)

    doc.h3("Train/test gap and the shuffled-label baseline")
    doc.p(
        "Train: the same probe on the texts its directions were fitted on, as the study scored them; the gap "
        "to test is how much that flatters it. Shuffled labels: probes fitted, selected and calibrated exactly "
        "like the real one but on training texts whose sides were shuffled; their held-out accuracy is the "
        "chance level of the whole pipeline (about 0.5). A real accuracy inside the shuffled range means the "
        "probe found nothing. The shuffled distribution is summarised by its mean, 5th-95th percentiles and "
        "maximum; p: (1 + shuffled baselines at or above the probe) / (1 + baselines), the smallest value the "
        "number of baselines allows when the probe beats them all. Train - test is descriptive, with no "
        "interval: the train accuracy is in-sample (LDA fits the train texts perfectly), not an estimate."
    )
    doc.figure(
        "accuracy_controls.png",
        fig_accuracy_controls(runs),
        "Per model and pair: test balanced accuracy (bar, 95% CI), train accuracy (black diamond) and the "
        "shuffled-label baselines (grey dots, one per seed); dashed: chance.",
    )
    rows = []
    for r in runs:
        sh = r.shuffled
        for pair in r.names:
            test = r.metrics["pairs_test"][pair]["balanced_accuracy"]
            train = r.metrics["pairs_train"][pair]["balanced_accuracy"]["value"]
            shuffled = [NA, NA, NA]
            if sh is not None:
                vals = sorted(sh["balanced_accuracy"][pair])
                d = sh.get("distribution", {}).get(pair)
                spread = f"{d['q05']:.3f}-{d['q95']:.3f}, max {d['max']:.3f}" if d else ", ".join(f3(v) for v in vals)
                shuffled = [f"{len(vals)}: {spread}", f3(sum(vals) / len(vals)), f"{d['p_probe']:.2g}" if d else NA]
            gap = r.metrics["controls"].get("train_test", {}).get(pair)
            gap_s = _diff(gap) if gap and "ci95" in gap else f"{train - test['value']:+.3f}"
            rows.append([r.label, pair, f3(train), ci3(test), gap_s, *shuffled])
    doc.table(
        [
            "model",
            "pair",
            "train balanced accuracy",
            "test balanced accuracy",
            "train - test (descriptive)",
            "shuffled labels: n, 5-95%, max",
            "shuffled mean",
            "p (probe among shuffled)",
        ],
        rows,
    )
    missing = [r.label for r in runs if r.shuffled is None]
    if missing:
        doc.p(f"Without shuffled-label baselines (emofast run --shuffled N adds them): {', '.join(missing)}.")


def _diff(e: dict) -> str:
    """A difference ``{"value", "ci95"}`` as ``+0.031 [-0.020, +0.090]``."""
    lo, hi = e["ci95"]
    return f"{e['value']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _cell(matrix: dict, key: str, rows: str, cols: str, row, col):
    """One entry of a labelled matrix of metrics.json (``{rows: [...], cols: [...], key: [[...]]}``)."""
    return matrix[key][matrix[rows].index(row)][matrix[cols].index(col)]


def build_doc(runs: list[Run], title: str) -> Doc:
    """Every section of the report, figures drawn."""
    doc = Doc(title)
    pairs = pair_order(runs)
    with plotting():
        section_runs(doc, runs)
        section_profile(doc, runs, pairs)
        section_accuracy(doc, runs, pairs)
        section_layers(doc, runs)
        section_calibration(doc, runs)
        section_relations(doc, runs)
        section_controls(doc, runs, pairs)
        section_model_adds(doc, runs)
        section_model_differences(doc, runs)
    return doc
