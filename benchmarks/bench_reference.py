"""Memory of the fidelity check's float32 reference: float32 load vs block-by-block widening.

    python benchmarks/bench_reference.py [--quick]

The check compares every GGUF against the HF model computed in float32. Loading a bf16 model as
float32 doubles its memory (a 7B model: 28 GB, more than this 24 GB machine); tasks/checks/fp32_compute.py
keeps the stored dtype and widens one block at a time. On the merge benchmark's Qwen2.5-3B-shaped
random bf16 base (generated and cached by bench_merge.py), each mode runs one forward pass over a
64-token prompt in its own process; the table gives wall time and peak RSS (VmHWM), and the logits
of the two modes must be bit-identical. Writes artifacts/bench/reference.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_merge import BENCH, FULL, GB, QUICK, _vm_hwm_kb, generate  # noqa: E402

PROMPT = list(range(100, 164))


def worker(mode: str, base: Path, out: Path) -> None:
    import numpy as np
    import torch
    import transformers

    from tasks.checks.fp32_compute import compute_in_float32

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(base), dtype=torch.float32 if mode == "fp32" else "auto")
    model.eval()
    if mode == "blockwise":
        compute_in_float32(model)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([PROMPT])).logits[0]
    np.save(out, logits.numpy())
    print(json.dumps({"op_seconds": time.perf_counter() - t0, "vm_hwm_kb": _vm_hwm_kb()}))


def measure(mode: str, base: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, str(base), str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _, status, _ = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stdout = proc.stdout.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{mode} failed: {stdout[-2000:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    return {"mode": mode, "wall_s": round(wall, 1), "peak_rss_mb": round(report["vm_hwm_kb"] / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape: a smoke run")
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "BASE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), Path(args.worker[2]))
        return
    import numpy as np

    shape = (QUICK if args.quick else FULL)[0]
    base, _ = generate(shape)
    stored_gb = sum(p.stat().st_size for p in base.glob("*.safetensors")) / GB
    work = BENCH / "work" / "reference"
    work.mkdir(parents=True, exist_ok=True)
    rows = [measure(mode, base, work / f"{mode}.npy") for mode in ("fp32", "blockwise")]
    identical = bool(np.array_equal(np.load(work / "fp32.npy"), np.load(work / "blockwise.npy")))
    for f in work.glob("*.npy"):
        f.unlink()
    fp32, block = rows
    print(f"\n{shape.label}, bf16 checkpoint {stored_gb:.2f} GB, forward over {len(PROMPT)} tokens")
    print(f"{'mode':<10} {'wall s':>8} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['mode']:<10} {r['wall_s']:8.1f} {r['peak_rss_mb']:12d}")
    ratio = fp32["peak_rss_mb"] / block["peak_rss_mb"]
    print(f"peak RSS fp32/blockwise: {ratio:.2f}x; logits bit-identical: {identical}")
    goals = {"logits bit-identical": identical, "blockwise peak RSS < 0.6x fp32 load": ratio > 1 / 0.6}
    for goal, met in goals.items():
        print(f"  [{'met' if met else 'MISSED'}] {goal}")
    BENCH.mkdir(parents=True, exist_ok=True)
    (BENCH / "reference.json").write_text(json.dumps(
        {"shape": shape.label, "stored_gb": round(stored_gb, 2), "rows": rows, "identical": identical,
         "goals": goals}, indent=2) + "\n")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
