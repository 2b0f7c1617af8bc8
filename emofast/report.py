"""Reports of one or more run folders: a self-contained ``report.html``, ``report.md`` with its figures, and CSVs.

The original study reported a heatmap of emotion percentages per model, bars, profile curves and a top-3 table,
and found every model "polarised" toward the first-named (left) side of each of its pairs. Such a pattern can
come from the instrument (uncentred cosines, scoring the texts the directions were fitted on) rather than from
the models. These reports therefore show the same views, computed on held-out texts, next to the controls that
tell the two apart: the neutral set, the polarity swap, centred against cosine scoring, the train/test gap and
the shuffled-label baseline.

Every number is read from the runs' ``metrics.json`` (the combined ``profile.csv`` and ``pairs.csv`` are the runs'
own files, concatenated); nothing is recomputed from a model, and neither torch nor a model is loaded. The same
runs give byte-identical reports. matplotlib (a core dependency) is imported only when a report is written, and
draws with the Agg canvas on standalone figures: no pyplot, no display, and no change to the caller's matplotlib
backend or settings.

Example:
    >>> from pathlib import Path
    >>> from emofast.report import compare
    >>> compare([Path("runs/smollm2"), Path("runs/qwen")], Path("reports/all"))    # doctest: +SKIP
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .profile import profile_rows

__all__ = ["compare", "write_run_report"]

#: Pairs whose concepts are close enough that one direction may read the other's texts; the report states their
#: cross-reading explicitly when a run has both.
RELATED_PAIRS = (("fear_vs_confidence", "anxious_vs_relaxed"),)

_REQUIRED = (
    "probe",
    "pairs_test",
    "pairs_train",
    "calibration",
    "curves",
    "reliability_test",
    "cross_reading_test",
    "direction_cosines",
    "summary",
    "controls",
)
_NA = "n/a"
_FIG_DIR = "figures"


# --------------------------------------------------------------------------------------------------- loading


@dataclass
class _Run:
    """One run folder, as read from disk."""

    path: Path
    label: str
    metrics: dict
    profile_csv: list[dict]
    pairs_csv: list[dict]
    profile: list[dict] = field(init=False)

    def __post_init__(self):
        self.profile = profile_rows(self.metrics)

    @property
    def names(self) -> list[str]:
        return [f"{a}_vs_{b}" for a, b in self.metrics["probe"]["pairs"]]

    @property
    def sides(self) -> dict[str, tuple[str, str]]:
        return {f"{a}_vs_{b}": (a, b) for a, b in self.metrics["probe"]["pairs"]}

    @property
    def chosen(self) -> dict[str, list[int]]:
        return self.metrics["summary"]["chosen_layers"]

    @property
    def neutral(self) -> dict | None:
        return self.metrics.get("neutral")

    @property
    def shuffled(self) -> dict | None:
        return self.metrics["controls"].get("shuffled_labels")

    def profile_row(self, pair: str, side: str) -> dict | None:
        """The profile row of one side of a pair (None when the run lacks the pair)."""
        for row in self.profile:
            if row["pair"] == pair and row["side"] == side:
                return row
        return None


def _read_csv(path: Path) -> list[dict]:
    """The rows of one of a run's CSVs (an error naming the folder when it is missing or empty)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent}: incomplete run folder (no {path.name})")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _load_run(path: Path) -> _Run:
    """Read a run folder; a folder that is not one gives an error naming it."""
    path = Path(path)
    mfile = path / "metrics.json"
    if not mfile.is_file():
        raise FileNotFoundError(
            f"{path}: not an emofast run folder (no metrics.json); pass folders written by 'emofast run'"
        )
    try:
        metrics = json.loads(mfile.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{mfile}: not valid JSON ({exc})") from None
    missing = [k for k in _REQUIRED if k not in metrics]
    if missing:
        raise ValueError(f"{mfile}: lacks {', '.join(missing)} (not written by this version of emofast run?)")
    return _Run(
        path,
        str(metrics.get("model", path.name)),
        metrics,
        _read_csv(path / "profile.csv"),
        _read_csv(path / "pairs.csv"),
    )


def _load_runs(paths) -> list[_Run]:
    """Load the runs and give each a unique display label: the model, then the run folder where models repeat."""
    if not paths:
        raise ValueError("no run folders given")
    runs = [_load_run(p) for p in paths]
    for attempt in (lambda r, i: f"{r.label} [{r.path.name}]", lambda r, i: f"{r.label} #{i + 1}"):
        labels = [r.label for r in runs]
        if len(set(labels)) == len(labels):
            break
        for i, r in enumerate(runs):
            if labels.count(r.label) > 1:
                r.label = attempt(r, i)
    return runs


def _pair_order(runs: list[_Run]) -> list[str]:
    """Every pair of any run, in order of first appearance."""
    out = []
    for r in runs:
        out += [n for n in r.names if n not in out]
    return out


def _pair_sides(runs: list[_Run]) -> dict[str, tuple[str, str]]:
    """``{pair: (left, right)}`` over all runs."""
    out = {}
    for r in runs:
        out.update(r.sides)
    return out


# ------------------------------------------------------------------------------------------------ formatting


def _num(x) -> float:
    """A metric as a float, NaN for missing (None) values."""
    return math.nan if x is None else float(x)


def _f3(x) -> str:
    """A number with 3 decimals (n/a for a missing or non-finite one)."""
    return _NA if x is None or not math.isfinite(x) else f"{x:.3f}"


def _ci3(m: dict) -> str:
    """``{"value", "ci95"}`` as ``0.875 [0.688, 1.000]``."""
    return f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"


def _pct(v, lo, hi) -> str:
    """A percentage with its interval, ``46.6 [41.7, 50.3]`` (n/a for a missing value)."""
    if v is None:
        return _NA
    return f"{v:.1f} [{lo:.1f}, {hi:.1f}]"


def _pct_ci(m: dict) -> str:
    """A probability ``{"value", "ci95"}`` as a percentage with its interval."""
    return _pct(100 * m["value"], 100 * m["ci95"][0], 100 * m["ci95"][1])


def _layers(layers: list[int]) -> str:
    """Chosen layers as ``10-13`` (or ``10``)."""
    return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])


# ------------------------------------------------------------------------------------------------- document


@dataclass
class _Doc:
    """The report as a list of blocks, rendered to Markdown and to HTML from the same content."""

    title: str
    blocks: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    def h2(self, text: str, anchor: str) -> None:
        self.blocks.append(("h2", text, anchor))

    def h3(self, text: str) -> None:
        self.blocks.append(("h3", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", header, rows))

    def figure(self, name: str, png: bytes, caption: str) -> None:
        self.figures[name] = png
        self.blocks.append(("figure", name, caption))

    def markdown(self) -> str:
        """``report.md``: figures linked from ``figures/``."""
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if b[0] == "h2":
                out += [f"## {b[1]}", ""]
            elif b[0] == "h3":
                out += [f"### {b[1]}", ""]
            elif b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "table":
                cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
                out.append("| " + " | ".join(cell(h) for h in b[1]) + " |")
                out.append("|" + "---|" * len(b[1]))
                out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in b[2]]
                out.append("")
            else:
                alt = b[2].replace("[", "\\[").replace("]", "\\]")
                out += [f"![{alt}]({_FIG_DIR}/{b[1]})", "", f"*{b[2]}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        """``report.html``: self-contained (figures as data URIs, inline CSS, nothing fetched)."""
        e = html.escape
        toc = "".join(f'<li><a href="#{b[2]}">{e(b[1])}</a></li>' for b in self.blocks if b[0] == "h2")
        body = [f"<h1>{e(self.title)}</h1>", f"<nav><ul>{toc}</ul></nav>"]
        for b in self.blocks:
            if b[0] == "h2":
                body.append(f'<h2 id="{b[2]}">{e(b[1])}</h2>')
            elif b[0] == "h3":
                body.append(f"<h3>{e(b[1])}</h3>")
            elif b[0] == "p":
                body.append(f"<p>{e(b[1])}</p>")
            elif b[0] == "table":
                head = "".join(f"<th>{e(str(h))}</th>" for h in b[1])
                rows = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in b[2])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            else:
                data = base64.b64encode(self.figures[b[1]]).decode("ascii")
                body.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{e(b[2])}">'
                    f"<figcaption>{e(b[2])}</figcaption></figure>"
                )
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{e(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body)
            + "\n</body>\n</html>\n"
        )


_CSS = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1280px;margin:2em auto;"
    "padding:0 1em;color:#222;line-height:1.45}"
    "h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc;padding-bottom:.2em}h3{margin-top:1.4em}"
    "table{border-collapse:collapse;margin:.8em 0;font-size:.85em}"
    "th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}"
    "th{background:#f2f2f2}tbody tr:nth-child(even){background:#fafafa}"
    "figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}"
    "figcaption{font-size:.85em;color:#555;margin-top:.3em}nav ul{columns:2;font-size:.9em}"
)


# -------------------------------------------------------------------------------------------------- figures


@contextmanager
def _plotting():
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


def _fig_profile(runs: list[_Run], columns: list[tuple[str, str, str]]) -> bytes:
    """Models x side labels: held-out percentage (pct_test) with its 95% interval in each cell."""
    import numpy as np

    values = np.full((len(runs), len(columns)), np.nan)
    text = [[_NA] * len(columns) for _ in runs]
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


def _fig_grouped_bars(runs, pairs, get, *, title, ylabel, ylim, ref, ref_label) -> bytes:
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


def _fig_layers(run: _Run) -> bytes:
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
                label = f"chosen ({_layers(run.chosen[name])})" if k == 0 else None
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


def _fig_reliability(run: _Run) -> bytes:
    """Per pair: reliability on the test split before (sigmoid of the raw score) and after calibration."""
    names = run.names
    fig, axes = _grid(len(names), 3, 3.6, 3.5)
    for ax, name in zip(axes, names):
        ax.plot([0, 1], [0, 1], ":", color="dimgrey", lw=1, label="perfectly calibrated")
        cal = run.metrics["pairs_test"][name]["calibration"]
        for which, ece, colour in (
            ("before", cal["before"]["ece"], "tab:orange"),
            ("after", cal["calibrated"]["ece"], "tab:blue"),
        ):
            rel = run.metrics["reliability_test"][name][which]
            pts = [(m, f, n) for m, f, n in zip(rel["mean_p_left"], rel["frac_left"], rel["count"]) if n]
            xs, ys, ns = zip(*pts) if pts else ((), (), ())
            ax.plot(xs, ys, "-", color=colour, lw=1, label=f"{which} (ECE {ece:.3f})")
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


def _fig_relations(run: _Run) -> bytes:
    """Cross-reading AUROC matrix (direction x texts) and cosine similarity between the pairs' directions."""
    import numpy as np

    cr, dc = run.metrics["cross_reading_test"], run.metrics["direction_cosines"]
    auc = np.array([[_num(v) for v in row] for row in cr["auroc"]])
    cos = np.array([[_num(v) for v in row] for row in dc["cosine"]])
    n = max(len(cr["texts"]), len(dc["pairs"]))
    fig = _figure(2 * (1.15 * n + 2.6), 1.0 * n + 2.2)
    ax1, ax2 = fig.subplots(1, 2)
    _annotated_heatmap(
        fig,
        ax1,
        auc,
        [[_f3(v) if math.isfinite(v) else _NA for v in row] for row in auc],
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
        [[_f3(v) if math.isfinite(v) else _NA for v in row] for row in cos],
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


def _fig_accuracy_controls(runs: list[_Run]) -> bytes:
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
                offs = [0.12 * (j - (len(vals) - 1) / 2) for j in range(len(vals))]
                ax.scatter(
                    [k + o for o in offs],
                    vals,
                    s=22,
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


def _fig_scoring(runs: list[_Run]) -> bytes:
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


# ------------------------------------------------------------------------------------------------- sections


def _section_runs(doc: _Doc, runs: list[_Run]) -> None:
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
                p.get("method", _NA),
                p.get("score", _NA),
                f"{p.get('layer_policy', _NA)} (width {p.get('band_width', _NA)})",
                p.get("calibration_method", _NA),
                str(p.get("dtype", _NA)),
                str(p.get("position", _NA)),
                "on" if p.get("chat_template") else "off",
                ", ".join(map(str, n_test)) or _NA,
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
                _f3(s["mean_balanced_accuracy"]),
                _f3(s["min_balanced_accuracy"]),
                _f3(s["mean_auroc"]),
                f"{s['mean_train_test_gap']:+.3f}",
                _f3(r.shuffled["mean_balanced_accuracy"]) if r.shuffled is not None else _NA,
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


def _section_profile(doc: _Doc, runs: list[_Run], pairs: list[str]) -> None:
    """The heatmap of held-out percentages, the profile table and the top 3 labels per model."""
    sides = _pair_sides(runs)
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
        _fig_profile(runs, columns),
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
                    _pct(row["pct_test"], row["pct_test_lo"], row["pct_test_hi"]),
                    _pct(row["pct_own_side"], row["pct_own_side_lo"], row["pct_own_side_hi"]),
                    _pct(row.get("pct_neutral"), row.get("pct_neutral_lo"), row.get("pct_neutral_hi")),
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
        cells = [f"{t['label']} ({t['side']}) {_pct(t['pct_test'], t['pct_test_lo'], t['pct_test_hi'])}" for t in top]
        left_rows = [row for row in r.profile if row["side"] == "left"]
        left_top = sum(t["side"] == "left" for t in top)
        lean_left = sum(row["pct_test_lo"] > 50 for row in left_rows)
        lean_right = sum(row["pct_test_hi"] < 50 for row in left_rows)
        rows.append(
            [
                r.label,
                *cells,
                *[_NA] * (3 - len(cells)),
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


def _section_accuracy(doc: _Doc, runs: list[_Run], pairs: list[str]) -> None:
    """Balanced accuracy per pair and model (bars), and the per-pair test metrics."""
    doc.h2("Accuracy per pair", "accuracy")
    doc.p(
        "Balanced accuracy of the calibrated probability (p(left) > 0.5) on the held-out test split, with 95% "
        "stratified bootstrap intervals; 0.5 is chance. AUROC measures the ranking of the raw score, sign "
        "accuracy the raw score's sign before calibration."
    )

    def get(r, pair):
        m = r.metrics["pairs_test"].get(pair)
        return None if m is None else (m["balanced_accuracy"]["value"], *m["balanced_accuracy"]["ci95"])

    doc.figure(
        "balanced_accuracy.png",
        _fig_grouped_bars(
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
                    _layers(r.chosen[pair]),
                    _ci3(m["balanced_accuracy"]),
                    _ci3(m["auroc"]),
                    _ci3(m["sign_accuracy"]),
                    _pct_ci(m["mean_p_left_on_left"]),
                    _pct_ci(m["mean_p_right_on_right"]),
                    f"{m['n_left']}/{m['n_right']}",
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
        ],
        rows,
    )


def _section_layers(doc: _Doc, runs: list[_Run]) -> None:
    """Per-layer val and test curves of every model."""
    doc.h2("Layers", "layers")
    doc.p(
        "Per layer, the balanced accuracy of the score's sign and the separation (standardised difference of "
        "the left and right mean scores) on the validation split, which chose the layers (shaded), and on the "
        "held-out test split. A test curve that follows the val curve means the choice generalises."
    )
    for i, r in enumerate(runs):
        doc.figure(f"layers_{i + 1}.png", _fig_layers(r), f"{r.label}: per-layer val and test curves per pair.")


def _section_calibration(doc: _Doc, runs: list[_Run]) -> None:
    """Reliability diagrams before and after calibration, and the calibration metrics."""
    doc.h2("Calibration", "calibration")
    doc.p(
        "Reliability diagrams on the test split: per bin of predicted p(left), the share of texts that are "
        "left. Before: the sigmoid of the raw score; after: the calibration fitted on val. Points on the "
        "diagonal are calibrated probabilities."
    )
    for i, r in enumerate(runs):
        doc.figure(f"reliability_{i + 1}.png", _fig_reliability(r), f"{r.label}: reliability before and after.")
    rows = []
    for r in runs:
        for pair in r.names:
            fit = r.metrics["probe"]["calibration"][pair]
            val = r.metrics["calibration"][pair]["val"]
            test = r.metrics["pairs_test"][pair]["calibration"]
            method = fit["method"]
            rows.append(
                [
                    r.label,
                    pair,
                    f"{method} a={fit['a']:.4g} b={fit['b']:.4g}",
                    f"{_f3(val['before']['nll'])} -> {_f3(val[method]['nll'])}",
                    f"{_f3(test['before']['nll'])} -> {_f3(test['calibrated']['nll'])}",
                    f"{_f3(test['before']['brier'])} -> {_f3(test['calibrated']['brier'])}",
                    f"{_f3(test['before']['ece'])} -> {_f3(test['calibrated']['ece'])}",
                ]
            )
    doc.table(
        [
            "model",
            "pair",
            "fit (on val)",
            "val NLL before -> after",
            "test NLL before -> after",
            "test Brier before -> after",
            "test ECE before -> after",
        ],
        rows,
    )


def _cell(matrix: dict, key: str, rows: str, cols: str, row, col):
    """One entry of a labelled matrix of metrics.json (``{rows: [...], cols: [...], key: [[...]]}``)."""
    return matrix[key][matrix[rows].index(row)][matrix[cols].index(col)]


def _section_relations(doc: _Doc, runs: list[_Run]) -> None:
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
                rows.append([r.label, a, b, *map(_f3, cells)])
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
            _fig_relations(r),
            f"{r.label}: cross-reading AUROC (rows: direction, columns: texts) and direction cosines.",
        )
        doc.table(
            ["direction \\ texts", *cr["texts"]], [[d, *map(_f3, row)] for d, row in zip(cr["directions"], cr["auroc"])]
        )
        doc.table(["cosine", *dc["pairs"]], [[d, *map(_f3, row)] for d, row in zip(dc["pairs"], dc["cosine"])])


def _section_controls(doc: _Doc, runs: list[_Run], pairs: list[str]) -> None:
    """Neutral texts, polarity swap, centred against cosine scoring, train/test gap, shuffled labels."""
    doc.h2("Controls", "controls")
    doc.p(
        "These separate what the models do from what the instrument does. Neutral texts carry neither side "
        "of a pair; the polarity swap refits with left and right exchanged and must mirror every number; "
        "centred and cosine scoring are compared on the same directions; the train/test gap shows how much the "
        "numbers on the fitted texts flatter the probe; shuffled labels give the accuracy of chance."
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
            _fig_grouped_bars(
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
                    [r.label, pair, str(m["n"]), _pct_ci(m["mean_p_left"]), f"{100 * m['share_left']:.1f}", *alt]
                )
        doc.table(
            ["model", "pair", "texts", "p(left) % [95% CI]", "% read as left", *(f"p(left) % with {k}" for k in kinds)],
            rows,
        )
    missing = [r.label for r in runs if r.neutral is None]
    if missing:
        doc.p(f"Without a neutral set (run with neutral texts to get this control): {', '.join(missing)}.")

    doc.h3("Polarity swap")
    doc.p(
        "The run is redone with every pair's left and right exchanged (directions and labels mirrored, layers "
        "and calibration chosen again on val). Every number must mirror: the largest deviation should be 0 (up "
        "to rounding) and the same layers chosen. A deviation means the pipeline treats the first-named side "
        "differently from the second."
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
        _fig_scoring(runs),
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
                cells += [_ci3(sc[k]["per_pair"][pair]), _layers(sc[k]["chosen_layers"][pair])]
            rows.append([r.label, pair, r.metrics["probe"]["score"], *cells])
    kinds = sorted(runs[0].metrics["controls"]["scoring"])
    header = ["model", "pair", "used"]
    for k in kinds:
        header += [f"{k}: balanced accuracy", f"{k}: layers"]
    doc.table(header, rows)

    doc.h3("Train/test gap and the shuffled-label baseline")
    doc.p(
        "Train: the same probe on the texts its directions were fitted on, as the study scored them; the gap "
        "to test is how much that flatters it. Shuffled labels: probes fitted, selected and calibrated exactly "
        "like the real one but on training texts whose sides were shuffled; their held-out accuracy is the "
        "chance level of the whole pipeline (about 0.5). A real accuracy inside the shuffled range means the "
        "probe found nothing."
    )
    doc.figure(
        "accuracy_controls.png",
        _fig_accuracy_controls(runs),
        "Per model and pair: test balanced accuracy (bar, 95% CI), train accuracy (black diamond) and the "
        "shuffled-label baselines (grey dots, one per seed); dashed: chance.",
    )
    rows = []
    for r in runs:
        sh = r.shuffled
        for pair in r.names:
            test = r.metrics["pairs_test"][pair]["balanced_accuracy"]
            train = r.metrics["pairs_train"][pair]["balanced_accuracy"]["value"]
            shuffled = [_NA, _NA]
            if sh is not None:
                vals = sh["balanced_accuracy"][pair]
                shuffled = [", ".join(_f3(v) for v in vals), _f3(sum(vals) / len(vals))]
            rows.append([r.label, pair, _f3(train), _ci3(test), f"{train - test['value']:+.3f}", *shuffled])
    doc.table(
        [
            "model",
            "pair",
            "train balanced accuracy",
            "test balanced accuracy",
            "train - test",
            "shuffled labels (per seed)",
            "shuffled mean",
        ],
        rows,
    )
    missing = [r.label for r in runs if r.shuffled is None]
    if missing:
        doc.p(f"Without shuffled-label baselines (emofast run --shuffled N adds them): {', '.join(missing)}.")


def _build(runs: list[_Run], title: str) -> _Doc:
    """Every section of the report, figures drawn."""
    doc = _Doc(title)
    pairs = _pair_order(runs)
    with _plotting():
        _section_runs(doc, runs)
        _section_profile(doc, runs, pairs)
        _section_accuracy(doc, runs, pairs)
        _section_layers(doc, runs)
        _section_calibration(doc, runs)
        _section_relations(doc, runs)
        _section_controls(doc, runs, pairs)
    return doc


def _write_doc(doc: _Doc, out: Path) -> Path:
    """``report.html`` (self-contained), ``report.md`` and ``figures/*.png`` in ``out``; returns the HTML path."""
    (out / _FIG_DIR).mkdir(parents=True, exist_ok=True)
    for name, png in doc.figures.items():
        (out / _FIG_DIR / name).write_bytes(png)
    (out / "report.md").write_text(doc.markdown(), encoding="utf-8")
    path = out / "report.html"
    path.write_text(doc.html(), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------- CSVs


def _write_rows(path: Path, rows: list[dict]) -> None:
    """Rows with possibly different keys, as one CSV (columns in order of first appearance, blanks for missing)."""
    fields = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)


def _controls_rows(r: _Run) -> list[dict]:
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
            row[f"{kind}_layers"] = _layers(entry["chosen_layers"][pair])
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
        rows.append(row)
    return rows


def _write_csvs(runs: list[_Run], out: Path) -> None:
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


# ------------------------------------------------------------------------------------------------------ API


def compare(runs: list[Path], out: Path) -> Path:
    """Write the cross-model report of the given run folders into ``out``.

    Args:
        runs: run folders written by ``emofast run`` (1..N; pairs may differ between runs, and a run may lack
            the neutral set or the shuffled-label baselines).
        out: the report folder (created).

    Returns:
        ``out``, holding ``report.html`` (self-contained: figures embedded as PNG data URIs, inline CSS, no
        external resource), ``report.md`` with ``figures/*.png``, and ``profile.csv``, ``pairs.csv``,
        ``controls.csv``, ``cross_reading.csv``, ``direction_cosines.csv`` (a ``run`` column names the model).

    Raises:
        FileNotFoundError: a folder is not a run folder (names the folder).
        ValueError: a run's metrics are unreadable or incomplete, or ``out`` is a run folder.
        ModuleNotFoundError: matplotlib is not installed.
    """
    loaded = _load_runs([Path(r) for r in runs])
    out = Path(out)
    if (out / "metrics.json").exists():
        raise ValueError(f"{out}: is a run folder (its CSVs would be overwritten); pick another --out")
    title = "emofast report: " + (loaded[0].label if len(loaded) == 1 else f"{len(loaded)} models compared")
    doc = _build(loaded, title)
    _write_doc(doc, out)
    _write_csvs(loaded, out)
    return out


def write_run_report(run_dir: Path) -> Path:
    """Write the single-model report into a run folder: ``report.html``, ``report.md`` and ``figures/``.

    The run's own CSVs are left as they are (the cross-model CSVs of :func:`compare` are not written).

    Returns:
        The path of ``report.html``.
    """
    run_dir = Path(run_dir)
    (run,) = _load_runs([run_dir])
    return _write_doc(_build([run], f"emofast run report: {run.label}"), run_dir)
