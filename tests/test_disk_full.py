"""A full disk says so: which path, how much is free, what was needed when known; nothing half-written stays."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from fs_support import tmpfs

from tasks.build.runner import os_error_line
from tasks.core import atomic, diskspace


def test_our_write_on_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", 1 << 20, keep=False) as small:
        target = small / "demo" / "demo-f16.gguf"
        with pytest.raises(OSError) as info:
            atomic.write_bytes(target, b"\0" * (2 << 20))
        assert info.value.errno == errno.ENOSPC
        line = os_error_line(info.value, None)
        assert line.startswith("disk full: ") and str(small) in line and "free" in line
        assert not list(target.parent.iterdir()), "the temporary is removed"


def test_a_childs_iostream_error_on_a_full_disk_is_named_disk_full(tmp_path: Path) -> None:
    """llama.cpp's quantize only logs `basic_ios::clear: iostream error` when its write fails."""
    with tmpfs(tmp_path / "small", 1 << 20, keep=False) as small:
        (small / "partial.gguf").write_bytes(b"\0" * ((1 << 20) - 8192))
        with pytest.raises(diskspace.DiskFull) as info:
            diskspace.check_after_failure(small, "llama_model_quantize: failed to quantize: basic_ios::clear: "
                                          "iostream error\n", needed=3 << 20)
        assert str(info.value).startswith(f"disk full: {small}: no space left on the device (")
        assert "about 3.0 MiB needed" in str(info.value)
        assert info.value.exit_code == 1
    diskspace.check_after_failure(tmp_path, "iostream error")  # plenty free: not taken for a full disk


def test_the_converters_own_free_space_check_is_named_disk_full_with_the_size_needed(tmp_path: Path) -> None:
    """gguf-py refuses before writing: `OSError: Not enough free space to write N bytes after offset M`."""
    with pytest.raises(diskspace.DiskFull) as info:
        diskspace.check_after_failure(tmp_path, "OSError: Not enough free space to write 77791232 bytes after "
                                      "offset 5932448\n")
    assert "about 74.2 MiB needed" in str(info.value) and str(info.value).startswith(f"disk full: {tmp_path}: ")
