"""models.toml keys for deployment: hardware profiles and per-model deploy targets.

Validated with the rest of models.toml (tasks/config.py calls in here), so a typo in a deploy
setting is a one-line UserError naming the key before anything builds. Light imports only.
"""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import UserError
from tasks.toml_values import check_keys as _check_keys
from tasks.toml_values import string as _str

TARGETS = ("ollama", "lmstudio", "llamacpp", "vllm")
GGUF_TARGETS = ("ollama", "lmstudio", "llamacpp")  # targets that serve a GGUF file
DEFAULT_TARGETS = ("ollama", "lmstudio", "llamacpp")
EXTRA_DEPLOY_KEYS = {"targets", "hardware", "host", "stop", "ollama_template", "lmstudio", "vllm", "health"}
HARDWARE_KEYS = {"kind", "memory_gb", "utilization", "reserve_gb", "cpus", "bf16"}
LMSTUDIO_KEYS = {"home", "link", "quants"}
VLLM_KEYS = {"hardware", "dtype", "max_model_len", "kv_cache_dtype", "lora", "image"}
HEALTH_KEYS = {"prompt", "expect", "timeout", "max_latency"}
VLLM_DTYPES = ("auto", "float16", "bfloat16")
VLLM_KV_DTYPES = ("auto", "fp8")
DEFAULT_LMSTUDIO_HOME = "~/.lmstudio"  # LM Studio's own location; models live in <home>/models
MAX_TEMPLATE_BYTES = 1 << 20


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


def parse_hardware(raw: Any, where: str) -> dict[str, HardwareProfile]:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: hardware: expected a table of profiles, got {type(raw).__name__}")
    from tasks.config import NAME_RE

    profiles = {}
    for name, entry in raw.items():
        key = f"hardware.{name}"
        if not NAME_RE.match(name):
            raise UserError(f"{where}: {key}: unsafe profile name {name!r}")
        entry = _table(entry, where, key)
        _check_keys(entry, HARDWARE_KEYS, where, key)
        kind = _str(entry.get("kind", "gpu"), where, f"{key}.kind")
        if kind not in ("gpu", "cpu"):
            raise UserError(f"{where}: {key}.kind: {kind!r} is not one of gpu, cpu")
        if "memory_gb" not in entry:
            raise UserError(f"{where}: {key}.memory_gb: missing (device memory for gpu, RAM for cpu, in GB)")
        memory = _number(entry["memory_gb"], where, f"{key}.memory_gb", low=0.01)
        util = _number(entry.get("utilization", 0.9), where, f"{key}.utilization", low=0.01, high=1.0)
        reserve = _number(entry.get("reserve_gb", 0.0), where, f"{key}.reserve_gb", low=0.0)
        cpus = entry.get("cpus")
        if cpus is not None and (not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 1):
            raise UserError(f"{where}: {key}.cpus: expected a positive integer, got {cpus!r}")
        bf16 = entry.get("bf16", True)
        if not isinstance(bf16, bool):
            raise UserError(f"{where}: {key}.bf16: expected true or false, got {bf16!r}")
        profiles[name] = HardwareProfile(name, kind, memory, util, reserve, cpus, bf16)
    return profiles


def parse_deploy_extras(raw: dict[str, Any], quants: list[str], root: Path, where: str, key: str) -> dict[str, Any]:
    """The added deploy fields of one model, as DeploySpec keyword arguments."""
    from tasks.config import NAME_RE
    from tasks.quant_types import OUTTYPES

    out: dict[str, Any] = {}
    if "targets" in raw:
        targets = raw["targets"]
        if not isinstance(targets, list) or not targets:
            raise UserError(f"{where}: {key}.targets: expected a non-empty list of {', '.join(TARGETS)}")
        for i, t in enumerate(targets):
            if t not in TARGETS:
                raise UserError(f"{where}: {key}.targets[{i}]: unknown target {t!r} (valid: {', '.join(TARGETS)})")
        out["targets"] = tuple(dict.fromkeys(targets))
    if "hardware" in raw:
        out["hardware"] = _profile_name(raw["hardware"], where, f"{key}.hardware", NAME_RE)
    if "host" in raw:
        host = _str(raw["host"], where, f"{key}.host")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UserError(f"{where}: {key}.host: {host!r} is not an IP address (e.g. 127.0.0.1)") from None
        out["host"] = host
    if "stop" in raw:
        stops = raw["stop"]
        if not isinstance(stops, list) or not all(isinstance(s, str) and s and "\n" not in s for s in stops):
            raise UserError(f"{where}: {key}.stop: expected a list of non-empty one-line strings")
        out["stop"] = tuple(stops)
    if "ollama_template" in raw:
        path = (root / _str(raw["ollama_template"], where, f"{key}.ollama_template")).resolve()
        if not path.is_file():
            raise UserError(f"{where}: {key}.ollama_template: file not found: {path}")
        if path.stat().st_size > MAX_TEMPLATE_BYTES:
            raise UserError(f"{where}: {key}.ollama_template: {path} is larger than 1 MiB")
        out["ollama_template"] = path
    if "lmstudio" in raw:
        out["lmstudio"] = _lmstudio(raw["lmstudio"], quants, OUTTYPES, root, where, f"{key}.lmstudio")
    if "vllm" in raw:
        out["vllm"] = _vllm(raw["vllm"], where, f"{key}.vllm", NAME_RE)
    if "health" in raw:
        out["health"] = _health(raw["health"], where, f"{key}.health")
    return out


def check_references(config: Any, where: str) -> None:
    """Profiles named by deploy settings must exist in [hardware]."""
    for m in config.models.values():
        d = m.deploy
        if "vllm" in d.targets and not (d.vllm.hardware or d.hardware):
            raise UserError(f"{where}: models.{m.name}.deploy.vllm.hardware: required for the vllm target "
                            "(the planner chooses --gpu-memory-utilization and --max-model-len from it)")
        for name, key in ((d.hardware, "hardware"), (d.vllm.hardware, "vllm.hardware")):
            if name is not None and name not in config.hardware:
                known = ", ".join(sorted(config.hardware)) or "none declared"
                raise UserError(f"{where}: models.{m.name}.deploy.{key}: unknown hardware profile {name!r} "
                                f"(profiles: {known})")


def needs_gguf(deploy: Any) -> bool:
    """False for a vLLM-only model: vLLM serves the merged directory, so no GGUF is ever built for it."""
    return any(t in GGUF_TARGETS for t in deploy.targets)


def _lmstudio(raw: Any, quants: list[str], outtypes: tuple[str, ...], root: Path, where: str, key: str) -> LMStudioSpec:
    raw = _table(raw, where, key)
    _check_keys(raw, LMSTUDIO_KEYS, where, key)
    values: dict[str, Any] = {}
    if "home" in raw:
        text = _str(raw["home"], where, f"{key}.home")
        if not text or "\x00" in text:
            raise UserError(f"{where}: {key}.home: not a usable path: {text!r}")
        values["home"] = (root / os.path.expanduser(text)).resolve()
    if "link" in raw:
        link = _str(raw["link"], where, f"{key}.link")
        if link not in ("symlink", "copy"):
            raise UserError(f"{where}: {key}.link: {link!r} is not one of symlink, copy")
        values["link"] = link
    if "quants" in raw:
        qs = raw["quants"]
        if not isinstance(qs, list) or not qs:
            raise UserError(f"{where}: {key}.quants: expected a non-empty list of built quants")
        for i, q in enumerate(qs):
            if not isinstance(q, str) or (q.lower() not in quants and q.lower() not in outtypes):
                raise UserError(f"{where}: {key}.quants[{i}]: {q!r} is not built for this model")
        values["quants"] = tuple(dict.fromkeys(q.lower() for q in qs))
    return LMStudioSpec(**values)


def _vllm(raw: Any, where: str, key: str, name_re: Any) -> VLLMSpec:
    raw = _table(raw, where, key)
    _check_keys(raw, VLLM_KEYS, where, key)
    values: dict[str, Any] = {}
    if "hardware" in raw:
        values["hardware"] = _profile_name(raw["hardware"], where, f"{key}.hardware", name_re)
    for fname, allowed in (("dtype", VLLM_DTYPES), ("kv_cache_dtype", VLLM_KV_DTYPES)):
        if fname in raw:
            v = _str(raw[fname], where, f"{key}.{fname}")
            if v not in allowed:
                raise UserError(f"{where}: {key}.{fname}: {v!r} is not one of {', '.join(allowed)}")
            values[fname] = v
    if "max_model_len" in raw:
        n = raw["max_model_len"]
        if not isinstance(n, int) or isinstance(n, bool) or not 64 <= n <= 1 << 22:
            raise UserError(f"{where}: {key}.max_model_len: expected an integer in 64-4194304, got {n!r}")
        values["max_model_len"] = n
    if "lora" in raw:
        if not isinstance(raw["lora"], bool):
            raise UserError(f"{where}: {key}.lora: expected true or false")
        values["lora"] = raw["lora"]
    if "image" in raw:
        image = _str(raw["image"], where, f"{key}.image")
        if not image or any(c.isspace() for c in image) or image.startswith("-"):
            raise UserError(f"{where}: {key}.image: not a container image reference: {image!r}")
        values["image"] = image
    return VLLMSpec(**values)


def _health(raw: Any, where: str, key: str) -> HealthSpec:
    raw = _table(raw, where, key)
    _check_keys(raw, HEALTH_KEYS, where, key)
    values: dict[str, Any] = {}
    if "prompt" in raw:
        values["prompt"] = _str(raw["prompt"], where, f"{key}.prompt")
        if not values["prompt"].strip():
            raise UserError(f"{where}: {key}.prompt: must not be empty")
    if "expect" in raw:
        values["expect"] = _str(raw["expect"], where, f"{key}.expect")
    if "timeout" in raw:
        values["timeout"] = _number(raw["timeout"], where, f"{key}.timeout", low=0.1, high=3600)
    if "max_latency" in raw:
        values["max_latency"] = _number(raw["max_latency"], where, f"{key}.max_latency", low=0.001)
    return HealthSpec(**values)


def _profile_name(value: Any, where: str, key: str, name_re: Any) -> str:
    name = _str(value, where, key)
    if not name_re.match(name):
        raise UserError(f"{where}: {key}: unsafe profile name {name!r}")
    return name


def _table(value: Any, where: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key}: expected a table, got {type(value).__name__}")
    return value




def _number(value: Any, where: str, key: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: {key}: expected a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{low if low is not None else '-inf'}-{high if high is not None else 'inf'}"
        raise UserError(f"{where}: {key}: {value} is outside {bounds}")
    return float(value)


def deploy_params(deploy: Any) -> dict[str, Any]:
    """The deploy settings that shape rendered files, as plain JSON for a stage key.

    Left out: the LM Studio home and the health probe, which only matter at deploy/check time,
    so moving LM Studio elsewhere does not re-render anything.
    """
    skip = {"lmstudio", "vllm", "health", "ollama_template", "targets", "stop"}
    out = {k: v for k, v in vars(deploy).items() if k not in skip}
    out["targets"] = list(deploy.targets)
    out["stop"] = list(deploy.stop)
    out["ollama_template"] = deploy.ollama_template is not None  # its bytes are a stage input
    out["lmstudio"] = {"link": deploy.lmstudio.link, "quants": list(deploy.lmstudio.quants)}
    out["vllm"] = dict(vars(deploy.vllm))
    return out
