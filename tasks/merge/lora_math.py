"""LoRA / DoRA merge arithmetic, operation for operation as peft 0.21's `merge_and_unload` on CPU.

Bit-identical output is the contract, so every function mirrors a specific peft code path
(peft/tuners/lora/layer.py `Linear.merge` / `Embedding.merge` / `get_delta_weight`, and
peft/tuners/lora/variants.py `Dora*Variant.merge_unsafe`), including the dtype each step runs in:

* peft loads adapter matrices as float32 (`autocast_adapter_dtype=True` upcasts fp16/bf16, and float32
  bases give float32 adapters), so the delta ``(B @ A) * scaling`` is float32 and needs no cast;
* Linear: ``weight += delta`` *in the weight's dtype with a float32 operand*: each element is computed
  in float32 and rounded once;
* Embedding: ``weight += delta.to(weight.dtype)``: the delta is rounded first, then added.

Only element-wise steps are restructured (in-place, row blocks, reused buffers) to bound memory; they
give the same bits because each output element still sees exactly the same operations.  Reductions and
matmuls keep peft's shapes and memory layouts, since their summation order could depend on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily: this module is reachable from dodo.py
    import torch

# Element-wise steps run on row blocks of about this many elements (1 MiB of float32): small enough to stay
# in L2 cache and to avoid the full-size float32 temporary that a one-shot mixed-dtype `weight += delta`
# allocates, large enough that Python's per-block dispatch cost vanishes.
_BLOCK_ELEMENTS = 1 << 18


class DeltaBuffer:
    """A float32 scratch buffer reused across tensors: fresh pages are costly and inflate peak RSS."""

    def __init__(self) -> None:
        self._buf: torch.Tensor | None = None

    def get(self, rows: int, cols: int) -> torch.Tensor:
        import torch

        n = rows * cols
        if self._buf is None or self._buf.numel() < n:
            self._buf = None  # drop the old one before allocating the bigger one
            self._buf = torch.empty(n, dtype=torch.float32)
        return self._buf[:n].view(rows, cols)


def merge_linear(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float,
                 fan_in_fan_out: bool, buf: DeltaBuffer) -> torch.Tensor:
    """Plain LoRA on nn.Linear / Conv1D: ``weight += transpose(B @ A, fan_in_fan_out) * scaling``, in place."""
    import torch

    product = torch.mm(B, A, out=buf.get(B.shape[0], A.shape[1]))  # same GEMM as peft's `B @ A`
    _scale_and_add(weight, product.T if fan_in_fan_out else product, scaling, cast_first=False)
    return weight


def merge_embedding(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float,
                    buf: DeltaBuffer) -> torch.Tensor:
    """Plain LoRA on nn.Embedding: ``weight += ((B @ A).T * scaling).to(weight.dtype)``, in place."""
    import torch

    product = torch.mm(B, A, out=buf.get(B.shape[0], A.shape[1]))
    _scale_and_add(weight, product.T, scaling, cast_first=True)
    return weight


def _scale_and_add(weight: torch.Tensor, product: torch.Tensor, scaling: float, *, cast_first: bool) -> None:
    """``weight += product * scaling`` (delta rounded to weight.dtype first when `cast_first`), by row blocks.

    Every element still sees exactly peft's operations (float32 multiply, then the add computed in float32
    and rounded once to the weight's dtype), so the split only changes memory traffic; `product` is
    scratch and gets scaled in place.
    """
    step = max(1, _BLOCK_ELEMENTS // max(1, weight.shape[1]))
    for start in range(0, weight.shape[0], step):
        block = product[start:start + step].mul_(scaling)
        weight[start:start + step] += block.to(weight.dtype) if cast_first else block


def merge_dora_linear(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, magnitude: torch.Tensor,
                      scaling: float, fan_in_fan_out: bool) -> torch.Tensor:
    """DoRA on nn.Linear / Conv1D (DoraLinearVariant.merge_unsafe); returns a new tensor in weight's dtype."""
    import torch

    delta = _transpose((B @ A), fan_in_fan_out) * scaling
    # DoraLinearLayer.get_weight_norm(base_weight, transpose(delta, fan_in_fan_out), scaling=1)
    norm_input = _transpose(weight, fan_in_fan_out) + 1 * _transpose(delta, fan_in_fan_out)
    weight_norm = torch.linalg.norm(norm_input, dim=1).to(norm_input.dtype)
    del norm_input
    factor = _transpose((magnitude / weight_norm).view(-1, 1), fan_in_fan_out)
    return (factor * (weight + delta)).to(weight.dtype)


def merge_dora_embedding(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, magnitude: torch.Tensor,
                         scaling: float) -> torch.Tensor:
    """DoRA on nn.Embedding (DoraEmbeddingVariant.merge_unsafe; its norm layer has fan_in_fan_out=True)."""
    import torch

    delta = (B @ A).T * scaling
    norm_input = weight.T + 1 * delta.T
    weight_norm = torch.linalg.norm(norm_input, dim=1).to(norm_input.dtype)
    del norm_input
    factor = (magnitude / weight_norm).view(1, -1)
    return (factor * (weight + delta)).to(weight.dtype)


def _transpose(t: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    return t.T if fan_in_fan_out else t
