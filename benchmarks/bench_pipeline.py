"""The whole default build of a real-size model, stage by stage, under a memory cap, against the disk's limits.

    python benchmarks/bench_pipeline.py [--shape 3b|7b] [--cap 7] [--memcap PATH] [--quick] [--keep]
                                        [--only TASK ...]

Builds (cached, bench_merge's generator) a random bf16 base shaped like Qwen2.5-3B (tied, 6.2 GB;
the default) or Qwen2.5-7B (untied, 15.2 GB; opt-in: about 60 GB of disk, deleted afterwards)
with the demo's tokenizer and chat template, and an r=16 all-linear LoRA. Then runs every stage
of the default build (adapter, merge, convert, each quantization, render, check, then doit's
plan and lock) in a fresh process under `memcap CAP` with MEMCAP_DROP_CACHES=1, and records
per stage: pass/OOM, wall, peak RSS, anonymous peak, bytes read and written (pipeline_run.py
says how), and its physical limit:
- merge, convert, check: the bytes they must move (inputs read once, outputs written once) at
  this disk's sequential throughput, measured in the same run (pipeline_disk.py);
- quantize (compute-bound): the same quantization by llama.cpp's own loop on the same file
  (llama_model_quantize called directly, same threads, same cap, caches dropped).
Then the check's figures are recomputed the previous way, probe after probe, and must equal
check.json (pipeline_reference.py). Prints a table and writes artifacts/bench/pipeline[-7b].json.
Without memcap (it needs root and cgroup v1) the stages run uncapped and the table says so.
`--only check:big` (after a run with --keep) rebuilds just the named stages in the kept workspace,
measures them and the disk again, and takes every other figure from the previous JSON (the table
marks those rows): what a change to one stage needs, without rebuilding the model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import pipeline_disk  # noqa: E402
import pipeline_run  # noqa: E402
from bench_merge import BENCH, FULL, GB, Shape  # noqa: E402

SHAPES = {"3b": FULL[0], "7b": FULL[1], "quick": Shape("quick", 256, 1024, 2, 4, 2, 151936, True)}
QUANTS = ["q8_0", "q4_k_m"]  # the default build's
SUPPORT = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
# Random weights: near-flat logits, so quality gates say nothing here; this benchmark is about memory and bytes.
GATES = """[models.big.gates]
min_top1 = 0.0
max_logit_diff = 1000.0
min_quant_top1 = 0.0
max_kl_mean = 1000.0
max_kl_p99 = 1000.0
min_adapter_retention = 0.0
"""


def workspace(shape: Shape, base: Path, adapter: Path, ws: Path) -> Path:
    """models.toml + base/ (the generated shards, hard-linked, with the demo's tokenizer) + adapter/."""
    demo = ROOT / "artifacts" / "fixtures" / "demo-base"
    if not demo.is_dir():
        subprocess.run([sys.executable, "-m", "doit", "fixture:demo-base"], cwd=ROOT, check=True)
    shutil.rmtree(ws, ignore_errors=True)
    (ws / "base").mkdir(parents=True)
    for src_dir, dest in ((base, ws / "base"), (adapter, ws / "adapter")):
        dest.mkdir(exist_ok=True)
        for f in src_dir.iterdir():
            if f.suffix == ".safetensors" or f.name in ("model.safetensors.index.json", "adapter_config.json"):
                try:
                    os.link(f, dest / f.name)
                except OSError:
                    shutil.copyfile(f, dest / f.name)
    config = json.loads((demo / "config.json").read_text())
    config.update(hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                  num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, vocab_size=shape.vocab,
                  tie_word_embeddings=shape.tied, max_window_layers=shape.layers,
                  layer_types=["full_attention"] * shape.layers, initializer_range=0.02)
    (ws / "base" / "config.json").write_text(json.dumps(config, indent=2))
    for name in SUPPORT:
        shutil.copyfile(demo / name, ws / "base" / name)
    (ws / "models.toml").write_text(f"""[build]
artifacts = "artifacts"
threads = 2
[models.big]
base = "base"
adapter = "adapter"
quants = {json.dumps(QUANTS)}
{GATES}""")
    shutil.copytree(ROOT / "templates", ws / "templates")
    return ws / "models.toml"


def generate(shape: Shape) -> tuple[Path, Path]:
    """The random base and adapter (bench_merge's generator, cached), built in a child: this launcher stays
    small, so the children it starts do not inherit a large RSS into their high-water marks."""
    code = ("import json, sys; from bench_merge import Shape, ensure_base, ensure_adapter\n"
            "s = Shape(**json.loads(sys.argv[1])); print(ensure_base(s), ensure_adapter(s))")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(shape))], cwd=HERE, check=True,
                         capture_output=True, text=True).stdout.split()
    print(f"  base+adapter {shape.label}: ready in {time.perf_counter() - t0:.1f} s", flush=True)
    return Path(out[0]), Path(out[1])


def tree_bytes(path: Path, suffixes: tuple[str, ...] = (".safetensors", ".gguf")) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files if p.suffix in suffixes)


def quantize_loop(src: Path, qtype: str, scratch: Path, memcap: str | None, cap: float) -> pipeline_run.Measured:
    """llama.cpp's own quantize loop on the same file: the C call and nothing else."""
    code = ("import ctypes, sys, llama_cpp; from tasks.core.quant_types import QUANT_FTYPES\n"
            "p = llama_cpp.llama_model_quantize_default_params(); p.ftype = QUANT_FTYPES[sys.argv[3]]; p.nthread = 2\n"
            "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))")
    out = pipeline_run.run(f"llama.cpp quantize {qtype}", [sys.executable, "-c", code, str(src), str(scratch), qtype],
                           cwd=ROOT, env=dict(os.environ), memcap=memcap, cap_gib=cap)
    scratch.unlink(missing_ok=True)
    return out


def _previous(path: Path, ws: Path, stages: list[str], only: list[str]
              ) -> tuple[dict[str, pipeline_run.Measured], dict[str, pipeline_run.Measured]]:
    """The previous run's measurements (stages and quantize loops), for the rows `--only` does not rerun."""
    if not (ws / "models.toml").is_file() or not path.is_file():
        raise SystemExit(f"bench_pipeline: --only needs the workspace and JSON of a previous --keep run "
                         f"({ws}, {path})")
    unknown = [t for t in only if t not in stages]
    if unknown:
        raise SystemExit(f"bench_pipeline: --only: no stage named {', '.join(unknown)} (stages: {', '.join(stages)})")
    data = json.loads(path.read_text())
    names = {f.name for f in fields(pipeline_run.Measured)}

    def measured(d: dict) -> pipeline_run.Measured:
        return pipeline_run.Measured(**{k: v for k, v in d.items() if k in names})
    return ({d["name"]: measured(d) for d in data["stages"]},
            {q: measured(d) for q, d in data["quantize_loops"].items()})


def _reused(previous: dict, loops: dict, only: list[str] | None) -> set[str]:
    """Names of the table's rows that `--only` took from the previous run."""
    if not only:
        return set()
    rerun_loops = any(t.startswith("quantize:") for t in only)
    return (set(previous) - set(only)) | (set() if rerun_loops else {m.name for m in loops.values()})


def _unbuild(ws: Path, task: str) -> None:
    """Remove a stage's manifest so that the runner builds it again (a kept workspace has it built)."""
    kind, _, target = task.partition(":")
    suffix = target.removeprefix("big").removeprefix("-")
    (ws / "artifacts" / "big" / "manifests" / (f"{kind}-{suffix}.json" if suffix else f"{kind}.json")).unlink(
        missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("3b", "7b"), default="3b")
    parser.add_argument("--quick", action="store_true", help="a 2-layer model: a smoke run of the benchmark itself")
    parser.add_argument("--cap", type=float, default=7.0, help="memory cap in GiB (default 7, a CI runner)")
    parser.add_argument("--memcap", default=os.environ.get("MEMCAP") or shutil.which("memcap"),
                        help="the memcap tool (default: $MEMCAP or memcap on PATH)")
    parser.add_argument("--keep", action="store_true", help="keep the generated models and workspace")
    parser.add_argument("--no-reference", action="store_true", help="skip recomputing the check the previous way")
    parser.add_argument("--only", nargs="+", metavar="TASK",
                        help="rerun only these stages in the workspace kept by a previous --keep run")
    args = parser.parse_args()
    shape = SHAPES["quick" if args.quick else args.shape]
    name = "pipeline" + ("-quick" if args.quick else "" if args.shape == "3b" else f"-{args.shape}")
    memcap = args.memcap if args.memcap and Path(args.memcap).is_file() else None
    from pipeline_report import disk_needed, report

    free = shutil.disk_usage(BENCH.parent if BENCH.parent.exists() else ROOT).free
    if free < disk_needed(shape):
        print(f"bench_pipeline: {free / GB:.0f} GB free, {shape.label} needs about {disk_needed(shape) / GB:.0f} GB",
              file=sys.stderr)
        return 2
    cached = (BENCH / "bases" / shape.key / ".complete").exists()
    started = time.perf_counter()
    ws = BENCH / "work" / name
    stages = ["adapter:big", "merge:big", "convert:big", *(f"quantize:big-{q}" for q in QUANTS), "render:big",
              "check:big"]
    previous: dict[str, pipeline_run.Measured] = {}
    if args.only:
        previous, loops = _previous(BENCH / f"{name}.json", ws, stages, args.only)
        base, adapter, config, cached = ws / "base", ws / "adapter", ws / "models.toml", True
        args.keep = True
    else:
        base, adapter = generate(shape)
        config = workspace(shape, base, adapter, ws)
    env = {**os.environ, "MODELMAKE_CONFIG": str(config)}
    disk = pipeline_disk.measure(sorted((ws / "base").glob("*.safetensors")), ws / "scratch.bin")
    results: list[pipeline_run.Measured] = []
    try:
        for task in stages:
            if args.only and task not in args.only:
                results.append(previous[task])
                continue
            _unbuild(ws, task)
            cmd = [sys.executable, "-m", "tasks.build.runner", "--config", str(config), task]
            results.append(pipeline_run.run(task, cmd, cwd=ROOT, env=env, memcap=memcap, cap_gib=args.cap))
            r = results[-1]
            print(f"  {task:<22} {'ok' if r.passed else 'FAILED'} {r.wall_s:7.1f} s  anon {r.anon_peak / GB:5.2f} GB  "
                  f"read {r.read_bytes / GB:6.1f} GB", flush=True)
            if not r.passed:
                print(r.stderr_tail, file=sys.stderr)
                break
        if args.only and "plan+lock (doit)" in previous:
            results.append(previous["plan+lock (doit)"])
        elif all(r.passed for r in results):
            cmd = [sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py")]
            results.append(pipeline_run.run("plan+lock (doit)", cmd, cwd=ROOT, env=env, memcap=memcap,
                                            cap_gib=args.cap))
        art = ws / "artifacts" / "big"
        if not args.only or any(t.startswith("quantize:") for t in args.only):
            loops = {q: quantize_loop(art / "big-f16.gguf", q, ws / f"loop-{q}.gguf", memcap, args.cap)
                     for q in QUANTS if (art / "big-f16.gguf").is_file()}
        reference = None
        if not args.no_reference and (art / "check.json").is_file() and (not args.only or "check:big" in args.only):
            proc = subprocess.run([sys.executable, str(HERE / "pipeline_reference.py"), str(config), "big"],
                                  cwd=ROOT, env=env, capture_output=True, text=True)
            lines = proc.stdout.strip().splitlines()
            reference = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
                "identical": False, "differences": [proc.stderr[-500:]], "seconds": None}
        sizes = {"base": tree_bytes(ws / "base"), "adapter": tree_bytes(ws / "adapter"),
                 "merged": tree_bytes(art / "merged"),
                 **{g: tree_bytes(art / f"big-{g}.gguf") for g in ["f16", *QUANTS] if (art / f"big-{g}.gguf").exists()}}
        check_json = json.loads((art / "check.json").read_text()) if (art / "check.json").is_file() else None
        data = report(shape, args, memcap, disk, results, loops, reference, sizes, check_json, name,
                      reused=_reused(previous, loops, args.only))
    finally:
        if not args.keep:
            shutil.rmtree(ws, ignore_errors=True)
            if not cached:  # generated by this run: delete (7B: ~15 GB base)
                shutil.rmtree(base, ignore_errors=True)
                shutil.rmtree(adapter, ignore_errors=True)
    data["total_seconds"] = round(time.perf_counter() - started, 1)
    BENCH.mkdir(parents=True, exist_ok=True)
    (BENCH / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nwrote {BENCH / f'{name}.json'} ({data['total_seconds']:.0f} s total)")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
