"""Memory the build itself needs, stage by stage, against what this machine (or its cgroup) allows.

A 7 GB CI runner or a 16 GB laptop runs every stage of `make all`. What can fail is anonymous
memory: weights are memory-mapped (merge, convert, quantize, check all read them through the
page cache, which the kernel evicts under pressure), so a stage's expected peak is the memory it
allocates itself, estimated from the model's safetensors headers and the evaluation set:
- merge (stream): a few copies of the largest adapted tensor and its float32 delta
  (tasks/merge_stream.py); merge (peft) holds the whole model;
- convert: llama.cpp's converter widens one tensor to float32 and writes it as 16-bit, so twice
  the largest tensor's float32 size;
- quantize: llama.cpp holds the largest tensor in float32 plus its quantized copy;
- check: every probe's logits for a few models at once (positions x vocabulary float32), one
  block of float32 weights (tasks/lockstep.py) and llama.cpp's batch (tasks/llama_batch_eval.py),
  plus the weights llama.cpp repacks into memory at load (Q4_K and Q4_0 on x86: most of a Q4_K_M
  file; it does the same when it serves the model).
Each adds the interpreter and libraries of its process. The constants come from
benchmarks/bench_pipeline.py (anonymous peaks measured per stage at 3B and 7B shape; the
estimates are set a little above them). `doit plan:<model>` prints the table; a stage whose
estimate exceeds the limit says so in one line before it starts (and still tries).

The limit is MODELMAKE_MEMORY_GB if set, else the smallest of MemTotal and every memory cgroup
(v1 memory.limit_in_bytes or v2 memory.max) from this process's group up to the root. Light
module: no torch, no numpy.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.errors import UserError
from tasks.formats.safetensors import TensorInfo, read_header

ENV = "MODELMAKE_MEMORY_GB"
GB = 10**9
UNLIMITED = 1 << 60  # cgroup v1 writes 2^63 - 4096 for "no limit"
# Anonymous memory of each kind of process before it holds any model data (measured, rounded up).
IMATRIX_CHUNK = 512  # tokens per imatrix decode (tasks/core/config/imatrix.py DEFAULT_CHUNK)
RUNTIME = {"torch": 0.5 * GB, "converter": 0.45 * GB, "llama": 0.15 * GB, "light": 0.15 * GB}
LOGIT_SETS = 4  # check: every probe's logits of base, base+adapter, merged and one GGUF, alive at once
CHECK_BLOCK = 2 * 64 * 1024**2  # tasks.lockstep.BLOCK_LIMIT: a widened block and a head chunk
LLAMA_BATCH = 2  # llama.cpp keeps the batch's logits twice (graph output and output buffer)
# Share of a GGUF's bytes llama.cpp repacks into memory at load on x86 (AVX2): its Q4_K / Q4_0 / IQ4_NL tensors.
REPACKED = {"q4_k_m": 0.8, "q4_k_s": 0.95, "q4_0": 0.95, "iq4_nl": 0.95}


@dataclass(frozen=True)
class Limit:
    bytes: int
    source: str


def memory_limit(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> Limit:
    """The memory this process may use: MemTotal, or a smaller cgroup limit (v1 or v2, any ancestor).
    MODELMAKE_MEMORY_GB overrides it (plan for a 7 GB runner from a bigger machine)."""
    override = os.environ.get(ENV)
    if override:
        try:
            return Limit(int(float(override) * GB), ENV)
        except ValueError:
            raise UserError(f"{ENV}: expected a number of GB, got {override!r}") from None
    best = Limit(_meminfo_total(proc), "MemTotal (/proc/meminfo)")
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, group = parts
        if controllers == "":
            base, name, kind = cgroup_root, "memory.max", "cgroup v2"
            if (cgroup_root / "unified").is_dir() and not (cgroup_root / "cgroup.controllers").exists():
                base = cgroup_root / "unified"  # hybrid layout
        elif "memory" in controllers.split(","):
            base, name, kind = cgroup_root / "memory", "memory.limit_in_bytes", "cgroup v1"
        else:
            continue
        path = Path(group.lstrip("/"))
        for d in [path, *path.parents]:
            value = _read_limit(base / d / name)
            if value is not None and value < best.bytes:
                best = Limit(value, f"{kind} /{'' if d == Path('.') else d.as_posix()}")
    return best


def _meminfo_total(proc: Path) -> int:
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return UNLIMITED


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None  # "max": no limit here
    value = int(text)
    return value if value < UNLIMITED else None


@dataclass(frozen=True)
class ModelFacts:
    """What the build's memory depends on, from headers and config files only."""

    params: int
    dtype_bytes: int
    largest: int  # elements of the largest tensor
    largest_adapted: int  # elements of the largest tensor the adapter changes
    vocab: int
    positions: int  # tokens of the evaluation set, estimated


def _headers(model_dir: Path) -> dict[str, TensorInfo]:
    return {k: v for f in sorted(model_dir.glob("*.safetensors")) for k, v in read_header(f).items()}


def estimate_positions(eval_samples: Path) -> int:
    """Tokens of the rendered evaluation set: about 4 characters per token plus the template's
    tokens per message (the demo's 8 samples: 333 estimated, 318 measured)."""
    chars = messages = 0
    try:
        for line in eval_samples.read_text(encoding="utf-8").splitlines():
            if line.strip():
                msgs = json.loads(line).get("messages", [])
                chars += sum(len(str(m.get("content", ""))) for m in msgs)
                messages += len(msgs)
    except (OSError, ValueError, AttributeError):
        return 0
    return chars // 4 + 6 * messages


def model_facts(base: Path, adapter: Path, eval_samples: Path) -> ModelFacts | None:
    """None when the base is not there yet (a remote source not fetched) or unreadable."""
    try:
        tensors = _headers(base)
        adapted_modules = {k.split(".lora_A")[0].removeprefix("base_model.model.")
                           for k in _headers(adapter) if ".lora_A" in k}
        config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UserError):
        return None
    if not tensors:
        return None
    sizes = {k: math.prod(v.shape) for k, v in tensors.items()}
    adapted = [n for k, n in sizes.items() if k.removesuffix(".weight") in adapted_modules]
    dtype = {"F32": 4, "F16": 2, "BF16": 2}.get(max(tensors.values(), key=lambda v: math.prod(v.shape)).dtype, 2)
    text = config.get("text_config", config)
    vocab = int(text.get("vocab_size") or max(v.shape[0] for v in tensors.values()))
    return ModelFacts(sum(sizes.values()), dtype, max(sizes.values()), max(adapted, default=0), vocab,
                      estimate_positions(eval_samples))


def stage_peak(kind: str, facts: ModelFacts, engine: str = "stream", quants: tuple[str, ...] = ()) -> float | None:
    """Expected anonymous peak of one stage kind, in bytes; None for kinds not estimated."""
    from tasks.deploy.planner import EFFECTIVE_BPW

    f = facts
    if kind == "merge":
        if engine == "peft":
            return RUNTIME["torch"] + 1.1 * f.params * f.dtype_bytes + 4 * f.largest
        return RUNTIME["torch"] + 2.5 * 4 * f.largest_adapted
    if kind == "convert":
        return RUNTIME["converter"] + 2 * 4 * f.largest
    if kind == "quantize":
        return RUNTIME["llama"] + (4 + 2) * f.largest
    if kind == "imatrix":
        # Every position of a chunk is an output (tasks/gguf/imatrix.py): llama.cpp's logits buffer and the
        # compute buffer holding the output projection are each chunk x vocabulary float32 (measured on the
        # demo: 298 MiB compute buffer at 512 x 151,936); activations copied for the sums are far smaller.
        # An estimate from the buffers llama.cpp reports, not a measured peak at 3B/7B (not benchmarked yet).
        return RUNTIME["llama"] + 2 * IMATRIX_CHUNK * f.vocab * 4
    if kind == "check":
        logits = f.positions * f.vocab * 4
        repacked = max((REPACKED.get(q, 0) * EFFECTIVE_BPW.get(q, 0) / 8 * f.params for q in quants), default=0)
        return RUNTIME["torch"] + LOGIT_SETS * logits + LLAMA_BATCH * logits + CHECK_BLOCK + repacked
    if kind in ("adapter", "render", "fetch"):
        return RUNTIME["light"]
    return None


def _facts_for(config: Any, model: str) -> ModelFacts | None:
    from tasks.core.layout import EVAL_SAMPLES

    m = config.models[model]
    return model_facts(m.base.path, m.adapter.path, EVAL_SAMPLES)


def warning(config: Any, stage: Any, limit: Limit | None = None) -> str | None:
    """One line when `stage` is expected to need more memory than this machine allows, else None."""
    if stage.model is None or stage.model not in config.models:
        return None
    facts = _facts_for(config, stage.model)
    m = config.models[stage.model]
    peak = stage_peak(stage.kind.name, facts, m.merge, m.quants) if facts else None
    limit = limit or memory_limit()
    if peak is None or peak <= limit.bytes:
        return None
    return (f"{stage.task}: expected to need about {peak / GB:.2f} GB of memory, more than the "
            f"{limit.bytes / GB:.2f} GB this machine allows ({limit.source}); it may be killed "
            f"(doit plan:{stage.model})")


def table(config: Any, model: str, limit: Limit | None = None) -> str:
    """The build-memory part of `doit plan:<model>`."""
    from tasks.build.registry import model_stages

    limit = limit or memory_limit()
    m = config.models[model]
    facts = _facts_for(config, model)
    head = f"build memory for {model}: limit {limit.bytes / GB:.1f} GB ({limit.source})"
    if facts is None:
        return head + f"; no estimate before {m.base.path} is there"
    lines = [head + f"; {facts.params / 1e9:.2f} B parameters, largest tensor {facts.largest / 1e6:.0f} M "
             f"elements, ~{facts.positions} evaluation positions x {facts.vocab} vocabulary",
             f"{'stage':<28} {'expected peak':>13}  fits"]
    for stage in model_stages(config, m):
        peak = stage_peak(stage.kind.name, facts, m.merge, m.quants)
        if peak is not None:
            lines.append(f"{stage.task:<28} {peak / GB:>10.2f} GB  {'yes' if peak <= limit.bytes else 'NO'}")
    return "\n".join(lines)
