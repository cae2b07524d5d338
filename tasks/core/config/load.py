"""models.toml -> Config (tasks/core/config/schema.py): the validated build description.

Everything a build does is decided here, once, before any task runs: a bad key, an unknown
quantization or a missing path is a one-line UserError naming the key, and nothing is built.
Sections with rules of their own are read by their modules (deploy, gates, remote, fixtures).
Light imports only: dodo.py loads this on every doit call.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from tasks.core.config.cache import DEFAULT_RUN_CACHE, parse_caches, parse_size
from tasks.core.config.deploy import check_references, parse_deploy, parse_hardware
from tasks.core.config.fixtures import FIXTURES
from tasks.core.config.gates import parse_gates
from tasks.core.config.imatrix import parse_imatrix
from tasks.core.config.remote import is_remote, parse_remote
from tasks.core.config.schema import Config, ModelSpec, Source
from tasks.core.config.values import NAME_RE, check_keys, choice, table, typed
from tasks.core.errors import UserError
from tasks.core.layout import DEFAULT_TEMPLATES, REPO
from tasks.core.quant_types import OUTTYPES, QUANT_FTYPES, buildable_quants

FIXTURE_PREFIX = "fixture:"
MERGE_ENGINES = ("peft", "stream")

BUILD_KEYS = {"artifacts", "templates", "threads", "webhook", "cache", "run_cache"}
MODEL_KEYS = {"base", "adapter", "outtype", "quants", "merge", "system", "deploy", "gates", "imatrix"}
TOP_KEYS = {"build", "defaults", "models", "hardware"}


def default_config_path() -> Path:
    """models.toml next to dodo.py, unless MODELMAKE_CONFIG names another file (tests, CI)."""
    env = os.environ.get("MODELMAKE_CONFIG")
    return Path(env).resolve() if env else REPO / "models.toml"


def load_config(path: Path | None = None, *, check_paths: bool = True) -> Config:
    """Parse and validate models.toml; raise UserError on the first problem found."""
    path = (path or default_config_path()).resolve()
    try:
        # utf-8-sig: a BOM (Windows editors write one) is not part of the TOML; it used to read as
        # "Invalid statement (at line 1, column 1)".
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    where = str(path)
    check_keys(raw, TOP_KEYS, where, "")
    build = table(raw.get("build", {}), where, "build")
    check_keys(build, BUILD_KEYS, where, "build")
    root = path.parent
    artifacts = (root / typed(build.get("artifacts", "artifacts"), str, where, "build.artifacts")).resolve()
    templates = build.get("templates")
    templates = (root / typed(templates, str, where, "build.templates")).resolve() if templates else DEFAULT_TEMPLATES
    if check_paths and not templates.is_dir():
        raise UserError(f"{where}: build.templates: directory not found: {templates}")
    threads = typed(build.get("threads", min(os.cpu_count() or 1, 8)), int, where, "build.threads")
    webhook = build.get("webhook")
    if webhook is not None and not re.match(r"^https?://[^\s]+$", typed(webhook, str, where, "build.webhook")):
        raise UserError(f"{where}: build.webhook: expected an http:// or https:// URL, got {webhook!r}")
    if threads < 1:
        raise UserError(f"{where}: build.threads: must be at least 1, got {threads}")
    env_threads = os.environ.get("MODELMAKE_THREADS")
    if env_threads:
        if not env_threads.isdigit() or int(env_threads) < 1:
            raise UserError(f"MODELMAKE_THREADS: must be a positive integer, got {env_threads!r}")
        threads = int(env_threads)

    defaults = table(raw.get("defaults", {}), where, "defaults")
    check_keys(defaults, MODEL_KEYS - {"base", "adapter"}, where, "defaults")
    models_raw = table(raw.get("models", {}), where, "models")
    if not models_raw:
        raise UserError(f"{where}: models: no model defined (add a [models.<name>] table)")
    caches = parse_caches(build.get("cache"), where, root, check_paths)
    env_cache = os.environ.get("MODELMAKE_CACHE")
    if env_cache:  # CI: one more cache, tried first; MODELMAKE_CACHE_PUSH=1 pushes to it
        push = os.environ.get("MODELMAKE_CACHE_PUSH", "") in ("1", "true", "yes")
        (extra,) = parse_caches([{"url": env_cache, "push": push}], "MODELMAKE_CACHE", Path.cwd(), check_paths)
        caches = (extra, *(c for c in caches if c.url != extra.url))
    run_cache = parse_size(build.get("run_cache", DEFAULT_RUN_CACHE), where, "build.run_cache")
    config = Config(path=path, root=root, artifacts=artifacts, templates=templates, threads=threads, webhook=webhook,
                    caches=caches, run_cache=run_cache)
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
        merged = {**defaults, **table(entry, where, key)}
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
    check_keys(raw, MODEL_KEYS, where, key)
    for required in ("base", "adapter"):
        if required not in raw:
            raise UserError(
                f"{where}: {key}.{required}: missing (a local path, 'fixture:<name>', ssh://... or hf://...)"
            )
    outtype = choice(typed(raw.get("outtype", "f16"), str, where, f"{key}.outtype").lower(), OUTTYPES, where,
                     f"{key}.outtype")
    quants_raw = typed(raw.get("quants", ["q8_0", "q4_k_m"]), list, where, f"{key}.quants")
    quants: list[str] = []
    for i, q in enumerate(quants_raw):
        q = typed(q, str, where, f"{key}.quants[{i}]").lower()
        if q in OUTTYPES:
            raise UserError(f"{where}: {key}.quants[{i}]: {q!r} is the unquantized type; set it with outtype")
        if q not in QUANT_FTYPES:
            raise UserError(
                f"{where}: {key}.quants[{i}]: unknown quantization {q!r} (valid: {', '.join(buildable_quants())})"
            )
        if q in quants:
            raise UserError(f"{where}: {key}.quants[{i}]: {q!r} is listed twice")
        quants.append(q)
    merge = choice(raw.get("merge", "stream"), MERGE_ENGINES, where, f"{key}.merge")
    system = raw.get("system")
    if system is not None:
        system = typed(system, str, where, f"{key}.system")
    deploy = parse_deploy(raw.get("deploy", {}), quants, config.root, where, f"{key}.deploy")
    adapter = _source(config, raw["adapter"], where, f"{key}.adapter", check_paths, name, "adapter")
    imatrix = parse_imatrix(raw.get("imatrix"), quants, adapter.fixture, config.root, where, f"{key}.imatrix",
                            check_paths)
    return ModelSpec(
        name=name,
        base=_source(config, raw["base"], where, f"{key}.base", check_paths, name, "base"),
        adapter=adapter,
        outtype=outtype,
        quants=tuple(quants),
        merge=merge,
        system=system,
        deploy=deploy,
        gates=parse_gates(raw.get("gates", {}), outtype, tuple(quants), where, f"{key}.gates"),
        imatrix=imatrix,
    )


def _source(
    config: Config, raw: Any, where: str, key: str, check_paths: bool, model: str = "", role: str = ""
) -> Source:
    if is_remote(raw):
        # Fetched by the fetch:<model>-<role> stage into a snapshot that downstream stages read.
        remote = parse_remote(raw, where, key, config.root, check_paths)
        return Source(spec=remote.url, path=config.layout.source(model, role), remote=remote,
                      fetch_task=f"fetch:{model}-{role}")
    spec = typed(raw, str, where, key)
    if spec.startswith(FIXTURE_PREFIX):
        name = spec[len(FIXTURE_PREFIX):]
        if name not in FIXTURES:
            raise UserError(f"{where}: {key}: unknown fixture {name!r} (valid: {', '.join(sorted(FIXTURES))})")
        return Source(spec=spec, path=config.layout.fixture(name), fixture=name)
    path = (config.root / spec).resolve()
    if check_paths and not path.is_dir():
        raise UserError(f"{where}: {key}: directory not found: {path}")
    pickled = path / "adapter_model.bin"
    if check_paths and role == "adapter" and pickled.is_file() and not (path / "adapter_model.safetensors").is_file():
        # At configuration time, as for every other mistake in models.toml (tasks/merge/lora_adapter.py
        # refuses the same file at build time for adapters that arrive later: fetched, fixtures).
        raise UserError(f"{where}: {key}: {pickled}: pickle adapters are refused (loading one can run code); "
                        "re-save it as safetensors (peft: save_pretrained(..., safe_serialization=True))")
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
