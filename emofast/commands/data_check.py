"""``emofast data check DIR``: print the data check (:mod:`emofast.data.check`), write it as JSON and Markdown,
and with ``--strict`` exit non-zero on any warning."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["add_parsers", "cmd_data"]


def add_parsers(sub) -> None:
    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    c = dsub.add_parser(
        "check", help="style cues, pairing, near-duplicates and the lexical baseline of a paired dataset"
    )
    c.add_argument("root", nargs="?", default=None, help="dataset folder (default: the bundled pairs)")
    c.add_argument("--pair", action="append", default=None, help="only these pairs (repeatable)")
    c.add_argument("--out", default=None, help="folder for check.json and check.md (default: print only)")
    c.add_argument("--strict", action="store_true", help="exit 1 on any warning")
    c.add_argument("--space", action="store_true", help="an emotion folder (each emotion against the others)")


def cmd_data(args) -> int:
    from ..data.check import check_dataset, family_max, markdown
    from ..data.cues import STYLE_CUES

    if args.space:
        return _space(args)
    report = check_dataset(args.root, args.pair)
    fams = ["style", "shape", "words", "label_words", "length"]
    print(f"{'pair':22s} {'split':14s} " + " ".join(f"{c[:11]:>11s}" for c in fams) + "   lexical BA   broken lines")
    for name, e in report["pairs"].items():
        for split, s in e["splits"].items():
            fm = family_max(s)
            ba = e["lexical"].get(f"{split}_balanced_accuracy")
            lex = f"{ba:10.3f}" if ba is not None else " " * 10
            broken = len(e["pairing"][split]["broken_lines"]) if split in e["pairing"] else "-"
            cols = " ".join(f"{'-':>11s}" if fm[c] is None else f"{fm[c]:11.2f}" for c in fams)
            print(f"{name:22s} {split:14s} {cols}   {lex}   {broken!s:>12s}")
    print(
        "(largest AUROC with which one cue of each family alone separates the sides, 0.5 = not at all: style = "
        f"{', '.join(STYLE_CUES)}, first person; shape = connectives, clause punctuation, sentences per text, "
        "sentence-initial words; words = single repetition/frequency words; label words scored alike for both sides, "
        "not on contrast splits, where they point the other way by design. lexical BA: the TF-IDF baseline fitted on "
        "train; on contrast it must be <= 0.55)"
    )
    for key in ("neutral", "neutral_ood"):
        if key in report:
            n = report[key]
            print(
                f"{key}: {n['texts']} texts, {n['mean_words']:.1f} words (pair texts {n['pair_mean_words']:.1f}); "
                f"length AUROC {n['length_auroc']:.2f}; TF-IDF separability AUROC {n['tfidf_auroc']:.2f}, balanced "
                f"accuracy {n['tfidf_balanced_accuracy']:.2f}"
            )
    for w in report["warnings"]:
        print(f"warning: {w}")
    if not report["warnings"]:
        print("no warnings")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "check.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        (out / "check.md").write_text(markdown(report), encoding="utf-8")
        print(f"wrote {out / 'check.json'} and {out / 'check.md'}")
    return 1 if (args.strict and report["warnings"]) else 0


def _space(args) -> int:
    from ..data.check import check_emotions
    from ..data.cues import STYLE_CUES

    report = check_emotions(args.root)
    cues = [*STYLE_CUES, "first_person", "label_words"]
    print(f"{'emotion vs rest':16s} {'split':6s} " + " ".join(f"{c[:10]:>10s}" for c in cues))
    for e, splits in report["emotions"].items():
        for split, s in splits.items():
            print(f"{e:16s} {split:6s} " + " ".join(f"{s['auroc'][c]:10.2f}" for c in cues))
    for w in report["warnings"]:
        print(f"warning: {w}")
    if not report["warnings"]:
        print("no warnings")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "check.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {out / 'check.json'}")
    return 1 if (args.strict and report["warnings"]) else 0
