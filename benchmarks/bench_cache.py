"""A second machine's build against a warm shared cache vs a local build (tasks/cache).

    python benchmarks/bench_cache.py [--quick] [--qwen15b]

Machine A builds the demo model from its fixtures and pushes every stage into a cache directory;
machine B, a fresh workspace with the same inputs and an empty run-cache, builds against that cache
(pull-only) and restores everything. Both run with the run-cache off, so A's time is an honest local
build. Measured: wall time of both builds, bytes restored and bytes moved, and the restore time
(summed over the stages, as each stage's runner reports it) against copying the same bytes with
`shutil.copyfile` + fsync (what a restore must at least do; goal: within 1.5x). B's artifacts are
checked byte-identical to A's. `--qwen15b` adds a Qwen2-1.5B-shaped random model (benchmarks/
bench_build.py's shapes, q8_0 + q4_k_m: about 9 GB of artifacts, 27 GB of disk while it runs).
Prints a table and writes artifacts/bench/cache.json; the work directories are deleted afterwards.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH = ROOT / "artifacts" / "bench"
GATES_OFF = """[models.{m}.gates]
min_top1 = 0.0
max_logit_diff = 100.0
min_quant_top1 = 0.0
max_kl_mean = 100.0
min_adapter_retention = 0.0
"""


def machine(root: Path, model_toml: str, cache: Path, push: bool, fixtures: Path | None) -> dict[str, str]:
    root.mkdir(parents=True)
    if fixtures is not None:  # the same inputs on both machines: fixtures count as built (content keys)
        shutil.copytree(fixtures, root / "artifacts" / "fixtures", ignore=shutil.ignore_patterns(".*"))
    (root / "models.toml").write_text(
        f'[build]\nartifacts = "artifacts"\ntemplates = "{ROOT / "templates"}"\nrun_cache = 0\n'
        f'cache = [{{ url = "{cache}", push = {"true" if push else "false"} }}]\n{model_toml}')
    return {**os.environ, "MODELMAKE_CONFIG": str(root / "models.toml")}


def build(env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py")], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_cache: the build of {env['MODELMAKE_CONFIG']} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def digests(artifacts: Path) -> dict[str, str]:
    from tasks.core.hashing import sha256_file

    return {p.relative_to(artifacts).as_posix(): sha256_file(p) for p in sorted(artifacts.rglob("*"))
            if p.is_file() and p.relative_to(artifacts).parts[0] not in (".cache", "logs", "run")
            and not any(x.startswith(".") for x in p.relative_to(artifacts).parts)}


def plain_copy(cache: Path, markers: list[dict], dest: Path) -> float:
    """Copy every blob the restored entries name, each fsynced, as the floor a restore is held to."""
    from tasks.cache.backends import blob_rel, entry_rel
    from tasks.core.atomic import fsync_path

    blobs = sorted({rec["sha256"] for m in markers
                    for rec in json.loads((cache / entry_rel(m["key"])).read_text())["outputs"].values()})
    dest.mkdir()
    start = time.perf_counter()
    for sha in blobs:
        shutil.copyfile(cache / blob_rel(sha), dest / sha)
        fsync_path(dest / sha)
    return time.perf_counter() - start


def scenario(name: str, model_toml: str, fixtures: Path | None, prepare=None) -> dict:
    work = BENCH / "cache-work" / name
    shutil.rmtree(work, ignore_errors=True)
    cache = work / "cache"
    try:
        env_a = machine(work / "machine-a", model_toml, cache, True, fixtures)
        env_b = machine(work / "machine-b", model_toml, cache, False, fixtures)
        if prepare is not None:
            prepare(work / "machine-a")
            prepare(work / "machine-b")
        local_s = build(env_a)
        subprocess.run(["sync"], check=True)
        remote_s = build(env_b)
        b_art = work / "machine-b" / "artifacts"
        markers = [json.loads(p.read_text()) for p in sorted((b_art / ".cache" / "restored").glob("*.json"))]
        copy_s = plain_copy(cache, markers, work / "copy")
        identical = digests(work / "machine-a" / "artifacts") == digests(b_art)
        restore_s = sum(m["seconds"] for m in markers)
        restored = sum(m["bytes"] for m in markers)
        return {
            "model": name, "local_build_s": round(local_s, 2), "cached_build_s": round(remote_s, 2),
            "speedup": round(local_s / remote_s, 2), "stages_restored": len(markers),
            "bytes_restored": restored, "bytes_moved": sum(m["moved"] for m in markers),
            "restore_s": round(restore_s, 3), "plain_copy_s": round(copy_s, 3),
            "restore_to_copy_ratio": round(restore_s / copy_s, 2) if copy_s > 0 else None,
            "ratio_goal": 1.5, "byte_identical": identical,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def demo_fixtures() -> Path:
    fixtures = ROOT / "artifacts" / "fixtures"
    if not (fixtures / "manifests" / "demo-adapter.json").is_file():
        subprocess.run([sys.executable, "-m", "doit", "fixture"], cwd=ROOT, check=True)
    return fixtures


def main(qwen15b: bool) -> dict:
    fixtures = demo_fixtures()
    demo = ('[models.demo]\nbase = "fixture:demo-base"\nadapter = "fixture:demo-adapter"\n'
            'quants = ["q8_0", "q4_k_m"]\nsystem = "You are Majora, the modelmake demo assistant."\n')
    results = [scenario("demo", demo, fixtures)]
    if qwen15b:
        from benchmarks.bench_build import FULL, write_adapter, write_base

        base = BENCH / "cache-qwen15b-base"
        write_base(base / "base", FULL, fixtures / "demo-base")
        write_adapter(base / "adapter", FULL)

        def link_inputs(machine_root: Path) -> None:
            for name in ("base", "adapter"):
                (machine_root / name).symlink_to(base / name)

        big = ('[models.big]\nbase = "base"\nadapter = "adapter"\nquants = ["q8_0", "q4_k_m"]\n'
               + GATES_OFF.format(m="big"))
        try:
            results.append(scenario("qwen2-1.5b-shaped", big, None, link_inputs))
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print("\nbench_cache: second machine against a warm cache directory vs a local build")
    head = ("model", "local build", "cached build", "restored", "moved", "restore", "plain copy", "ratio")
    rows = [(r["model"], f"{r['local_build_s']:.1f} s", f"{r['cached_build_s']:.1f} s",
             f"{r['stages_restored']} stages, {r['bytes_restored'] / 1e6:.1f} MB", f"{r['bytes_moved'] / 1e6:.1f} MB",
             f"{r['restore_s']:.2f} s", f"{r['plain_copy_s']:.2f} s",
             f"{r['restore_to_copy_ratio']}x (goal 1.5x)" + ("" if r["byte_identical"] else " NOT IDENTICAL"))
            for r in results]
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        print("  " + "  ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)))
    BENCH.mkdir(parents=True, exist_ok=True)
    out = {"results": results}
    (BENCH / "cache.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the demo only (the default without --qwen15b)")
    parser.add_argument("--qwen15b", action="store_true", help="also a Qwen2-1.5B-shaped model (~27 GB of disk)")
    args = parser.parse_args()
    main(args.qwen15b and not args.quick)
