"""Generation: read a probe token by token while the model writes (``trace``), and push the residual stream along
its directions (``steer``; per row of a batch: ``plan`` says what each row gets, backend-agnostic, ``steer`` applies
it with Hugging Face hooks, ``damage`` generates many settings at once and measures what steering cost), with the
measures a causal check needs (``judge``).

May import: :mod:`emofast.capture` (models, prompts), :mod:`emofast.probe`, :mod:`emofast.data`; never
``commands`` or ``report``.
"""

from .damage import generate_rows
from .plan import row_additions
from .steer import AddSteering, Steering, steer, steering_vectors
from .trace import trace

__all__ = ["trace", "steer", "Steering", "AddSteering", "steering_vectors", "row_additions", "generate_rows"]
