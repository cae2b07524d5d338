"""Builders shared by the streaming-merge tests: tiny random bases, real peft adapters, peft's own merge.

Everything is built with transformers/peft themselves, so the reference output is exactly what a user
would get from ``PeftModel.from_pretrained(...).merge_and_unload()`` + ``save_pretrained``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # lets `pytest tests/...` import `tasks` without an installed package
    sys.path.insert(0, str(ROOT))

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 256
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def make_base(path: Path, arch: str = "llama", dtype: str = "bf16", *, tied: bool = False,
              shard: str | None = None, seed: int = 0, hidden: int = 64) -> Path:
    """A 2-layer random model saved with save_pretrained (sharded when `shard`, e.g. "40KB")."""
    torch.manual_seed(seed)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=hidden, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64,
                                           bos_token_id=0, eos_token_id=0))
    else:
        cls, cfg_cls = (Qwen2ForCausalLM, Qwen2Config) if arch == "qwen2" else (LlamaForCausalLM, LlamaConfig)
        cfg = cfg_cls(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=tied, bos_token_id=0,
                      eos_token_id=0)
        model = cls(cfg)
    model = model.to(DTYPES[dtype])
    kwargs = {"max_shard_size": shard} if shard else {}
    _quiet(model.save_pretrained, path, **kwargs)
    return path


def make_adapter(base: Path, path: Path, dtype: str = "bf16", *, resize: int | None = None, seed: int = 1,
                 **lora: object) -> Path:
    """Train-free adapter with every trainable tensor random (B too), saved by peft's save_pretrained."""
    model = _quiet(AutoModelForCausalLM.from_pretrained, base, dtype=DTYPES[dtype])
    if resize:
        model.resize_token_embeddings(resize)
    lora.setdefault("r", 4)
    lora.setdefault("lora_alpha", 8)
    peft_model = _quiet(get_peft_model, model, LoraConfig(init_lora_weights=False, **lora))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if param.requires_grad:  # modules_to_save copies, DoRA magnitudes, biases: make them differ
                noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
                param.add_(noise.to(param.dtype) * (0.1 if "lora_" in name else 1.0))
    _quiet(peft_model.save_pretrained, path)
    return path


def peft_merge(base: Path, adapter: Path, out: Path, dtype: str = "bf16", *, resize: int | None = None) -> Path:
    """The reference: what peft + transformers write for the same inputs."""
    model = _quiet(AutoModelForCausalLM.from_pretrained, base, dtype=DTYPES[dtype])
    if resize:
        model.resize_token_embeddings(resize)
    merged = _quiet(PeftModel.from_pretrained, model, adapter).merge_and_unload()
    _quiet(merged.save_pretrained, out)
    return out


def load_dir(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def assert_same_as_peft(mine: Path, ref: Path) -> None:
    """Same tensor names, dtypes and bits as peft's output, and the config fields the merge may change."""
    a, b = load_dir(mine), load_dir(ref)
    assert sorted(a) == sorted(b)
    for name in b:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), f"{name} differs from peft's merge"
    cfg_a, cfg_b = (json.loads((d / "config.json").read_text()) for d in (mine, ref))
    for key in ("vocab_size", "tie_word_embeddings"):
        assert cfg_a.get(key, True) == cfg_b.get(key, True), key


def rewrite_adapter(src: Path, dst: Path, *, rename=None, keep=None, config: dict | None = None) -> Path:
    """Copy an adapter changing key spellings (`rename(key) -> key`), keys kept (`keep(key)`), config entries."""
    from safetensors.torch import save_file

    dst.mkdir(parents=True, exist_ok=True)
    tensors = load_file(src / "adapter_model.safetensors")
    if rename:
        tensors = {rename(k): v for k, v in tensors.items()}
    if keep:
        tensors = {k: v for k, v in tensors.items() if keep(k)}
    save_file(tensors, dst / "adapter_model.safetensors")
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg.update(config or {})
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)
