"""CI runs bench/gpu_check.py --dry-run: a broken script is caught here, not on a borrowed GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = sorted(p.stem for p in (ROOT / "bench" / "configs").glob("*.json"))


def test_gpu_check_dry_run(tmp_path):
    """Every section runs on the CPU with tiny sizes (~35 s of CPU time); every row reaches the JSON-lines file
    as printed; no FAIL; each of the five families runs modes (a)-(c) and one vLLM subprocess runs (or says why
    not)."""
    out = tmp_path / "rows.jsonl"
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert not [r for r in rows if r["result"] == "FAIL"]
    assert {r["section"] for r in rows} == {"env", "compile", "correct", "bandwidth", "peak", "throughput"}
    cases = {r["case"] for r in rows}
    assert len(FAMILIES) == 5
    for fam in FAMILIES:
        for mode in ("(a) study loop", "(b) extract all layers", "(c) extract half depth"):
            assert f"{fam} {mode}" in cases, (fam, mode)
    assert any("(d) vLLM" in c for c in cases)
    assert sum(r["section"] == "correct" for r in rows) >= 25
    assert all(r["case"] in res.stdout for r in rows)  # printed as well as written
    assert {"sm_75 bf16 weights atomic", "sm_90 fp32 all-ones deterministic"} <= cases


def test_configs_hold_the_published_sizes():
    """The bundled real-size configs build (on the meta device) to the published parameter counts."""
    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_check import load_config

    expected = {  # billions of parameters, from the model cards
        "qwen3-4b-instruct-2507": 4.02,
        "mistral-7b-instruct-v0.3": 7.25,
        "falcon-7b-instruct": 6.92,
        "zephyr-7b-beta": 7.24,
        "openchat-3.5": 7.24,
    }
    for fam in FAMILIES:
        cfg, template, model_id = load_config(ROOT / "bench" / "configs" / f"{fam}.json", dry=False)
        with torch.device("meta"):
            n = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
        assert abs(n / 1e9 - expected[fam]) < 0.01, (fam, n)
        assert "{{" in template and "/" in model_id
