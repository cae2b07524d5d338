"""The models.toml forms of a remote source, validated into frozen specs.

A model's `base` or `adapter` may be, besides a local path or `fixture:<name>`:

    adapter = "ssh://user@gpu-box:2222/root/runs/run1/final"          # SHA256SUMS must be on the remote
    adapter = { ssh = "ssh://user@gpu-box:2222/root/runs/run1/final",
                key = "~/.ssh/id_ed25519", known_hosts = "~/.ssh/known_hosts",
                sha256 = { "adapter_model.safetensors" = "<64 hex>", "adapter_config.json" = "<64 hex>" },
                bwlimit = 20000 }                                       # KiB/s, optional
    base = "hf://Qwen/Qwen2.5-0.5B-Instruct@<40-hex commit>"
    base = { hub = "Qwen/Qwen2.5-0.5B-Instruct", revision = "<40-hex commit>",
             allow = ["*.json", "*.safetensors"] }

Why checksums are mandatory for SSH: a training box writes its results while we read them; a
manifest (the remote's SHA256SUMS, or digests pinned here) is the only way to know a download is
the finished run and not a half-written file. The files fetched are exactly the manifest's.
Light module: no I/O beyond checking that a key file exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tasks.core.config.values import check_keys, string
from tasks.core.errors import UserError

SSH_KEYS = {"ssh", "key", "known_hosts", "sha256", "manifest", "bwlimit"}
HUB_KEYS = {"hub", "revision", "allow", "sha256"}
DEFAULT_MANIFEST = "SHA256SUMS"
# Safetensors and the small files a model needs; pickles (*.bin, *.pt) are never fetched by default.
DEFAULT_ALLOW = ("*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt")
# Remote paths and file names go to a remote shell, rsync and scp: no spaces or metacharacters.
SAFE_PATH_RE = re.compile(r"^[A-Za-z0-9._/+@=,~-]+$")
HEX40_RE = re.compile(r"^[0-9a-f]{40}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
REPO_ID_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# Files a directory must hold to be the role's source at all (checked before any transfer).
REQUIRED_FILES = {"adapter": ("adapter_config.json",), "base": ("config.json",)}


@dataclass(frozen=True)
class SshRemote:
    """A directory on an SSH host, fetched with rsync (scp when rsync is missing)."""

    url: str  # canonical ssh://[user@]host:port/path, the source's identity in keys and messages
    host: str
    port: int
    path: str
    user: str | None = None
    key: Path | None = None
    known_hosts: Path | None = None
    sha256: tuple[tuple[str, str], ...] = ()  # pinned (file, digest); empty: the remote manifest decides
    manifest: str = DEFAULT_MANIFEST
    bwlimit: int | None = None  # KiB/s; not part of any key (it cannot change the bytes)

    kind = "ssh"

    @property
    def destination(self) -> str:
        """`[user@]host` as ssh wants it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" if self.user else host


@dataclass(frozen=True)
class HubRemote:
    """A Hugging Face Hub repository at a revision, through huggingface-hub's own cache."""

    url: str  # canonical hf://repo_id@revision
    repo_id: str
    revision: str | None = None  # None: the default branch (unpinned)
    allow: tuple[str, ...] = DEFAULT_ALLOW
    sha256: tuple[tuple[str, str], ...] = ()

    kind = "hub"

    @property
    def pinned(self) -> bool:
        """Only a commit hash names the same bytes forever; a branch or tag can move."""
        return self.revision is not None and HEX40_RE.match(self.revision) is not None


Remote = SshRemote | HubRemote


def is_remote(raw: Any) -> bool:
    """True for the forms this module parses (a table, or a string with a scheme)."""
    return isinstance(raw, dict) or (isinstance(raw, str) and "://" in raw)


def parse_remote(raw: Any, where: str, key: str, root: Path, check_paths: bool) -> Remote:
    """Validate one remote source; every error is one line naming `key`."""
    if isinstance(raw, str):
        if raw.startswith("ssh://"):
            return _ssh({"ssh": raw}, where, key, root, check_paths)
        if raw.startswith("hf://"):
            repo, _, rev = raw[len("hf://"):].partition("@")
            return _hub({"hub": repo, **({"revision": rev} if rev else {})}, where, key)
        scheme = raw.split("://", 1)[0]
        raise UserError(f"{where}: {key}: unsupported source scheme {scheme}:// (use ssh://, hf://, a path or a table)")
    if "ssh" in raw and "hub" in raw:
        raise UserError(f"{where}: {key}: give either ssh or hub, not both")
    if "ssh" in raw:
        return _ssh(raw, where, key, root, check_paths)
    if "hub" in raw:
        return _hub(raw, where, key)
    raise UserError(f"{where}: {key}: a source table needs `ssh = \"ssh://...\"` or `hub = \"org/name\"`")


def _ssh(raw: dict[str, Any], where: str, key: str, root: Path, check_paths: bool) -> SshRemote:
    check_keys(raw, SSH_KEYS, where, key)
    url = string(raw["ssh"], where, f"{key}.ssh")
    form = "expected ssh://[user@]host[:port]/absolute/path"
    try:
        parts = urlsplit(url)
        port = parts.port or 22
    except ValueError as exc:
        raise UserError(f"{where}: {key}: {form}, got {url!r} ({exc})") from None
    if parts.scheme != "ssh" or not parts.hostname or not parts.path.startswith("/") or parts.path == "/":
        raise UserError(f"{where}: {key}: {form}, got {url!r}")
    if parts.password is not None:
        raise UserError(f"{where}: {key}: passwords in ssh:// URLs are refused; use a key file (key = \"...\")")
    if parts.query or parts.fragment:
        raise UserError(f"{where}: {key}: unexpected ?query or #fragment in {url!r}")
    path = parts.path.rstrip("/")
    if not SAFE_PATH_RE.match(path) or "/../" in path + "/":
        raise UserError(f"{where}: {key}: unsafe remote path {path!r} (letters, digits and ._/+@=,~- only, no '..')")
    user = parts.username
    if user is not None and not re.match(r"^[A-Za-z0-9._][A-Za-z0-9._-]*$", user):
        raise UserError(f"{where}: {key}: unsafe user name {user!r}")
    host = parts.hostname
    canonical_host = f"[{host}]" if ":" in host else host
    canonical = f"ssh://{user + '@' if user else ''}{canonical_host}:{port}{path}"
    manifest = string(raw.get("manifest", DEFAULT_MANIFEST), where, f"{key}.manifest")
    check_file_name(manifest, where, f"{key}.manifest")
    bwlimit = raw.get("bwlimit")
    if bwlimit is not None and (not isinstance(bwlimit, int) or isinstance(bwlimit, bool) or bwlimit < 1):
        raise UserError(f"{where}: {key}.bwlimit: expected a positive integer (KiB/s), got {bwlimit!r}")
    return SshRemote(
        url=canonical, host=host, port=port, path=path, user=user,
        key=_local_file(raw.get("key"), where, f"{key}.key", root, check_paths),
        known_hosts=_local_file(raw.get("known_hosts"), where, f"{key}.known_hosts", root, check_paths),
        sha256=_digests(raw.get("sha256"), where, f"{key}.sha256"), manifest=manifest, bwlimit=bwlimit,
    )


def _hub(raw: dict[str, Any], where: str, key: str) -> HubRemote:
    check_keys(raw, HUB_KEYS, where, key)
    repo_id = string(raw["hub"], where, f"{key}.hub")
    if not REPO_ID_RE.match(repo_id) or ".." in repo_id:
        raise UserError(f"{where}: {key}.hub: {repo_id!r} is not a Hub repo id (expected org/name)")
    revision = raw.get("revision")
    if revision is not None:
        revision = string(revision, where, f"{key}.revision")
        if not revision or not re.match(r"^[A-Za-z0-9._/-]+$", revision):
            raise UserError(f"{where}: {key}.revision: {revision!r} is not a commit hash, branch or tag")
        if re.match(r"^[0-9a-fA-F]{40}$", revision):
            revision = revision.lower()
    allow_raw = raw.get("allow", list(DEFAULT_ALLOW))
    if not isinstance(allow_raw, list) or not allow_raw:
        raise UserError(f"{where}: {key}.allow: expected a non-empty list of file patterns, got {allow_raw!r}")
    allow = tuple(string(p, where, f"{key}.allow[{i}]") for i, p in enumerate(allow_raw))
    return HubRemote(
        url=f"hf://{repo_id}@{revision or 'main'}", repo_id=repo_id, revision=revision, allow=allow,
        sha256=_digests(raw.get("sha256"), where, f"{key}.sha256"),
    )


def _digests(raw: Any, where: str, key: str) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{where}: {key}: expected a table of \"file\" = \"<sha256>\", got {raw!r}")
    out = []
    for name, digest in sorted(raw.items()):
        check_file_name(name, where, f"{key}.{name!r}")
        digest = string(digest, where, f"{key}.{name!r}").lower()
        if not HEX64_RE.match(digest):
            raise UserError(f"{where}: {key}.{name!r}: expected 64 hex digits, got {digest!r}")
        out.append((name, digest))
    return tuple(out)


def check_file_name(name: str, where: str, key: str) -> None:
    """A relative path inside the source directory, safe for a remote shell."""
    if not SAFE_PATH_RE.match(name) or name.startswith(("/", "~")) or ".." in name.split("/") or name.endswith("/"):
        raise UserError(f"{where}: {key}: unsafe file name {name!r} (relative, letters, digits and ._/+@=,- only)")


def _local_file(raw: Any, where: str, key: str, root: Path, check_paths: bool) -> Path | None:
    if raw is None:
        return None
    path = Path(string(raw, where, key)).expanduser()
    path = path if path.is_absolute() else (root / path).resolve()
    if check_paths and not path.is_file():
        raise UserError(f"{where}: {key}: file not found: {path}")
    return path


