"""Several forward passes of one model in lockstep, one block of weights at a time.

Why: the check's float32 reference runs every probe through base, base+adapter and merged. Run
one probe after another, a model larger than the page cache is read from disk once per probe
(7B under a 7 GiB cap: 7.6x its bytes). Here every pass runs in its own thread, and a pass that
reaches a block of weights waits until all passes have reached it; the block is then widened to
float32 once, every waiting pass runs it, and it is narrowed back before the next block. So the
weights are read once per sweep, whatever the number of probes, and each pass is still the
model's own forward (transformers' code: embeddings, rotary, masks, head), computing exactly what
a float32 load computes. Only one thread computes at any time (a baton is passed), so the
arithmetic and its thread count are those of a plain sequential forward.

Blocks are tasks.checks.fp32_compute's partition (modules whose float32 weights fit `limit`). Two kinds
are special so that no block widens more than `limit` bytes at once:
- a plain `nn.Embedding` is looked up in its stored dtype and only the rows used are widened
  (widening is exact, so this equals looking up a widened table);
- an `nn.Linear` larger than `limit` (the output head, a 7B MLP projection) is computed for all
  waiting passes together, in chunks of output rows, each chunk widened once. Every output
  column of a matrix product is its own dot product, but BLAS kernels treat a matrix's last
  columns (past a multiple of their tile width) and very narrow products differently: chunks
  are whole multiples of CHUNK_ROWS rows, which on MKL gives the same bits as the full product
  when the row count is a multiple of 16 (every vocabulary and projection modelmake has met;
  tests/test_layerwise_reference.py checks it end to end). Otherwise a chunk boundary may move
  a logit in its last bit, deterministically.
Passes may skip blocks (base passes skip LoRA weights): the block waited on is always the first,
in module order, that any waiting pass needs, so nothing deadlocks and nothing runs ahead.
Entering a block asks the kernel to read the next PREFETCH_BYTES of weights in the background
(tasks.checks.prefetch), so the disk reads the next blocks while this one computes.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from tasks.checks import prefetch
from tasks.checks.fp32_compute import blocks

BLOCK_LIMIT = 64 * 1024**2  # float32 bytes widened at once (a 7B attention projection: 51 MB)
CHUNK_ROWS = 256  # gathered products are split into multiples of this many output rows (see above)
PREFETCH_BYTES = 256 * 1024**2  # stored weight bytes read ahead of the block computing (a 3B layer: 160 MB)


class Aborted(Exception):
    """Raised inside a pass when another pass failed: unwinds it without computing further."""


@dataclass
class Job:
    """One forward pass. `run` is called in its own thread (under torch.no_grad); `mode` groups
    passes that need the same model state, set by `Lockstep`'s `switch(mode)` before they run."""

    run: Callable[[], Any]
    mode: Hashable = None


@dataclass
class _Block:
    module: Any
    kind: str  # "widen" | "embedding" | "gathered"
    saved: list[tuple[Any, Any]] = field(default_factory=list)


def _half(tensor: Any) -> bool:
    import torch

    return tensor.dtype in (torch.bfloat16, torch.float16)


def _classify(module: Any, limit: int) -> str:
    import torch

    if type(module) is torch.nn.Embedding and module.max_norm is None and _half(module.weight):
        return "embedding"
    size = 4 * sum(p.numel() for p in module.parameters())
    if isinstance(module, torch.nn.Linear) and type(module).forward is torch.nn.Linear.forward and size > limit:
        return "gathered"
    return "widen"


class Lockstep:
    """Run jobs over `model` in lockstep; `switch(mode)` is called whenever the running job's mode changes."""

    def __init__(self, model: Any, limit: int = BLOCK_LIMIT, switch: Callable[[Hashable], None] | None = None):
        self.model = model
        self.limit = limit
        self.switch = switch
        self.blocks = [_Block(m, _classify(m, limit)) for m in blocks(model, limit)]
        self._cond = threading.Condition()
        self._local = threading.local()

    # ---- public ------------------------------------------------------------------------------------------
    def run(self, jobs: list[Job]) -> list[Any]:
        """Every job's result, in order. The first exception of any job is raised here."""
        modes = list(dict.fromkeys(j.mode for j in jobs))
        self._jobs = jobs
        self._rank = [(modes.index(j.mode), i) for i, j in enumerate(jobs)]
        self._waiting: dict[int, int] = {}
        self._inputs: dict[int, Any] = {}
        self._outputs: dict[int, Any] = {}
        self._ready: deque[int] = deque(sorted(range(len(jobs)), key=self._rank.__getitem__))
        self._alive = set(range(len(jobs)))
        self._turn: int | None = None
        self._mode: Any = object()
        self._current: _Block | None = None
        self._error: BaseException | None = None
        self.loads = [0] * len(self.blocks)  # times each block's weights were brought in (once, ideally)
        self._prefetched = -1  # blocks up to this index have been handed to the kernel's readahead
        results: list[Any] = [None] * len(jobs)
        handles = self._install()
        buffers = self._widen_buffers()
        try:
            threads = [threading.Thread(target=self._body, args=(i, results), daemon=True) for i in range(len(jobs))]
            for t in threads:
                t.start()
            with self._cond:
                self._dispatch()
                self._cond.notify_all()
            try:
                for t in threads:
                    while t.is_alive():
                        t.join(0.2)
            except BaseException as exc:  # Ctrl-C: stop every pass at its next block, then re-raise
                with self._cond:
                    self._error = self._error or exc
                    self._cond.notify_all()
                for t in threads:
                    t.join()
                raise
        finally:
            self._narrow(self._current)
            for tensor, original in buffers:
                tensor.data = original
            for h in handles:
                h()
        if self._error is not None:
            raise self._error
        return results

    # ---- hooks -------------------------------------------------------------------------------------------
    def _install(self) -> list[Callable[[], None]]:
        undo: list[Callable[[], None]] = []
        for index, block in enumerate(self.blocks):
            module = block.module
            if block.kind == "gathered":
                module.forward = self._gathered_forward(index)
                undo.append(lambda m=module: m.__dict__.pop("forward", None))
                continue
            pre = module.register_forward_pre_hook(lambda _m, _args, i=index: self._wait(i))
            undo.append(pre.remove)
            if block.kind == "embedding":
                post = module.register_forward_hook(lambda _m, _args, out: out.float())
                undo.append(post.remove)
        return undo

    def _gathered_forward(self, index: int) -> Callable[[Any], Any]:
        def forward(x: Any) -> Any:
            return self._wait(index, x)
        return forward

    def _widen_buffers(self) -> list[tuple[Any, Any]]:
        """Half-precision buffers outside any block (a float32 load widens those too; they are small)."""
        saved = []
        for tensor in self.model.buffers():
            if _half(tensor):
                saved.append((tensor, tensor.data))
                tensor.data = tensor.data.float()
        return saved

    # ---- the baton -----------------------------------------------------------------------------------------
    def _body(self, job: int, results: list[Any]) -> None:
        import torch

        self._local.job = job
        try:
            with self._cond:
                self._cond.wait_for(lambda: self._turn == job or self._error is not None)
                if self._error is not None:
                    return
            with torch.no_grad():  # grad mode is per thread
                results[job] = self._jobs[job].run()
        except Aborted:
            pass
        except BaseException as exc:
            with self._cond:
                self._error = self._error or exc
        finally:
            with self._cond:
                self._alive.discard(job)
                self._waiting.pop(job, None)
                if self._turn == job:
                    self._turn = None
                    self._dispatch()
                self._cond.notify_all()

    def _wait(self, index: int, x: Any = None) -> Any:
        """Called by the running job at block `index`: hand the baton on, wait until the block is ready."""
        job = self._local.job
        with self._cond:
            if x is not None:
                self._inputs[job] = x
            self._waiting[job] = index
            self._turn = None
            self._dispatch()
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._turn == job or self._error is not None)
            if self._error is not None:
                raise Aborted
            return self._outputs.pop(job, None)

    def _dispatch(self) -> None:
        """Give the baton to the next job (the lock is held and nobody has it)."""
        if self._error is not None:
            return
        try:
            if not self._ready:
                if not self._waiting:
                    return  # every job has finished
                index = min(self._waiting.values())
                jobs = sorted((j for j, i in self._waiting.items() if i == index), key=self._rank.__getitem__)
                for j in jobs:
                    del self._waiting[j]
                self._enter(index, jobs)
                self._ready.extend(jobs)
            job = self._ready.popleft()
            mode = self._jobs[job].mode
            if mode != self._mode and self.switch is not None:
                self.switch(mode)
            self._mode = mode
            self._turn = job
        except BaseException as exc:  # e.g. out of memory while widening: every job stops
            self._error = self._error or exc

    # ---- weights ---------------------------------------------------------------------------------------------
    def _enter(self, index: int, jobs: list[int]) -> None:
        block = self.blocks[index]
        if block is self._current:
            return  # still widened: the same module called again
        self._narrow(self._current)
        self._current = None
        self.loads[index] += 1
        self._read_ahead(index)
        if block.kind == "gathered":
            self._gathered(block, jobs)
        elif block.kind == "widen":
            self._widen(block)
            self._current = block

    def _read_ahead(self, index: int) -> None:
        """Hand the blocks after `index` (up to PREFETCH_BYTES of stored weights) to the kernel's readahead.
        Embedding tables are left out: only the rows looked up are read, and they are read on use."""
        ahead, tensors = 0, []
        for later in range(index + 1, len(self.blocks)):
            block = self.blocks[later]
            if ahead >= PREFETCH_BYTES:
                break
            ahead += sum(t.numel() * t.element_size() for t in (*block.module.parameters(), *block.module.buffers()))
            if later > self._prefetched:
                if block.kind != "embedding":
                    tensors += [*block.module.parameters(), *block.module.buffers()]
                self._prefetched = later
        prefetch.will_need(tensors)

    def _widen(self, block: _Block) -> None:
        for tensor in (*block.module.parameters(), *block.module.buffers()):
            if _half(tensor):
                block.saved.append((tensor, tensor.data))
                tensor.data = tensor.data.float()

    @staticmethod
    def _narrow(block: _Block | None) -> None:
        if block is None:
            return
        for tensor, original in block.saved:
            tensor.data = original
        block.saved.clear()

    def _gathered(self, block: _Block, jobs: list[int]) -> None:
        """F.linear for every waiting job, in chunks of output rows (at most `limit` float32 bytes, whole
        multiples of CHUNK_ROWS)."""
        import torch
        import torch.nn.functional as F

        weight, bias = block.module.weight, block.module.bias
        rows = max(CHUNK_ROWS, self.limit // (4 * weight.shape[1]) // CHUNK_ROWS * CHUNK_ROWS)
        xs = {j: self._inputs.pop(j) for j in jobs}
        outs = {j: torch.empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32) for j, x in xs.items()}
        with torch.no_grad():
            for start in range(0, weight.shape[0], rows):
                w = weight[start:start + rows].float()
                b = None if bias is None else bias[start:start + rows].float()
                for j, x in xs.items():
                    outs[j][..., start:start + rows] = F.linear(x, w, b)
                del w, b
        self._outputs.update(outs)
