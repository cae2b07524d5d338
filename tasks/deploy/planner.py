"""Memory planner: which quant fits which machine, with how much context.

memory needed = weight bytes + context x KV-cache bytes per token, where the KV cache holds a K
and a V vector per layer and KV head:  layers x kv_heads x head_dim x 2 x bytes(cache dtype).
(Qwen2.5-7B: 28 x 4 x 128 x 2 x 2 B = 56 KiB per token at f16.) A hardware profile offers
memory_gb x utilization - reserve_gb; the planner reports the largest context that fits for each
quant, and a deployment whose context does not fit fails the build with these numbers instead of
an out-of-memory at serve time.

Weight bytes are the GGUF's file size once it is built; before that, an estimate from the
parameter count and the effective bits per weight of each llama.cpp type (below). vLLM serves
16-bit weights (2 bytes per parameter). Pure computation on config.json and safetensors headers:
no torch, no numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.errors import UserError
from tasks.formats.json_object import read_json_object
from tasks.formats.safetensors import parameter_count

CACHE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "auto": 2.0, "fp8": 1.0, "q8_0": 34 / 32, "q4_0": 18 / 32}

# Effective bits per weight of whole GGUF files, from the sizes llama.cpp's quantize tool lists
# for Llama-3-8B (8.03 B parameters; tools/quantize/quantize.cpp), e.g. Q4_K_M 4.58 GiB -> 4.90.
# Mixed types (_M) keep some tensors at higher precision, so nominal block sizes underestimate.
EFFECTIVE_BPW = {
    "f16": 16.0, "bf16": 16.0, "q8_0": 8.52, "q6_k": 6.57, "q5_k_m": 5.70, "q5_k_s": 5.57, "q5_1": 6.04,
    "q5_0": 5.57, "q4_k_m": 4.90, "q4_k_s": 4.67, "q4_1": 5.11, "q4_0": 4.64, "q3_k_l": 4.31, "q3_k_m": 4.00,
    "q3_k_s": 3.65, "q2_k": 3.17, "iq4_xs": 4.46, "iq4_nl": 4.68,
}
ROUND = 256  # recommended contexts are multiples of this (llama.cpp and vLLM block sizes divide it)


@dataclass(frozen=True)
class ModelShape:
    """What memory use depends on, read from config.json (+ safetensors headers for exact counts)."""

    layers: int
    kv_heads: int
    head_dim: int
    max_context: int
    params: int
    source: str  # "safetensors" (exact count) or "config" (formula for Llama-like decoders)

    def kv_bytes_per_token(self, cache: str = "f16") -> float:
        return self.layers * self.kv_heads * self.head_dim * 2 * CACHE_BYTES[cache]


def shape_from_config(cfg: dict[str, Any], params: int | None = None) -> ModelShape:
    text = cfg.get("text_config", cfg)  # multimodal configs nest the language model
    try:
        layers = int(text["num_hidden_layers"])
        heads = int(text["num_attention_heads"])
        hidden = int(text["hidden_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"config.json: missing or invalid {exc} (needed to plan memory)") from None
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or hidden // heads)
    max_ctx = int(text.get("max_position_embeddings") or 4096)
    source = "safetensors"
    if params is None:
        params, source = _params_from_config(text, hidden, heads, kv_heads, head_dim, layers), "config"
    return ModelShape(layers, kv_heads, head_dim, max_ctx, params, source)


def _params_from_config(c: dict[str, Any], hidden: int, heads: int, kv: int, hd: int, layers: int) -> int:
    """Parameter count of a Llama/Qwen2/Mistral-style decoder from its config."""
    vocab, inter = int(c["vocab_size"]), int(c["intermediate_size"])
    bias = c.get("model_type") == "qwen2" or bool(c.get("attention_bias"))
    attn = hidden * heads * hd + 2 * hidden * kv * hd + heads * hd * hidden
    if bias:
        attn += heads * hd + 2 * kv * hd
    per_layer = attn + 3 * hidden * inter + 2 * hidden
    embed = vocab * hidden * (1 if c.get("tie_word_embeddings") else 2)
    return layers * per_layer + embed + hidden


def model_shape(model_dir: Path) -> ModelShape:
    cfg = read_json_object(model_dir / "config.json", "the planner needs the model's config.json")
    return shape_from_config(cfg, parameter_count(model_dir))


def gguf_weight_bytes(shape: ModelShape, quant: str, gguf: Path | None = None) -> tuple[int, str]:
    """(bytes, "file" | "estimate"): the GGUF's size if built, else parameters x effective bpw."""
    if gguf is not None and gguf.is_file():
        return gguf.stat().st_size, "file"
    bpw = EFFECTIVE_BPW.get(quant)
    if bpw is None:
        raise UserError(f"no size estimate for quant {quant!r}; build it first to plan with its real size")
    return int(shape.params * bpw / 8), "estimate"


def vllm_weight_bytes(shape: ModelShape) -> int:
    return shape.params * 2  # vLLM serves float16/bfloat16 weights


@dataclass(frozen=True)
class Fit:
    profile: str
    target: str  # "gguf" or "vllm"
    quant: str
    weights: int
    weights_source: str
    per_token: float
    budget: int
    max_context: int  # largest context that fits, capped at the model's maximum; 0 if nothing fits
    cap: int

    @property
    def fits_at_all(self) -> bool:
        return self.max_context > 0

    def needed(self, context: int) -> int:
        return int(self.weights + context * self.per_token)

    def recommended_context(self) -> int:
        """The model's full context if it fits, else the largest fitting multiple of 256."""
        if self.max_context >= self.cap:
            return self.cap
        return self.max_context // ROUND * ROUND or self.max_context


def fit(shape: ModelShape, profile: Any, target: str, quant: str, weights: int, source: str,
        cache: str = "f16", extra_bytes: int = 0) -> Fit:
    per_token = shape.kv_bytes_per_token(cache)
    budget = profile.budget_bytes()
    free = budget - weights - extra_bytes
    most = 0 if free <= 0 else min(shape.max_context, int(free // per_token))
    return Fit(profile.name, target, quant, weights + extra_bytes, source, per_token, budget, most, shape.max_context)


def explain(f: Fit, context: int, profile: Any) -> str:
    """The numbers behind a fit decision, for error messages and the table."""
    kv = context * f.per_token
    budget = (f"{_size(f.budget)} ({profile.memory_gb:g} GB x {profile.utilization:g}"
              + (f" - {profile.reserve_gb:g} GB reserve" if profile.reserve_gb else "") + ")")
    head = (f"weights {_size(f.weights)} ({f.weights_source}) + KV cache {_size(kv)} "
            f"({f.per_token / 1024:.1f} KiB/token x {context}) = {_size(f.needed(context))}, budget {budget}")
    if not f.fits_at_all:
        return head + "; the weights alone do not fit" if f.weights >= f.budget else head + "; no context fits"
    return head + f"; largest context that fits: {f.max_context}"


def require_fit(f: Fit, context: int, profile: Any, what: str) -> None:
    if f.max_context < context:
        raise UserError(f"{what}: {f.quant} does not fit on hardware '{profile.name}' at context {context}: "
                        + explain(f, context, profile))


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if abs(n) >= 1e8 else f"{n / 1e6:.1f} MB"


def table(model: str, shape: ModelShape, rows: list[tuple[Fit, Any]], context: int) -> str:
    """The `doit plan:<model>` report."""
    lines = [
        f"memory plan for {model}: {shape.params / 1e9:.3f} B parameters ({shape.source}), "
        f"{shape.layers} layers x {shape.kv_heads} KV heads x {shape.head_dim} dims -> "
        f"{shape.kv_bytes_per_token('f16') / 1024:.1f} KiB/token KV cache at f16; "
        f"model max context {shape.max_context}",
        f"{'profile':<10} {'target':<6} {'quant':<8} {'weights':>10} {'':<9} {'budget':>9} {'max ctx':>8}  recommended",
    ]
    for f, profile in rows:
        if f.fits_at_all:
            n = f.recommended_context()
            if f.target == "vllm":
                rec = f"--gpu-memory-utilization {profile.utilization:g} --max-model-len {n}"
            else:
                rec = f"num_ctx/--n_ctx {n}"
                if f.max_context < context:
                    rec += f" (deploy.context {context} is too big)"
        else:
            rec = "does not fit: " + ("weights exceed the budget" if f.weights >= f.budget else "no room for KV cache")
        lines.append(f"{profile.name:<10} {f.target:<6} {f.quant:<8} {_size(f.weights):>10} {f.weights_source:<9} "
                     f"{_size(f.budget):>9} {f.max_context:>8}  {rec}")
    return "\n".join(lines)
