"""Commands: what the CLI runs, on top of capture, probe, data and report.

``run`` (fit + evaluate a probe into a run folder), ``score`` (stream a corpus through a fitted probe, resumable
and data-parallel). ``emofast compare`` is :func:`emofast.report.compare`.

May import every other subpackage; nothing imports ``commands`` but :mod:`emofast.cli`.
"""
