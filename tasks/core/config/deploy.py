"""models.toml keys for deployment: hardware profiles and per-model deploy targets.

Validated with the rest of models.toml (tasks/core/config/load.py calls in here), so a typo in a
deploy setting is a one-line UserError naming the key before anything builds. Light imports only.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from tasks.core.config.schema import TARGETS, Config, DeploySpec, HardwareProfile, HealthSpec, LMStudioSpec, VLLMSpec
from tasks.core.config.values import check_keys, choice, number, safe_name, string, table, typed
from tasks.core.errors import UserError
from tasks.core.quant_types import OUTTYPES

DEPLOY_KEYS = {"mode", "port", "context", "quant", "temperature", "top_p", "top_k", "repeat_penalty", "publisher",
               "targets", "hardware", "host", "stop", "ollama_template", "lmstudio", "vllm", "health"}
HARDWARE_KEYS = {"kind", "memory_gb", "utilization", "reserve_gb", "cpus", "bf16"}
LMSTUDIO_KEYS = {"home", "link", "quants"}
VLLM_KEYS = {"hardware", "dtype", "max_model_len", "kv_cache_dtype", "lora", "image"}
HEALTH_KEYS = {"prompt", "expect", "timeout", "max_latency"}
VLLM_DTYPES = ("auto", "float16", "bfloat16")
VLLM_KV_DTYPES = ("auto", "fp8")
MAX_TEMPLATE_BYTES = 1 << 20
MODES = ("merged", "adapter", "both")
# Targets that can only serve a merged model: LM Studio loads no adapter; vllm-serve.sh serves merged/.
MERGED_ONLY_TARGETS = ("lmstudio", "vllm")


def parse_hardware(raw: Any, where: str) -> dict[str, HardwareProfile]:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: hardware: expected a table of profiles, got {type(raw).__name__}")
    profiles = {}
    for name, entry in raw.items():
        key = f"hardware.{name}"
        safe_name(name, where, key, "profile name")
        entry = table(entry, where, key)
        check_keys(entry, HARDWARE_KEYS, where, key)
        kind = choice(entry.get("kind", "gpu"), ("gpu", "cpu"), where, f"{key}.kind")
        if "memory_gb" not in entry:
            raise UserError(f"{where}: {key}.memory_gb: missing (device memory for gpu, RAM for cpu, in GB)")
        memory = number(entry["memory_gb"], where, f"{key}.memory_gb", low=0.01)
        util = number(entry.get("utilization", 0.9), where, f"{key}.utilization", low=0.01, high=1.0)
        reserve = number(entry.get("reserve_gb", 0.0), where, f"{key}.reserve_gb", low=0.0)
        cpus = entry.get("cpus")
        if cpus is not None and (not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 1):
            raise UserError(f"{where}: {key}.cpus: expected a positive integer, got {cpus!r}")
        bf16 = entry.get("bf16", True)
        if not isinstance(bf16, bool):
            raise UserError(f"{where}: {key}.bf16: expected true or false, got {bf16!r}")
        profiles[name] = HardwareProfile(name, kind, memory, util, reserve, cpus, bf16)
    return profiles


def parse_deploy(raw: Any, quants: list[str], root: Path, where: str, key: str) -> DeploySpec:
    """A model's [deploy] table (defaults merged in), validated."""
    raw = table(raw, where, key)
    spec = DeploySpec(**_basic(raw, quants, where, key), **_extras(raw, quants, root, where, key))
    if spec.mode == "adapter":
        for t in MERGED_ONLY_TARGETS:
            if t in spec.targets:
                raise UserError(f"{where}: {key}.mode: 'adapter' builds no merged model, but target {t!r} can only "
                                "serve one (it loads no LoRA adapter): use mode = \"both\"")
    return spec


def _basic(raw: Any, quants: list[str], where: str, key: str) -> dict[str, Any]:
    """The scalar deploy settings (port, context, sampling, ...), as DeploySpec keyword arguments."""
    check_keys(raw, DEPLOY_KEYS, where, key)
    values: dict[str, Any] = {}
    if "mode" in raw:
        values["mode"] = choice(raw["mode"], MODES, where, f"{key}.mode")
    if "port" in raw:
        port = typed(raw["port"], int, where, f"{key}.port")
        if not 1024 <= port <= 65535:
            raise UserError(f"{where}: {key}.port: {port} is outside 1024-65535")
        values["port"] = port
    if "context" in raw:
        ctx = typed(raw["context"], int, where, f"{key}.context")
        if not 64 <= ctx <= 1 << 22:
            raise UserError(f"{where}: {key}.context: {ctx} is outside 64-4194304")
        values["context"] = ctx
    if "quant" in raw:
        q = typed(raw["quant"], str, where, f"{key}.quant").lower()
        if q not in quants and q not in OUTTYPES:
            raise UserError(f"{where}: {key}.quant: {q!r} is not built for this model (quants: {', '.join(quants)})")
        values["quant"] = q
    for fname in ("temperature", "top_p", "repeat_penalty"):
        if fname in raw:
            v = raw[fname]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise UserError(f"{where}: {key}.{fname}: expected a non-negative number, got {v!r}")
            values[fname] = float(v)
    if "top_k" in raw:
        values["top_k"] = typed(raw["top_k"], int, where, f"{key}.top_k")
    if "publisher" in raw:
        values["publisher"] = safe_name(raw["publisher"], where, f"{key}.publisher")
    return values


def _extras(raw: dict[str, Any], quants: list[str], root: Path, where: str, key: str) -> dict[str, Any]:
    """The added deploy fields of one model, as DeploySpec keyword arguments."""
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
        out["hardware"] = safe_name(raw["hardware"], where, f"{key}.hardware", "profile name")
    if "host" in raw:
        host = string(raw["host"], where, f"{key}.host")
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
        path = (root / string(raw["ollama_template"], where, f"{key}.ollama_template")).resolve()
        if not path.is_file():
            raise UserError(f"{where}: {key}.ollama_template: file not found: {path}")
        if path.stat().st_size > MAX_TEMPLATE_BYTES:
            raise UserError(f"{where}: {key}.ollama_template: {path} is larger than 1 MiB")
        out["ollama_template"] = path
    if "lmstudio" in raw:
        out["lmstudio"] = _lmstudio(raw["lmstudio"], quants, OUTTYPES, root, where, f"{key}.lmstudio")
    if "vllm" in raw:
        out["vllm"] = _vllm(raw["vllm"], where, f"{key}.vllm")
    if "health" in raw:
        out["health"] = _health(raw["health"], where, f"{key}.health")
    return out


def check_references(config: Config, where: str) -> None:
    """Profiles named by deploy settings must exist in [hardware]; models sharing a base GGUF share its type."""
    shared: dict[str, Any] = {}
    for m in config.models.values():
        if m.deploy.mode != "merged":
            first = shared.setdefault(m.base_id, m)
            if first.outtype != m.outtype:
                raise UserError(f"{where}: models.{m.name}.outtype: {m.outtype!r}, but models.{first.name} on the same "
                                f"base in adapter mode uses {first.outtype!r}: they share one base GGUF")
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


def _lmstudio(raw: Any, quants: list[str], outtypes: tuple[str, ...], root: Path, where: str, key: str) -> LMStudioSpec:
    raw = table(raw, where, key)
    check_keys(raw, LMSTUDIO_KEYS, where, key)
    values: dict[str, Any] = {}
    if "home" in raw:
        text = string(raw["home"], where, f"{key}.home")
        if not text or "\x00" in text:
            raise UserError(f"{where}: {key}.home: not a usable path: {text!r}")
        values["home"] = (root / os.path.expanduser(text)).resolve()
    if "link" in raw:
        values["link"] = choice(raw["link"], ("symlink", "copy"), where, f"{key}.link")
    if "quants" in raw:
        qs = raw["quants"]
        if not isinstance(qs, list) or not qs:
            raise UserError(f"{where}: {key}.quants: expected a non-empty list of built quants")
        for i, q in enumerate(qs):
            if not isinstance(q, str) or (q.lower() not in quants and q.lower() not in outtypes):
                raise UserError(f"{where}: {key}.quants[{i}]: {q!r} is not built for this model")
        values["quants"] = tuple(dict.fromkeys(q.lower() for q in qs))
    return LMStudioSpec(**values)


def _vllm(raw: Any, where: str, key: str) -> VLLMSpec:
    raw = table(raw, where, key)
    check_keys(raw, VLLM_KEYS, where, key)
    values: dict[str, Any] = {}
    if "hardware" in raw:
        values["hardware"] = safe_name(raw["hardware"], where, f"{key}.hardware", "profile name")
    for fname, allowed in (("dtype", VLLM_DTYPES), ("kv_cache_dtype", VLLM_KV_DTYPES)):
        if fname in raw:
            values[fname] = choice(raw[fname], allowed, where, f"{key}.{fname}")
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
        image = string(raw["image"], where, f"{key}.image")
        if not image or any(c.isspace() for c in image) or image.startswith("-"):
            raise UserError(f"{where}: {key}.image: not a container image reference: {image!r}")
        values["image"] = image
    return VLLMSpec(**values)


def _health(raw: Any, where: str, key: str) -> HealthSpec:
    raw = table(raw, where, key)
    check_keys(raw, HEALTH_KEYS, where, key)
    values: dict[str, Any] = {}
    if "prompt" in raw:
        values["prompt"] = string(raw["prompt"], where, f"{key}.prompt")
        if not values["prompt"].strip():
            raise UserError(f"{where}: {key}.prompt: must not be empty")
    if "expect" in raw:
        values["expect"] = string(raw["expect"], where, f"{key}.expect")
    if "timeout" in raw:
        values["timeout"] = number(raw["timeout"], where, f"{key}.timeout", low=0.1, high=3600)
    if "max_latency" in raw:
        values["max_latency"] = number(raw["max_latency"], where, f"{key}.max_latency", low=0.001)
    return HealthSpec(**values)


def deploy_params(deploy: DeploySpec) -> dict[str, Any]:
    """The deploy settings that shape rendered files, as plain JSON for a stage key.

    Left out: the LM Studio home and the health probe, which only matter at deploy/check time,
    so moving LM Studio elsewhere does not re-render anything.
    """
    skip = {"lmstudio", "vllm", "health", "ollama_template", "targets", "stop", "mode"}
    out = {k: v for k, v in vars(deploy).items() if k not in skip}
    if deploy.mode != "merged":  # absent for merged models: their keys (and models.lock) stay as they were
        out["mode"] = deploy.mode
    out["targets"] = list(deploy.targets)
    out["stop"] = list(deploy.stop)
    out["ollama_template"] = deploy.ollama_template is not None  # its bytes are a stage input
    out["lmstudio"] = {"link": deploy.lmstudio.link, "quants": list(deploy.lmstudio.quants)}
    out["vllm"] = dict(vars(deploy.vllm))
    return out
