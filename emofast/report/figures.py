"""The report figures (matplotlib, Agg canvas, standalone figures: no pyplot), each returned as PNG bytes."""

from __future__ import annotations

import io
import math
from contextlib import contextmanager

from .common import NA, Run, f3, layer_span, num

__all__ = [
    "new_figure",
    "png_bytes",
    "plotting",
    "fig_profile",
    "fig_grouped_bars",
    "fig_layers",
    "fig_reliability",
    "fig_relations",
    "fig_accuracy_controls",
    "fig_scoring",
    "fig_contrast",
]


@contextmanager
def plotting():
    """matplotlib's default style plus ours, for the duration of one report (the caller's settings are restored)."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the reports need matplotlib: pip install matplotlib (or pass --no-report to emofast run)",
            name="matplotlib",
        ) from None
    import matplotlib.style

    with matplotlib.rc_context():
        matplotlib.style.use("default")
        matplotlib.rcParams.update(
            {
                "font.size": 9,
                "axes.titlesize": 10,
                "axes.labelsize": 9,
                "legend.fontsize": 8,
                "axes.grid": True,
                "grid.alpha": 0.3,
                "savefig.dpi": 110,
                "image.interpolation": "nearest",
            }
        )
        yield


def _figure(width: float, height: float):
    """A standalone figure on the Agg canvas (headless; pyplot is never imported)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    """The figure as PNG bytes, without the software/date metadata, so that the same figure gives the same bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


#: Public names for the figure helpers, for report modules beside this one.
new_figure = _figure
png_bytes = _png


def _colour(i: int):
    """The colour of the ``i``-th model, the same in every figure."""
    from matplotlib import colormaps

    return colormaps["tab10"](i % 10)


def _grid(n: int, ncols: int, w: float, h: float):
    """A figure with ``n`` panels on a grid of ``ncols`` columns (unused panels hidden)."""
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = _figure(max(w * ncols, 8.0), h * nrows + 0.8)
    axes = [ax for row in fig.subplots(nrows, ncols, squeeze=False) for ax in row]
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _shared_legend(fig, axes) -> None:
    """One legend for all panels, below them (each label once)."""
    seen = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=min(len(seen), 4))


def _pair_tick(name: str) -> str:
    """A pair name on two lines, for axis ticks."""
    return name.replace("_vs_", "\nvs ")


def _annotated_heatmap(fig, ax, values, text, *, cmap, vmin, vmax, bar_label, center):
    """``imshow`` of a matrix (NaN in grey) with the given text in each cell and a labelled colour bar."""
    import numpy as np
    from matplotlib import colormaps

    cm = colormaps[cmap].with_extremes(bad="#d9d9d9")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cm, vmin=vmin, vmax=vmax, aspect="auto")
    span = (vmax - vmin) / 2
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            dark = math.isfinite(v) and abs(v - center) > 0.6 * span
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7.5, color="white" if dark else "black")
    ax.grid(False)
    fig.colorbar(im, ax=ax, label=bar_label, shrink=0.9)
    return im


def fig_profile(runs: list[Run], columns: list[tuple[str, str, str]]) -> bytes:
    """Models x side labels: held-out percentage (pct_test) with its 95% interval in each cell."""
    import numpy as np

    values = np.full((len(runs), len(columns)), np.nan)
    text = [[NA] * len(columns) for _ in runs]
    for i, r in enumerate(runs):
        for j, (pair, side, _) in enumerate(columns):
            row = r.profile_row(pair, side)
            if row is not None:
                values[i, j] = row["pct_test"]
                text[i][j] = f"{row['pct_test']:.1f}\n[{row['pct_test_lo']:.1f}, {row['pct_test_hi']:.1f}]"
    fig = _figure(max(6.0, 0.95 * len(columns) + 3.5), max(2.6, 0.6 * len(runs) + 2.0))
    ax = fig.add_subplot()
    _annotated_heatmap(
        fig,
        ax,
        values,
        text,
        cmap="RdBu_r",
        vmin=0,
        vmax=100,
        center=50,
        bar_label="% on balanced held-out test texts\n(50 = unbiased instrument)",
    )
    ax.set_xticks(range(len(columns)), labels=[f"{label}\n({side})" for _, side, label in columns])
    ax.set_yticks(range(len(runs)), labels=[r.label for r in runs])
    for k in range(2, len(columns), 2):
        ax.axvline(k - 0.5, color="black", lw=1.5)
    ax.set_xlabel("side label (pairs separated by black lines)")
    ax.set_title("Emotion profile on held-out test texts: mean % per side label [95% CI]")
    return _png(fig)


def fig_grouped_bars(runs, pairs, get, *, title, ylabel, ylim, ref, ref_label) -> bytes:
    """Per pair, one bar per model with its 95% interval; ``get(run, pair) -> (value, lo, hi)`` or None."""
    fig = _figure(max(6.0, 1.3 * len(pairs) + 2.5 + 0.15 * len(runs) * len(pairs)), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / len(runs)
    for i, r in enumerate(runs):
        xs, vs, err = [], [], [[], []]
        for k, pair in enumerate(pairs):
            got = get(r, pair)
            if got is None:
                continue
            v, lo, hi = got
            xs.append(k - 0.4 + width * (i + 0.5))
            vs.append(v)
            err[0].append(max(v - lo, 0.0))
            err[1].append(max(hi - v, 0.0))
        if xs:
            ax.bar(xs, vs, width * 0.9, yerr=err, capsize=2, color=_colour(i), label=r.label)
    ax.axhline(ref, color="dimgrey", ls="--", lw=1, label=ref_label)
    ax.set_xticks(range(len(pairs)), labels=[_pair_tick(p) for p in pairs])
    ax.set_xlim(-0.6, len(pairs) - 0.4)
    ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def fig_layers(run: Run) -> bytes:
    """Per pair: val and test balanced accuracy and separation at every layer, the chosen layers shaded."""
    from matplotlib.ticker import MaxNLocator

    names = run.names
    fig = _figure(10.0, 2.4 * len(names) + 0.7)
    axes = fig.subplots(len(names), 2, squeeze=False)
    curves = run.metrics["curves"]
    for r, name in enumerate(names):
        for c, (key, ylabel) in enumerate(
            (("balanced_accuracy", "balanced accuracy\n(sign of score)"), ("separation", "separation\n(Cohen's d)"))
        ):
            ax = axes[r][c]
            for split, style in (("val", "-o"), ("test", "--s")):
                cur = curves[split][name]
                ys = [v if v is not None and math.isfinite(v) else math.nan for v in cur[key]]
                ax.plot(cur["layers"], ys, style, ms=3, lw=1.2, label=split)
            for k, layer in enumerate(run.chosen[name]):
                label = f"chosen ({layer_span(run.chosen[name])})" if k == 0 else None
                ax.axvspan(layer - 0.5, layer + 0.5, color="gold", alpha=0.3, lw=0, label=label)
            if key == "balanced_accuracy":
                ax.axhline(0.5, color="dimgrey", ls=":", lw=1)
                ax.set_ylim(0, 1.05)
            ax.set_title(f"{name}: {key.replace('_', ' ')}")
            ax.set_xlabel("layer")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(ylabel)
            ax.legend(loc="best")
    fig.suptitle(f"{run.label}: per-layer curves (layers chosen on val; test held out)")
    return _png(fig)


def fig_reliability(run: Run) -> bytes:
    """Per pair: reliability on the test split (equal-mass bins) of the temperature-only fit and of the
    calibration, against the constant 0.5."""
    names = run.names
    fig, axes = _grid(len(names), 3, 3.6, 3.5)
    for ax, name in zip(axes, names):
        ax.plot([0, 1], [0, 1], ":", color="dimgrey", lw=1, label="perfectly calibrated")
        cal = run.metrics["pairs_test"][name]["calibration"]
        ax.axhline(0.5, color="lightgrey", lw=1)
        for which, colour in (("temperature", "tab:orange"), ("calibrated", "tab:blue")):
            if which not in cal or which not in run.metrics["reliability_test"][name]:
                continue
            ece = cal[which]["ece"]
            rel = run.metrics["reliability_test"][name][which]
            pts = [(m, f, n) for m, f, n in zip(rel["mean_p_left"], rel["frac_left"], rel["count"]) if n]
            xs, ys, ns = zip(*pts) if pts else ((), (), ())
            ax.plot(xs, ys, "-", color=colour, lw=1, label=f"{which} (NLL {cal[which]['nll']:.3f}, ECE {ece:.3f})")
            ax.scatter(xs, ys, s=[12 + 6 * n for n in ns], color=colour, alpha=0.7, zorder=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_title(name)
        ax.set_xlabel("mean predicted p(left) in bin")
        ax.set_ylabel("share of left texts in bin")
        ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(f"{run.label}: reliability on the test split (marker area ~ texts in bin)")
    return _png(fig)


def fig_relations(run: Run) -> bytes:
    """Cross-reading AUROC matrix (direction x texts) and cosine similarity between the pairs' directions."""
    import numpy as np

    cr, dc = run.metrics["cross_reading_test"], run.metrics["direction_cosines"]
    auc = np.array([[num(v) for v in row] for row in cr["auroc"]])
    cos = np.array([[num(v) for v in row] for row in dc["cosine"]])
    n = max(len(cr["texts"]), len(dc["pairs"]))
    fig = _figure(2 * (1.15 * n + 2.6), 1.0 * n + 2.2)
    ax1, ax2 = fig.subplots(1, 2)
    _annotated_heatmap(
        fig,
        ax1,
        auc,
        [[f3(v) if math.isfinite(v) else NA for v in row] for row in auc],
        cmap="RdBu_r",
        vmin=0,
        vmax=1,
        center=0.5,
        bar_label="AUROC (0.5 unrelated, <0.5 reversed)",
    )
    ax1.set_xticks(range(len(cr["texts"])), labels=[_pair_tick(p) for p in cr["texts"]])
    ax1.set_yticks(range(len(cr["directions"])), labels=cr["directions"])
    ax1.set_xlabel("texts of pair (test split)")
    ax1.set_ylabel("direction of pair")
    ax1.set_title("Cross-reading: AUROC of each direction on each pair's texts")
    _annotated_heatmap(
        fig,
        ax2,
        cos,
        [[f3(v) if math.isfinite(v) else NA for v in row] for row in cos],
        cmap="PuOr_r",
        vmin=-1,
        vmax=1,
        center=0,
        bar_label="cosine similarity",
    )
    ax2.set_xticks(range(len(dc["pairs"])), labels=[_pair_tick(p) for p in dc["pairs"]])
    ax2.set_yticks(range(len(dc["pairs"])), labels=dc["pairs"])
    ax2.set_title("Cosine between pair directions (their chosen layers)")
    fig.suptitle(run.label)
    return _png(fig)


def fig_accuracy_controls(runs: list[Run]) -> bytes:
    """Per model: test balanced accuracy (bar, 95% CI), train accuracy and the shuffled-label baselines."""
    fig, axes = _grid(len(runs), 2, 5.2, 3.6)
    for i, (ax, r) in enumerate(zip(axes, runs)):
        names = r.names
        test = r.metrics["pairs_test"]
        ba = [test[n]["balanced_accuracy"] for n in names]
        err = [[max(m["value"] - m["ci95"][0], 0.0) for m in ba], [max(m["ci95"][1] - m["value"], 0.0) for m in ba]]
        xs = list(range(len(names)))
        ax.bar(
            xs, [m["value"] for m in ba], 0.6, yerr=err, capsize=3, color=_colour(i), alpha=0.5, label="test (95% CI)"
        )
        train = [r.metrics["pairs_train"][n]["balanced_accuracy"]["value"] for n in names]
        ax.scatter(xs, train, marker="D", s=28, color="black", zorder=3, label="train")
        sh = r.shuffled
        if sh is not None:
            for k, n in enumerate(names):
                vals = sh["balanced_accuracy"][n]
                offs = [0.5 * (j / max(len(vals) - 1, 1) - 0.5) for j in range(len(vals))]
                ax.scatter(
                    [k + o for o in offs],
                    vals,
                    s=22 if len(vals) <= 5 else 10,
                    facecolor="white",
                    edgecolor="black",
                    zorder=4,
                    label="shuffled labels (per seed)" if k == 0 else None,
                )
        ax.axhline(0.5, color="dimgrey", ls="--", lw=1, label="chance (0.5)")
        ax.set_xticks(xs, labels=[_pair_tick(n) for n in names])
        ax.set_ylim(0, 1.12)
        ax.set_ylabel("balanced accuracy")
        ax.set_title(r.label + ("" if sh is not None else "\n(no shuffled-label baseline)"))
    _shared_legend(fig, axes)
    fig.suptitle("Held-out accuracy against train and against shuffled labels")
    return _png(fig)


def fig_scoring(runs: list[Run]) -> bytes:
    """Per model (a row): test balanced accuracy and neutral p(left side) under centred and under cosine scoring,
    each with its own layers and calibration chosen on val."""
    fig = _figure(11.0, 3.3 * len(runs) + 0.8)
    axes = fig.subplots(len(runs), 2, squeeze=False)
    for (ax_ba, ax_neutral), r in zip(axes, runs):
        names = r.names
        kinds = sorted(r.metrics["controls"]["scoring"].items())
        for k, (kind, entry) in enumerate(kinds):
            ms = [entry["per_pair"][n] for n in names]
            err = [[max(m["value"] - m["ci95"][0], 0) for m in ms], [max(m["ci95"][1] - m["value"], 0) for m in ms]]
            xs = [j - 0.2 + 0.4 * k for j in range(len(names))]
            colour = ("tab:blue", "tab:orange")[k % 2]
            ax_ba.bar(xs, [m["value"] for m in ms], 0.38, yerr=err, capsize=2, label=kind, color=colour)
            if "neutral_mean_p_left" in entry:
                ax_neutral.bar(xs, [100 * entry["neutral_mean_p_left"][n] for n in names], 0.38, color=colour)
        ax_ba.axhline(0.5, color="dimgrey", ls="--", lw=1, label="chance / no lean")
        ax_ba.set_ylim(0, 1.12)
        ax_ba.set_ylabel("balanced accuracy (test)")
        ax_ba.set_title(f"{r.label}\nheld-out accuracy (the run uses {r.metrics['probe']['score']})")
        ax_neutral.axhline(50, color="dimgrey", ls="--", lw=1)
        ax_neutral.set_ylim(0, 105)
        ax_neutral.set_ylabel("p(left side) on neutral texts, %")
        ax_neutral.set_title(f"{r.label}\nneutral texts")
        if r.neutral is None:
            ax_neutral.text(0.5, 0.5, "no neutral set in this run", transform=ax_neutral.transAxes, ha="center")
        for ax in (ax_ba, ax_neutral):
            ax.set_xticks(range(len(names)), labels=[_pair_tick(n) for n in names])
            ax.set_xlim(-0.6, len(names) - 0.4)
    _shared_legend(fig, [ax for row in axes for ax in row])
    fig.suptitle("Centred against cosine scoring (each with its own layers and calibration)")
    return _png(fig)


def fig_contrast(runs: list[Run]) -> bytes:
    """Per model (a panel): per pair, the probe and the lexical baseline on the test split and on the contrast
    split (bars with 95% intervals); dashed: chance. A bag of words falls below chance on contrast texts by design."""
    runs = [r for r in runs if r.metrics.get("controls", {}).get("contrast")]
    fig, axes = _grid(len(runs), 2, 5.6, 3.6)
    bars = (
        ("probe, test", "tab:blue", 1.0, lambda r, n: r.metrics["pairs_test"][n]["balanced_accuracy"]),
        (
            "probe, contrast",
            "tab:blue",
            0.45,
            lambda r, n: r.metrics["controls"]["contrast"].get(n, {}).get("balanced_accuracy"),
        ),
        (
            "lexical, test",
            "tab:orange",
            1.0,
            lambda r, n: r.metrics["controls"].get("lexical", {}).get(n, {}).get("balanced_accuracy"),
        ),
        (
            "lexical, contrast",
            "tab:orange",
            0.45,
            lambda r, n: r.metrics["controls"]["contrast"].get(n, {}).get("lexical", {}).get("balanced_accuracy"),
        ),
    )
    for ax, r in zip(axes, runs):
        names = r.names
        for b, (label, colour, alpha, get) in enumerate(bars):
            xs, vs, err = [], [], [[], []]
            for k, n in enumerate(names):
                m = get(r, n)
                if not m:
                    continue
                xs.append(k - 0.3 + 0.2 * b)
                vs.append(m["value"])
                err[0].append(max(m["value"] - m["ci95"][0], 0.0))
                err[1].append(max(m["ci95"][1] - m["value"], 0.0))
            if xs:
                ax.bar(xs, vs, 0.19, yerr=err, capsize=2, color=colour, alpha=alpha, label=label, edgecolor=colour)
        ax.axhline(0.5, color="dimgrey", ls="--", lw=1, label="chance (0.5)")
        ax.set_xticks(range(len(names)), labels=[_pair_tick(n) for n in names])
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_ylim(0, 1.12)
        ax.set_ylabel("balanced accuracy")
        aug = r.metrics.get("augment")
        ax.set_title(r.label + ("\n(fitted with contrast_train: --augment contrast)" if aug else ""))
    _shared_legend(fig, axes)
    fig.suptitle("Contrast texts (the words point to the other side) against the test split")
    return _png(fig)
