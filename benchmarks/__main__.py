"""`python -m benchmarks [--quick] [--big] [name ...]`: run every benchmarks/bench_*.py (or the named ones).

Each benchmark runs in its own process (so peak-memory figures are its own), prints its table and
writes artifacts/bench/<name>.json; this runner ends with where the JSON went.
The whole-pipeline benchmark at a real size (bench_pipeline.py: Qwen2.5-3B shape, about 25 minutes
on a 2-core machine, 30 GB of disk) is behind --big, so that `make bench` stays a short run; without
it that benchmark runs its small smoke shape. `python benchmarks/bench_pipeline.py --shape 7b` is the
7B run (60 GB of disk).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIG_ONLY = {"pipeline"}  # benchmarks whose default shape is too long for `make bench`: --quick unless --big


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes: a smoke run")
    parser.add_argument("--big", action="store_true", help="also the real-size pipeline run (bench_pipeline at 3B)")
    parser.add_argument("names", nargs="*", help="benchmark names (e.g. build merge); default: all")
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.names:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.names]
    failed = []
    for script in scripts:
        quick = args.quick or (script.stem.removeprefix("bench_") in BIG_ONLY and not args.big)
        cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
        print(f"== {script.stem}", flush=True)
        if subprocess.run(cmd, cwd=HERE.parent).returncode != 0:
            failed.append(script.stem)
    print(f"\nJSON results: {HERE.parent / 'artifacts' / 'bench'}/")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
