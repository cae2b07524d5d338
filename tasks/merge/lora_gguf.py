"""The lora stage: a PEFT LoRA adapter -> `<m>-lora-<type>.gguf`, applied by llama.cpp / Ollama at load time.

llama.cpp's own `convert_lora_to_gguf.py` (from the pinned toolchain) writes the file, but it stores one
`adapter.lora.alpha` (from `lora_alpha`) and llama.cpp scales every module by alpha / rank, rank being that
module's own B width. peft scales by alpha / r, alpha / sqrt(r) under `use_rslora`, with per-module r and
alpha from `rank_pattern` / `alpha_pattern`. So the converter is fed a prepared copy of the adapter whose B
matrices carry the difference: module B' = B * scaling * rank / lora_alpha, so that
lora_alpha / rank * B' @ A = scaling * B @ A, exactly what peft adds (plain LoRA modules are left as they
are: their factor is 1). What GGUF LoRA cannot express is refused in one line naming the feature
(`Unexpressible`): DoRA magnitudes, whole tensors (modules_to_save, trained biases), LoRA on a tied
embedding, Conv1D (fan_in_fan_out) layers; in "both" mode the stage then writes `<file>.skipped` with the
reason and the model is served merged. The adapter's shapes are checked against the base first (the merge
planner's checks), so an adapter for another base is refused before anything is written.

The prepared copy lives in a temporary directory named after the model: the converter derives
`general.name` from that directory, so the GGUF does not depend on where the build runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tasks.core import atomic, procs, toolchain
from tasks.core.config.schema import Config
from tasks.core.errors import UserError
from tasks.core.stage import Stage, skipped_marker
from tasks.formats.peft_adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from tasks.merge.architecture import read_config
from tasks.merge.lora_adapter import Adapter, load_adapter, read_lora_config
from tasks.merge.plan import build_plan

_TIED_NAMES = ("embed_tokens", "lm_head", "wte", "word_embeddings", "embed_in", "embed_out")


class Unexpressible(UserError):
    """The adapter is valid, but a GGUF LoRA cannot carry it (the model must be served merged)."""


def fold_factors(adapter: Adapter) -> dict[str, float]:
    """Module -> the factor its B matrix is multiplied by so that llama.cpp's alpha / rank gives peft's scale."""
    alpha = float(adapter.settings.alpha)
    factors = {}
    for name, mod in adapter.modules.items():
        plain = not adapter.settings.use_rslora and mod.rank and mod.scaling == alpha / mod.rank
        factors[name] = 1.0 if plain else mod.scaling * mod.rank / alpha
    return factors


def check_expressible(base_dir: Path, adapter_dir: Path) -> Adapter:
    """The adapter, once it is known to fit the base and to be expressible as a GGUF LoRA."""
    where = adapter_dir / ADAPTER_CONFIG
    cfg = read_lora_config(adapter_dir)
    adapter = load_adapter(adapter_dir)
    if adapter.settings.use_dora:
        raise Unexpressible(f"{where}: use_dora: DoRA magnitude vectors cannot be expressed in a GGUF LoRA adapter "
                            "(llama.cpp applies only B @ A)")
    if cfg.get("modules_to_save") or adapter.replacements:
        what = cfg.get("modules_to_save") or sorted(adapter.replacements)
        raise Unexpressible(f"{where}: modules_to_save {what}: whole replaced tensors cannot be expressed in a GGUF "
                            "LoRA adapter (it holds only lora_a/lora_b pairs)")
    if adapter.settings.fan_in_fan_out:
        raise Unexpressible(f"{where}: fan_in_fan_out: Conv1D-layout LoRA is not converted to a GGUF LoRA adapter")
    base_cfg = read_config(base_dir)
    tied = base_cfg.get("tie_word_embeddings", (base_cfg.get("text_config") or {}).get("tie_word_embeddings", True))
    for name in sorted(adapter.modules):
        if tied and name.rsplit(".", 1)[-1] in _TIED_NAMES:
            raise Unexpressible(f"{where}: LoRA on the tied embedding {name} (tie_word_embeddings): a GGUF LoRA "
                                "adapter cannot change one side of a tied pair")
    build_plan(base_dir, adapter_dir)  # shapes, names and dtypes against the base, as for the merge
    return adapter


def prepare(base_dir: Path, adapter_dir: Path, out: Path) -> dict[str, float]:
    """Write the converter's input into `out`: the adapter with each module's scale folded into B (float32)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    adapter = check_expressible(base_dir, adapter_dir)
    factors = fold_factors(adapter)
    b_keys = {mod.B.name: factors[name] for name, mod in adapter.modules.items() if mod.B is not None}
    tensors = {}
    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS), framework="pt") as fh:
        for key in sorted(fh.keys()):
            t = fh.get_tensor(key).to(torch.float32)
            factor = b_keys.get(key, 1.0)
            tensors[key] = (t * factor if factor != 1.0 else t).contiguous()
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    cfg = dict(read_lora_config(adapter_dir))
    for key in ("use_rslora", "rank_pattern", "alpha_pattern"):
        cfg.pop(key, None)  # folded into B
    cfg["base_model_name_or_path"] = None  # the converter reads the base from --base, never the Hub
    (out / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return {k: v for k, v in sorted(factors.items()) if v != 1.0}


def convert(base_dir: Path, lora_dir: Path, out: Path, outtype: str, log: Path) -> None:
    cmd = [sys.executable, str(toolchain.lora_converter()), str(lora_dir), "--base", str(base_dir),
           "--outfile", str(out), "--outtype", outtype]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as log_fh:
        proc = procs.run(cmd, env=toolchain.converter_env(), stdout=log_fh, stderr=subprocess.STDOUT,
                         cwd=out.parent)  # dies with the worker (tasks/core/procs.py)
    if proc.returncode != 0:
        sig = procs.signal_name(proc.returncode) if proc.returncode < 0 else None
        if sig:
            raise UserError(f"{lora_dir.name}: llama.cpp LoRA converter killed by {sig} (log: {log})")
        lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        tail = next((ln for ln in reversed(lines) if "rror" in ln), lines[-1] if lines else "no output")
        raise UserError(f"{lora_dir.name}: llama.cpp LoRA converter failed (exit {proc.returncode}): {tail} "
                        f"(log: {log})")


def build(stage: Stage, config: Config) -> None:
    (final,) = stage.outputs
    base_dir, adapter_dir = stage.inputs["base"], stage.inputs["adapter_config"].parent
    marker = skipped_marker(final)
    marker.unlink(missing_ok=True)
    # Named like atomic's temporaries, so a killed build's copy is cleaned up by the next run.
    with tempfile.TemporaryDirectory(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent) as tmp:
        lora_dir = Path(tmp) / stage.params["model"]  # general.name comes from this directory's name
        lora_dir.mkdir()
        try:
            folded = prepare(base_dir, adapter_dir, lora_dir)
        except Unexpressible as exc:
            if stage.params["mode"] != "both":
                raise _refusal(exc) from None
            final.unlink(missing_ok=True)
            atomic.write_text(marker, f"{exc}\n")
            with open(stage.log, "a", encoding="utf-8") as fh:
                fh.write(f"{stage.task}: no LoRA GGUF, the model is served merged: {exc}\n")
            return
        with open(stage.log, "a", encoding="utf-8") as fh:
            fh.write(f"{stage.task}: scale folded into B (factor per module, 1 elsewhere): {json.dumps(folded)}\n")
        with atomic.atomic_file(final) as out:
            convert(base_dir, lora_dir, out, stage.params["outtype"], stage.log)


def precheck(stage: Stage, config: Config) -> None:
    """Refuse an adapter that does not fit its base before anything runs (base present: a fixture may not be)."""
    if stage.inputs["base"].is_dir() and stage.inputs["adapter_config"].is_file():
        try:
            check_expressible(stage.inputs["base"], stage.inputs["adapter_config"].parent)
        except Unexpressible as exc:
            if stage.params["mode"] != "both":
                raise _refusal(exc) from None


def _refusal(exc: Unexpressible) -> UserError:
    return UserError(f"deploy.mode = \"adapter\": {exc} (use mode = \"merged\" or \"both\")")
