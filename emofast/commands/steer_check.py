"""``emofast steer-check``: does pushing the residual stream along a pair's direction change what the model writes,
as judged by something that knows nothing of the model, at a strength that does not break the text, and how does
that compare with simply asking for the tone?

1. **Strength under a damage budget** (default): on calibration prompts (the last bundled ones, disjoint from the
   evaluation prompts), for each pair and direction, the largest |alpha| whose perplexity under the unsteered model
   stays within ``max_ppl_ratio`` of the unsteered texts' (and, if given, whose mean KL from the unsteered
   next-token distributions stays within ``max_kl``) (:func:`emofast.generation.calibrate.find_alpha_range`),
   judged on a one-sided ``budget_confidence`` upper bound over the calibration prompts (a margin against their
   noise; 0: the point estimate). Then ``grid`` evenly spaced alphas on each side inside that range (and 0) are
   evaluated. Fixed ``alphas`` skip the search.
2. **Every condition of a prompt in one batch** (per-row steering, :func:`emofast.generation.generate_rows`): the
   unsteered row, each pair's alphas, the same alphas along a random direction of the same layers and scale (the
   control), and the prompting baseline (the prompt with "Answer in a <left/right> tone.").
3. **Judges** (:mod:`emofast.generation.judges`): VADER valence and Empath emotion categories (optional package;
   skipped with a note when missing), each with its expected sign per pair; also the unsteered probe's reading of
   the text and the damage (perplexity ratio and KL against the unsteered model, measured on these very texts).
4. **Statistics** (:mod:`emofast.generation.effects`): per condition the mean and a 95% bootstrap interval over
   prompts; Spearman's rho between alpha and each judge, for the pair's direction and the random one; steering's
   effect (the ends of the evaluated range) as a fraction of prompting's.

Writes ``DIR/steer.jsonl`` (one row per generated text), ``DIR/calibration.json`` (the damage curves),
``DIR/summary.csv`` (per arm, direction and alpha), ``DIR/spearman.csv``, ``DIR/effects.csv`` (steering against
prompting), ``DIR/summary.json`` (all of it, the settings, the verdicts, the time) and ``DIR/dose_response.png`` (with
``--layers sweep`` also ``DIR/layers.png``: rho and the chosen strength as curves over layers).
The statistics and the verdicts are in :mod:`emofast.generation.verdict`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..fileio import write_json
from ..generation.verdict import summarise, write_tables

__all__ = ["steer_check", "resolve_pairs", "FORMAT"]

FORMAT = 2  # summary.json layout (1: one pair, fixed alphas)


def resolve_pairs(probe, pair) -> list[str]:
    """``None``/``"all"``: every pair of the probe; a name or a list of names: those (checked)."""
    if pair in (None, "all"):
        return list(probe.names)
    names = [pair] if isinstance(pair, str) else list(pair)
    bad = [n for n in names if n not in probe.names]
    if bad:
        raise ValueError(f"unknown pair(s) {bad}; this probe has {probe.names}")
    return names


def _grid(a_plus: float, a_minus: float, points: int) -> list[float]:
    """``points`` evenly spaced alphas on each steerable side, and 0."""
    pos = [a_plus * k / points for k in range(1, points + 1)] if a_plus > 0 else []
    neg = [-a_minus * k / points for k in range(1, points + 1)] if a_minus > 0 else []
    return sorted({round(a, 4) for a in [*neg, 0.0, *pos]})


def _sweep_layers(spec, probe) -> list[int]:
    if spec is None:
        top = max(probe.layers)
        return list(range(1, top, max(1, top // 10)))
    try:
        parts = [int(x) for x in str(spec).split(":")]
        lo, hi, step = (parts + [1])[:3] if len(parts) >= 2 else (parts[0], parts[0] + 1, 1)
    except ValueError:
        raise ValueError(f"--sweep-layers {spec!r}: expected FIRST:LAST[:STEP], e.g. 4:24:2") from None
    layers = list(range(lo, hi + 1, step))
    if not layers or min(layers) < 0 or max(layers) > max(probe.layers):
        raise ValueError(f"--sweep-layers {spec!r}: layers must lie in 0..{max(probe.layers)}")
    return layers


def steer_check(
    model,
    tok,
    probe,
    pair,
    out,
    *,
    alphas=None,
    max_ppl_ratio: float = 1.5,
    max_kl: float | None = None,
    grid: int = 2,
    n_prompts: int = 20,
    n_calibration: int = 12,
    budget_confidence: float = 0.9,
    judges=("vader", "empath"),
    prompting: bool = True,
    layers: str = "probe",
    sweep_layers=None,
    max_new_tokens: int = 24,
    do_sample: bool = True,
    seed: int = 0,
    batch_size: int | None = None,
    n_boot: int = 1000,
    data=None,
    kind: str = "mean-diff",
    probe_reading: bool = True,
    vectors_cache=None,
    progress: bool = True,
) -> dict:
    """Run the causal check for some or all pairs of a fitted probe; returns the ``summary.json`` content.

    Args:
        pair: a pair name, a list of them, or ``None``/``"all"`` (every pair of the probe).
        alphas: fixed alphas (no calibration); default None: chosen under the damage budget.
        max_ppl_ratio, max_kl: the damage budget (KL: reported always, a budget only when given).
        budget_confidence: calibration checks the budget on this one-sided upper bound of the perplexity ratio
            (and KL), bootstrapped over the calibration prompts; 0: on the point estimates.
        grid: evaluated alphas per side inside the chosen range (and 0).
        n_prompts, n_calibration: evaluation prompts (the first bundled ones) and calibration prompts (the last).
        judges: judge names (:func:`emofast.generation.judges.judge_names`); a missing optional one is skipped
            with a note in the result.
        prompting: also generate with a tone instruction per side (the prompting baseline).
        layers: ``"probe"`` (each pair's chosen band) or ``"sweep"`` (each single layer of ``sweep_layers``,
            ``"FIRST:LAST[:STEP]"``, each with its own strength under the same budget).
        vectors_cache: a folder keeping the steering vectors once measured (the CLI uses the run folder).

    Example:
        >>> steer_check(model, tok, load_probe(run), "all", run / "steer-check")  # doctest: +SKIP
    """
    from ..data.prompts import calibration_prompts, instructed, steer_prompts
    from ..generation.calibrate import find_alpha_range
    from ..generation.damage import generate_rows
    from ..generation.judges import load_judges
    from ..generation.steer import random_vectors, steering_vectors

    names = resolve_pairs(probe, pair)
    if max_kl is not None and getattr(model, "emofast_backend", None) is not None:
        raise ValueError(
            "max_kl: the vLLM backend does not return next-token distributions, so KL cannot be a budget there "
            "(it is reported as NaN); use max_ppl_ratio, or the Hugging Face backend"
        )
    if layers not in ("probe", "sweep"):
        raise ValueError(f"layers={layers!r}: expected 'probe' or 'sweep'")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    say = (lambda m: print(f"  {m} ({time.perf_counter() - t0:.0f} s)", flush=True)) if progress else None
    judge_list, skipped = load_judges(judges)
    if not judge_list:
        raise ValueError(f"no judge can run: {skipped}")
    for name, why in skipped.items():
        if say:
            say(f"judge {name} skipped: {why}")
    prompts = steer_prompts(n_prompts)
    cal = calibration_prompts(n_calibration, n_eval=n_prompts) if alphas is None else []
    pids, ptexts = [i for i, _ in prompts], [t for _, t in prompts]
    ex = probe.extraction()
    chat = getattr(tok, "chat_template", None) is not None and ex.get("chat_template", True)
    gen = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "seed": seed,
        "batch_size": batch_size or 64,
        "system_prompt": ex.get("system_prompt") if chat else None,
        "chat_template": chat,
    }
    # arms: what is steered (a pair's band, or one layer of it); each with the real vectors and the control
    sweep = _sweep_layers(sweep_layers, probe) if layers == "sweep" else None
    arms, controls, pair_of = {}, {}, {}
    for name in names:
        vecs = steering_vectors(
            model, tok, probe, data, pairs=[name], kind=kind, batch_size=batch_size, layers=sweep, cache=vectors_cache
        )
        rand = random_vectors(vecs, seed=seed)
        if sweep is None:
            arms[name], controls[name], pair_of[name] = vecs, rand, name
        else:
            for layer in vecs[name]:
                arm = f"{name}@{layer}"
                arms[arm] = {name: {layer: vecs[name][layer]}}
                controls[arm] = {name: {layer: rand[name][layer]}}
                pair_of[arm] = name
    if say:
        say(f"{len(arms)} arm(s): {', '.join(arms)}")
    # 1. strength under the damage budget
    calibration = None
    if alphas is None:
        calibration = find_alpha_range(
            model,
            tok,
            [t for _, t in cal],
            {arm: (pair_of[arm], arms[arm]) for arm in arms},
            max_ppl_ratio=max_ppl_ratio,
            max_kl=max_kl,
            confidence=budget_confidence,
            progress=say,
            **gen,
        )
        calibration["prompt_ids"] = [i for i, _ in cal]
        write_json(out / "calibration.json", calibration)
        grids = {arm: _grid(calibration[arm]["+"]["alpha"], calibration[arm]["-"]["alpha"], grid) for arm in arms}
    else:
        fixed = sorted({float(a) for a in alphas} | {0.0})
        grids = {arm: fixed for arm in arms}
    # 2. every condition of a prompt in the same batch
    conds = [("none", None, 0.0, None)]  # (direction, arm, alpha, instructed side)
    for arm in arms:
        conds += [(d, arm, a, None) for d in ("probe", "random") for a in grids[arm] if a != 0.0]
    if prompting and sweep is None:
        conds += [("prompt", arm, 0.0, side) for arm in arms for side in ("left", "right")]
    row_prompts, settings, tables, meta = [], [], [], []
    for pid, text in zip(pids, ptexts):
        for direction, arm, alpha, side in conds:
            pair_name = pair_of.get(arm)
            if direction == "prompt":
                label = probe.pairs[probe.names.index(pair_name)][0 if side == "left" else 1]
                row_prompts.append(instructed(text, label))
            else:
                row_prompts.append(text)
            settings.append({pair_name: alpha} if direction in ("probe", "random") else {})
            tables.append(controls[arm] if direction == "random" else arms.get(arm, {}))
            meta.append({"prompt_id": pid, "direction": direction, "arm": arm, "alpha": alpha, "instructed": side})
    if say:
        say(f"evaluation: {len(row_prompts)} rows ({len(conds)} conditions x {len(pids)} prompts)")
    t_gen = time.perf_counter()
    res = generate_rows(model, tok, row_prompts, settings, tables, **gen)
    t_gen = time.perf_counter() - t_gen
    if say:
        say(f"generated {len(row_prompts)} rows in {t_gen:.0f} s")
    # 3. judges (each row judged for its arm's pair; the unsteered row for every pair)
    rows = []
    readings = _probe_readings(model, tok, probe, res["texts"], batch_size) if probe_reading else None
    for i, m in enumerate(meta):
        for arm in [m["arm"]] if m["arm"] is not None else list(arms):
            rows.append({**m, "arm": arm, "pair": pair_of[arm], "row": i})
    for j in judge_list:
        for arm in arms:
            p = probe.names.index(pair_of[arm])
            left, right = probe.pairs[p]
            mine = [r for r in rows if r["arm"] == arm]
            scores = j.score([res["texts"][r["row"]] for r in mine], left, right)
            for r, s in zip(mine, scores):
                r[j.name] = float(s)
    for r in rows:
        i = r.pop("row")
        p = probe.names.index(r["pair"])
        r.update(
            {
                "text": res["texts"][i],
                "n_tokens": int(res["n_tokens"][i]),
                "nll": float(res["nll"][i]),
                "kl": float(res["kl"][i]),
                "probe_p_left": float(readings[i, p]) if readings is not None else float("nan"),
                "empty": float(not res["texts"][i].strip()),
            }
        )
    with open(out / "steer.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    # 4. statistics and verdicts
    judges_meta = {}
    for j in judge_list:
        judges_meta[j.name] = {arm: j.expected_sign(*probe.pairs[probe.names.index(pair_of[arm])]) for arm in arms}
    result = summarise(
        rows,
        arms=list(arms),
        pair_of=pair_of,
        grids=grids,
        judges=judges_meta,
        calibration=calibration,
        max_ppl_ratio=max_ppl_ratio,
        max_kl=max_kl,
        n_boot=n_boot,
        seed=seed,
    )
    result.update(
        {
            "format": FORMAT,
            "pairs": names,
            "arms": {arm: {"pair": pair_of[arm], "layers": sorted(next(iter(arms[arm].values())))} for arm in arms},
            "layers": layers,
            "alphas": "calibrated" if alphas is None else grids[next(iter(arms))],
            "n_prompts": len(pids),
            "prompt_ids": pids,
            "calibration_prompt_ids": [i for i, _ in cal],
            "generation": gen,
            "vector": kind,
            "sigma": {arm: {str(k): s for k, (_, s) in next(iter(arms[arm].values())).items()} for arm in arms},
            "judges_skipped": skipped,
            "rows_generated": len(row_prompts),
            "seconds_generation": round(t_gen, 1),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    )
    write_tables(out, result)
    write_json(out / "summary.json", result)
    from ..report.steering import fig_layer_sweep, fig_steer_check

    (out / "dose_response.png").write_bytes(fig_steer_check(result))
    if sweep is not None:
        (out / "layers.png").write_bytes(fig_layer_sweep(result))
    return result


def _probe_readings(model, tok, probe, texts, batch_size) -> np.ndarray:
    """``[N, n_pairs]`` the unsteered probe's p(left side) of each text (NaN for an empty one)."""
    out = np.full((len(texts), len(probe.names)), np.nan)
    ok = [i for i, t in enumerate(texts) if t.strip()]
    uniq = list(dict.fromkeys(texts[i] for i in ok))
    if not uniq:
        return out
    from ..probe.paired import side_columns

    cols = probe.score(model, tok, uniq, batch_size=batch_size)
    sides = side_columns(probe.pairs)
    at = {t: k for k, t in enumerate(uniq)}
    for p, name in enumerate(probe.names):
        col = np.asarray(cols[sides[name][0]], dtype=float)
        for i in ok:
            out[i, p] = col[at[texts[i]]]
    return out
