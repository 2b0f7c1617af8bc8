"""``emofast run`` sends every text through the model once; above a rows budget it memory-maps the rows (lda) or
keeps the streamed two-pass path (mean-diff); every mode gives the same numbers to float tolerance."""

from __future__ import annotations

import json

import pytest
from test_workflow import setup  # noqa: F401  (a fixture)

from emofast.cli import main


def _run(setup, out, method, budget=None, monkeypatch=None):  # noqa: F811
    if budget is not None:
        monkeypatch.setenv("EMOFAST_ROWS_BUDGET_GB", str(budget))
    args = [
        "run",
        "--model",
        str(setup / "model"),
        "--pairs",
        str(setup / "data"),
        "--out",
        str(out),
        "--method",
        method,
    ]
    assert main([*args, "--width", "2", "--n-boot", "100", "--no-progress", "--no-report", "--controls", "none"]) == 0
    return json.loads((out / "metrics.json").read_text()), json.loads((out / "timing.json").read_text())


def _close(a, b, tol):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k], tol)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y, tol)
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=tol, rel=tol)
    else:
        assert a == b


@pytest.mark.parametrize("method", ["lda", "mean-diff"])
def test_modes_agree(setup, tmp_path, monkeypatch, method):  # noqa: F811
    m1, t1 = _run(setup, tmp_path / "a", method)
    assert t1["passes"] == "one pass (rows in memory)"
    assert t1["texts_through_model"] == t1["texts"]  # each text once
    m2, t2 = _run(setup, tmp_path / "b", method, budget=1e-9, monkeypatch=monkeypatch)
    if method == "mean-diff":
        assert t2["passes"] == "two passes (streamed)" and t2["texts_through_model"] > t2["texts"]
    else:
        assert t2["passes"] == "one pass (rows memory-mapped)" and t2["texts_through_model"] == t2["texts"]
    assert not (tmp_path / "b" / ".rows").exists()
    for key in ("pairs_test", "summary", "selection"):
        _close(m1[key], m2[key], 1e-4)
