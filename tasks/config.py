"""models.toml: the validated build description.

Everything a build does is decided here, once, before any task runs: a bad key, an unknown
quantization or a missing path is a one-line UserError naming the key, and nothing is built.
Light imports only: dodo.py loads this on every doit call.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tasks.deploy_config import (
    DEFAULT_TARGETS,
    EXTRA_DEPLOY_KEYS,
    HardwareProfile,
    HealthSpec,
    LMStudioSpec,
    VLLMSpec,
    check_references,
    parse_deploy_extras,
    parse_hardware,
)
from tasks.errors import UserError
from tasks.gates import parse_gates
from tasks.quant_types import NEEDS_IMATRIX, OUTTYPES, QUANT_FTYPES, buildable_quants

# A model name becomes a directory under artifacts/ and a doit task suffix: keep it boring.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
FIXTURE_PREFIX = "fixture:"
REPO = Path(__file__).resolve().parent.parent
MERGE_ENGINES = ("peft", "stream")

BUILD_KEYS = {"artifacts", "templates", "threads", "webhook"}
MODEL_KEYS = {"base", "adapter", "outtype", "quants", "merge", "system", "deploy", "gates"}
DEPLOY_KEYS = {"port", "context", "quant", "temperature", "top_p", "top_k", "repeat_penalty", "publisher"}
DEPLOY_KEYS |= EXTRA_DEPLOY_KEYS  # targets, hardware, lmstudio, vllm, health, ...: tasks/deploy_config.py
TOP_KEYS = {"build", "defaults", "models", "hardware"}


@dataclass(frozen=True)
class Source:
    """Where a base model or an adapter comes from; `path` is the local directory it resolves to."""

    spec: str  # as written in models.toml
    path: Path
    fixture: str | None = None  # name of the fixture task that produces `path`, if any
    # A remote source (tasks.sources.spec.SshRemote | HubRemote): `path` is then the snapshot under
    # artifacts/sources/<model>/<role>/ that the `fetch_task` stage writes.
    remote: Any = None
    fetch_task: str | None = None


@dataclass(frozen=True)
class DeploySpec:
    port: int | None = None
    context: int = 4096
    quant: str | None = None  # the quant that deploy targets use; default: the model's last quant
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repeat_penalty: float | None = None
    publisher: str = "modelmake"
    # Deployment targets and their settings, validated by tasks/deploy_config.py.
    targets: tuple[str, ...] = DEFAULT_TARGETS
    hardware: str | None = None  # a [hardware.<name>] profile the GGUF deployment must fit on
    host: str = "127.0.0.1"
    stop: tuple[str, ...] = ()
    ollama_template: Path | None = None  # explicit Go template instead of the detected one
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
    gates: dict[str, Any] = field(default_factory=dict)  # resolved by tasks.gates.parse_gates


@dataclass(frozen=True)
class Config:
    path: Path
    root: Path  # directory holding models.toml; relative paths resolve against it
    artifacts: Path
    templates: Path  # Jinja templates for the render stage
    threads: int
    models: dict[str, ModelSpec] = field(default_factory=dict)
    webhook: str | None = None  # [build] webhook: POST a summary on success or failure (tasks.notify)
    hardware: dict[str, HardwareProfile] = field(default_factory=dict)  # [hardware.<name>] profiles

    def fixture_dir(self, name: str) -> Path:
        return self.artifacts / "fixtures" / name


def default_config_path() -> Path:
    """models.toml next to dodo.py, unless MODELMAKE_CONFIG names another file (tests, CI)."""
    env = os.environ.get("MODELMAKE_CONFIG")
    return Path(env).resolve() if env else Path(__file__).resolve().parent.parent / "models.toml"


def load_config(path: Path | None = None, *, check_paths: bool = True) -> Config:
    """Parse and validate models.toml; raise UserError on the first problem found."""
    path = (path or default_config_path()).resolve()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    where = str(path)
    _check_keys(raw, TOP_KEYS, where, "")
    build = _table(raw.get("build", {}), where, "build")
    _check_keys(build, BUILD_KEYS, where, "build.")
    root = path.parent
    artifacts = (root / _typed(build.get("artifacts", "artifacts"), str, where, "build.artifacts")).resolve()
    templates = build.get("templates")
    templates = (root / _typed(templates, str, where, "build.templates")).resolve() if templates else REPO / "templates"
    if check_paths and not templates.is_dir():
        raise UserError(f"{where}: build.templates: directory not found: {templates}")
    threads = _typed(build.get("threads", min(os.cpu_count() or 1, 8)), int, where, "build.threads")
    webhook = build.get("webhook")
    if webhook is not None and not re.match(r"^https?://[^\s]+$", _typed(webhook, str, where, "build.webhook")):
        raise UserError(f"{where}: build.webhook: expected an http:// or https:// URL, got {webhook!r}")
    if threads < 1:
        raise UserError(f"{where}: build.threads: must be at least 1, got {threads}")
    env_threads = os.environ.get("MODELMAKE_THREADS")
    if env_threads:
        if not env_threads.isdigit() or int(env_threads) < 1:
            raise UserError(f"MODELMAKE_THREADS: must be a positive integer, got {env_threads!r}")
        threads = int(env_threads)

    defaults = _table(raw.get("defaults", {}), where, "defaults")
    _check_keys(defaults, MODEL_KEYS - {"base", "adapter"}, where, "defaults.")
    models_raw = _table(raw.get("models", {}), where, "models")
    if not models_raw:
        raise UserError(f"{where}: models: no model defined (add a [models.<name>] table)")
    config = Config(path=path, root=root, artifacts=artifacts, templates=templates, threads=threads, webhook=webhook)
    config.hardware.update(parse_hardware(raw.get("hardware", {}), where))
    seen: dict[str, str] = {}
    for name, entry in models_raw.items():
        key = f"models.{name}"
        if not NAME_RE.match(name):
            raise UserError(
                f"{where}: {key}: unsafe model name {name!r} (use lowercase letters, digits, '-' or '_', "
                "starting with a letter or digit, at most 63 characters)"
            )
        for gtype in (*QUANT_FTYPES, *OUTTYPES):
            if name.endswith("-" + gtype):
                raise UserError(
                    f"{where}: {key}: model name {name!r} ends with '-{gtype}', "
                    "which task names reserve for quant types"
                )
        folded = name.replace("_", "-")
        if folded in seen:
            raise UserError(f"{where}: {key}: duplicate of models.{seen[folded]} (names differ only by '-'/'_')")
        seen[folded] = name
        merged = {**defaults, **_table(entry, where, key)}
        if "deploy" in defaults or "deploy" in entry:
            merged["deploy"] = {**defaults.get("deploy", {}), **entry.get("deploy", {})}
        if isinstance(defaults.get("gates"), dict) and isinstance(entry.get("gates", {}), dict):
            merged["gates"] = {**defaults["gates"], **entry.get("gates", {})}
        config.models[name] = _model(config, name, merged, where, check_paths)
    _check_ports(config, where)
    check_references(config, where)
    return config


def _model(config: Config, name: str, raw: dict[str, Any], where: str, check_paths: bool) -> ModelSpec:
    key = f"models.{name}"
    _check_keys(raw, MODEL_KEYS, where, key + ".")
    for required in ("base", "adapter"):
        if required not in raw:
            raise UserError(
                f"{where}: {key}.{required}: missing (a local path, 'fixture:<name>', ssh://... or hf://...)"
            )
    outtype = _typed(raw.get("outtype", "f16"), str, where, f"{key}.outtype").lower()
    if outtype not in OUTTYPES:
        raise UserError(f"{where}: {key}.outtype: {outtype!r} is not one of {', '.join(OUTTYPES)}")
    quants_raw = _typed(raw.get("quants", ["q8_0", "q4_k_m"]), list, where, f"{key}.quants")
    quants: list[str] = []
    for i, q in enumerate(quants_raw):
        q = _typed(q, str, where, f"{key}.quants[{i}]").lower()
        if q in OUTTYPES:
            raise UserError(f"{where}: {key}.quants[{i}]: {q!r} is the unquantized type; set it with outtype")
        if q not in QUANT_FTYPES:
            raise UserError(
                f"{where}: {key}.quants[{i}]: unknown quantization {q!r} (valid: {', '.join(buildable_quants())})"
            )
        if q in NEEDS_IMATRIX:
            raise UserError(f"{where}: {key}.quants[{i}]: {q!r} needs an importance matrix, which is not supported")
        if q in quants:
            raise UserError(f"{where}: {key}.quants[{i}]: {q!r} is listed twice")
        quants.append(q)
    merge = _typed(raw.get("merge", "stream"), str, where, f"{key}.merge")
    if merge not in MERGE_ENGINES:
        raise UserError(f"{where}: {key}.merge: {merge!r} is not one of {', '.join(MERGE_ENGINES)}")
    system = raw.get("system")
    if system is not None:
        system = _typed(system, str, where, f"{key}.system")
    deploy = _deploy(raw.get("deploy", {}), quants, where, f"{key}.deploy")
    deploy = replace(deploy, **parse_deploy_extras(raw.get("deploy", {}), quants, config.root, where, f"{key}.deploy"))
    return ModelSpec(
        name=name,
        base=_source(config, raw["base"], where, f"{key}.base", check_paths, name, "base"),
        adapter=_source(config, raw["adapter"], where, f"{key}.adapter", check_paths, name, "adapter"),
        outtype=outtype,
        quants=tuple(quants),
        merge=merge,
        system=system,
        deploy=deploy,
        gates=parse_gates(raw.get("gates", {}), outtype, tuple(quants), where, f"{key}.gates"),
    )


def _deploy(raw: Any, quants: list[str], where: str, key: str) -> DeploySpec:
    raw = _table(raw, where, key)
    _check_keys(raw, DEPLOY_KEYS, where, key + ".")
    values: dict[str, Any] = {}
    if "port" in raw:
        port = _typed(raw["port"], int, where, f"{key}.port")
        if not 1024 <= port <= 65535:
            raise UserError(f"{where}: {key}.port: {port} is outside 1024-65535")
        values["port"] = port
    if "context" in raw:
        ctx = _typed(raw["context"], int, where, f"{key}.context")
        if not 64 <= ctx <= 1 << 22:
            raise UserError(f"{where}: {key}.context: {ctx} is outside 64-4194304")
        values["context"] = ctx
    if "quant" in raw:
        q = _typed(raw["quant"], str, where, f"{key}.quant").lower()
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
        values["top_k"] = _typed(raw["top_k"], int, where, f"{key}.top_k")
    if "publisher" in raw:
        pub = _typed(raw["publisher"], str, where, f"{key}.publisher")
        if not NAME_RE.match(pub):
            raise UserError(f"{where}: {key}.publisher: unsafe name {pub!r}")
        values["publisher"] = pub
    return DeploySpec(**values)


def _source(
    config: Config, raw: Any, where: str, key: str, check_paths: bool, model: str = "", role: str = ""
) -> Source:
    from tasks.sources.spec import is_remote, parse_remote  # light: parsing only

    if is_remote(raw):
        # Fetched by the fetch:<model>-<role> stage into a snapshot that downstream stages read.
        remote = parse_remote(raw, where, key, config.root, check_paths)
        return Source(spec=remote.url, path=config.artifacts / "sources" / model / role, remote=remote,
                      fetch_task=f"fetch:{model}-{role}")
    spec = _typed(raw, str, where, key)
    if spec.startswith(FIXTURE_PREFIX):
        from tasks.fixtures import FIXTURES  # light: a name -> builder-path table

        name = spec[len(FIXTURE_PREFIX):]
        if name not in FIXTURES:
            raise UserError(f"{where}: {key}: unknown fixture {name!r} (valid: {', '.join(sorted(FIXTURES))})")
        return Source(spec=spec, path=config.fixture_dir(name), fixture=name)
    path = (config.root / spec).resolve()
    if check_paths and not path.is_dir():
        raise UserError(f"{where}: {key}: directory not found: {path}")
    return Source(spec=spec, path=path)


def _check_ports(config: Config, where: str) -> None:
    owners: dict[int, str] = {}
    for m in config.models.values():
        if m.deploy.port is None:
            continue
        if m.deploy.port in owners:
            raise UserError(
                f"{where}: models.{m.name}.deploy.port: {m.deploy.port} "
                f"is already used by models.{owners[m.deploy.port]}"
            )
        owners[m.deploy.port] = m.name


def _check_keys(raw: dict[str, Any], allowed: set[str], where: str, prefix: str) -> None:
    for k in raw:
        if k not in allowed:
            raise UserError(f"{where}: {prefix}{k}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _table(value: Any, where: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key}: expected a table, got {type(value).__name__}")
    return value


def _typed(value: Any, kind: type, where: str, key: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{where}: {key}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value
