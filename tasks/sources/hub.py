"""Fetch a Hugging Face Hub repository at a revision, through huggingface-hub's own cache.

`snapshot_download` does the downloading, so HF_HOME / HF_HUB_CACHE, HF_TOKEN and
HF_HUB_OFFLINE=1 behave exactly as they do for every other Hugging Face tool, and a model
already in the cache is never downloaded twice. The snapshot folder of a commit is shared by
every call with any allow-patterns, so the files are filtered again here and linked into the
staging directory; each one is then checked against the hash its cache blob is named by
(sha256 for LFS files, the git blob id for small ones), which catches a corrupted cache.

Reproducibility: only a 40-hex commit names the same bytes forever. A branch or tag is
warned about online; offline it is refused, because the cached ref may be long out of date
and nothing could tell.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tasks.core import atomic
from tasks.core.config.remote import HEX40_RE, HEX64_RE, REQUIRED_FILES, HubRemote
from tasks.core.errors import UserError
from tasks.core.hashing import cache_for
from tasks.sources.staging import Download, Unreachable, prune, verify


def _storage_folder(repo_id: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))


def cached_ref(repo_id: str, ref: str) -> str | None:
    """The commit a branch or tag pointed to when it was last downloaded into the cache."""
    try:
        return (_storage_folder(repo_id) / "refs" / ref).read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def pin_warning(remote: HubRemote) -> str:
    return (
        f"revision {remote.revision or 'main'!r} is not pinned: the build is not reproducible "
        "(pin revision = \"<40-hex commit>\")"
    )


def git_blob_sha1(path: Path) -> str:
    """Git's object id of a file: how the Hub names a small (non-LFS) file's blob."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _snapshot(remote: HubRemote) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = bool(constants.HF_HUB_OFFLINE)
    rev = remote.revision or "main"
    try:
        return Path(snapshot_download(
            remote.repo_id, revision=rev, allow_patterns=list(remote.allow), local_files_only=offline,
        ))
    except IncompleteSnapshotError:
        raise UserError(
            f"the cached snapshot of revision {rev} is incomplete and the Hub cannot be reached "
            f"(cache: {constants.HF_HUB_CACHE})"
        ) from None
    except LocalEntryNotFoundError:
        if offline:
            raise Unreachable(
                f"revision {rev} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
                f"(cache: {constants.HF_HUB_CACHE})"
            ) from None
        raise Unreachable(f"cannot reach the Hub and revision {rev} is not cached (cache: {constants.HF_HUB_CACHE})") \
            from None
    except GatedRepoError:
        raise UserError("gated repository: accept its terms on the Hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise UserError("repository not found on the Hub (private? set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise UserError(f"revision {rev} not found in the repository") from None
    except (HfHubHTTPError, OSError) as exc:
        first = str(exc).strip().splitlines()
        raise UserError(f"Hub download failed: {first[0] if first else type(exc).__name__}") from None


def download(remote: HubRemote, staging: Path, role: str, artifacts: Path, log: Callable[[str], None]) -> Download:
    """Snapshot the repo at its revision into `staging` and verify every file."""
    from huggingface_hub import constants
    from huggingface_hub.utils import filter_repo_objects

    if not remote.pinned:
        if constants.HF_HUB_OFFLINE:
            cached = cached_ref(remote.repo_id, remote.revision or "main")
            hint = f"pin revision = \"{cached}\" (the commit cached for it)" if cached else "no commit is cached for it"
            raise UserError(
                f"revision {remote.revision or 'main'!r} is not pinned and HF_HUB_OFFLINE=1: "
                f"what it points to now cannot be checked; {hint}"
            )
        log(f"modelmake: warning: {remote.url}: {pin_warning(remote)}")
    snapshot = _snapshot(remote)
    commit = snapshot.name
    if remote.pinned and commit != remote.revision:
        raise UserError(f"the Hub returned commit {commit}, not the pinned {remote.revision}")
    present = []
    for p in snapshot.rglob("*"):
        rel = p.relative_to(snapshot).as_posix()
        if p.is_file() and not any(part.startswith(".") for part in rel.split("/")):
            present.append(rel)
    files = sorted(filter_repo_objects(present, allow_patterns=list(remote.allow)))
    missing = [n for n in REQUIRED_FILES[role] if n not in files]
    if missing:
        raise UserError(
            f"snapshot {commit[:12]} has no {', '.join(missing)} (not a {role} repo, or excluded by allow patterns)"
        )
    pinned = dict(remote.sha256)
    absent = sorted(set(pinned) - set(files))
    if absent:
        raise UserError(f"files pinned in models.toml are not in the snapshot: {', '.join(absent)}")
    prune(staging, set(files))
    expected: dict[str, str] = {}
    for rel in files:
        blob = (snapshot / rel).resolve()
        dest = staging / rel
        if not (dest.is_file() and os.path.samefile(dest, blob)):
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = atomic.temp_name(dest)
            tmp.unlink(missing_ok=True)
            try:
                os.link(blob, tmp)
            except OSError:
                shutil.copy2(blob, tmp)
            os.replace(tmp, dest)
        if HEX64_RE.match(blob.name):
            expected[rel] = blob.name  # LFS: the blob is named by the content's sha256
        elif HEX40_RE.match(blob.name) and git_blob_sha1(dest) != blob.name:
            dest.unlink()
            raise UserError(
                f"cached file {rel} does not match its git blob id {blob.name[:12]}... "
                f"(corrupt Hugging Face cache: delete {blob} and fetch again)"
            )
    for rel, digest in pinned.items():
        if rel in expected and expected[rel] != digest:
            raise UserError(f"{rel}: the Hub's sha256 {expected[rel][:16]}... is not the pinned {digest[:16]}...")
        expected[rel] = digest
    verify(staging, expected, artifacts, f"the Hub's blob hashes (commit {commit[:12]})")
    cache = cache_for(artifacts)
    digests = {rel: cache.sha256(staging / rel) for rel in files}
    log(f"hub: {remote.repo_id}@{commit}: {len(files)} file(s) from {constants.HF_HUB_CACHE}")
    return Download(method="hub", files=digests, verified_against=f"Hub blob hashes of commit {commit}",
                    transfer={"files": len(files)}, revision=commit)
