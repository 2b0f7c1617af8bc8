"""Command line: ``emofast run | score | extract | compare | info`` (a thin layer over the Python API)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

__all__ = ["main"]


def _layers(spec: str | None):
    """``"0,5,10"``, ``"10-14"``, ``"-1"`` -> list of ints (None for all)."""
    if spec in (None, "", "all"):
        return None
    out = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", part)
        if m:
            out.extend(range(int(m.group(1)), int(m.group(2)) + 1))
        else:
            try:
                out.append(int(part))
            except ValueError:
                raise ValueError(f"--layers {spec!r}: expected e.g. 0,5,10 or 10-14 or -1") from None
    return out


def _position(spec: str):
    return int(spec) if spec.lstrip("-").isdigit() else spec


def _add_model_args(p, default_model: str | None = "smollm2"):
    p.add_argument(
        "--model", default=default_model, help="hub id, local folder, .gguf file, or 'smollm2' (the embedded default)"
    )
    p.add_argument("--backend", default="hf", choices=["hf", "vllm"], help="transformers (default) or vLLM")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM backend: GPUs per model")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16/fp16 on GPU), float32, bfloat16, float16")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--device-map", default=None, help="e.g. 'auto' to spread a big model over several GPUs")
    p.add_argument("--tp-plan", default=None, help="'auto' for tensor parallelism under torchrun (transformers)")
    p.add_argument("--batch-size", type=int, default=None, help="texts per batch (default 16 on CPU, 32 on GPU)")
    p.add_argument("--max-tokens", type=int, default=None, help="token budget per batch (texts x longest)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_extraction_args(p, position="last"):
    p.add_argument(
        "--position",
        default=position,
        help=f"last, mean, last-K (mean over the last K tokens) or a token index (negative from the end); {position}",
    )
    p.add_argument("--no-chat-template", action="store_true", help="feed plain texts, not chat-templated prompts")
    p.add_argument(
        "--system-prompt",
        default=None,
        help="system turn of the chat template (default 'You are a helpful assistant.'; '' for none)",
    )


def _parser() -> argparse.ArgumentParser:
    from .probe.layers import POLICIES
    from .probe.paired import DEFAULT_METHOD, DEFAULT_POLICY, DEFAULT_POSITION, DEFAULT_WIDTH, SCORES

    ap = argparse.ArgumentParser(prog="emofast", description="Fast paired concept probing of language models.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="fit a probe on paired texts, evaluate it on held-out texts, write a run folder")
    _add_model_args(r)
    _add_extraction_args(r, DEFAULT_POSITION)
    r.add_argument("--pairs", default=None, help="dataset folder (default: the bundled emotion pairs)")
    r.add_argument("--pair", action="append", default=None, help="a pair to use, LEFT_vs_RIGHT (repeatable)")
    r.add_argument("--config", default=None, help="JSON/TOML file with root, pairs, neutral")
    r.add_argument("--neutral", default="auto", help="neutral JSONL for controls ('none' to skip)")
    r.add_argument("--out", default=None, help="run folder (default runs/<model>)")
    r.add_argument("--method", default=DEFAULT_METHOD, choices=["mean-diff", "lda", "logreg"])
    r.add_argument("--policy", default=DEFAULT_POLICY, choices=list(POLICIES))
    r.add_argument("--width", type=int, default=DEFAULT_WIDTH, help="band width")
    r.add_argument("--score", default="centered", choices=list(SCORES))
    r.add_argument("--calibration", default="platt", choices=["platt", "temperature"])
    r.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument(
        "--shuffled", type=int, default=20, help="shuffled-label baselines (chance level, a distribution); 0 for none"
    )
    r.add_argument(
        "--refits",
        type=int,
        default=20,
        help="refit control: probe and lexical baseline refitted on N bootstrap resamples of train; 0 for none",
    )
    r.add_argument(
        "--random-init-seeds",
        type=int,
        default=1,
        help="random-init control: this many freshly initialised models (seeds SEED, SEED+1, ...), their spread",
    )
    r.add_argument(
        "--n-perm", type=int, default=10_000, help="label permutations of each pair's permutation test (0: none)"
    )
    r.add_argument(
        "--val-use",
        choices=("halves", "shared"),
        default="halves",
        help="val split: layers on one half, calibration on the other (halves), or both on all of it (shared)",
    )
    r.add_argument(
        "--controls",
        default="auto",
        help="lexical,shuffled,random-init, 'none', or 'auto' (all three; random-init only up to ~1B parameters)",
    )
    r.add_argument("--control", action="append", default=None, help="add one control, e.g. --control random-init")
    r.add_argument(
        "--augment",
        choices=("contrast",),
        default=None,
        help="contrast: fit probe and lexical baseline on train plus each pair's contrast_train split (both are "
        "still read on the contrast split and test)",
    )
    r.add_argument("--no-report", action="store_true", help="skip report.html")
    r.add_argument(
        "--space",
        nargs="?",
        const="bundled",
        default=None,
        help="fit an emotion space instead of pairs: an emotion folder, or nothing for the bundled emotions",
    )
    r.add_argument(
        "--reference",
        choices=["pooled", "neutral"],
        default="pooled",
        help="emotion space: fit the neutral zero on both neutral sets' train texts (pooled) or the first only",
    )

    s = sub.add_parser("score", help="score texts (a file or a folder of shards) against a fitted probe")
    _add_model_args(s, default_model=None)
    s.add_argument("--probe", required=True, help="run folder written by 'emofast run'")
    s.add_argument("--input", required=True, help=".jsonl, .txt, .csv, .parquet, or a folder of them")
    s.add_argument("--out", required=True, help="a .parquet or .csv file, or a folder for shards + manifest")
    s.add_argument("--chunk-size", type=int, default=4096, help="texts per shard and checkpoint")
    s.add_argument("--strict", action="store_true", help="stop at the first bad record instead of logging it")

    e = sub.add_parser("extract", help="hidden states of texts at every layer (prints a per-layer summary)")
    _add_model_args(e)
    _add_extraction_args(e)
    e.add_argument("--input", default=None, help="texts file (default: a few bundled sentences)")
    e.add_argument("--layers", default=None, help="e.g. 0,10,20 or 10-14 (default: all)")
    e.add_argument("--out", default=None, help="write the [N, L, D] tensor to a .safetensors file")

    c = sub.add_parser("compare", help="cross-model report (HTML + Markdown + CSV) from run folders")
    c.add_argument("runs", nargs="+", help="run folders")
    c.add_argument("--out", required=True, help="report folder")

    sub.add_parser("info", help="versions, devices and which kernels load")
    from .commands import data_check, generation

    generation.add_parsers(sub, _add_model_args)
    data_check.add_parsers(sub)
    return ap


def _load(args, name: str, device=None):
    """The model of ``--model``/``name`` on ``device`` (a :class:`~emofast.capture.distributed.Session`'s), or
    on ``--device`` resolved for torchrun (one GPU per rank)."""
    from .capture.distributed import resolve_device
    from .capture.loader import load_model

    if device is None:
        device = resolve_device(args.device, device_map=args.device_map)
    if args.backend == "vllm":
        return load_model(name, backend="vllm", dtype=args.dtype, tensor_parallel_size=args.tensor_parallel_size)
    extra = {"tp_plan": args.tp_plan} if args.tp_plan else {}
    return load_model(name, dtype=args.dtype, device=device, device_map=args.device_map, **extra)


def _controls(args):
    """--controls plus any --control."""
    if not args.control:
        return args.controls
    from .commands.controls import CONTROLS

    base = (
        list(CONTROLS[:2])
        if args.controls == "auto"
        else [c for c in args.controls.split(",") if c not in ("none", "")]
    )
    return ",".join(dict.fromkeys(base + args.control))


def _system_prompt(args):
    from .probe.paired import DEFAULT_SYSTEM_PROMPT

    if args.system_prompt is None:
        return DEFAULT_SYSTEM_PROMPT
    return args.system_prompt or None


def _session(args):
    """The command's :func:`~emofast.capture.distributed.distributed_session` (one process, or torchrun's)."""
    from .capture.distributed import distributed_session

    return distributed_session(args.device, device_map=args.device_map, tensor_parallel=bool(args.tp_plan))


def cmd_run(args) -> int:
    if args.space is not None:
        return _run_space(args)
    with _session(args) as session:
        return _cmd_run(args, session)


def _cmd_run(args, session) -> int:
    from .commands.run import profile_table, run

    runner = session.runner
    rank = runner.rank
    kwargs = dict(
        pairs=args.pair,
        config=args.config,
        neutral=None if args.neutral == "none" else args.neutral,
        method=args.method,
        policy=args.policy,
        width=args.width,
        score=args.score,
        calibration=args.calibration,
        position=_position(args.position),
        chat_template=False if args.no_chat_template else "auto",
        system_prompt=_system_prompt(args),
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        n_boot=args.n_boot,
        seed=args.seed,
        shuffled=args.shuffled,
        refits=args.refits,
        random_init_seeds=args.random_init_seeds,
        n_perm=args.n_perm,
        val_use=args.val_use,
        controls=_controls(args),
        augment=args.augment,
        progress=not args.no_progress and rank == 0,
        report=not args.no_report,
    )
    model, tok = _load(args, args.model, session.device)
    res = run(model, args.pairs, args.out, tokenizer=tok, model_name=args.model, runner=runner, **kwargs)
    if res is None:  # not rank 0
        return 0
    s = res.metrics["summary"]
    print(f"\nemofast run: {res.probe.meta['model']} -> {res.out}")
    print(
        f"held-out mean balanced accuracy {s['mean_balanced_accuracy']:.3f} (lowest pair "
        f"{s['min_balanced_accuracy']:.3f}), mean AUROC {s['mean_auroc']:.3f}\n"
    )
    print(profile_table(res.profile))
    return 0


def _run_space(args) -> int:
    from .commands.space_run import default_space_dir, run_space

    model, tok = _load(args, args.model)
    out = args.out or default_space_dir(args.model)
    m = run_space(
        model,
        None if args.space == "bundled" else args.space,
        out,
        tokenizer=tok,
        model_name=args.model,
        width=args.width,
        position=_position(args.position),
        chat_template=False if args.no_chat_template else "auto",
        system_prompt=_system_prompt(args),
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        n_boot=args.n_boot,
        seed=args.seed,
        reference=args.reference,
        progress=not args.no_progress,
        report=not args.no_report,
    )
    print(f"\nemofast run --space: {m['model']} -> {out}")
    with open(Path(out) / "summary.md", encoding="utf-8") as f:
        print(f.read())
    return 0


def cmd_score(args) -> int:
    with _session(args) as session:
        return _cmd_score(args, session)


def _cmd_score(args, session) -> int:
    from .commands.score import score_corpus
    from .probe.paired import load_probe

    runner = session.runner
    probe = load_probe(args.probe)
    name = args.model or probe.meta.get("model_load") or probe.meta["model"]
    model, tok = _load(args, name, session.device)
    summary = score_corpus(
        probe,
        model,
        tok,
        args.input,
        args.out,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        strict=args.strict,
        progress=not args.no_progress,
        runner=runner,
    )
    if runner.rank == 0:
        print(summary.line())
    return 0


SAMPLE = [
    "My grandmother's cardigan still smells of her perfume.",
    "We won the final in the last minute and the whole stand sang.",
    "The train is delayed again, the third time this week.",
    "Please find attached the minutes of Tuesday's meeting.",
]


def cmd_extract(args) -> int:
    import torch

    from .capture.api import extract

    model, tok = _load(args, args.model)
    if args.input:
        from .data.textio import BadRecord, iter_records

        recs = [r for _, r in iter_records(args.input)]
        bad = [r for r in recs if isinstance(r, BadRecord)]
        if bad:
            raise SystemExit(f"emofast extract: {bad[0]}")
        texts = [r.text for r in recs]
    else:
        texts = SAMPLE
    chat = not args.no_chat_template and getattr(tok, "chat_template", None) is not None
    x = extract(
        model,
        tok,
        texts,
        layers=_layers(args.layers),
        position=_position(args.position),
        chat_template=chat,
        system_prompt=_system_prompt(args) if chat else None,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        progress=not args.no_progress,
    )
    layers = _layers(args.layers) or list(range(x.shape[1]))
    print(f"{len(texts)} texts -> tensor {list(x.shape)} [N, layers, D] (float32)")
    print(f"{'layer':>5} {'mean |x|':>10} {'std':>9} {'mean cos to text 0':>19}")
    for i, layer in enumerate(layers):
        v = x[:, i]
        cos = (
            torch.nn.functional.cosine_similarity(v, v[:1].expand_as(v), dim=-1)[1:].mean().item()
            if len(v) > 1
            else 1.0
        )
        print(f"{layer:>5} {v.norm(dim=-1).mean().item():>10.3f} {v.std().item():>9.4f} {cos:>19.3f}")
    if args.out:
        from safetensors.torch import save_file

        save_file({"hidden_states": x.contiguous()}, args.out, metadata={"layers": json.dumps(layers)})
        print(f"wrote {args.out}")
    return 0


def cmd_compare(args) -> int:
    from .report import compare

    out = compare([Path(r) for r in args.runs], Path(args.out))
    print(f"wrote {out / 'report.html'}, {out / 'report.md'} and CSVs")
    return 0


def cmd_info(args) -> int:
    import torch

    from . import __version__, kernels

    print(f"emofast {__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")
    print(
        f"cuda available: {torch.cuda.is_available()}"
        + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "")
    )
    print(f"kernels: {json.dumps(kernels.available())}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .commands.data_check import cmd_data
    from .commands.generation import HANDLERS

    handlers = {"run": cmd_run, "score": cmd_score, "extract": cmd_extract, "compare": cmd_compare, "info": cmd_info}
    handlers.update({k: (lambda a, f=f: f(a, _load)) for k, f in HANDLERS.items()})
    handlers["data"] = cmd_data
    from .commands.score import CheckpointError

    try:
        return handlers[args.cmd](args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, CheckpointError) as exc:
        print(f"emofast {args.cmd}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
