"""Under torchrun: ``emofast score`` on several corpora in one job, so that a test pays the start-up once.

    python -m torch.distributed.run --nproc_per_node=2 tests/score_many.py PROBE IN1 OUT1 [IN2 OUT2 ...] [-- ARGS]

``ARGS`` (e.g. ``--chunk-size 10``) go to every call. Exits with the first non-zero return code. Each call sets up
and destroys its own process group (one command after another in one process, as a user's script may do).
"""

from __future__ import annotations

import sys

from emofast.cli import main


def run(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    probe, pairs = argv[0], argv[1:]
    for src, out in zip(pairs[::2], pairs[1::2]):
        rc = main(["score", "--probe", probe, "--input", src, "--out", out, *extra])
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
