"""Generation: read a probe token by token while the model writes (``trace``), and push the residual stream along
its directions (``steer``), with the measures a causal check needs (``judge``).

May import: :mod:`emofast.capture` (models, prompts), :mod:`emofast.probe`, :mod:`emofast.data`; never
``commands`` or ``report``.
"""

from .steer import Steering, steer, steering_vectors
from .trace import trace

__all__ = ["trace", "steer", "Steering", "steering_vectors"]
