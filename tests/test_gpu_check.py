"""CI runs bench/gpu_check.py --dry-run: a broken script is caught here, not on a borrowed GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = sorted(p.stem for p in (ROOT / "bench" / "configs").glob("*.json"))
SEVEN_B = [f for f in FAMILIES if not f.startswith("qwen3-4b")]


def _dry_run(tmp_path, *args):
    out = tmp_path / "rows.jsonl"
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and not [r for r in rows if r["result"] == "FAIL"]
    assert len({r["run"] for r in rows}) == 1 and all(r["run"] and r["device"] for r in rows)  # children included
    assert all(r["case"] in res.stdout for r in rows)  # printed as well as written
    return rows, res


def test_gpu_check_dry_run(tmp_path):
    """Every section runs on the CPU with tiny sizes (~45 s of CPU time); every row reaches the JSON-lines file
    as printed, with the run id and the device; no FAIL; each of the five families runs modes (a)-(c), (b) and
    (c) at position "last" and "mean"; one vLLM subprocess runs (or says why not); the correctness and bandwidth
    sections ran in child processes and their rows came back."""
    rows, _ = _dry_run(tmp_path)
    assert {r["section"] for r in rows} == {"env", "compile", "correct", "bandwidth", "peak", "throughput"}
    cases = {r["case"] for r in rows}
    assert len(FAMILIES) == 5
    for fam in FAMILIES:
        for mode in ("(a) study loop", "(b) extract all layers", "(c) extract half depth"):
            assert f"{fam} {mode}" in cases, (fam, mode)
        positions = {r.get("position") for r in rows if r["case"].startswith(f"{fam} (b)") and "texts_s" in r}
        assert positions == {"last", "mean"}, (fam, positions)
    assert any("(d) vLLM" in c for c in cases)
    assert sum(r["section"] == "correct" for r in rows) >= 25
    assert {"sm_75 bf16 weights atomic", "sm_90 fp32 all-ones deterministic"} <= cases
    bw = [r for r in rows if r["section"] == "bandwidth" and "x_over_l2" in r]
    assert bw and all(r["x_over_l2"] >= 4 for r in bw)
    assert any(r["case"].endswith("deterministic rerun") and r["result"] == "ok" for r in rows)


def test_gpu_check_dry_run_on_a_simulated_t4(tmp_path):
    """--device-memory-gb 16: the 7B configs do not fit (decided from their real-size configs) and become skip
    rows with the reason; the 4B one runs; the exit status is 0."""
    rows, res = _dry_run(tmp_path, "--device-memory-gb", "16", "--no-vllm", "--texts", "4")
    by_case = {r["case"]: r for r in rows if r["section"] == "throughput"}
    for fam in SEVEN_B:
        assert by_case[fam]["result"] == "skip" and "does not fit" in by_case[fam]["detail"], by_case[fam]
        assert 13 < by_case[fam]["need_gib"] < 20
        assert f"{fam} (a) study loop" not in by_case
    assert by_case["qwen3-4b-instruct-2507 (b) extract all layers"]["result"] == "info"
    assert "16 GB" in rows[0]["device"] and "4 skip" in res.stdout


def test_memory_need_from_the_config():
    """Weights and activations from the config alone: a 7B model in fp16 needs more than a T4 holds."""
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from gpu_check import load_config, memory_need

    cfg, _, _ = load_config(ROOT / "bench" / "configs" / "mistral-7b-instruct-v0.3.json", dry=False)
    need = memory_need(cfg, torch.float16, 32, 100, n_params=7_248_023_552)
    assert abs(need["weights"] - 2 * 7_248_023_552) < 1
    assert 0.5 * 2**30 < need["activations"] < 4 * 2**30
    small = memory_need(cfg, torch.float16, 1, 100, n_params=7_248_023_552)
    assert small["activations"] < need["activations"] / 10


def test_a_child_past_its_timeout_is_killed_with_its_group(tmp_path):
    """run_child kills the whole process group: a grandchild (as vLLM's engine process would be) dies too."""
    sys.path.insert(0, str(ROOT / "bench"))
    import os
    import time

    from gpu_check_common import run_child

    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    t0 = time.perf_counter()
    rc, why = run_child([sys.executable, "-c", script], timeout=3)
    assert rc is None and "killed" in why and time.perf_counter() - t0 < 30
    grandchild = int(pid_file.read_text())
    for _ in range(50):
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"grandchild {grandchild} outlived its group")


def test_a_section_whose_child_dies_is_a_fail_row_and_the_rest_goes_on(tmp_path, monkeypatch):
    """As after a device fault: the correctness child aborts (SIGABRT) after one row; its row comes back, a FAIL
    row names the exit, and the parent carries on to the next section."""
    sys.path.insert(0, str(ROOT / "bench"))
    import time

    import gpu_check
    from gpu_check_common import Table

    monkeypatch.setenv("GPU_CHECK_SIMULATE_ABORT", "correct")
    t = Table(tmp_path / "rows.jsonl", time.perf_counter(), 100.0, "run-x", "cpu (test)")
    gpu_check.run_section(t, "correct", True, tmp_path / "rows.jsonl", 120)
    assert [r["case"] for r in t.rows] == ["simulated abort", "section (child process)"]
    assert t.rows[-1]["result"] == "FAIL" and "exit -6" in t.rows[-1]["detail"]
    assert all(r["run"] == "run-x" and r["device"] == "cpu (test)" for r in t.rows)
    t.add("peak", "next section", "info")  # the parent is alive and goes on
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 3


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
