"""``emofast trace | generate | steer-check``: the generation-time commands (parsers and handlers; ``cli`` wires
them in)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_parsers", "HANDLERS", "parse_steer"]


def parse_steer(specs) -> dict:
    """``["sad_vs_happy=+4", ...]`` -> ``{"sad_vs_happy": 4.0}``."""
    out = {}
    for spec in specs or []:
        name, sep, value = spec.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--steer {spec!r}: expected PAIR=ALPHA, e.g. sad_vs_happy=+4") from None
    return out


def add_parsers(sub, add_model_args) -> None:
    """Add the three subcommands to the CLI's subparsers."""
    for name, helptext in (
        ("trace", "read a probe at every token while the model writes (table, plot, coloured HTML)"),
        ("generate", "generate text, optionally steered along a probe's directions"),
    ):
        p = sub.add_parser(name, help=helptext)
        add_model_args(p, default_model=None)
        p.add_argument("--probe", required=True, help="run folder written by 'emofast run'")
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--prompt", action="append", help="a prompt (repeatable)")
        src.add_argument("--input", help="prompts file (.jsonl with id/text, .txt, .csv, .parquet)")
        p.add_argument("--max-new-tokens", type=int, default=64)
        p.add_argument("--sample", action="store_true", help="sample (default: greedy)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--steer", action="append", default=None, help="PAIR=ALPHA, e.g. sad_vs_happy=+4 (repeatable)")
        p.add_argument("--where", default="generated", choices=["generated", "all"], help="which positions to steer")
        p.add_argument("--vector", default="mean-diff", choices=["mean-diff", "probe"], help="steering vector")
        if name == "trace":
            p.add_argument("--out", required=True, help="trace table: .parquet or .csv")
            p.add_argument("--plot", default=None, help="PNG of the readings over tokens (first prompt)")
            p.add_argument("--html", default=None, help="page with the text coloured by the leading reading")
            p.add_argument("--no-prompt", action="store_true", help="only the generated tokens")
            p.add_argument(
                "--chunk-size",
                type=int,
                default=256,
                help="with --input: prompts per shard and checkpoint (resumable; one vLLM call each)",
            )
    c = sub.add_parser(
        "steer-check",
        help="causal check: steer each pair within a damage budget; do outside judges move, and how far does asking?",
    )
    add_model_args(c, default_model=None)
    c.add_argument("--probe", required=True, help="run folder written by 'emofast run'")
    c.add_argument("--pair", default="all", help="LEFT_vs_RIGHT, comma-separated names, or 'all' (default)")
    c.add_argument(
        "--alphas", default=None, help="fixed comma-separated alphas (default: chosen under the damage budget)"
    )
    c.add_argument(
        "--max-ppl-ratio",
        type=float,
        default=1.5,
        help="budget: perplexity of steered texts under the unsteered model / that of unsteered texts (1.5)",
    )
    c.add_argument(
        "--max-kl", type=float, default=None, help="budget on the mean KL per token (default: reported only)"
    )
    c.add_argument("--grid", type=int, default=2, help="evaluated alphas per side inside the chosen range (2)")
    c.add_argument("--prompts", type=int, default=20, help="bundled neutral evaluation prompts (the first N; 20)")
    c.add_argument("--calibration-prompts", type=int, default=12, help="calibration prompts (the last N bundled; 12)")
    c.add_argument(
        "--budget-confidence",
        type=_confidence,
        default=0.9,
        help="check the budget on this one-sided upper bound over calibration prompts (0.9; 0 or 'point': estimate)",
    )
    c.add_argument("--judges", default="vader,empath", help="comma-separated judges (empath: optional package)")
    c.add_argument("--no-prompting", action="store_true", help="skip the prompting baseline")
    c.add_argument("--no-probe-reading", action="store_true", help="skip the probe's reading of the texts")
    c.add_argument("--layers", default="probe", choices=["probe", "sweep"], help="the chosen band, or each layer")
    c.add_argument("--sweep-layers", default=None, help="with --layers sweep: FIRST:LAST[:STEP] (default: ~10 layers)")
    c.add_argument("--max-new-tokens", type=int, default=24)
    c.add_argument("--greedy", action="store_true", help="greedy decoding (default: sampling with fixed seeds)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--n-boot", type=int, default=1000)
    c.add_argument(
        "--vector",
        default="mean-diff",
        choices=["mean-diff", "probe"],
        help="steering vector: the class-mean difference (default) or the probe's reading direction",
    )
    c.add_argument(
        "--out", default=None, help="folder (default RUN/steer-check[-<pair>]; the run report gains a section)"
    )


def _confidence(text: str) -> float:
    """``--budget-confidence``: a level in [0, 1), or ``point`` (= 0, the point estimate)."""
    if text.strip().lower() == "point":
        return 0.0
    try:
        level = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a level such as 0.9, or 'point'") from None
    if not 0 <= level < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a level in [0, 1), or 'point'")
    return level


def _prompts(args) -> tuple[list[str], list[str]]:
    if args.prompt:
        return [str(i) for i in range(len(args.prompt))], list(args.prompt)
    from ..data.textio import iter_records

    ids, texts = [], []
    for batch in iter_records(args.input):
        for rec in batch:
            if getattr(rec, "text", None) is None:
                continue
            ids.append(str(rec.id))
            texts.append(rec.text)
    if not texts:
        raise ValueError(f"{args.input}: no prompts found")
    return ids, texts


def _model_and_probe(args, load):
    from ..probe.paired import load_probe

    probe = load_probe(args.probe)
    name = args.model or probe.meta.get("model_load") or probe.meta["model"]
    model, tok = load(args, name)
    return model, tok, probe


def cmd_trace(args, load) -> int:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from ..generation.steer import Steering
    from ..generation.trace import trace
    from ..report.steering import fig_trace, trace_html

    model, tok, probe = _model_and_probe(args, load)
    alphas = parse_steer(args.steer)
    out = Path(args.out)
    if out.suffix not in (".parquet", ".csv"):
        raise ValueError(f"--out {out}: expected a .parquet or .csv file")
    if args.input:
        return _trace_file(args, model, tok, probe, alphas, out)
    ids, texts = _prompts(args)
    kw = {"max_new_tokens": args.max_new_tokens, "do_sample": args.sample, "seed": args.seed, "ids": ids}
    if alphas:
        from ..generation.trace import token_reference

        kw["reference"] = token_reference(model, tok, probe)  # the unsteered model's reference, measured first
        with Steering(model, probe, alphas, where=args.where, kind=args.vector, tok=tok):
            table = trace(model, tok, texts, probe, include_prompt=not args.no_prompt, **kw)
    else:
        table = trace(model, tok, texts, probe, include_prompt=not args.no_prompt, **kw)
    out.parent.mkdir(parents=True, exist_ok=True)
    (pq.write_table if out.suffix == ".parquet" else pacsv.write_csv)(table, str(out))
    rows = table.to_pylist()
    if args.plot:
        Path(args.plot).write_bytes(fig_trace(rows, ids[0]))
    if args.html:
        Path(args.html).write_text(trace_html(rows), encoding="utf-8")
    for i, t in zip(ids, json.loads(table.schema.metadata[b"generated_texts"])):
        print(f"[{i}] {t}")
    print(f"wrote {out} ({table.num_rows} tokens)")
    return 0


def _trace_file(args, model, tok, probe, alphas, out: Path) -> int:
    """``--input``: stream the prompts through :func:`~emofast.commands.trace_corpus.trace_corpus` (shards,
    resumable); the plot and page show the first prompt."""
    import pyarrow.parquet as pq

    from ..report.steering import fig_trace, trace_html
    from .trace_corpus import trace_corpus

    res = trace_corpus(
        model,
        tok,
        probe,
        args.input,
        out,
        chunk_size=args.chunk_size,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        seed=args.seed,
        include_prompt=not args.no_prompt,
        steer=alphas or None,
        where=args.where,
        kind=args.vector,
        progress=not args.no_progress,
    )
    if args.plot or args.html:
        first = out.with_name(out.name + ".parts") / "part-000000.parquet"
        rows = pq.read_table(first).to_pylist() if first.is_file() else []
        if rows and args.plot:
            Path(args.plot).write_bytes(fig_trace(rows, rows[0]["prompt_id"]))
        if rows and args.html:
            first_id = rows[0]["prompt_id"]
            Path(args.html).write_text(trace_html([r for r in rows if r["prompt_id"] == first_id]), encoding="utf-8")
    print(res.line())
    return 0


def cmd_generate(args, load) -> int:
    from ..generation.steer import steer

    model, tok, probe = _model_and_probe(args, load)
    ids, texts = _prompts(args)
    outs = steer(
        model,
        tok,
        texts,
        probe,
        parse_steer(args.steer),
        where=args.where,
        kind=args.vector,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        seed=args.seed,
    )
    for i, t in zip(ids, outs):
        print(f"[{i}] {t}")
    return 0


def cmd_steer_check(args, load) -> int:
    from .steer_check import resolve_pairs, steer_check

    model, tok, probe = _model_and_probe(args, load)
    alphas = None
    if args.alphas is not None:
        try:
            alphas = [float(a) for a in args.alphas.split(",")]
        except ValueError:
            raise ValueError(f"--alphas {args.alphas!r}: expected comma-separated numbers, e.g. -4,0,4") from None
    pairs = resolve_pairs(probe, None if args.pair == "all" else args.pair.split(","))
    suffix = "" if args.pair == "all" else "-" + "-".join(pairs)
    if args.layers == "sweep":
        suffix += "-sweep"
    out = Path(args.out) if args.out else Path(args.probe) / f"steer-check{suffix}"
    res = steer_check(
        model,
        tok,
        probe,
        pairs,
        out,
        alphas=alphas,
        max_ppl_ratio=args.max_ppl_ratio,
        max_kl=args.max_kl,
        grid=args.grid,
        n_prompts=args.prompts,
        n_calibration=args.calibration_prompts,
        budget_confidence=args.budget_confidence,
        judges=[j.strip() for j in args.judges.split(",") if j.strip()],
        prompting=not args.no_prompting,
        layers=args.layers,
        sweep_layers=args.sweep_layers,
        max_new_tokens=args.max_new_tokens,
        do_sample=not args.greedy,
        seed=args.seed,
        batch_size=args.batch_size,
        n_boot=args.n_boot,
        kind=args.vector,
        probe_reading=not args.no_probe_reading,
        vectors_cache=Path(args.probe),
        progress=not args.no_progress,
    )
    eff = {(e["arm"], e["judge"]): e for e in res["effects"]}
    for arm, v in res["verdict"].items():
        lo, hi = v["alpha_range"]
        state = "" if v["steerable_within_budget"] is not False else "  NOT STEERABLE WITHIN BUDGET"
        print(f"{arm}: alphas {lo:+.3g}..{hi:+.3g}, max ppl ratio {v['max_ppl_ratio_evaluated']:.2f}{state}")
        for j, jv in v["judges"].items():
            e = eff.get((arm, j))
            frac = f", steering/prompting {e['fraction']:.2f}" if e else ""
            print(
                f"  {j:>7}: rho {jv['rho']:+.3f} [{jv['lo']:+.3f}, {jv['hi']:+.3f}] (expected {jv['expected_sign']}, "
                f"{'met' if jv['meets'] else 'not met'}); random {jv['random_rho']:+.3f} "
                f"[{jv['random_lo']:+.3f}, {jv['random_hi']:+.3f}]{frac}"
            )
        print(f"  => {v['verdict_text']}")
    for name, why in res["judges_skipped"].items():
        print(f"judge {name} skipped: {why}")
    print(f"{res['seconds']} s; wrote {out}")
    if (Path(args.probe) / "metrics.json").exists() and out.parent.resolve() == Path(args.probe).resolve():
        from ..report import write_run_report

        write_run_report(Path(args.probe))
    return 0


HANDLERS = {"trace": cmd_trace, "generate": cmd_generate, "steer-check": cmd_steer_check}
