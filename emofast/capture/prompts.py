"""Turning texts into token ids exactly as the reference loop does."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["render_prompts", "tokenize", "check_texts"]


def check_texts(texts) -> list[str]:
    """Return ``texts`` as a list; raise on a non-string or an empty/blank text, naming its index."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string (wrap it: [text])")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
        if not t.strip():
            raise ValueError(f"texts[{i}] is empty (or only whitespace); emofast does not score empty texts")
    return out


def render_prompts(tokenizer, texts: Sequence[str], chat_template: bool, system_prompt: str | None) -> list[str]:
    """Wrap each text in the chat template (system turn when ``system_prompt`` is given, user turn = text,
    ``add_generation_prompt=True``), or return the texts unchanged."""
    if not chat_template:
        if system_prompt is not None:
            raise ValueError("system_prompt needs chat_template=True")
        return list(texts)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"{type(tokenizer).__name__} has no chat template (a base model?); use chat_template=False")
    head = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    out = []
    for i, t in enumerate(texts):
        try:
            out.append(
                tokenizer.apply_chat_template(
                    head + [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
                )
            )
        except Exception as exc:  # jinja errors, e.g. templates that reject a system turn
            hint = " (this template may not accept a system turn; try system_prompt=None)" if head else ""
            raise ValueError(f"the chat template failed on texts[{i}]: {exc}{hint}") from exc
    return out


def tokenize(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids per prompt, with the tokenizer's own special tokens, as ``tokenizer(prompts)`` gives them."""
    if not prompts:
        return []
    return [list(ids) for ids in tokenizer(list(prompts))["input_ids"]]
