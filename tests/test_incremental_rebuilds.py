"""Only stale artifacts rebuild, decided by content, never by mtimes or doit's database."""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from pathlib import Path

from conftest import TWO_MODELS, Workspace, new_workspace, scale_adapter

from tasks.core.hashing import sha256_file

ALPHA_CHAIN = {
    "adapter:alpha", "merge:alpha", "convert:alpha", "quantize:alpha-q8_0", "quantize:alpha-q4_k_m", "render:alpha",
    "check:alpha",  # the default build gates every model on its check (tasks/checks/check.py)
}


def stage_tasks(names: list[str]) -> set[str]:
    """Executed stage tasks, without the models.lock writer (it runs whenever any artifact changed)."""
    return {n for n in names if n != "lock"}


def flip_byte_keep_mtime(path: Path, offset: int) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_second_build_rebuilds_nothing(scratch_ws: Workspace) -> None:
    run = scratch_ws.doit()
    assert run.executed == []
    assert "Nothing to rebuild" in run.stdout
    assert "lock" in run.uptodate


def test_new_adapter_bytes_rebuild_only_that_models_chain(scratch_ws: Workspace) -> None:
    before = {p.name: sha256_file(p) for p in (scratch_ws.artifacts / "beta").glob("*.gguf")}
    scale_adapter(scratch_ws.root / "adapters" / "beta", scratch_ws.root / "adapters" / "alpha", 3.0)
    run = scratch_ws.doit()
    assert stage_tasks(run.executed) == ALPHA_CHAIN
    assert not any(t.endswith(":beta") or ":beta-" in t for t in run.executed)
    assert before == {p.name: sha256_file(p) for p in (scratch_ws.artifacts / "beta").glob("*.gguf")}


def test_same_adapter_bytes_with_new_mtime_rebuild_nothing(scratch_ws: Workspace) -> None:
    adapter = scratch_ws.root / "adapters" / "alpha"
    for f in adapter.iterdir():
        data = f.read_bytes()
        f.unlink()
        f.write_bytes(data)  # new inode, new mtime, same bytes
        os.utime(f, (time.time() + 100, time.time() + 100))
    run = scratch_ws.doit()
    assert run.executed == []


def test_adding_one_quant_builds_only_that_quant(scratch_ws: Workspace) -> None:
    text = scratch_ws.config.read_text()
    scratch_ws.config.write_text(text.replace('quants = ["q8_0", "q4_k_m"]', 'quants = ["q8_0", "q4_k_m", "q6_k"]'))
    run = scratch_ws.doit()
    assert stage_tasks(run.executed) == {"quantize:alpha-q6_k", "check:alpha"}  # a new quant is checked too
    assert (scratch_ws.artifacts / "alpha" / "alpha-q6_k.gguf").is_file()


def test_editing_a_template_rerenders_only(scratch_ws: Workspace) -> None:
    template = scratch_ws.root / "templates" / "Modelfile.j2"
    template.write_text(template.read_text() + "# edited\n")
    run = scratch_ws.doit()
    assert stage_tasks(run.executed) == {"render:alpha", "render:beta"}
    assert (scratch_ws.artifacts / "alpha" / "Modelfile").read_text().endswith("# edited\n")


def test_ci_cache_restore_rebuilds_nothing(two_models_ws: Workspace, tmp_path: Path) -> None:
    """Fresh checkout + artifacts/ from a tarball (new mtimes, no .doit.db, no hash cache) is up to date."""
    tarball = tmp_path / "cache.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(two_models_ws.artifacts, arcname="artifacts")
    fresh = Workspace(tmp_path / "fresh-clone")
    fresh.root.mkdir()
    for name in ("models.toml", "models.lock", "templates", "adapters"):  # what a clone has
        src = two_models_ws.root / name
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, fresh.root / name)
    time.sleep(0.01)
    with tarfile.open(tarball) as tar:
        tar.extractall(fresh.root, filter="data")
    shutil.rmtree(fresh.artifacts / ".cache")
    now = time.time()
    for p in fresh.artifacts.rglob("*"):
        os.utime(p, (now, now))
    assert not list(fresh.root.glob(".doit.db*"))
    run = fresh.doit()
    assert run.executed == [], run.stdout
    # ...and it did verify: every output's digest was computed and recorded again.
    assert (fresh.artifacts / ".cache" / "hashes.sqlite3").is_file()


def test_flipped_byte_rebuilds_that_artifact_only(scratch_ws: Workspace) -> None:
    q8 = scratch_ws.artifacts / "alpha" / "alpha-q8_0.gguf"
    good = sha256_file(q8)
    flip_byte_keep_mtime(q8, q8.stat().st_size // 2)
    run = scratch_ws.doit()
    assert stage_tasks(run.executed) == {"quantize:alpha-q8_0"}
    assert sha256_file(q8) == good  # rebuilt byte-identical, so nothing downstream is stale


def test_flipped_byte_in_f16_rebuilds_convert_and_not_the_quants(scratch_ws: Workspace) -> None:
    f16 = scratch_ws.artifacts / "alpha" / "alpha-f16.gguf"
    good = sha256_file(f16)
    flip_byte_keep_mtime(f16, f16.stat().st_size - 10)
    run = scratch_ws.doit()
    assert stage_tasks(run.executed) == {"convert:alpha"}
    assert sha256_file(f16) == good


def test_flipped_byte_in_merged_weights_rebuilds_merge(scratch_ws: Workspace) -> None:
    weights = next((scratch_ws.artifacts / "alpha" / "merged").glob("*.safetensors"))
    flip_byte_keep_mtime(weights, weights.stat().st_size - 3)
    run = scratch_ws.doit()
    assert stage_tasks(run.executed) == {"merge:alpha"}


def test_deleted_sidecar_is_rewritten(scratch_ws: Workspace) -> None:
    sidecar = scratch_ws.artifacts / "beta" / "beta-q8_0.gguf.sha256"
    sidecar.unlink()
    run = scratch_ws.doit()
    assert stage_tasks(run.executed) == {"quantize:beta-q8_0"}
    assert sidecar.is_file()


def test_quantize_group_task_builds_only_up_to_the_quants(tmp_path: Path, fixtures_ws: Workspace) -> None:
    ws = new_workspace(tmp_path / "ws", fixtures_ws, TWO_MODELS)
    run = ws.doit("quantize:beta")
    assert stage_tasks(run.executed) == {"adapter:beta", "merge:beta", "convert:beta", "quantize:beta-q8_0"}
    assert (ws.artifacts / "beta" / "beta-q8_0.gguf").is_file()
    assert not (ws.artifacts / "alpha").exists()
