"""Memory of the imatrix stage on a real-size GGUF: anonymous peak (what can run a machine out of memory;
the GGUF itself is memory-mapped page cache) and wall time per chunk.

    python benchmarks/bench_imatrix.py [--gguf path/to/model-f16.gguf] [--tokens 512] [--chunk 512] [--threads 2]

Default GGUF: the demo's F16 (built first if missing); for a real size, pass a 3B-shaped one (for example
the `big-f16.gguf` bench_pipeline.py builds).

Runs the stage's own child (`python -m tasks.gguf.imatrix`) on a calibration text cut to about `--tokens`
tokens (the shipped text, repeated), sampling the child's RssAnon and VmHWM every 50 ms, and compares the
anonymous peak with the build-memory plan's estimate for the stage (tasks/build/memory_plan.py). Prints a
table and writes artifacts/bench/imatrix.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT)]

from tasks.build.memory_plan import GB, RUNTIME  # noqa: E402
from tasks.core.layout import DEFAULT_CALIBRATION  # noqa: E402
from tasks.formats.gguf import read_kv  # noqa: E402


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path, default=ROOT / "artifacts" / "demo" / "demo-f16.gguf")
    ap.add_argument("--quick", action="store_true", help="accepted for `python -m benchmarks --quick`")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not args.gguf.is_file():
        subprocess.run([sys.executable, "-m", "doit", "convert:demo"], cwd=ROOT, check=True)
    vocab = read_kv(args.gguf, {"tokenizer.ggml.tokens"}).get("tokenizer.ggml.tokens")
    with tempfile.TemporaryDirectory() as tmp:
        text = DEFAULT_CALIBRATION.read_text(encoding="utf-8")
        words = (text.split() * 10)[: int(args.tokens / 1.3)]  # about 1.3 tokens per word in this text
        calib = Path(tmp) / "calib.txt"
        calib.write_text(" ".join(words), encoding="utf-8")
        job = {"gguf": str(args.gguf), "data": [str(calib)], "chunk": args.chunk, "threads": args.threads,
               "out": str(Path(tmp) / "m.imatrix.gguf")}
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "tasks.gguf.imatrix", json.dumps(job)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak = {"anon": 0, "hwm": 0}

        def sample() -> None:
            while proc.poll() is None:
                peak["anon"] = max(peak["anon"], _status_kb(proc.pid, "RssAnon"))
                peak["hwm"] = max(peak["hwm"], _status_kb(proc.pid, "VmHWM"))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        _, err = proc.communicate()
        sampler.join()
        wall = time.monotonic() - start
        if proc.returncode != 0:
            sys.exit(f"imatrix child failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
        from tasks.gguf import imatrix_file

        m = imatrix_file.read(Path(job["out"]))
    n_vocab = vocab if isinstance(vocab, int) else 151936
    estimate = RUNTIME["llama"] + 2 * args.chunk * n_vocab * 4
    result = {"gguf": args.gguf.name, "gguf_bytes": args.gguf.stat().st_size, "chunks": m.chunk_count,
              "tokens": int(float(next(iter(m.counts.values()))[0])), "entries": len(m.sums), "wall_s": round(wall, 1),
              "anon_peak_bytes": peak["anon"] * 1024, "rss_peak_bytes": peak["hwm"] * 1024,
              "plan_estimate_bytes": int(estimate), "threads": args.threads}
    print(f"{'gguf':<20} {'size GB':>8} {'tokens':>7} {'entries':>7} {'wall s':>7} {'anon peak GB':>12} "
          f"{'RSS peak GB':>11} {'plan GB':>8}")
    print(f"{result['gguf']:<20} {result['gguf_bytes'] / GB:>8.2f} {result['tokens']:>7} {result['entries']:>7} "
          f"{wall:>7.1f} {result['anon_peak_bytes'] / GB:>12.2f} {result['rss_peak_bytes'] / GB:>11.2f} "
          f"{estimate / GB:>8.2f}")
    out = ROOT / "artifacts" / "bench" / "imatrix.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
