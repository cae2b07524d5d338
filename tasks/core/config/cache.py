"""`[build] cache` and `[build] run_cache`: where built stages are shared, validated into specs.

    [build]
    cache = [{ url = "/mnt/team/modelmake-cache", push = true },   # a local or network directory
             { url = "ssh://ci@cache-box/srv/modelmake", key = "~/.ssh/id_ed25519" },
             { url = "s3://bucket/modelmake", options = { endpoint_url = "http://127.0.0.1:9000" } }]
    cache = "/mnt/team/modelmake-cache"   # a bare string: one pull-only cache
    run_cache = "16GiB"                    # local run-cache bound (artifacts/.cache/runs/); 0 turns it off

The list is tried in order and the first cache holding a stage's key wins; `push` (default false)
uploads what this machine builds. Any fsspec protocol (s3://, gs://, hf://, ...) goes through fsspec;
`options` are passed to its filesystem. Light module: no I/O beyond resolving paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.config.remote import SshRemote, parse_remote
from tasks.core.config.values import check_keys, string
from tasks.core.errors import UserError

CACHE_KEYS = {"url", "push", "key", "known_hosts", "options"}
DEFAULT_RUN_CACHE = 16 << 30
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SCHEME_RE = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.I)


@dataclass(frozen=True)
class CacheSpec:
    """One remote cache: `kind` "dir" (path), "ssh" (ssh) or "fsspec" (url + options)."""

    url: str
    kind: str
    push: bool = False
    path: Path | None = None
    ssh: SshRemote | None = None
    options: tuple[tuple[str, Any], ...] = ()


def parse_caches(raw: Any, where: str, root: Path, check_paths: bool) -> tuple[CacheSpec, ...]:
    """`build.cache`: a string, or a list of strings / tables; each error is one line naming its key."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (_one({"url": raw}, where, "build.cache", root, check_paths),)
    if not isinstance(raw, list):
        raise UserError(f"{where}: build.cache: expected a URL or a list of {{ url = \"...\", push = true }}, "
                        f"got {type(raw).__name__}")
    specs = []
    for i, entry in enumerate(raw):
        key = f"build.cache[{i}]"
        entry = {"url": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict):
            raise UserError(f"{where}: {key}: expected a URL or a table, got {type(entry).__name__}")
        specs.append(_one(entry, where, key, root, check_paths))
    urls = [s.url for s in specs]
    for i, url in enumerate(urls):
        if url in urls[:i]:
            raise UserError(f"{where}: build.cache[{i}]: {url} is listed twice")
    return tuple(specs)


def _one(raw: dict[str, Any], where: str, key: str, root: Path, check_paths: bool) -> CacheSpec:
    check_keys(raw, CACHE_KEYS, where, key)
    if "url" not in raw:
        raise UserError(f"{where}: {key}.url: missing (a directory, ssh://host/path or s3://bucket/prefix)")
    url = string(raw["url"], where, f"{key}.url").strip()
    if not url:
        raise UserError(f"{where}: {key}.url: empty")
    push = raw.get("push", False)
    if not isinstance(push, bool):
        raise UserError(f"{where}: {key}.push: expected true or false, got {push!r}")
    options = raw.get("options", {})
    if not isinstance(options, dict):
        raise UserError(f"{where}: {key}.options: expected a table, got {type(options).__name__}")
    scheme = m.group(1).lower() if (m := _SCHEME_RE.match(url)) else None
    if scheme in (None, "file"):
        extra = set(raw) - {"url", "push"}
        if extra:
            raise UserError(f"{where}: {key}.{sorted(extra)[0]}: not used by a directory cache")
        path = Path(url[len("file://"):] if scheme else url).expanduser()
        path = path if path.is_absolute() else (root / path).resolve()
        if path.exists() and not path.is_dir():
            raise UserError(f"{where}: {key}.url: not a directory: {path}")
        return CacheSpec(url=str(path), kind="dir", push=push, path=path)
    if scheme == "ssh":
        if options:
            raise UserError(f"{where}: {key}.options: not used by an ssh:// cache")
        fields = {"ssh": url, **{k: raw[k] for k in ("key", "known_hosts") if k in raw}}
        remote = parse_remote(fields, where, key, root, check_paths)
        assert isinstance(remote, SshRemote)
        return CacheSpec(url=remote.url, kind="ssh", push=push, ssh=remote)
    for k in ("key", "known_hosts"):
        if k in raw:
            raise UserError(f"{where}: {key}.{k}: only for ssh:// caches (use options for {scheme}://)")
    for name, value in options.items():
        if not isinstance(value, (str, int, float, bool)):
            raise UserError(f"{where}: {key}.options.{name}: expected a string, number or boolean")
    return CacheSpec(url=url.rstrip("/"), kind="fsspec", push=push, options=tuple(sorted(options.items())))


def parse_size(raw: Any, where: str, key: str) -> int:
    """Bytes from 123, "500MB" or "16GiB"; 0 or false turns the cache off."""
    if raw is False:
        return 0
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", raw.lower()) if isinstance(raw, str) else None
    if not m or m.group(2) not in _UNITS:
        raise UserError(f"{where}: {key}: expected a size such as \"16GiB\" or \"500MB\" (0 turns it off), got {raw!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])
