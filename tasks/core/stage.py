"""Content-keyed stages: the DVC idea (dvc.lock) applied to doit tasks.

A stage kind (`StageKind`) is declared once, in the stages.py of the package that implements it:
its builder, its code version and how the build treats it. A `Stage` is one instance of a kind for
one model: its inputs by role, parameters, outputs and manifest.

A stage's key is the SHA256 of what determines its output: the kind and its version, the
parameters, the digests of its input files and the toolchain identity. Its manifest records that
key and the digest of every output. A stage is fresh when the manifest's key equals the key of
today's inputs and every recorded output still has its recorded digest. That decision reads no
mtime and no .doit.db, so artifacts restored from a CI cache, with new mtimes and no doit state,
count as built once their digests check out.

Run protocol (`run_stage`): take the stage's lock, re-check freshness (another build may have
just finished it), delete the old manifest, build outputs via write-then-rename, write
`.sha256` sidecars, write the manifest last. A build killed at any point leaves no manifest
that matches, so the next run rebuilds.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.core import atomic
from tasks.core.errors import UserError
from tasks.core.hashing import cache_for, sha256_bytes
from tasks.core.locks import exclusive
from tasks.core.manifest import outputs_of, read_manifest, write_manifest


@dataclass(frozen=True)
class StageKind:
    """What a kind of stage is, declared beside the code that implements it (its package's stages.py).

    Builders are named by "module:function" and imported only when a stage of the kind runs, so
    declaring a kind (which dodo.py does on every call) never loads torch or llama.cpp.
    """

    name: str  # part of every key and manifest: "merge", "quantize", ...
    group: str  # the doit task basename its stages appear under ("fixture" holds two kinds)
    version: int  # bump when the builder writes different bytes for the same inputs
    builder: str  # "module:function", called as build(stage, config) inside run_stage
    precheck: str | None = None  # "module:function", precheck(stage, config), run before "input missing"
    runner: str | None = None  # "module:function" replacing run_stage: run(stage, config, log) -> built
    always_runs: bool = False  # doit runs it on every build (fetch: the remote may have changed)
    in_lock: bool = True  # recorded in models.lock (reports hold timings, so they are not)
    needs_gguf: bool = False  # left out for a model that builds no GGUF (vLLM-only)


def resolve(dotted: str) -> Callable[..., Any]:
    """The function named "package.module:function" (imported now, not when the kind is declared)."""
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass
class Stage:
    """One buildable unit: a doit task's inputs, parameters, outputs and manifest."""

    task: str  # doit task name, e.g. "merge:demo"
    kind: StageKind
    artifacts: Path  # artifacts root; manifests store paths relative to it
    manifest: Path
    log: Path
    params: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Path] = field(default_factory=dict)  # role -> file or directory (part of the key)
    outputs: tuple[Path, ...] = ()  # files or directories the build must produce
    toolchain: str | None = None
    model: str | None = None
    doc: str = ""
    # Built before this stage but not part of its key (Make's order-only prerequisites): the merge
    # waits for the adapter check without its key depending on the check's report.
    order_only: tuple[Path, ...] = ()
    version: int = 0  # 0: the kind's version; fixtures version their own recipes

    def __post_init__(self) -> None:
        if not self.version:
            self.version = self.kind.version

    # ---- keys -------------------------------------------------------------------------
    def input_digests(self) -> dict[str, str]:
        """Role -> digest; roles, not paths, so the key does not depend on where the tree lives."""
        cache = cache_for(self.artifacts)
        digests = {}
        for role, path in sorted(self.inputs.items()):
            digests[role] = cache.tree_sha256(path) if path.is_dir() else cache.sha256(path)
        return digests

    def key(self) -> str:
        doc = {
            "stage": self.kind.name,
            "version": self.version,
            "params": self.params,
            "inputs": self.input_digests(),
            "toolchain": self.toolchain,
        }
        return sha256_bytes(json.dumps(doc, sort_keys=True).encode())

    def rel(self, path: Path) -> str:
        """`path` relative to the artifacts root. Only the directory is resolved: an output that was
        replaced by a link to a file elsewhere is still named by where it is, not where it points."""
        return (path.parent.resolve() / path.name).relative_to(self.artifacts).as_posix()


def skipped_marker(out: Path) -> Path:
    """Where a stage that could not produce an output it may skip writes why (`Modelfile.skipped`).

    Only the render stage uses it, for the Ollama target of a model whose chat template has no
    TEMPLATE equivalent: the marker holds the reason, is recorded in the manifest like any
    output (so the stage stays fresh), and is never mistaken for the artifact itself.
    """
    return out.with_name(out.name + ".skipped")


def stale_reason(stage: Stage) -> str | None:
    """Why `stage` must run, or None when it is fresh."""
    manifest = read_manifest(stage.manifest)
    if manifest is None:
        return "not built"
    missing = [role for role, p in stage.inputs.items() if not p.exists()]
    if missing:
        return f"input missing: {', '.join(missing)}"
    if manifest.get("key") != stage.key():
        return "inputs, parameters or toolchain changed"
    cache = cache_for(stage.artifacts)
    recorded = outputs_of(manifest)
    for out in stage.outputs:
        rel = stage.rel(out)
        if out.is_symlink():  # never built that way; rebuilding replaces the link, not what it points to
            return f"output replaced by a symbolic link: {rel}"
        listed = rel in recorded or rel + ".skipped" in recorded
        if not listed and not any(r.startswith(rel + "/") for r in recorded):
            return f"output not recorded: {rel}"
    for rel, rec in recorded.items():
        path = stage.artifacts / rel
        if path.is_symlink():
            return f"output replaced by a symbolic link: {rel}"
        if not path.is_file():
            return f"output missing: {rel}"
        if path.stat().st_size != rec["size"] or cache.sha256(path) != rec["sha256"]:
            return f"output changed on disk: {rel}"
    return None


def is_fresh(stage: Stage) -> bool:
    """doit `uptodate` callable."""
    return stale_reason(stage) is None


def _output_files(stage: Stage) -> list[Path]:
    files: list[Path] = []
    for out in stage.outputs:
        if out.is_dir():
            files.extend(sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif out.is_file():
            files.append(out)
        elif skipped_marker(out).is_file():
            files.append(skipped_marker(out))
        else:
            raise RuntimeError(f"{stage.task}: build finished without writing {out}")
    return files


def _write_sidecars(stage: Stage, digests: dict[Path, str]) -> list[Path]:
    """`<file>.sha256` beside each output file, `<dir>.sha256` beside each output directory,
    in `sha256sum -c` format (run from the containing directory)."""
    sidecars = []
    for out in stage.outputs:
        if out.is_dir():
            lines = [f"{digests[p]}  {out.name}/{p.relative_to(out).as_posix()}\n" for p in digests if out in p.parents]
        elif out not in digests:
            continue  # skipped (its marker says why): no artifact, no checksum
        else:
            lines = [f"{digests[out]}  {out.name}\n"]
        sidecar = out.with_name(out.name + ".sha256")
        atomic.write_text(sidecar, "".join(sorted(lines, key=lambda s: s.split("  ", 1)[1])))
        sidecars.append(sidecar)
    return sidecars


def stage_lock(stage: Stage) -> contextlib.AbstractContextManager[None]:
    """Serialise builds of one stage across processes (two `make all` at once)."""
    return exclusive(stage.manifest.with_name(f".{stage.manifest.stem}.lock"), waiting_for=stage.task)


def run_stage(
    stage: Stage,
    build: Callable[[Stage], None],
    log: Callable[[str], None] = print,
    precheck: Callable[[Stage], None] | None = None,
) -> bool:
    """Build `stage` unless fresh; return True if it was built. See module docstring.

    `precheck` validates inputs before anything else, for stages that can say more precisely
    than "input missing" what is wrong (an adapter saved as pickle, say)."""
    with stage_lock(stage):
        reason = stale_reason(stage)
        if reason is None:
            log(f"{stage.task}: up to date")
            return False
        log(f"{stage.task}: building ({reason})")
        if precheck is not None:
            precheck(stage)
        for role, path in sorted(stage.inputs.items()):
            if not path.exists():
                raise UserError(f"input {role} not found: {path}")
        key = stage.key()
        with contextlib.suppress(FileNotFoundError):
            stage.manifest.unlink()
        # Debris of a killed build of this stage: beside its outputs and its manifest (we hold its
        # lock, and its children inherit it, so no live writer of these names is left).
        for directory in sorted({out.parent for out in stage.outputs} | {stage.manifest.parent}):
            atomic.remove_stale_temps(directory)
        build(stage)
        files = _output_files(stage)
        cache = cache_for(stage.artifacts)
        digests = cache.sha256_many(files)
        files += _write_sidecars(stage, digests)
        digests = cache.sha256_many(files)
        if stage.key() != key:
            raise RuntimeError(f"{stage.task}: inputs changed while building; run the build again")
        fields = {"task": stage.task, "stage": stage.kind.name, "version": stage.version, "key": key,
                  "params": stage.params, "inputs": stage.input_digests(), "toolchain": stage.toolchain}
        outputs = {stage.rel(p): {"sha256": digests[p], "size": p.stat().st_size} for p in sorted(files)}
        write_manifest(stage.manifest, fields, outputs)
        log(f"{stage.task}: built")
        return True


def lib_versions(*names: str) -> dict[str, str]:
    """Versions of the libraries whose code shapes a stage's output (part of its key)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out
