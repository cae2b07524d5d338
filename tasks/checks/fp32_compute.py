"""Float32 arithmetic on a half-precision checkpoint, one block at a time.

Why: the fidelity check's reference is the HF model computed in float32, but a 7B model held in
float32 takes 28 GB. Widening bfloat16 or float16 to float32 is exact, so keeping the weights in
the checkpoint's own dtype and widening each block's weights just before the block runs (and
narrowing them back after) computes exactly what a float32 load computes, with the stored model
plus one block in float32 as the peak. tests/test_fp32_reference.py checks the logits are
bit-identical to a float32 load on the demo, with and without the adapter.

Blocks are found by size, not by architecture: from the root down, a module whose parameters
fit `limit` bytes in float32 (or that has no parameterised children) is one block. A small model
is a single block (a plain float32 forward); a 7B model becomes its embedding, each decoder
layer, the final norm and the output head.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

BLOCK_LIMIT = 1 << 30  # float32 bytes widened at once: one 7B decoder layer is ~0.8 GB


def _fp32_bytes(module: Any) -> int:
    return 4 * sum(p.numel() for p in module.parameters())


def blocks(module: Any, limit: int = BLOCK_LIMIT) -> Iterator[Any]:
    """The modules to widen as units. Every one is called through `__call__` by its parent:
    ModuleList and ModuleDict are never called (their parent iterates them), so they are always
    descended into, never hooked."""
    import torch

    children = [c for c in module.children() if next(c.parameters(), None) is not None]
    container = isinstance(module, torch.nn.ModuleList | torch.nn.ModuleDict)
    owns = next(module.parameters(recurse=False), None) is not None
    if not container and (_fp32_bytes(module) <= limit or not children or owns):
        yield module
        return
    for child in children:
        yield from blocks(child, limit)


def _widen(module: Any, _args: Any) -> None:
    import torch

    changed = []
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.dtype in (torch.bfloat16, torch.float16):
            changed.append((tensor, tensor.data))
            tensor.data = tensor.data.float()
    module._modelmake_narrow = changed  # an outer block already widened everything: nothing to undo


def _narrow(module: Any, _args: Any, _output: Any) -> None:
    for tensor, original in module.__dict__.pop("_modelmake_narrow", ()):
        tensor.data = original


def compute_in_float32(model: Any, limit: int = BLOCK_LIMIT) -> list[Any]:
    """Hook every block of `model` to run in float32; returns the hook handles (`.remove()` them)."""
    handles = []
    for block in blocks(model, limit):
        handles.append(block.register_forward_pre_hook(_widen))
        handles.append(block.register_forward_hook(_narrow))
    return handles
