"""Bases from the Hugging Face Hub: pinned revisions through huggingface-hub's own cache, offline."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PY, REPO, Workspace
from hub_support import populate_cache
from source_support import workspace_with
from ssh_support import free_port

from tasks.core.hashing import sha256_file

REPO_ID = "modelmake-test/demo-base"
COMMIT = hashlib.sha1(b"modelmake demo-base v1", usedforsecurity=False).hexdigest()
UNKNOWN = hashlib.sha1(b"never downloaded", usedforsecurity=False).hexdigest()


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory, demo_fixtures: Path) -> Path:
    """A cache holding the demo base as REPO_ID@COMMIT, with refs/main pointing at it."""
    cache = tmp_path_factory.mktemp("hf-cache")
    populate_cache(cache, REPO_ID, COMMIT, demo_fixtures / "demo-base")
    return cache


def hub_env(cache: Path, offline: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HUB_CACHE"] = str(cache)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def config_for(root: Path, base: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "adapter").mkdir(exist_ok=True)
    config = root / "models.toml"
    config.write_text(f'[build]\nartifacts = "artifacts"\n[models.alpha]\nbase = {base}\nadapter = "adapter"\n'
                      "quants = []\n")
    return config


def fetch(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "tasks.build.runner", "--config", str(config), "fetch:alpha-base"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def files_of(directory: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()}


def test_the_test_cache_is_what_huggingface_hub_reads(hub_cache: Path) -> None:
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hub_cache)
    assert not info.warnings
    (repo,) = info.repos
    (revision,) = repo.revisions
    assert repo.repo_id == REPO_ID and revision.commit_hash == COMMIT and revision.refs == {"main"}
    assert {f.file_name for f in revision.files} >= {"config.json", "model.safetensors", "tokenizer.json"}


def test_pinned_revision_offline_fetches_the_allowed_files(
    tmp_path: Path, hub_cache: Path, demo_fixtures: Path
) -> None:
    allow = '["*.json", "*.safetensors"]'
    config = config_for(tmp_path, f'{{ hub = "{REPO_ID}", revision = "{COMMIT}", allow = {allow} }}')
    proc = fetch(config, hub_env(hub_cache))
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    snapshot = tmp_path / "artifacts" / "sources" / "alpha" / "base"
    want = {n: d for n, d in files_of(demo_fixtures / "demo-base").items() if n.endswith((".json", ".safetensors"))}
    assert files_of(snapshot) == want  # chat_template.jinja is not allowed, so not fetched
    record = json.loads((tmp_path / "artifacts" / "sources" / "alpha" / "base.fetch.json").read_text())
    assert record["method"] == "hub" and record["revision"] == COMMIT and record["source"] == f"hf://{REPO_ID}@{COMMIT}"
    again = fetch(config, hub_env(hub_cache))  # same bytes: the snapshot is left alone
    assert again.returncode == 0 and "fetch:alpha-base: up to date" in again.stderr


def test_same_bytes_from_the_hub_rebuild_nothing_downstream(
    tmp_path: Path, hub_cache: Path, demo_fixtures: Path
) -> None:
    models = '[models.alpha]\nbase = "fixture:demo-base"\nadapter = "adapters/alpha"\nquants = []\n'
    ws: Workspace = workspace_with(tmp_path / "ws", demo_fixtures, models)
    first = ws.doit("merge:alpha")
    assert "merge:alpha" in first.executed
    ws.config.write_text(ws.config.read_text().replace(
        'base = "fixture:demo-base"', f'base = "hf://{REPO_ID}@{COMMIT}"'))
    run = ws.doit("merge:alpha", **{k: v for k, v in hub_env(hub_cache).items() if k.startswith("HF_")})
    assert run.executed == ["fetch:alpha-base"], run.stdout
    assert "merge:alpha" in run.uptodate  # the base's bytes, not where they came from, key the merge


def test_unpinned_revision_online_is_warned(tmp_path: Path, hub_cache: Path) -> None:
    env = hub_env(hub_cache, offline=False)
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"  # the Hub is unreachable: the cached ref is used
    proc = fetch(config_for(tmp_path, f'"hf://{REPO_ID}"'), env)
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("modelmake: warning:")]
    assert len(warnings) == 1 and "revision 'main' is not pinned: the build is not reproducible" in warnings[0]
    record = json.loads((tmp_path / "artifacts" / "sources" / "alpha" / "base.fetch.json").read_text())
    assert record["revision"] == COMMIT  # what the unpinned name resolved to is recorded


def corrupt_blob(cache: Path, file: str) -> None:
    link = cache / ("models--" + REPO_ID.replace("/", "--")) / "snapshots" / COMMIT / file
    blob = link.resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.unlink()
    blob.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown_revision", f"revision {UNKNOWN} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1"),
        ("unpinned_offline", f"revision 'main' is not pinned and HF_HUB_OFFLINE=1: what it points to now cannot "
                             f"be checked; pin revision = \"{COMMIT}\""),
        ("tag_offline", "revision 'v1.0' is not pinned and HF_HUB_OFFLINE=1"),
        ("unknown_repo", "is not in the local Hugging Face cache"),
        ("not_a_base", "has no config.json (not a base repo, or excluded by allow patterns)"),
        ("corrupt_lfs_blob", "checksum mismatch for model.safetensors"),
        ("corrupt_small_blob", "cached file config.json does not match its git blob id"),
    ],
)
def test_bad_hub_source_is_one_line_naming_model_and_source(
    tmp_path: Path, hub_cache: Path, case: str, expected: str
) -> None:
    cache, base = hub_cache, f'{{ hub = "{REPO_ID}", revision = "{COMMIT}" }}'
    if case == "unknown_revision":
        base = f'"hf://{REPO_ID}@{UNKNOWN}"'
    elif case == "unpinned_offline":
        base = f'"hf://{REPO_ID}"'
    elif case == "tag_offline":
        base = f'{{ hub = "{REPO_ID}", revision = "v1.0" }}'
    elif case == "unknown_repo":
        base = f'"hf://modelmake-test/nothing@{COMMIT}"'
    elif case == "not_a_base":
        base = f'{{ hub = "{REPO_ID}", revision = "{COMMIT}", allow = ["*.safetensors"] }}'
    elif case.startswith("corrupt"):
        cache = tmp_path / "cache"
        shutil.copytree(hub_cache, cache, symlinks=True)
        corrupt_blob(cache, "model.safetensors" if case == "corrupt_lfs_blob" else "config.json")
    proc = fetch(config_for(tmp_path / "ws", base), hub_env(cache))
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("modelmake: error: fetch:alpha-base: models.alpha.base (hf://")
    assert expected in lines[0]
    assert not (tmp_path / "ws" / "artifacts" / "sources" / "alpha" / "base").exists()
