"""The installed llama.cpp build is one that runs every model modelmake builds on this CPU."""

from __future__ import annotations

import subprocess
import sys

from tasks.core import toolchain


def test_installed_llama_cpp_has_no_amx_kernels() -> None:
    # -march=native on an AMX Xeon turns them on, and they crash this release decoding Q8_0 (SIGSEGV).
    assert toolchain.build_problem() is None


def test_check_build_command_exits_zero_for_the_installed_build() -> None:
    proc = subprocess.run([sys.executable, "-m", "tasks.core.toolchain", "--check-build"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
