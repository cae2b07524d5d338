"""The stage manifest: its on-disk format, written last by every stage, read by whoever needs to know
what was built (freshness, models.lock, the summary table, health checks, LM Studio deploys).

    {"format": 1, "task": "merge:demo", "stage": "merge", "version": 1, "key": "<sha256>",
     "params": {...}, "inputs": {role: digest}, "toolchain": "...",
     "outputs": {"<path relative to artifacts/>": {"sha256": "...", "size": N}}}

One owner, so nothing else parses these files or guesses where they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.core import atomic
from tasks.core.layout import ArtifactLayout

MANIFEST_FORMAT = 1


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest as written, or None if missing or unreadable (treated as not built)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, truncated, not UTF-8, not JSON
        return None
    return data if _well_formed(data) else None


def _well_formed(data: object) -> bool:
    """A manifest everything downstream can read without a KeyError: anything else counts as not built."""
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("key"), str):
        return False
    outputs = data.get("outputs")
    return isinstance(outputs, dict) and all(
        isinstance(rec, dict) and isinstance(rec.get("sha256"), str) and isinstance(rec.get("size"), int)
        for rec in outputs.values()
    )


def write_manifest(path: Path, fields: dict[str, Any], outputs: dict[str, dict[str, Any]]) -> None:
    """Write a manifest atomically: `fields` (task, stage, version, key, params, inputs, toolchain) + outputs."""
    manifest = {"format": MANIFEST_FORMAT, **fields, "outputs": outputs}
    atomic.write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def outputs_of(manifest: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Relative path -> {"sha256", "size"} of every output file a manifest records."""
    outputs = (manifest or {}).get("outputs", {})
    return outputs if isinstance(outputs, dict) else {}


def output_record(layout: ArtifactLayout, model: str, path: Path) -> dict[str, Any] | None:
    """The {"sha256", "size"} that one of `model`'s stage manifests records for `path`, or None when
    no manifest records it (then the file was not built by this project and must not be trusted)."""
    try:
        rel = layout.rel(path)
    except ValueError:
        return None
    dirs = [layout.manifests(model)]
    parts = rel.split("/")
    if parts[0] == "bases" and len(parts) > 2:  # adapter mode: the base's GGUFs, shared by models on it
        dirs.append(layout.base_manifest(parts[1], "x").parent)
    for manifest in sorted(m for d in dirs for m in d.glob("*.json")):
        record = outputs_of(read_manifest(manifest)).get(rel)
        if record is not None:
            return record
    return None
