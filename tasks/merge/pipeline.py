"""The merge loop: read, merge and write tensors in a three-stage pipeline with bounded memory.

On two cores the work is memory traffic, not arithmetic: copying the base tensor in (preadv), one GEMM
plus one element-wise pass, and handing the result to the device.  So three threads each own one stage:

* a reader thread preads the *next* tensor to merge into a free buffer;
* this thread merges the current one in place (torch on one thread, see `_single_torch_thread`);
* a writer thread streams finished tensors, and every untouched tensor, into the shard files in order
  (tasks.merge.shard_writer).

Three rotating buffers (one per stage) bound memory at three times the largest merged tensor, plus its
float32 delta; a buffer is reused only after the write that reads it has finished.  Merged bytes go from
those buffers to the device without another copy (see `_Producer`), untouched tensors through the
writer's small staging buffer.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.formats.safetensors import TensorInfo, read_into
from tasks.merge.plan import Job, MergePlan
from tasks.merge.shard_layout import OutTensor
from tasks.merge.shard_writer import ALIGN, ShardWriter

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future

    import torch

_SLOTS = 3  # read-ahead, merging, being written


def write_shards(plan: MergePlan, shards: list[list[OutTensor]], names: list[str], out_dir: Path,
                 written: list[Path], progress: bool) -> None:
    """Write every shard (appending each committed path to `written` as soon as it exists)."""
    from concurrent.futures import ThreadPoolExecutor, wait

    import torch
    from tqdm import tqdm

    jobs = {job.out.name: job for job in plan.jobs}
    writers = [ShardWriter(out_dir / name, shard) for shard, name in zip(shards, names, strict=True)]
    sequence = [(jobs[t.name], w.offsets[t.name]) for w in writers for t in w.order if jobs[t.name].kind != "copy"]
    total = sum(job.out.nbytes for job in plan.jobs)
    default_threads = torch.get_num_threads()
    with (tqdm(total=total, unit="B", unit_scale=True, desc="merge", disable=not progress) as bar,
          _single_torch_thread(),
          ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-read") as reader,
          ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-write") as pool):
        producer = _Producer(sequence, reader, default_threads)
        for writer in writers:
            with writer:
                pending: list[Future] = []
                try:
                    for t in writer.order:
                        job = jobs[t.name]
                        if job.kind == "copy":
                            pending.append(pool.submit(writer.copy, t.name, job.source))
                        else:
                            slot, data = producer.produce(job)
                            pending.append(producer.hand_over(slot, pool.submit(writer.write, t.name, data)))
                        bar.update(t.nbytes)
                        if pending[0].done():  # surface a failed write (disk full) without waiting
                            pending.pop(0).result()
                finally:
                    wait(pending)  # the writer must be idle before the shard file is closed or removed
                for future in pending:
                    future.result()
                written.append(writer.commit())


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _single_torch_thread() -> Iterator[None]:
    """Run torch ops on the calling thread only, for the duration of the merge.

    The merge is memory-bound and the other core is busy reading and writing; torch's own thread pool only
    adds an OpenMP barrier per op, which costs a scheduler quantum whenever the machine is busy (measured
    on 2 cores under load: a 2048x16 @ 16x2048 GEMM 2 ms on one thread, 21 ms on two).  Results do not
    change: element-wise ops are per element, and MKL splits a GEMM over output rows/columns, never over
    the rank dimension it sums (tests/test_merge_stream_io.py checks GEMM bits across thread counts).
    DoRA's row norms are reductions, so `_Producer` runs those with the default pool, exactly as peft does.
    """
    with _torch_threads(1):
        yield


class _Producer:
    """Turns the non-copy jobs, in write order, into bytes to write, reading one tensor ahead.

    Each tensor is read to the offset in its (page-aligned) slot buffer that is congruent, modulo the
    O_DIRECT alignment, to where it will sit in the output file: the writer can then hand the merged bytes
    straight to the device instead of copying them through its staging buffer.
    """

    def __init__(self, sequence: list[tuple[Job, int]], reader: Executor, default_threads: int) -> None:
        from tasks.merge.lora_math import DeltaBuffer

        self.sequence, self.reader = sequence, reader
        self.need = max((job.source.nbytes for job, _ in sequence), default=0) + ALIGN
        self.buffers: list[mmap.mmap | None] = [None] * _SLOTS
        self.busy: list[Future | None] = [None] * _SLOTS  # the write reading each buffer
        self.reads: dict[int, Future] = {}
        self.position = 0
        self.delta = DeltaBuffer()
        self.default_threads = default_threads

    def produce(self, job: Job) -> tuple[int, memoryview]:
        """Cast and merge the next job (read ahead of time); returns (buffer slot, bytes to write)."""
        i = self.position
        if self.sequence[i][0] is not job:
            raise RuntimeError(f"merge order broken at {job.out.name}")
        self.position += 1
        self._read_ahead(i)
        self._read_ahead(i + 1)  # overlaps the next read with this merge
        weight = self.reads.pop(i).result()
        if job.source.dtype != job.out.dtype:  # peft copies adapter tensors into the base's dtype
            weight = weight.to(_torch_dtype(job.out.dtype))
        if job.lora is not None:
            weight = self._merge(job, weight)
        return i % _SLOTS, _as_bytes(weight)

    def hand_over(self, slot: int, future: Future) -> Future:
        """Record the write that now reads `slot`'s buffer."""
        self.busy[slot] = future
        return future

    def _read_ahead(self, i: int) -> None:
        if i >= len(self.sequence) or i in self.reads:
            return
        slot = i % _SLOTS
        if self.busy[slot] is not None:
            self.busy[slot].result()  # the write still reading this buffer must finish first
            self.busy[slot] = None
        job, file_offset = self.sequence[i]
        self.reads[i] = self.reader.submit(self._load, job.source, slot, file_offset % ALIGN)

    def _load(self, info: TensorInfo, slot: int, placement: int) -> torch.Tensor:
        """Runs on the reader thread: preadv the tensor into its slot, at `placement`."""
        import torch

        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=_torch_dtype(info.dtype))
        if self.buffers[slot] is None:
            self.buffers[slot] = mmap.mmap(-1, self.need)  # anonymous: page-aligned, reused for every tensor
        view = read_into(info, memoryview(self.buffers[slot])[placement:])
        return torch.frombuffer(view, dtype=_torch_dtype(info.dtype)).view(info.shape)

    def _merge(self, job: Job, weight: torch.Tensor) -> torch.Tensor:
        from tasks.merge import lora_math

        mod = job.lora
        A, B = _read_float32(mod.A), _read_float32(mod.B)
        if mod.magnitude is not None:
            magnitude = _read_float32(mod.magnitude)
            with _torch_threads(self.default_threads):  # reductions: keep peft's thread pool, and its bits
                if job.kind == "embedding":
                    return lora_math.merge_dora_embedding(weight, A, B, magnitude, mod.scaling)
                return lora_math.merge_dora_linear(weight, A, B, magnitude, mod.scaling, job.kind == "conv1d")
        if job.kind == "embedding":
            return lora_math.merge_embedding(weight, A, B, mod.scaling, self.delta)
        return lora_math.merge_linear(weight, A, B, mod.scaling, job.kind == "conv1d", self.delta)


def _read_float32(info: TensorInfo) -> torch.Tensor:
    """An adapter tensor as float32, the dtype peft gives adapter weights after loading."""
    import torch

    data = read_into(info, memoryview(bytearray(info.nbytes)))
    return torch.frombuffer(data, dtype=_torch_dtype(info.dtype)).view(info.shape).to(torch.float32)


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[name]


def _as_bytes(t: torch.Tensor) -> memoryview:
    """A tensor's storage bytes without a copy (safetensors data is raw little-endian, C order)."""
    import torch

    flat = t.contiguous().view(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")
