"""One sweep of the temporaries a killed build leaves (owner pid dead), wherever this project writes them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from tasks.build.models_lock import sweep_stale_temps
from tasks.core import atomic
from tasks.core.stage import Stage, StageKind, run_stage


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def debris(final: Path, pid: int, directory: bool = False) -> Path:
    """What a build with owner `pid` killed mid-write leaves beside `final`."""
    tmp = final.with_name(f".{final.name}{atomic.TEMP_MARK}{pid}-0123abcd")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"half")
    else:
        tmp.write_bytes(b"half")
    return tmp


def test_every_writer_names_its_temporaries_one_way(tmp_path: Path) -> None:
    tmp = atomic.temp_name(tmp_path / "models.lock")
    assert atomic.temp_owner(tmp) == os.getpid()
    assert atomic.temp_owner(tmp_path / "models.lock") is None
    assert atomic.temp_owner(tmp_path / ".demo.download") is None  # fetch staging persists on purpose


def test_sweep_removes_dead_owners_debris_everywhere_and_keeps_live_work(tmp_path: Path) -> None:
    root, artifacts = tmp_path, tmp_path / "artifacts"
    gone = dead_pid()
    dead = [
        debris(root / "models.lock", gone),
        debris(artifacts / "demo" / "manifests" / "convert.json", gone),
        debris(artifacts / ".cache" / "hashes.sqlite3", gone),
        debris(artifacts / "demo" / "demo-f16.gguf", gone),
        debris(artifacts / "demo" / "merged", gone, directory=True),
        debris(artifacts / "sources" / "demo" / "adapter" / "adapter_model.safetensors", gone),
    ]
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = [debris(artifacts / "demo" / "demo-q8_0.gguf", live.pid), debris(root / "models.lock", live.pid)]
        removed = sweep_stale_temps(SimpleNamespace(root=root, artifacts=artifacts))
    finally:
        live.kill()
        live.wait()
    assert sorted(removed) == sorted(dead)
    assert not any(p.exists() for p in dead)
    assert all(p.exists() for p in kept), "a live build's temporaries are its own"


def test_a_stage_sweeps_its_manifest_directory_before_building(tmp_path: Path) -> None:
    """Before: a half manifest `manifests/.<stage>.json.tmp-*` survived every later rebuild."""
    artifacts = tmp_path / "artifacts"
    out = artifacts / "demo" / "out.txt"
    stage = Stage(task="k:demo", kind=StageKind("k", group="k", version=1, builder="-"), artifacts=artifacts,
                  manifest=artifacts / "demo" / "manifests" / "k.json", log=artifacts / "logs" / "k.log",
                  outputs=(out,))
    half = debris(stage.manifest, dead_pid())
    assert run_stage(stage, lambda s: atomic.write_text(out, "x"), log=lambda _m: None)
    assert not half.exists()
    assert not [p for p in stage.manifest.parent.iterdir() if atomic.temp_owner(p) is not None]
