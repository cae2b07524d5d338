"""What the base architecture looks like, without any weights: layer classes, tied tensors, embeddings.

peft decides per layer class how to merge (Conv1D layers are always merged fan_in_fan_out, nn.Linear
never, whatever adapter_config.json says), and transformers decides which tensors are tied.  The
safetensors files cannot tell a square Linear from a square Conv1D, so we build the model on the `meta`
device (no memory, no weights) and ask it.  If the architecture cannot be built (custom code, unknown
model type) we fall back to shape rules and say so in `source`.

Building it costs ~2.5 s of imports, a quarter of a 3B merge, so it is skipped when no answer depends on
it: an adapter that touches no embedding, head or tied tensor, on a model type without Conv1D layers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tasks.formats.json_object import read_json_object


@dataclass
class Layout:
    """Architecture facts the merge plan needs."""

    source: str  # "meta-model" or "fallback: <why>"
    module_kinds: dict[str, str] = field(default_factory=dict)  # module path -> kind (empty when unknown)
    tied: dict[str, str] = field(default_factory=dict)  # tied tensor -> tensor it shares storage with
    embeddings: set[str] = field(default_factory=set)  # input/output embedding weight names (vocab-sized)
    prefix: str = ""  # base_model_prefix: old checkpoints may store keys without it
    conv1d_possible: bool = True  # False: every 2-D LoRA target is an nn.Linear, whatever its shape


# transformers 5: the architectures built from transformers.pytorch_utils.Conv1D (the fan_in_fan_out layout).
# tests/test_merge_stream_layout.py re-derives this set from the installed transformers sources.
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer", "clvp", "clvp_encoder",
                                "clvp_decoder"})


def read_config(model_dir: Path) -> dict:
    return read_json_object(model_dir / "config.json", "a base model directory needs config.json")


def vocab_size(config: dict) -> int | None:
    """vocab_size at top level, or in text_config for multimodal configs."""
    for cfg in (config, config.get("text_config") or {}):
        if isinstance(cfg.get("vocab_size"), int):
            return cfg["vocab_size"]
    return None


def describe(model_dir: Path, config: dict, stored: set[str], *, exact: bool = True) -> Layout:
    """Layout from a meta-device instance of the architecture (when `exact`), else from names and shapes."""
    if not exact and config.get("model_type") not in CONV1D_MODEL_TYPES:
        layout = _fallback(config, stored, "names: the adapter touches nothing architecture-dependent")
        layout.conv1d_possible = False
        return layout
    try:
        return _from_meta_model(model_dir, config)
    except Exception as e:  # any failure to build the model just means: use the fallback
        return _fallback(config, stored, f"fallback: cannot build the architecture ({type(e).__name__}: {e})")


def _from_meta_model(model_dir: Path, config: dict) -> Layout:
    import torch
    import transformers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            cfg = transformers.AutoConfig.from_pretrained(model_dir)
            arch = (config.get("architectures") or [None])[0]
            cls = getattr(transformers, arch, None) if arch else None
            with torch.device("meta"):
                model = cls(cfg) if cls is not None else transformers.AutoModelForCausalLM.from_config(cfg)
        finally:
            transformers.logging.set_verbosity(verbosity)
    names = {id(m): n for n, m in model.named_modules()}
    layout = Layout("meta-model", {n: _kind(m) for n, m in model.named_modules()},
                    prefix=getattr(model, "base_model_prefix", "") or "")
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    layout.tied = {str(k): str(v) for k, v in dict(tied).items()}
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            module = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            continue
        if module is not None and id(module) in names:
            layout.embeddings.add(f"{names[id(module)]}.weight")
    return layout


def _kind(module: object) -> str:
    """peft's dispatch categories ("linear", "conv1d", "embedding"); other layers by class name."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    if isinstance(module, Conv1D):
        return "conv1d"
    if isinstance(module, torch.nn.Linear):
        return "linear"
    return type(module).__name__


def _fallback(config: dict, stored: set[str], source: str) -> Layout:
    """Without the architecture: embeddings by the usual names, tying when the head is absent from the files."""
    names = ("embed_tokens", "wte", "word_embeddings", "lm_head", "embed_out", "output")
    vocab = {n for n in stored if n.endswith(".weight") and n.split(".")[-2] in names}
    layout = Layout(source, embeddings=vocab, prefix="model" if any(n.startswith("model.") for n in stored) else "")
    inputs = sorted(n for n in vocab if not n.startswith(("lm_head", "embed_out", "output")))
    if config.get("tie_word_embeddings", True) and "lm_head.weight" not in stored and len(inputs) == 1:
        layout.tied = {"lm_head.weight": inputs[0]}
        layout.embeddings.add("lm_head.weight")
    return layout
