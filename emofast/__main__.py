"""``python -m emofast`` (also what ``torchrun -m emofast`` runs)."""

import sys

from .cli import main

sys.exit(main())
