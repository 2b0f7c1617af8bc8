"""What every part of bench/gpu_check.py shares: the row table (run id, device name), dtype helpers, and child
processes that cannot outlive their timeout."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import torch

__all__ = [
    "HERE",
    "CONFIGS",
    "KERNELS",
    "BANDWIDTH_TARGET",
    "SYSTEM",
    "SPECIALS",
    "Table",
    "dtype_name",
    "sync",
    "native_bf16",
    "run_child",
]

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
KERNELS = "emofast.triton_kernels.select_reduce"
BANDWIDTH_TARGET = 0.70
SYSTEM = "You are a helpful assistant."
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "[INST]", "[/INST]", "<|system|>",
            "<|user|>", "<|assistant|>", "<|end_of_turn|>"]  # fmt: skip


class Table:
    """Rows printed and appended to ``out`` (JSON lines) as they come; each carries the run id and the device.

    ``rows_file``: a child process's rows also go there, for its parent to merge (:meth:`merge`).
    """

    def __init__(self, out, t0: float, budget_s: float, run_id: str, device: str, rows_file=None):
        self.out, self.t0, self.budget_s, self.rows = out, t0, budget_s, []
        self.run_id, self.device, self.rows_file = run_id, device, rows_file

    def add(self, section: str, case: str, result: str, detail: str = "", **metrics) -> dict:
        row = {"run": self.run_id, "device": self.device, "section": section, "case": case, "result": result}
        row.update(detail=detail, **metrics)
        row["t_s"] = round(time.perf_counter() - self.t0, 1)
        self.rows.append(row)
        print(f"{section:<10}  {case:<48}  {result:<5}  {detail}", flush=True)
        for path in (self.out, self.rows_file):
            if path is not None:
                with open(path, "a") as f:
                    f.write(json.dumps(row, default=str) + "\n")
        return row

    def merge(self, path: Path) -> list[dict]:
        """Take in the rows a child process wrote to ``path`` (already printed and in ``out``)."""
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        self.rows += rows
        return rows

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    @contextlib.contextmanager
    def case(self, section: str, case: str):
        """Run the body; an exception becomes a FAIL row naming it."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - every failure goes into the table
            self.add(section, case, "FAIL", f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300])


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def native_bf16(device: str) -> bool:
    if device != "cuda":
        return True
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch
        return torch.cuda.get_device_capability() >= (8, 0)


def run_child(cmd: list[str], timeout: float, **popen) -> tuple[int | None, str]:
    """Run ``cmd`` in its own session (process group); past ``timeout`` kill the whole group, so that nothing it
    started (vLLM's engine and worker processes) keeps running or holding GPU memory.

    Returns ``(exit status, "")``, or ``(None, why)`` when it was killed for its timeout.
    """
    proc = subprocess.Popen(cmd, start_new_session=True, **popen)
    try:
        return proc.wait(timeout=timeout), ""
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None, f"past its {timeout:.0f} s: process group {proc.pid} killed"
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
