"""The fixtures' training runs on pinned CPU kernels: the same bytes whatever instruction set the machine offers.

A machine without AVX-512 is played by limiting MKL to AVX2 (`MKL_ENABLE_INSTRUCTIONS`) and ATen to its AVX2
kernels: a few training steps of a small MLP with a wide output layer (the demo's cost) must give the same
weights with and without those limits once pinned, and (so the test can fail) different ones unpinned.
"""

from __future__ import annotations

import os
import platform
import subprocess

import pytest
from conftest import PY, REPO

TRAIN = """
import hashlib, sys
from tasks.fixtures import numerics
if sys.argv[1] == "pinned":
    numerics.pin_before_torch()
import torch
torch.manual_seed(0); torch.set_num_threads(2)
nn = torch.nn
model = nn.Sequential(nn.Linear(96, 256), nn.GELU(), nn.LayerNorm(256), nn.Linear(256, 8000))
x, y = torch.randn(64, 96), torch.randint(0, 8000, (64,))
opt = torch.optim.AdamW(model.parameters(), lr=0.01)
for _ in range(5):
    opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest())
print(torch.backends.cpu.get_cpu_capability())
"""

x86_only = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                              reason="the pins are x86-64 kernel choices (other architectures run their own)")


def train(mode: str, **env: str) -> tuple[str, str]:
    full = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    proc = subprocess.run([PY, "-c", TRAIN, mode], env={**full, **env}, cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=True)
    digest, capability = proc.stdout.split()
    return digest, capability


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        return {flag for line in fh if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


@x86_only
def test_pinned_training_gives_the_same_weights_on_an_avx2_only_path() -> None:
    native, capability = train("pinned")
    assert capability == "AVX2"  # ATen honours the pin
    assert train("pinned", MKL_ENABLE_INSTRUCTIONS="AVX2")[0] == native


@x86_only
@pytest.mark.skipif("avx512f" not in cpu_flags(), reason="needs a CPU whose native path differs from AVX2")
def test_unpinned_training_depends_on_the_instruction_set() -> None:
    """Why the pin exists: the same steps on the AVX-512 and the AVX2 path round differently."""
    native = train("free")[0]
    assert train("free", MKL_ENABLE_INSTRUCTIONS="AVX2", ATEN_CPU_CAPABILITY="avx2")[0] != native


def test_pinning_after_torch_loaded_is_refused() -> None:
    code = "import torch\nfrom tasks.fixtures import numerics\nnumerics.pin_before_torch()"
    proc = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY")})
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert proc.returncode != 0 and "torch was imported before" in proc.stderr
    else:
        assert proc.returncode == 0
