"""Probe: per-text vectors and sums → directions → layers → calibration → evaluation.

Modules: ``directions`` (mean-diff, shrinkage LDA, logistic regression), ``layers`` (layer and band policies),
``calibration`` (Platt, temperature; NLL, Brier, ECE), ``stats`` (balanced accuracy, AUROC, bootstrap
intervals), ``evaluation`` (held-out metrics and diagnostics), ``profile`` (the emotion profile), ``paired``
(``PairedProbe``: fit, score, save, load).

May import: :mod:`emofast.capture` (to run a model), :mod:`emofast.data`; never ``commands`` or ``report``.
"""

from .paired import (
    CALIBRATIONS,
    DEFAULT_METHOD,
    DEFAULT_POLICY,
    DEFAULT_POSITION,
    DEFAULT_SYSTEM_PROMPT,
    DEFAULT_WIDTH,
    PROBE_FILE,
    PROBE_JSON,
    SCORES,
    PairedProbe,
    SplitIndex,
    load_probe,
    side_columns,
)

__all__ = [
    "PairedProbe",
    "SplitIndex",
    "load_probe",
    "side_columns",
    "DEFAULT_SYSTEM_PROMPT",
    "DEFAULT_METHOD",
    "DEFAULT_POLICY",
    "DEFAULT_POSITION",
    "DEFAULT_WIDTH",
    "SCORES",
    "CALIBRATIONS",
    "PROBE_FILE",
    "PROBE_JSON",
]
