"""One base, three adapters: deploy.mode = "merged" vs "adapter", bytes on disk and build time, and the
rebuild after one adapter changes.

    python benchmarks/bench_adapters.py [--shape small|3b] [--deploy-only] [--keep]

Builds (cached, bench_merge's generator) a random bf16 Qwen2-shaped base with the demo's tokenizer and chat
template, and three r=16 all-linear LoRAs (bench_merge's adapter with lora_B scaled by 1, 1.5, 2: new
bytes, same shapes). Then, for each mode, a workspace with the three models on that base (Q4_K_M, targets
ollama + llamacpp) is built from clean by `doit` (every stage, check included) and measured: wall time,
bytes of every built file under artifacts/ (weights: safetensors + GGUF), and the GGUFs a deployment needs.
Then the second adapter changes (lora_B scaled again) and the build runs again, first up to what deploying
it needs (`doit render:a2`), then the rest (its check, the lock): wall times, the tasks that ran, and whether
any other model's or the base's files changed.
Default shape "small" (hidden 1024, 4 layers, the real 151,936-token vocabulary: about 0.4 GB bf16) fits
the bench budget; `--shape 3b` is Qwen2.5-3B (6.2 GB bf16; about 40 GB of disk for the merged workspace).
`--deploy-only` builds and rebuilds only what deploying needs (`render:<m>`), no checks: at 3B one float32
check costs about as much as the merged rebuild itself and is the same in both modes.
Random weights give near-flat logits, so the check's gates are opened (this measures bytes and time).
Prints a table and writes artifacts/bench/adapters[-3b].json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from bench_merge import BENCH, FULL, Shape  # noqa: E402
from bench_pipeline import GATES, generate, workspace  # noqa: E402

SHAPES = {"small": Shape("small", 1024, 2816, 4, 8, 2, 151936, True), "3b": FULL[0]}
# Scaled up, not down: a weaker adapter's effect on a random base is below Q4_K_M's noise, and the check
# (min_adapter_retention >= 0) would refuse it.
SCALES = {"a1": 1.0, "a2": 1.5, "a3": 2.0}


def scaled_adapter(src: Path, dest: Path, factor: float) -> None:
    """`src` with lora_B scaled (run in a child: this launcher never imports torch)."""
    code = ("import sys, shutil; from pathlib import Path; from safetensors.torch import load_file, save_file\n"
            "src, dest, f = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]); dest.mkdir(parents=True, "
            "exist_ok=True)\nshutil.copyfile(src / 'adapter_config.json', dest / 'adapter_config.json')\n"
            "t = load_file(str(src / 'adapter_model.safetensors'))\n"
            "save_file({k: (v * f if '.lora_B.' in k else v).contiguous() for k, v in t.items()}, "
            "str(dest / 'adapter_model.safetensors'), metadata={'format': 'pt'})")
    subprocess.run([sys.executable, "-c", code, str(src), str(dest), str(factor)], check=True)


def make_workspace(shape: Shape, base: Path, adapter: Path, ws: Path, mode: str) -> Path:
    """bench_pipeline's workspace (base with the demo tokenizer), with three models on the base in `mode`."""
    config = workspace(shape, base, adapter, ws)
    shutil.rmtree(ws / "adapter")
    for name, factor in SCALES.items():
        scaled_adapter(adapter, ws / "adapters" / name, factor)
    models = "".join(
        f'[models.{name}]\nbase = "base"\nadapter = "adapters/{name}"\nquants = ["q4_k_m"]\n'
        f'[models.{name}.deploy]\nmode = "{mode}"\ntargets = ["ollama", "llamacpp"]\n'
        + GATES.replace("models.big", f"models.{name}") for name in SCALES)
    config.write_text(f'[build]\nartifacts = "artifacts"\nthreads = 2\n{models}')
    return config


def doit(config: Path, *args: str) -> tuple[float, list[str]]:
    env = dict(os.environ, MODELMAKE_CONFIG=str(config))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench_adapters: doit failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-3000:]}")
    return wall, [ln[3:].strip() for ln in proc.stdout.splitlines() if ln.startswith(".  ")]


def files(artifacts: Path) -> dict[str, tuple[int, float]]:
    """Built weight files (relative path -> size, mtime_ns): safetensors and GGUF, test caches left out."""
    out = {}
    for p in artifacts.rglob("*"):
        if p.is_file() and p.suffix in (".gguf", ".safetensors") and "fixtures" not in p.parts:
            st = p.stat()
            out[p.relative_to(artifacts).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def measure(shape: Shape, base: Path, adapter: Path, mode: str, ws: Path, deploy_only: bool) -> dict:
    config = make_workspace(shape, base, adapter, ws, mode)
    wall, executed = doit(config, *([f"render:{m}" for m in SCALES] if deploy_only else []))
    before = files(ws / "artifacts")
    deploy = [f for f in before if f.endswith((".gguf",)) and ("q4_k_m" in f or "-lora-" in f)]
    scaled_adapter(ws / "adapters" / "a2", ws / "adapters" / "a2-new", 1.1)
    shutil.rmtree(ws / "adapters" / "a2")
    (ws / "adapters" / "a2-new").rename(ws / "adapters" / "a2")
    rewall, reexec = doit(config, "render:a2")  # what deploying the new adapter needs
    checkwall, checkexec = (0.0, []) if deploy_only else doit(config)  # then its check (and the lock)
    reexec += checkexec
    after = files(ws / "artifacts")
    changed = sorted(f for f in after if before.get(f) != after[f])
    return {
        "mode": mode, "build_s": round(wall, 1), "tasks": len(executed),
        "weight_bytes": sum(s for s, _ in before.values()),
        "deploy_bytes": sum(before[f][0] for f in deploy), "deploy_files": sorted(deploy),
        "rebuild_s": round(rewall, 1), "recheck_s": None if deploy_only else round(checkwall, 1),
        "rebuild_tasks": [t for t in reexec if not t.startswith(("plan:", "lock"))],
        "rebuild_changed_files": changed,
        "rebuild_touches_only_a2": all(f.startswith("a2/") for f in changed),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=tuple(SHAPES), default="small")
    parser.add_argument("--quick", action="store_true", help="accepted for `make bench --quick`: the default shape")
    parser.add_argument("--keep", action="store_true", help="keep the workspaces")
    parser.add_argument("--deploy-only", action="store_true", help="build and rebuild up to render:<m>, no checks")
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    base, adapter = generate(shape)
    results = []
    for mode in ("merged", "adapter"):
        ws = BENCH / "work" / f"adapters-{shape.key}-{mode}"
        try:
            results.append(measure(shape, base, adapter, mode, ws, args.deploy_only))
        finally:
            if not args.keep:
                shutil.rmtree(ws, ignore_errors=True)
        r = results[-1]
        print(f"  {mode:<8} build {r['build_s']:7.1f} s  weights {r['weight_bytes'] / 1e9:6.2f} GB  "
              f"rebuild {r['rebuild_s']:6.1f} s", flush=True)
    merged, lora = results
    goals = {
        "adapter mode's bytes <= 1/3 + 5% of merged mode's (all weight files)":
            lora["weight_bytes"] <= (1 / 3 + 0.05) * merged["weight_bytes"],
        "adapter mode's deployed GGUF bytes <= 1/3 + 5% of merged mode's":
            lora["deploy_bytes"] <= (1 / 3 + 0.05) * merged["deploy_bytes"],
        "rebuild after one adapter changes touches only that adapter's files": lora["rebuild_touches_only_a2"],
        "that rebuild (up to render) takes < 10% of the merged rebuild": lora["rebuild_s"] < 0.1 * merged["rebuild_s"],
    }
    if not args.deploy_only:
        goals["that rebuild with its check takes < 10% of the merged one"] = (
            lora["rebuild_s"] + lora["recheck_s"] < 0.1 * (merged["rebuild_s"] + merged["recheck_s"]))
    print(f"\n{shape.label}: three adapters (r=16, all linear) on one base, Q4_K_M")
    print(f"{'mode':<9}{'build s':>9}{'weights GB':>12}{'deployed GB':>13}{'rebuild s':>11}{'+check s':>10}"
          "  rebuilt tasks")
    for r in results:
        print(f"{r['mode']:<9}{r['build_s']:>9.1f}{r['weight_bytes'] / 1e9:>12.3f}{r['deploy_bytes'] / 1e9:>13.3f}"
              f"{r['rebuild_s']:>11.1f}{r['recheck_s'] or 0.0:>10.1f}  {', '.join(r['rebuild_tasks'])}")
    print(f"bytes adapter/merged: all {lora['weight_bytes'] / merged['weight_bytes']:.3f}, deployed "
          f"{lora['deploy_bytes'] / merged['deploy_bytes']:.3f}; rebuild adapter/merged "
          f"{lora['rebuild_s'] / merged['rebuild_s']:.3f}")
    for goal, met in goals.items():
        print(f"  [{'met' if met else 'MISSED'}] {goal}")
    load = os.getloadavg()[0]
    print(f"load average (1 min): {load:.1f} on {os.cpu_count()} CPUs" + ("  -- machine busy: times are noisy"
                                                                          if load > 1.5 else ""))
    BENCH.mkdir(parents=True, exist_ok=True)
    name = "adapters" + ("" if args.shape == "small" else f"-{args.shape}") + ("-deploy" if args.deploy_only else "")
    (BENCH / f"{name}.json").write_text(json.dumps({"shape": shape.label, "results": results,
                                                    "goals": goals, "load_1min": load,
                                                    "deploy_only": args.deploy_only}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
