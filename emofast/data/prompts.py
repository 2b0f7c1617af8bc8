"""Bundled prompts: open-ended, emotionally neutral requests for the steering check (``emofast steer-check``)."""

from __future__ import annotations

from .pairs import bundled_path, load_jsonl

__all__ = ["steer_prompts", "calibration_prompts", "instructed", "TONE_WORDS", "STEER_PROMPTS"]

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


def calibration_prompts(n: int = 12, n_eval: int = 0) -> list[tuple[str, str]]:
    """The *last* ``n`` bundled prompts, for calibrating steering strength; disjoint from the first ``n_eval``
    (:func:`steer_prompts`), which evaluate it (an overlap is an error).

    Example:
        >>> [i for i, _ in calibration_prompts(2)]
        ['prompt-039', 'prompt-040']
    """
    rows = load_jsonl(bundled_path() / STEER_PROMPTS)
    if n < 1:
        raise ValueError(f"n={n}: need at least one calibration prompt")
    if n + n_eval > len(rows):
        raise ValueError(
            f"{n_eval} evaluation + {n} calibration prompts > the {len(rows)} bundled ones: they would overlap"
        )
    return rows[len(rows) - n :]


#: The word of each bundled label in a tone instruction (the prompting baseline of the steering check).
TONE_WORDS = {
    "sad": "sad",
    "happy": "happy",
    "angry": "angry",
    "calm": "calm",
    "fear": "fearful",
    "confidence": "confident",
    "love": "loving",
    "hate": "hateful",
    "anxious": "anxious",
    "relaxed": "relaxed",
}


def instructed(prompt: str, label: str) -> str:
    """The prompt with an instruction to answer in the label's tone (``TONE_WORDS``; other labels as they are).

    Example:
        >>> instructed("Describe a kitchen.", "fear")
        'Describe a kitchen. Answer in a fearful tone.'
    """
    word = TONE_WORDS.get(label, label.replace("_", " "))
    return f"{prompt.rstrip()} Answer in a{'n' if word[:1] in 'aeiou' else ''} {word} tone."
