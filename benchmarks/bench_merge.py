"""Streaming LoRA merge vs peft's merge_and_unload vs a plain copy, on Qwen2.5-shaped random models.

    python benchmarks/bench_merge.py [--quick]

Builds (once, cached under artifacts/bench/bases, keyed by shape) a random bf16 base shaped like
Qwen2.5-3B (tied embeddings) and one shaped like Qwen2.5-7B (untied), plus an r=16 all-linear LoRA with
non-zero B, writing tensor by tensor so generation never holds a model in memory.  Each measured
operation runs in a fresh subprocess; peak RSS is that child's own high-water mark (VmHWM, which counts
touched mmap pages), cross-checked with wait4()'s ru_maxrss.  Prints a table and writes
artifacts/bench/merge.json.  The machine may be shared: the load average is printed and recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENCH = ROOT / "artifacts" / "bench"
GB = 10**9  # goals use decimal gigabytes (stricter than GiB)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Shape:
    label: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @property
    def key(self) -> str:
        tie = "tied" if self.tied else "untied"
        return (f"qwen2-h{self.hidden}-i{self.intermediate}-l{self.layers}-a{self.heads}-kv{self.kv_heads}"
                f"-v{self.vocab}-{tie}-bf16")

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """Qwen2ForCausalLM's checkpoint layout."""
        h, kv = self.hidden, self.kv_heads * (self.hidden // self.heads)
        out = [("model.embed_tokens.weight", (self.vocab, h))]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,)),
                    (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.q_proj.bias", (h,)),
                    (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.k_proj.bias", (kv,)),
                    (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.v_proj.bias", (kv,)),
                    (p + "self_attn.o_proj.weight", (h, h)),
                    (p + "mlp.gate_proj.weight", (self.intermediate, h)),
                    (p + "mlp.up_proj.weight", (self.intermediate, h)),
                    (p + "mlp.down_proj.weight", (h, self.intermediate))]
        out.append(("model.norm.weight", (h,)))
        if not self.tied:
            out.append(("lm_head.weight", (self.vocab, h)))
        return out

    def config(self) -> dict:
        return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": self.hidden,
                "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads, "vocab_size": self.vocab,
                "tie_word_embeddings": self.tied, "hidden_act": "silu", "max_position_embeddings": 32768,
                "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "dtype": "bfloat16", "bos_token_id": 0,
                "eos_token_id": 0}


FULL = [Shape("Qwen2.5-3B", 2048, 11008, 36, 16, 2, 151936, True),
        Shape("Qwen2.5-7B", 3584, 18944, 28, 28, 4, 152064, False)]
QUICK = [Shape("3B-quick", 256, 1024, 4, 4, 2, 8192, True), Shape("7B-quick", 384, 1536, 4, 6, 2, 8192, False)]


# --- generation (cached) ---------------------------------------------------------------------------------------

def _write_safetensors_dir(out: Path, tensors: list[tuple[str, tuple[int, ...], str]], fill, shard_bytes: int,
                           single_name: str | None = None) -> None:
    """Stream random tensors into shards with the merger's own writer (header first, one tensor in memory)."""
    from tasks.formats.safetensors import INDEX_NAME
    from tasks.merge.shard_layout import OutTensor, index_json, plan_shards, shard_names
    from tasks.merge.shard_writer import ShardWriter

    planned = [OutTensor(n, dt, s) for n, s, dt in tensors]
    shards = plan_shards(planned, shard_bytes)
    names = [single_name] if single_name else shard_names(len(shards))
    for shard, name in zip(shards, names, strict=True):
        with ShardWriter(out / name, shard) as writer:
            for t in writer.order:
                writer.write(t.name, fill(t))
            writer.commit()
    if len(shards) > 1:
        (out / INDEX_NAME).write_bytes(index_json(shards, names))


def ensure_base(shape: Shape) -> Path:
    import torch

    path = BENCH / "bases" / shape.key
    if (path / ".complete").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)

    def fill(t):
        x = torch.empty(t.shape, dtype=torch.bfloat16)
        if len(t.shape) == 1:
            x.fill_(1.0) if t.name.endswith("norm.weight") else x.normal_(0, 0.02, generator=gen)
        else:
            x.normal_(0, 0.02, generator=gen)
        return x.view(-1).view(torch.uint8).numpy()

    t0 = time.perf_counter()
    _write_safetensors_dir(path, [(n, s, "BF16") for n, s in shape.tensors()], fill, 2 * 1024**3)
    (path / "config.json").write_text(json.dumps(shape.config(), indent=2))
    (path / ".complete").write_text(f"{time.perf_counter() - t0:.1f}s\n")
    return path


def ensure_adapter(shape: Shape, r: int = 16) -> Path:
    import torch

    path = BENCH / "adapters" / f"{shape.key}-lora-r{r}"
    if (path / ".complete").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    gen = torch.Generator().manual_seed(1)
    tensors = []
    for name, s in shape.tensors():
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module.rsplit(".", 1)[-1] in TARGETS:
            out_f, in_f = s
            tensors += [(f"base_model.model.{module}.lora_A.weight", (r, in_f), "F32"),
                        (f"base_model.model.{module}.lora_B.weight", (out_f, r), "F32")]

    def fill(t):
        scale = 1 / t.shape[1] ** 0.5 if ".lora_A." in t.name else 0.01  # random, non-zero B
        return torch.empty(t.shape).normal_(0, scale, generator=gen).view(-1).view(torch.uint8).numpy()

    _write_safetensors_dir(path, tensors, fill, 1 << 62, single_name="adapter_model.safetensors")
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r, "lora_dropout": 0.0,
              "target_modules": TARGETS, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
              "use_dora": False, "modules_to_save": None, "init_lora_weights": True, "base_model_name_or_path": None}
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2))
    (path / ".complete").write_text("ok\n")
    return path


# --- measured operations (each in its own process) ----------------------------------------------------------------

def worker(kind: str, base: Path, adapter: Path, out: Path) -> None:
    t0 = time.perf_counter()
    if kind == "stream":
        from tasks.merge.stream import merge_streaming

        out.mkdir()
        merge_streaming(base, adapter, out)
    elif kind == "peft":
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        merged.save_pretrained(out, max_shard_size="2GB")
    elif kind == "copy":
        shutil.copytree(base, out)
    print(json.dumps({"op_seconds": time.perf_counter() - t0, "vm_hwm_kb": _vm_hwm_kb()}))


def _vm_hwm_kb() -> int:
    """This process's own peak RSS (anonymous + file-backed pages, so touched mmap pages count)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@dataclass
class Result:
    shape: str
    op: str
    wall_s: float
    peak_rss_mb: float  # VmHWM of the worker process
    rusage_maxrss_mb: float  # wait4() ru_maxrss: includes the launcher's RSS at exec, so only an upper bound
    op_s: float  # inside the worker, without interpreter start-up
    output_gb: float


def measure(kind: str, shape: Shape, base: Path, adapter: Path) -> Result:
    out = BENCH / "work" / f"{shape.key}-{kind}"
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--worker", kind, str(base), str(adapter), str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child only (RUSAGE_CHILDREN would be a running max)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = proc.stdout.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{kind} on {shape.label} failed (exit {proc.returncode}): {stdout[-2000:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    size = sum(p.stat().st_size for p in out.iterdir() if p.suffix == ".safetensors")
    return Result(shape.label, kind, wall, report["vm_hwm_kb"] / 1024, usage.ru_maxrss / 1024, report["op_seconds"],
                  size / GB)


def spot_check(a: Path, b: Path, shape: Shape) -> bool:
    """A few merged and copied tensors of the streaming output equal peft's, bit for bit."""
    import torch
    from safetensors import safe_open

    def find(d: Path, name: str):
        index = d / "model.safetensors.index.json"
        file = json.loads(index.read_text())["weight_map"][name] if index.exists() else "model.safetensors"
        with safe_open(d / file, "pt") as f:
            return f.get_tensor(name)

    last = shape.layers - 1
    names = ["model.layers.0.self_attn.q_proj.weight", f"model.layers.{last}.mlp.down_proj.weight",
             "model.layers.0.self_attn.k_proj.bias", "model.norm.weight"]
    return all(torch.equal(find(a, n), find(b, n)) for n in names)


def generate(shape: Shape) -> tuple[Path, Path]:
    """Build (or find cached) base + adapter in a child, so this launcher never imports torch: a child
    started with vfork+exec inherits the launcher's RSS in its ru_maxrss."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--generate", str((QUICK + FULL).index(shape))],
                         check=True, capture_output=True, text=True).stdout.split()
    print(f"  base+adapter {shape.label}: ready in {time.perf_counter() - t0:.1f} s", flush=True)
    return Path(out[0]), Path(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke run")
    parser.add_argument("--worker", nargs=4, metavar=("KIND", "BASE", "ADAPTER", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], *map(Path, args.worker[1:]))
        return
    if args.generate is not None:
        shape = (QUICK + FULL)[args.generate]
        print(ensure_base(shape), ensure_adapter(shape))
        return
    shapes = QUICK if args.quick else FULL
    started = time.perf_counter()
    load_before = os.getloadavg()
    results: list[Result] = []
    small, large = shapes
    base, adapter = generate(small)
    for kind in ("stream", "peft", "copy"):
        results.append(measure(kind, small, base, adapter))
        print(f"  {kind:<6} {small.label}: {results[-1].wall_s:6.1f} s  {results[-1].peak_rss_mb:8.0f} MB", flush=True)
    identical = spot_check(BENCH / "work" / f"{small.key}-stream", BENCH / "work" / f"{small.key}-peft", small)
    for kind in ("stream", "peft", "copy"):
        shutil.rmtree(BENCH / "work" / f"{small.key}-{kind}", ignore_errors=True)
    base, adapter = generate(large)
    results.append(measure("stream", large, base, adapter))
    shutil.rmtree(BENCH / "work" / f"{large.key}-stream", ignore_errors=True)

    r = {(x.shape, x.op): x for x in results}
    s, p, c, s7 = (r[(small.label, "stream")], r[(small.label, "peft")], r[(small.label, "copy")],
                   r[(large.label, "stream")])
    goals = {
        f"{small.label}: stream peak RSS >= 8x lower than peft": p.peak_rss_mb >= 8 * s.peak_rss_mb,
        f"{small.label}: stream peak RSS < 1 GB": s.peak_rss_mb * 1024**2 < 1 * GB,
        f"{small.label}: stream wall <= peft wall": s.wall_s <= p.wall_s,
        f"{small.label}: stream wall <= 2x copy": s.wall_s <= 2 * c.wall_s,
        f"{large.label}: stream peak RSS < 1.2 GB": s7.peak_rss_mb * 1024**2 < 1.2 * GB,
        f"{small.label}: spot-checked tensors bit-identical to peft": identical,
    }
    print(f"\n{'shape':<12} {'operation':<10} {'wall s':>8} {'in-proc s':>10} {'peak RSS MB':>12} "
          f"{'maxrss MB':>10} {'output GB':>10}")
    for x in results:
        print(f"{x.shape:<12} {x.op:<10} {x.wall_s:8.1f} {x.op_s:10.1f} {x.peak_rss_mb:12.0f} "
              f"{x.rusage_maxrss_mb:10.0f} {x.output_gb:10.2f}")
    print(f"\nRSS ratio peft/stream: {p.peak_rss_mb / s.peak_rss_mb:.1f}x; "
          f"wall stream/copy: {s.wall_s / c.wall_s:.2f}x; wall stream/peft: {s.wall_s / p.wall_s:.2f}x")
    if args.quick:
        print("  (--quick: smoke run; the goals are calibrated for the full shapes, fixed costs dominate here)")
    for goal, met in goals.items():
        print(f"  [{'met' if met else 'MISSED'}] {goal}")
    load_after = os.getloadavg()
    print(f"load average (1 min) before/after: {load_before[0]:.1f} / {load_after[0]:.1f} on {os.cpu_count()} CPUs"
          + ("  -- machine busy: wall times are noisy" if max(load_before[0], load_after[0]) > 1.5 else ""))
    BENCH.mkdir(parents=True, exist_ok=True)
    report = {"quick": args.quick, "shapes": [asdict(x) for x in shapes], "results": [asdict(x) for x in results],
              "goals": goals, "total_seconds": time.perf_counter() - started, "cpus": os.cpu_count(),
              "loadavg_before": load_before, "loadavg_after": load_after,
              "notes": "stream fsyncs its output (O_DIRECT); copytree leaves dirty pages in the page cache"}
    (BENCH / "merge.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {BENCH / 'merge.json'} ({report['total_seconds']:.0f} s total)")


if __name__ == "__main__":
    main()
