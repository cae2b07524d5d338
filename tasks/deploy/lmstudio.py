"""Install a model into LM Studio's directories, with backups and rollback.

Layout under the LM Studio home (default ~/.lmstudio, models.toml deploy.lmstudio.home):
  models/<publisher>/<model>/<model>-<quant>.gguf     the weights LM Studio lists (symlink or copy)
  .internal/user-concrete-model-default-config/<publisher>/<model>/<file>.gguf.json
                                                       LM Studio's per-model defaults for that file
                                                       (system prompt, sampling, context length)
  hub/models/<publisher>/<model>/model.yaml            the model.yaml definition (modelyaml.org)
  modelmake/ports.json                                 port registry: model -> port (majora 5000, ...)
  modelmake/deployed/<model>.json                      what modelmake installed, for rollback
  modelmake/backups/<model>/<UTC time>/                what a deploy replaced
Deploying identical content changes nothing (not even a backup); anything else is backed up
first, and `rollback` restores the latest backup. Links point only into artifacts/, and nothing
is written through a link found inside the home (tasks/core/safe_fs.py).
"""

from __future__ import annotations

import json
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.config.schema import Config, ModelSpec
from tasks.core.errors import UserError
from tasks.core.safe_fs import Rel, SafeRoot, rel

CONFIG_DIR = (".internal", "user-concrete-model-default-config")
STATE = ("modelmake",)


@dataclass(frozen=True)
class Entry:
    path: Rel
    kind: str  # "link" | "copy" | "data"
    source: Path | None = None
    data: bytes | None = None


def _artifact(config: Config, m: ModelSpec, name: str) -> Path:
    """An artifact file of `m`, resolved, proven inside artifacts/ and matching its manifest."""
    from tasks.core.hashing import cache_for
    from tasks.core.manifest import output_record

    named = config.layout.model_file(m.name, name)
    path = named.resolve()
    root = config.artifacts.resolve()
    if not path.is_relative_to(root):
        raise UserError(f"{named}: resolves outside {root}; refusing to link to it")
    if not path.is_file():
        raise UserError(f"{path}: not built; run `doit render:{m.name}` (or the quantize task) first")
    recorded = output_record(config.layout, m.name, path)
    if recorded is None:
        raise UserError(f"{path}: no stage manifest records it, so it was not built here; rebuild it with `doit`")
    if cache_for(config.artifacts).sha256(path) != recorded["sha256"]:
        raise UserError(f"{path}: differs from its manifest; rebuild it with `doit` before deploying")
    return path


def desired(config: Config, m: ModelSpec) -> tuple[list[Entry], dict[str, Any]]:
    """What should be installed, from the rendered lmstudio.json / lmstudio-model.yaml."""
    root = config.layout.model_dir(m.name)
    try:
        spec = json.loads((root / "lmstudio.json").read_text(encoding="utf-8"))
        model_yaml = (root / "lmstudio-model.yaml").read_bytes()
    except FileNotFoundError:
        raise UserError(f"{root / 'lmstudio.json'}: not rendered; run `doit render:{m.name}` "
                        f"(is 'lmstudio' in models.{m.name}.deploy.targets?)") from None
    pub = m.deploy.publisher
    settings = (json.dumps(spec["config"], indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    entries = []
    for name in spec["files"]:
        source = _artifact(config, m, name)
        kind = "link" if m.deploy.lmstudio.link == "symlink" else "copy"
        entries.append(Entry(rel("models", pub, m.name, name), kind, source=source))
        entries.append(Entry(rel(*CONFIG_DIR, pub, m.name, name + ".json"), "data", data=settings))
    entries.append(Entry(rel("hub", "models", pub, m.name, "model.yaml"), "data", data=model_yaml))
    port = {"port": m.deploy.port, "host": m.deploy.host, "model": f"{pub}/{m.name}", "files": spec["files"]}
    return entries, port


def _matches(home: SafeRoot, e: Entry) -> bool:
    st = home.lstat(e.path)
    if st is None:
        return False
    if e.kind == "link":
        return home.readlink(e.path) == str(e.source)
    if not stat.S_ISREG(st.st_mode):
        return False
    if e.kind == "copy":
        assert e.source is not None
        return st.st_size == e.source.stat().st_size and home.sha256(e.path) == _sha(e.source)
    return home.read_bytes(e.path) == e.data


def _sha(path: Path) -> str:
    from tasks.core.hashing import sha256_file

    return sha256_file(path)


def _read_json(home: SafeRoot, r: Rel) -> Any:
    data = home.read_bytes(r)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        raise UserError(f"{home.show(r)}: not valid JSON; fix or remove it") from None


def _write_json(home: SafeRoot, r: Rel, value: Any) -> None:
    if value is None:
        home.unlink(r)
    else:
        home.write_bytes(r, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def _registry_update(home: SafeRoot, model: str, entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """Set (or remove) `model`'s port entry; returns the previous entry. Ports must stay unique."""
    path = rel(*STATE, "ports.json")
    registry = _read_json(home, path) or {}
    if entry is not None and entry.get("port") is not None:
        for other, rec in registry.items():
            if other != model and rec.get("port") == entry["port"]:
                raise UserError(f"port {entry['port']} is already registered to model {other!r} in {home.show(path)}; "
                                f"give models.{model}.deploy.port another port")
    previous = registry.get(model)
    if entry is None:
        registry.pop(model, None)
    else:
        registry[model] = entry
    _write_json(home, path, dict(sorted(registry.items())))
    return previous


def deploy(config: Config, m: ModelSpec) -> str:
    home = SafeRoot(m.deploy.lmstudio.home)
    entries, port = desired(config, m)
    record_path = rel(*STATE, "deployed", f"{m.name}.json")
    record = {"model": m.name, "entries": ["/".join(e.path) for e in entries], "port": port}
    previous = _read_json(home, record_path)
    registry = (_read_json(home, rel(*STATE, "ports.json")) or {}).get(m.name)
    if previous == record and registry == port and all(_matches(home, e) for e in entries):
        return f"lmstudio: {m.name} already installed in {home.root}, unchanged"
    # Back up whatever is in the way: this model's previous entries and anything at the new paths.
    old = {rel(*p.split("/")) for p in (previous or {}).get("entries", [])} | {e.path for e in entries}
    _check_parents(home, [*old, rel(*STATE, "backups", m.name, "x")])  # refuse links before changing anything
    stamp = _new_backup(home, m.name)
    moved = [p for p in sorted(old) if home.move(rel(*p), rel(*STATE, "backups", m.name, stamp, "files", *p))]
    backup = {"entries": ["/".join(p) for p in moved], "record": previous, "port": registry}
    _write_json(home, rel(*STATE, "backups", m.name, stamp, "backup.json"), backup)
    for e in entries:
        if e.kind == "link":
            assert e.source is not None
            home.symlink(e.path, e.source)
        elif e.kind == "copy":
            assert e.source is not None
            home.copy_file(e.path, e.source)
        else:
            assert e.data is not None
            home.write_bytes(e.path, e.data)
    _registry_update(home, m.name, port)
    _write_json(home, record_path, record)
    kept = f"; previous version backed up as {stamp}" if moved else ""
    files = ", ".join(e.path[-1] for e in entries if e.path[0] == "models")
    return f"lmstudio: installed {m.name} ({files}) in {home.show(entries[0].path[:-1])}{kept}"


def _check_parents(home: SafeRoot, paths: list[Rel]) -> None:
    for p in paths:
        with home.dir(p[:-1]):
            pass


def _new_backup(home: SafeRoot, model: str) -> str:
    base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    existing = set(home.listdir(rel(*STATE, "backups", model)))
    n = 0
    while (stamp := f"{base}-{n:03d}") in existing:
        n += 1
    return stamp


def backups(config: Config, m: ModelSpec) -> list[str]:
    return SafeRoot(m.deploy.lmstudio.home).listdir(rel(*STATE, "backups", m.name))


def rollback(config: Config, m: ModelSpec) -> str:
    home = SafeRoot(m.deploy.lmstudio.home)
    stamps = home.listdir(rel(*STATE, "backups", m.name))
    if not stamps:
        raise UserError(f"lmstudio: no backup of {m.name} in {home.show(rel(*STATE, 'backups', m.name))}; "
                        "nothing to roll back to")
    stamp = stamps[-1]
    bdir = rel(*STATE, "backups", m.name, stamp)
    backup = _read_json(home, (*bdir, "backup.json"))
    if not isinstance(backup, dict):
        raise UserError(f"{home.show(bdir)}: backup.json missing or invalid")
    record_path = rel(*STATE, "deployed", f"{m.name}.json")
    current = _read_json(home, record_path) or {}
    _check_parents(home, [rel(*p.split("/")) for p in [*current.get("entries", []), *backup.get("entries", [])]])
    for p in current.get("entries", []):
        home.unlink(rel(*p.split("/")))
    for p in backup.get("entries", []):
        parts = rel(*p.split("/"))
        home.move((*bdir, "files", *parts), parts)
    _registry_update(home, m.name, backup.get("port"))
    _write_json(home, record_path, backup.get("record"))
    home.remove_tree(bdir)
    return f"lmstudio: {m.name} rolled back to the version saved as {stamp} ({len(backup.get('entries', []))} files)"
