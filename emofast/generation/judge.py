"""Measures of generated text that know nothing of the probe: an outside valence judge, fluency and diversity.

- VADER (``vaderSentiment``, MIT; Hutto & Gilbert 2014): a lexicon and rule-based valence scorer that ships its
  lexicon and runs offline; ``compound`` is in [-1, 1]. It is the outside judge of the steering check because it
  shares nothing with the model or the probe.
- Perplexity of a generated text under the *unsteered* model, given its prompt: how much steering cost fluency.
- distinct-2: the share of a text's word bigrams that are distinct (repetition loops score low).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .hooks import input_device

__all__ = ["vader_compound", "distinct_2", "perplexity", "VALENCE"]

#: Textbook valence sign of the bundled labels (+1 pleasant, -1 unpleasant): the sign a valence judge should move.
VALENCE = {
    "sad": -1,
    "happy": 1,
    "angry": -1,
    "calm": 1,
    "fear": -1,
    "confidence": 1,
    "love": 1,
    "hate": -1,
    "anxious": -1,
    "relaxed": 1,
}


def vader_compound(texts) -> np.ndarray:
    """VADER compound valence ``[N]`` in [-1, 1] (0 for an empty text)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ModuleNotFoundError as exc:  # pragma: no cover - a core dependency
        raise ModuleNotFoundError("the steering check needs vaderSentiment: pip install vaderSentiment") from exc
    sia = SentimentIntensityAnalyzer()
    return np.array([sia.polarity_scores(t)["compound"] if t.strip() else 0.0 for t in texts], dtype=np.float64)


def distinct_2(text: str) -> float:
    """Distinct word bigrams / word bigrams (NaN for fewer than two words)."""
    words = text.lower().split()
    bigrams = list(zip(words, words[1:]))
    return len(set(bigrams)) / len(bigrams) if bigrams else math.nan


def perplexity(model, tok, prompt_ids: list[list[int]], texts: list[str], *, batch_size: int = 8) -> np.ndarray:
    """Per text, ``exp`` of the mean negative log-likelihood of its tokens after its prompt's tokens (NaN when
    the text has no token). ``prompt_ids``: the rendered, tokenized prompts, as generation saw them.

    Shapes: ``prompt_ids`` and ``texts`` are ``[N]``; returns ``[N]`` float64.
    """
    out = np.full(len(texts), math.nan)
    device = input_device(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for b0 in range(0, len(texts), batch_size):
        seqs, spans = [], []
        for p, t in zip(prompt_ids[b0 : b0 + batch_size], texts[b0 : b0 + batch_size]):
            ids = tok(t, add_special_tokens=False)["input_ids"] if t.strip() else []
            seqs.append(list(p) + list(ids))
            spans.append(len(ids))
        T = max(len(s) for s in seqs)
        x = torch.full((len(seqs), T), pad, dtype=torch.long)
        m = torch.zeros((len(seqs), T), dtype=torch.long)
        for i, s in enumerate(seqs):
            x[i, T - len(s) :] = torch.tensor(s)
            m[i, T - len(s) :] = 1
        pos = (m.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(input_ids=x.to(device), attention_mask=m.to(device), position_ids=pos.to(device)).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -logp.gather(-1, x[:, 1:].to(device)[..., None])[..., 0].cpu()  # [B, T-1]: token t+1 given up to t
        for i, n in enumerate(spans):
            if n:
                out[b0 + i] = math.exp(float(nll[i, T - 1 - n :].mean()))
    return out
