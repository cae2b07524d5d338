"""No-op `make all` and cold hash verification on a workspace with at least 10 GB of real artifacts.

    python benchmarks/bench_build.py [--quick]

Builds (once; content-keyed, so a rerun finds it fresh) a Qwen2-1.5B-shaped random bf16 base with the
demo's tokenizer and a small LoRA, then the real pipeline: merge, F16 GGUF and four quantizations
(about 11 GB of artifacts). Then measures:
- no-op `make all` wall time (goal < 1.5 s), through the Makefile exactly as a user runs it;
- cold verification: the same no-op build after deleting the digest cache, so every artifact is re-hashed,
  against `sha256sum` over the same files (goal: throughput ratio >= 0.8). Both run with the files in the
  page cache (sha256sum goes first and warms it), so the figure compares hashing, not the disk.
Prints a table and writes artifacts/bench/build.json.
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

FULL = {"hidden": 1536, "intermediate": 8960, "layers": 28, "heads": 12, "kv_heads": 2, "quants":
        ["q8_0", "q6_k", "q5_k_m", "q4_k_m"]}
QUICK = {"hidden": 512, "intermediate": 1536, "layers": 4, "heads": 8, "kv_heads": 2, "quants": ["q8_0"]}


def write_base(dest: Path, shape: dict, tokenizer_src: Path) -> None:
    """A random bf16 Qwen2 written tensor by tensor (no model object), with the demo's tokenizer."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    if (dest / ".complete").is_file():
        return
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    h, i, kv = shape["hidden"], shape["intermediate"], shape["kv_heads"] * (shape["hidden"] // shape["heads"])
    rng = np.random.default_rng(0)

    def rand(*dims: int) -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal(dims, dtype=np.float32) * 0.02).to(torch.bfloat16)

    vocab = 151936
    shards = [{"model.embed_tokens.weight": rand(vocab, h), "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}]
    for layer in range(shape["layers"]):
        p = f"model.layers.{layer}."
        t = {
            p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "self_attn.q_proj.weight": rand(h, h), p + "self_attn.q_proj.bias": rand(h),
            p + "self_attn.k_proj.weight": rand(kv, h), p + "self_attn.k_proj.bias": rand(kv),
            p + "self_attn.v_proj.weight": rand(kv, h), p + "self_attn.v_proj.bias": rand(kv),
            p + "self_attn.o_proj.weight": rand(h, h),
            p + "mlp.gate_proj.weight": rand(i, h), p + "mlp.up_proj.weight": rand(i, h),
            p + "mlp.down_proj.weight": rand(h, i),
        }
        shards.append(t)
    # Group layers into ~2 GB shards, as a real checkpoint would be.
    groups, current, size = [], {}, 0
    for t in shards:
        current.update(t)
        size += sum(v.numel() * 2 for v in t.values())
        if size > 2e9:
            groups.append(current)
            current, size = {}, 0
    if current:
        groups.append(current)
    weight_map = {}
    for n, group in enumerate(groups, 1):
        name = f"model-{n:05d}-of-{len(groups):05d}.safetensors"
        save_file(group, str(dest / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in group})
    (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = json.loads((tokenizer_src / "config.json").read_text())
    config.update(hidden_size=h, intermediate_size=i, num_hidden_layers=shape["layers"],
                  num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                  layer_types=["full_attention"] * shape["layers"])
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copyfile(tokenizer_src / name, dest / name)
    (dest / ".complete").write_text("ok\n")


def write_adapter(dest: Path, shape: dict) -> None:
    import torch
    from safetensors.torch import save_file

    if (dest / "adapter_model.safetensors").is_file():
        return
    dest.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    h, r = shape["hidden"], 8
    tensors = {}
    for layer in range(shape["layers"]):
        for mod, out in (("q_proj", h), ("o_proj", h)):
            key = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, h, generator=g) * 0.05
            tensors[f"{key}.lora_B.weight"] = torch.randn(out, r, generator=g) * 0.05
    save_file(tensors, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})
    (dest / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": ["o_proj", "q_proj"],
        "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM", "fan_in_fan_out": False,
        "base_model_name_or_path": "bench-base",
    }, indent=2))


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(quick: bool) -> dict:
    shape = QUICK if quick else FULL
    ws = BENCH / ("build-ws-quick" if quick else "build-ws")
    ws.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MODELMAKE_CONFIG": str(ws / "models.toml")}
    (ws / "models.toml").write_text(f"""
[build]
artifacts = "artifacts"
[models.big]
base = "base"
adapter = "adapter"
merge = "stream"
quants = {json.dumps(shape["quants"])}
# Random weights: near-flat logits, so quality gates say nothing here; this benchmark is about bytes.
[models.big.gates]
min_top1 = 0.0
max_logit_diff = 100.0
min_quant_top1 = 0.0
max_kl_mean = 100.0
min_adapter_retention = 0.0
""")
    demo_base = ROOT / "artifacts" / "fixtures" / "demo-base"
    if not demo_base.is_dir():
        subprocess.run([sys.executable, "-m", "doit", "fixture:demo-base"], cwd=ROOT, check=True)
    write_base(ws / "base", shape, demo_base)
    write_adapter(ws / "adapter", shape)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py")], env=env, cwd=ROOT, check=True)
    build_s = time.perf_counter() - start

    files = [p for p in (ws / "artifacts").rglob("*") if p.is_file() and ".cache" not in p.parts]
    total = sum(p.stat().st_size for p in files)
    noop = [timed(["make", "-s", "all"], env) for _ in range(5)]

    sha_s = timed(["sha256sum", *map(str, files)], env)
    shutil.rmtree(ws / "artifacts" / ".cache", ignore_errors=True)
    cold_s = timed([sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py")], env)
    result = {
        "artifacts_bytes": total,
        "artifact_files": len(files),
        "first_build_s": round(build_s, 2),
        "noop_make_all_s": {
            "min": round(min(noop), 3), "median": round(sorted(noop)[2], 3), "max": round(max(noop), 3),
        },
        "noop_goal_s": 1.5,
        "cold_verify_s": round(cold_s, 2),
        "sha256sum_s": round(sha_s, 2),
        "cold_verify_throughput_ratio": round(sha_s / cold_s, 3),
        "ratio_goal": 0.8,
        "quick": quick,
    }
    rows = [
        ("artifacts", f"{total / 1e9:.2f} GB in {len(files)} files", ""),
        ("no-op `make all` (median of 5)", f"{result['noop_make_all_s']['median']:.3f} s", "goal < 1.5 s"),
        ("cold verification (no digest cache)", f"{cold_s:.2f} s ({total / cold_s / 1e9:.2f} GB/s)", ""),
        ("sha256sum, same files", f"{sha_s:.2f} s ({total / sha_s / 1e9:.2f} GB/s)", ""),
        ("throughput ratio ours/sha256sum", f"{result['cold_verify_throughput_ratio']:.2f}", "goal >= 0.8"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\nbench_build{' (quick)' if quick else ''}")
    for name, value, goal in rows:
        print(f"  {name:<{width}}  {value:<32} {goal}")
    BENCH.mkdir(parents=True, exist_ok=True)
    (BENCH / "build.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes: a smoke run")
    main(parser.parse_args().quick)
