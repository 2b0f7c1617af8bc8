"""Defaults every probe kind shares (chosen on val; see README, "Choosing the defaults").

Example:
    >>> from emofast.probe.defaults import DEFAULT_POSITION
    >>> DEFAULT_POSITION
    'last-8'
"""

from __future__ import annotations

__all__ = ["DEFAULT_POSITION"]

# The mean over the last 8 prompt tokens: with the chat template, the end of the text and the template's tail that
# opens the answer. Val rejected the last token alone on the bundled pairs (bench/compare_methods.py).
DEFAULT_POSITION = "last-8"
