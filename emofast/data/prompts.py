"""Bundled prompts: open-ended, emotionally neutral requests for the steering check (``emofast steer-check``)."""

from __future__ import annotations

from .pairs import bundled_path, load_jsonl

__all__ = ["steer_prompts", "STEER_PROMPTS"]

#: The file, beside the bundled emotion data.
STEER_PROMPTS = "steer_prompts.jsonl"


def steer_prompts(n: int | None = None) -> list[tuple[str, str]]:
    """The first ``n`` (default all) bundled steering prompts as ``(id, text)``.

    Example:
        >>> len(steer_prompts(32))
        32
    """
    rows = load_jsonl(bundled_path() / STEER_PROMPTS)
    if n is not None:
        if n < 1:
            raise ValueError(f"n={n}: need at least one prompt")
        if n > len(rows):
            raise ValueError(f"{n} prompts asked for; {len(rows)} are bundled")
        rows = rows[:n]
    return rows
