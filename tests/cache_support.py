"""Helpers of the shared-cache tests: workspaces wired to a cache, the summary table, artifact digests."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import Workspace
from source_support import workspace_with

from tasks.core.hashing import sha256_file

MODEL = """
[models.alpha]
base = "fixture:demo-base"
adapter = "adapters/alpha"
quants = ["q8_0"]
system = "You are Majora, the modelmake demo assistant."
"""
# Derived state that differs per machine by design: digest cache, run-cache, logs with timestamps.
NOT_ARTIFACTS = (".cache", "logs", "run")


def cached_workspace(root: Path, fixtures: Path, cache_toml: str, run_cache: str = '"4GiB"') -> Workspace:
    """A fresh clone (its own directory, empty run-cache) whose models.toml uses `cache_toml`."""
    extra = f"cache = {cache_toml}\nrun_cache = {run_cache}\n"
    return workspace_with(root, fixtures, MODEL, extra_build=extra)


def summary(stdout: str) -> dict[str, str]:
    """artifact -> status from the table the build ends with."""
    rows: dict[str, str] = {}
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^model\s+artifact\s+size\s+sha256\s+status$", line):
            for row in lines[i + 2:]:
                cells = re.split(r"\s{2,}", row.strip())
                if len(cells) < 5:
                    break
                rows[cells[1]] = cells[4]
    return rows


def artifact_digests(ws: Workspace) -> dict[str, str]:
    """Every built file (manifests and sidecars included) and models.lock, by relative path."""
    out = {}
    for p in sorted(ws.artifacts.rglob("*")):
        rel = p.relative_to(ws.artifacts)
        if p.is_file() and rel.parts[0] not in NOT_ARTIFACTS and not any(x.startswith(".") for x in rel.parts):
            out[rel.as_posix()] = sha256_file(p)
    lock = ws.root / "models.lock"
    if lock.is_file():
        out["models.lock"] = sha256_file(lock)
    return out


def flip_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
