"""The validated build description: what models.toml says, as frozen dataclasses.

Produced once per doit call by tasks.core.config.load; every stage definition reads it, nothing
writes it. Light: standard library only.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.core.config.imatrix import ImatrixSpec
from tasks.core.layout import ArtifactLayout

TARGETS = ("ollama", "lmstudio", "llamacpp", "vllm")
GGUF_TARGETS = ("ollama", "lmstudio", "llamacpp")  # targets that serve a GGUF file
DEFAULT_TARGETS = ("ollama", "lmstudio", "llamacpp")
DEFAULT_LMSTUDIO_HOME = "~/.lmstudio"  # LM Studio's own location; models live in <home>/models


@dataclass(frozen=True)
class Source:
    """Where a base model or an adapter comes from; `path` is the local directory it resolves to."""

    spec: str  # as written in models.toml
    path: Path
    fixture: str | None = None  # name of the fixture that produces `path`, if any
    # A remote source (tasks.core.config.remote.SshRemote | HubRemote): `path` is then the snapshot
    # under artifacts/sources/<model>/<role>/ that the `fetch_task` stage writes.
    remote: Any = None
    fetch_task: str | None = None


@dataclass(frozen=True)
class HardwareProfile:
    """A machine a deployment must fit on: `memory_gb` (decimal GB) x `utilization` - `reserve_gb`."""

    name: str
    kind: str  # "gpu" (weights + KV in device memory) or "cpu" (in RAM)
    memory_gb: float
    utilization: float = 0.9  # fraction the server may use (vLLM --gpu-memory-utilization)
    reserve_gb: float = 0.0  # runtime overhead the planner does not model (CUDA context, buffers, OS)
    cpus: int | None = None
    bf16: bool = True  # False for GPUs without bfloat16 (T4): vLLM then serves float16

    def budget_bytes(self) -> int:
        return int(self.memory_gb * 1e9 * self.utilization - self.reserve_gb * 1e9)


@dataclass(frozen=True)
class LMStudioSpec:
    home: Path = Path(os.path.expanduser(DEFAULT_LMSTUDIO_HOME))
    link: str = "symlink"  # "symlink" | "copy"
    quants: tuple[str, ...] = ()  # empty: the deploy quant


@dataclass(frozen=True)
class VLLMSpec:
    hardware: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    kv_cache_dtype: str = "auto"
    lora: bool = False  # also render a launch script serving the unmerged adapter
    image: str = "vllm/vllm-openai:latest"


@dataclass(frozen=True)
class HealthSpec:
    prompt: str = "Say hello."
    expect: str | None = None  # exact reply expected (a fine-tune's training answer), else any non-empty reply
    timeout: float = 60.0
    max_latency: float | None = None  # seconds; slower is "degraded"


@dataclass(frozen=True)
class DeploySpec:
    # merged: one full model per fine-tune | adapter: the base's GGUFs (shared by every model on that base)
    # plus a LoRA GGUF applied at load time | both.
    mode: str = "merged"
    port: int | None = None
    context: int = 4096
    quant: str | None = None  # the quant that deploy targets use; default: the model's last quant
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repeat_penalty: float | None = None
    publisher: str = "modelmake"
    targets: tuple[str, ...] = DEFAULT_TARGETS
    hardware: str | None = None  # a [hardware.<name>] profile the GGUF deployment must fit on
    host: str = "127.0.0.1"
    stop: tuple[str, ...] = ()
    ollama_template: Path | None = None  # explicit Go template instead of the derived one
    lmstudio: LMStudioSpec = field(default_factory=LMStudioSpec)
    vllm: VLLMSpec = field(default_factory=VLLMSpec)
    health: HealthSpec = field(default_factory=HealthSpec)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    base: Source
    adapter: Source
    outtype: str
    quants: tuple[str, ...]
    merge: str
    system: str | None
    deploy: DeploySpec
    gates: dict[str, Any] = field(default_factory=dict)  # resolved by tasks.core.config.gates.parse_gates
    imatrix: ImatrixSpec | None = None  # the importance matrix and the quants built with it

    @property
    def gguf_types(self) -> tuple[str, ...]:
        """Every GGUF the model builds: the unquantized one, each quant, each quant's no-matrix twin."""
        return (self.outtype, *self.quants, *(self.imatrix.plain if self.imatrix else ()))

    def uses_imatrix(self, gtype: str) -> bool:
        return self.imatrix is not None and gtype in self.imatrix.quants

    @property
    def builds_gguf(self) -> bool:
        """False for a vLLM-only model: vLLM serves merged/, so no GGUF is ever built for it."""
        return any(t in GGUF_TARGETS for t in self.deploy.targets)

    @property
    def builds_merged(self) -> bool:
        """False in adapter mode: only the base's GGUFs and the LoRA GGUF are built."""
        return self.deploy.mode != "adapter"

    @property
    def builds_lora(self) -> bool:
        """The LoRA GGUF and the base's GGUFs (adapter or both mode, GGUF targets only)."""
        return self.deploy.mode != "merged" and self.builds_gguf

    @property
    def base_id(self) -> str:
        """Name of the base's shared GGUF directory (artifacts/bases/<id>/): every model whose base is
        spelled the same in models.toml shares it. From the spelling, not the location, so a tree
        restored elsewhere finds its artifacts; the stage key is still the base's content digest."""
        spec = self.base.spec if self.base.fixture or self.base.remote else os.path.normpath(self.base.spec)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", spec.rstrip("/").rsplit("/", 1)[-1].split(":")[-1]).strip(".-")
        return f"{stem or 'base'}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"

    @property
    def deploy_quant(self) -> str:
        """The GGUF type the deploy targets point at: deploy.quant, else the last quant, else the outtype."""
        return self.deploy.quant or (self.quants[-1] if self.quants else self.outtype)

    @property
    def vllm_profile(self) -> str | None:
        return self.deploy.vllm.hardware or self.deploy.hardware


@dataclass(frozen=True)
class Config:
    path: Path
    root: Path  # directory holding models.toml; relative paths resolve against it
    artifacts: Path
    templates: Path  # Jinja templates for the render stage
    threads: int
    models: dict[str, ModelSpec] = field(default_factory=dict)
    webhook: str | None = None  # [build] webhook: POST a summary on success or failure (tasks.build.notify)
    hardware: dict[str, HardwareProfile] = field(default_factory=dict)  # [hardware.<name>] profiles
    caches: tuple[Any, ...] = ()  # [build] cache: tasks.core.config.cache.CacheSpec, first hit wins
    run_cache: int = 16 << 30  # [build] run_cache: bytes kept under artifacts/.cache/runs/ (0: off)

    @property
    def layout(self) -> ArtifactLayout:
        """Every path under artifacts/ (tasks/core/layout.py)."""
        return ArtifactLayout(self.artifacts)
