"""The check's figures computed the way the check computed them before it swept: probe after probe.

    python benchmarks/pipeline_reference.py CONFIG MODEL

Why: the swept check must give the same check.json, not merely similar figures. This runs the
check stage's own `run_checks` with its two logit sources swapped for the previous code (one
float32 forward per probe with blocks widened per call, tasks.checks.fp32_compute; one llama.cpp
decode per probe) and compares the rounded figures with the check.json the pipeline wrote.
Prints one JSON line: identical, the differing keys, seconds. Run it without a memory cap: it
re-reads every model once per probe, which is what the sweep removed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def per_probe_hf(model_dir: Path, probes: list, adapter_dir: Path | None = None) -> tuple[list, list]:
    import peft
    import torch
    import transformers

    from tasks.checks.fp32_compute import compute_in_float32

    def logits(model: Any) -> list:
        with torch.no_grad():
            return [model(input_ids=torch.tensor([p.ids])).logits[0].float().numpy() for p in probes]

    torch.set_num_threads(2)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto")
    model.eval()
    hooks = compute_in_float32(model)
    plain = logits(model)
    if adapter_dir is None:
        return plain, []
    for hook in hooks:
        hook.remove()
    model = peft.PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    compute_in_float32(model)
    return plain, logits(model)


def per_probe_llama(llm: Any, probes: list, *_: Any) -> list:
    import numpy as np

    out = []
    for p in probes:
        llm.reset()
        llm.eval(p.ids)
        out.append(np.array(llm.scores[:len(p.ids)], dtype=np.float32))
    return out


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += differences(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        return out
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def main(config_path: Path, model: str) -> None:
    from tasks.build.registry import all_stages
    from tasks.checks import check, layerwise_reference, llama_batch_eval, parity
    from tasks.core.config.load import load_config

    config = load_config(config_path)
    stage = next(s for s in all_stages(config) if s.task == f"check:{model}")
    layerwise_reference.base_and_adapted_logits = lambda base, adapter, probes, *a: per_probe_hf(base, probes, adapter)
    layerwise_reference.model_logits = lambda model_dir, probes, *a: per_probe_hf(model_dir, probes)[0]
    llama_batch_eval.batched_logits = per_probe_llama
    opened = parity.open_llama
    parity.open_llama = lambda path, n_ctx, **kw: opened(path, n_ctx)  # logits_all, as the old check
    start = time.perf_counter()
    old = check.rounded(check.run_checks(stage))
    seconds = time.perf_counter() - start
    new = json.loads(stage.outputs[0].read_text())
    for key in ("gates", "failures", "passed"):
        new.pop(key, None)
    diff = differences(old, new)
    print(json.dumps({"identical": not diff, "differences": diff[:20], "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
