"""How the merge touches the disk: only merged tensors pass through memory, and a full disk leaves nothing."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest
from merge_stream_support import load_dir, make_adapter, make_base

from tasks.core.errors import UserError
from tasks.formats import safetensors
from tasks.formats.safetensors import read_checkpoint, read_header
from tasks.merge import pipeline, shard_writer
from tasks.merge.stream import merge_streaming


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("io")
    base = make_base(root / "base", "qwen2", shard="40KB", tied=True)
    adapter = make_adapter(base, root / "adapter", target_modules=["q_proj", "down_proj"])
    return base, adapter


def test_only_merged_tensors_enter_memory(tmp_path: Path, pair: tuple[Path, Path],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The structural reason peak RSS is bounded: of a multi-shard base, only the tensors the adapter
    changes are read, one at a time, into reused buffers; everything else streams through the writer's
    fixed-size staging buffer.  (Measured RSS: benchmarks/bench_merge.py.)"""
    base, adapter = pair
    reads: list[tuple[str, int]] = []
    copied: list[int] = []
    real_read, real_copy = safetensors.read_into, shard_writer.copy_range

    def read_into(info, buf):
        reads.append((info.name, info.nbytes))
        return real_read(info, buf)

    def copy_range(src, src_fd, sink):
        copied.append(src.nbytes)
        return real_copy(src, src_fd, sink)

    monkeypatch.setattr(pipeline, "read_into", read_into)
    monkeypatch.setattr(shard_writer, "copy_range", copy_range)
    (out := tmp_path / "out").mkdir()
    merge_streaming(base, adapter, out, max_shard_bytes=50 * 1024)

    tensors = read_checkpoint(base)
    assert len({t.path for t in tensors.values()}) > 2
    merged = {n: t.nbytes for n, t in tensors.items() if n.endswith(("q_proj.weight", "down_proj.weight"))}
    adapter_tensors = read_header(adapter / "adapter_model.safetensors")
    base_reads = [(n, b) for n, b in reads if n in tensors]
    assert sorted(base_reads) == sorted(merged.items())  # each merged tensor read once, nothing else
    assert sorted(n for n, _ in reads if n not in tensors) == sorted(adapter_tensors)
    assert sum(copied) == sum(t.nbytes for t in tensors.values()) - sum(merged.values())
    assert len(load_dir(out)) == len(tensors)


def test_device_refusing_o_direct_falls_back_to_buffered(tmp_path: Path, pair: tuple[Path, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A device with stricter O_DIRECT alignment (EINVAL on write) gets the same bytes, written buffered."""
    import fcntl
    import os

    base, adapter = pair
    (ref := tmp_path / "ref").mkdir()
    merge_streaming(base, adapter, ref, max_shard_bytes=50 * 1024)
    real_write = shard_writer.write_all
    refused = []

    def write_all(fd, data):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        real_write(fd, data)

    monkeypatch.setattr(shard_writer, "_STAGE_BYTES", 4096)
    monkeypatch.setattr(shard_writer, "write_all", write_all)
    (out := tmp_path / "out").mkdir()
    merge_streaming(base, adapter, out, max_shard_bytes=50 * 1024)
    assert refused
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in ref.iterdir()}


def _budgeted_disk(monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    """Make every write fail with ENOSPC once `budget` bytes have been written."""
    left = [budget]
    real_write = shard_writer.write_all

    def spend(n: int) -> None:
        if n > left[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        left[0] -= n

    def write_all(fd, data):
        spend(memoryview(data).nbytes)
        real_write(fd, data)

    monkeypatch.setattr(shard_writer, "write_all", write_all)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.999], ids=["at-start", "mid-merge", "last-file"])
def test_disk_full_leaves_nothing(tmp_path: Path, pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                  fraction: float) -> None:
    base, adapter = pair
    (full := tmp_path / "full").mkdir()
    merge_streaming(base, adapter, full, max_shard_bytes=50 * 1024)
    total = sum(p.stat().st_size for p in full.iterdir())
    _budgeted_disk(monkeypatch, int(total * fraction))
    (out := tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="disk full") as err:
        merge_streaming(base, adapter, out, max_shard_bytes=50 * 1024)
    assert str(out) in str(err.value) and "\n" not in str(err.value)
    assert list(out.iterdir()) == []  # no temp files, and no finished shards under final names


def test_disk_full_on_a_real_small_filesystem(pair: tuple[Path, Path]) -> None:
    """Same, for real: a 64 KiB tmpfs (needs mount rights; skipped elsewhere).  The mount point lives
    outside pytest's basetemp, which a concurrent pytest run may rename while we hold a mount in it."""
    import shutil
    import tempfile

    base, adapter = pair
    mnt = Path(tempfile.mkdtemp(prefix="merge-stream-enospc-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        mnt.rmdir()
        pytest.skip("cannot mount a tmpfs here")
    try:
        (out := mnt / "out").mkdir()
        with pytest.raises(UserError, match="disk full"):
            merge_streaming(base, adapter, out, max_shard_bytes=20 * 1024)
        assert list(out.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        shutil.rmtree(mnt)


@pytest.mark.parametrize("rows, cols, rank", [(2048, 2048, 16), (11008, 2048, 16), (2048, 11008, 64), (512, 3584, 8)])
def test_gemm_bits_do_not_depend_on_thread_count(rows: int, cols: int, rank: int) -> None:
    """The merge runs torch single-threaded while peft uses the default pool: the delta must not change."""
    import torch

    gen = torch.Generator().manual_seed(rows + cols + rank)
    B, A = torch.randn(rows, rank, generator=gen), torch.randn(rank, cols, generator=gen)
    threads = torch.get_num_threads()
    reference = B @ A
    torch.set_num_threads(1)
    try:
        single = B @ A
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, reference)
