"""Adapters fetched from a real sshd on 127.0.0.1: rsync with resume, scp fallback, SHA256, content-keyed rebuilds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PY, REPO, Workspace, scale_adapter
from source_support import workspace_with
from ssh_support import SshServer, copy_adapter, ensure_packages, write_sha256sums

from tasks.build.models_lock import lock_content
from tasks.build.registry import all_stages
from tasks.core.config.load import load_config
from tasks.core.hashing import sha256_file

MIB = 1 << 20


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    ensure_packages()
    server = SshServer(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def tree_digest(path: Path) -> str:
    """Relative paths and digests of the non-hidden files, like the stages' tree keys."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.relative_to(path).as_posix().startswith("."))
    return "".join(f"{sha256_file(p)}  {p.relative_to(path).as_posix()}\n" for p in files)


def fetch(config: Path, task: str = "fetch:alpha-adapter") -> subprocess.CompletedProcess:
    """The stage runner, as doit calls it."""
    return subprocess.run([PY, "-m", "tasks.build.runner", "--config", str(config), task],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def fetch_only_config(root: Path, adapter: str) -> Path:
    """A workspace for fetch tests: nothing else is built, so no fixtures are needed."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "models.toml"
    config.write_text(f'[build]\nartifacts = "artifacts"\n[models.alpha]\nbase = "fixture:demo-base"\n'
                      f"adapter = {adapter}\nquants = []\n")
    return config


def remote_run(root: Path, adapter_src: Path) -> Path:
    """A finished training run as a GPU box would leave it: the adapter and its SHA256SUMS."""
    run = copy_adapter(adapter_src, root)
    write_sha256sums(run)
    return run


def retrain(run: Path, factor: float) -> None:
    """New adapter bytes in place (lora_B scaled), as a new training result would be."""
    scale_adapter(run, run.with_name(run.name + ".new"), factor)
    os.replace(run.with_name(run.name + ".new") / "adapter_model.safetensors", run / "adapter_model.safetensors")
    shutil.rmtree(run.with_name(run.name + ".new"))


def record(ws_artifacts: Path) -> dict:
    return json.loads((ws_artifacts / "sources" / "alpha" / "adapter.fetch.json").read_text())


# ---- content-keyed rebuilds through doit ------------------------------------------------------
MODELS = """
[models.alpha]
base = "fixture:demo-base"
adapter = {alpha}
quants = []
[models.beta]
base = "fixture:demo-base"
adapter = "adapters/beta"
quants = []
"""
ALPHA_CHAIN = {"adapter:alpha", "merge:alpha", "convert:alpha", "render:alpha"}
# Build up to the deployment files: the chain a source feeds (the check stage adds minutes, not coverage).
TARGET = "render"


def is_alphas(task: str) -> bool:
    """A stage of model alpha (whatever stage kinds exist: the check is by task name)."""
    name = task.split(":", 1)[-1]
    return name == "alpha" or name.startswith("alpha-")


@pytest.fixture(scope="module")
def remote_ws(tmp_path_factory: pytest.TempPathFactory, demo_fixtures: Path, sshd: SshServer) -> Workspace:
    """alpha's adapter on the sshd, beta's local; both built (read-only: tests use private_copy)."""
    root = tmp_path_factory.mktemp("remote-ws")
    remote = remote_run(root / "remote" / "run1", demo_fixtures / "demo-adapter")
    shutil.copytree(remote, root / "pristine")
    ws = workspace_with(root / "ws", demo_fixtures, MODELS.format(alpha=sshd.source(remote)))
    run = ws.doit(TARGET)
    assert "fetch:alpha-adapter" in run.executed and set(run.executed) >= ALPHA_CHAIN
    return ws


def private_copy(remote_ws: Workspace, tmp_path: Path) -> tuple[Workspace, Path]:
    """A copy of the built workspace, and the remote run reset to what it was built from.

    The remote keeps its path: the source URL is part of the fetch and adapter stages' keys.
    """
    remote = remote_ws.root.parent / "remote" / "run1"
    shutil.rmtree(remote)
    shutil.copytree(remote_ws.root.parent / "pristine", remote)
    return remote_ws.copy_to(tmp_path / "ws"), remote


def test_first_fetch_snapshot_equals_the_remote_run(remote_ws: Workspace) -> None:
    snapshot = remote_ws.artifacts / "sources" / "alpha" / "adapter"
    remote = remote_ws.root.parent / "remote" / "run1"
    assert sorted(p.name for p in snapshot.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert sha256_file(snapshot / name) == sha256_file(remote / name)
    rec = record(remote_ws.artifacts)
    assert rec["method"] == "rsync" and rec["verified_against"] == "SHA256SUMS on the remote"
    assert rec["files"]["adapter_model.safetensors"] == sha256_file(remote / "adapter_model.safetensors")
    assert rec["source"].startswith("ssh://") and rec["checked_at"] and rec["content_changed_at"]
    config = load_config(remote_ws.config)
    lock = lock_content(config, all_stages(config))  # what models.lock records after a full build
    fetched = lock["stages"]["fetch:alpha-adapter"]["outputs"]
    assert fetched["sources/alpha/adapter/adapter_model.safetensors"] == rec["files"]["adapter_model.safetensors"]


def test_identical_bytes_with_new_mtimes_rebuild_nothing(remote_ws: Workspace, tmp_path: Path) -> None:
    ws, remote = private_copy(remote_ws, tmp_path)
    for f in remote.iterdir():
        os.utime(f, (time.time() + 500, time.time() + 500))  # rsync will transfer them again
    run = ws.doit(TARGET)
    assert run.executed == ["fetch:alpha-adapter"], run.stdout
    assert "Nothing to rebuild" in run.stdout
    assert record(ws.artifacts)["transfer"]["matched"] > 0  # re-sent, matched against the staged copy


def test_new_adapter_bytes_rebuild_only_that_model(remote_ws: Workspace, tmp_path: Path) -> None:
    ws, remote = private_copy(remote_ws, tmp_path)
    beta_gguf = sha256_file(ws.artifacts / "beta" / "beta-f16.gguf")
    old_gguf = sha256_file(ws.artifacts / "alpha" / "alpha-f16.gguf")
    retrain(remote, 2.0)  # a new training result...
    write_sha256sums(remote)  # ...with its new manifest
    run = ws.doit(TARGET)
    assert set(run.executed) >= {"fetch:alpha-adapter", *ALPHA_CHAIN}, run.stdout
    assert all(is_alphas(t) for t in run.executed if t != "lock"), run.executed
    assert not any("beta" in t for t in run.executed)
    assert sha256_file(ws.artifacts / "alpha" / "alpha-f16.gguf") != old_gguf
    assert sha256_file(ws.artifacts / "beta" / "beta-f16.gguf") == beta_gguf


def test_checksum_mismatch_refuses_and_keeps_the_good_snapshot(remote_ws: Workspace, tmp_path: Path) -> None:
    ws, remote = private_copy(remote_ws, tmp_path)
    snapshot = ws.artifacts / "sources" / "alpha" / "adapter"
    good = tree_digest(snapshot)
    built = {p: sha256_file(p) for p in (ws.artifacts / "alpha").glob("*.gguf")}
    retrain(remote, 3.0)  # bytes changed, SHA256SUMS not: a half-written or tampered file
    run = ws.doit(TARGET, check=False)
    assert run.returncode != 0
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("modelmake: error:")]
    assert len(errors) == 1, run.stderr
    assert "models.alpha.adapter (ssh://" in errors[0]
    assert "checksum mismatch for adapter_model.safetensors" in errors[0]
    assert run.executed == ["fetch:alpha-adapter"]  # nothing downstream ran
    assert tree_digest(snapshot) == good
    assert built == {p: sha256_file(p) for p in (ws.artifacts / "alpha").glob("*.gguf")}
    assert not (ws.artifacts / "sources" / "alpha" / ".adapter.download" / "adapter_model.safetensors").exists()


# ---- transfer methods -------------------------------------------------------------------------
def test_scp_fallback_when_the_remote_has_no_rsync(sshd: SshServer, tmp_path: Path, demo_fixtures: Path) -> None:
    remote = remote_run(tmp_path / "remote", demo_fixtures / "demo-adapter")
    assert "rsync" not in sshd.ssh("/bin/sh", "-c", "'command -v rsync || echo none'", key=sshd.norsync_key).stdout
    config = fetch_only_config(tmp_path / "ws", sshd.source(remote, key=sshd.norsync_key))
    proc = fetch(config)
    assert proc.returncode == 0, proc.stderr
    assert "rsync is missing on the remote: falling back to scp" in proc.stderr
    snapshot = tmp_path / "ws" / "artifacts" / "sources" / "alpha" / "adapter"
    assert sha256_file(snapshot / "adapter_model.safetensors") == sha256_file(remote / "adapter_model.safetensors")
    rec = record(tmp_path / "ws" / "artifacts")
    assert rec["method"] == "scp" and rec["transfer"]["files_transferred"] == 2
    again = fetch(config)  # verified files already staged are not copied again
    assert again.returncode == 0 and "scp: 0 file(s) copied" in again.stderr


def test_base_model_over_ssh(sshd: SshServer, tmp_path: Path, demo_fixtures: Path) -> None:
    remote = tmp_path / "remote-base"
    shutil.copytree(demo_fixtures / "demo-base", remote)
    write_sha256sums(remote)
    root = tmp_path / "ws"
    root.mkdir()
    (root / "adapter").mkdir()
    config = root / "models.toml"
    config.write_text(f'[build]\nartifacts = "artifacts"\n[models.alpha]\nbase = {sshd.source(remote)}\n'
                      'adapter = "adapter"\nquants = []\n')
    proc = fetch(config, "fetch:alpha-base")
    assert proc.returncode == 0, proc.stderr
    snapshot = root / "artifacts" / "sources" / "alpha" / "base"
    assert tree_digest(snapshot) == tree_digest(demo_fixtures / "demo-base")


def test_pinned_sha256_needs_no_remote_manifest(sshd: SshServer, tmp_path: Path, demo_fixtures: Path) -> None:
    remote = copy_adapter(demo_fixtures / "demo-adapter", tmp_path / "remote")
    (remote / "checkpoint-500.bin").write_bytes(os.urandom(4096))  # not pinned: never fetched
    names = ("adapter_config.json", "adapter_model.safetensors")
    pins = ", ".join(f'"{n}" = "{sha256_file(remote / n)}"' for n in names)
    config = fetch_only_config(tmp_path / "ws", sshd.source(remote, sha256="{ " + pins + " }"))
    proc = fetch(config)
    assert proc.returncode == 0, proc.stderr
    snapshot = tmp_path / "ws" / "artifacts" / "sources" / "alpha" / "adapter"
    assert sorted(p.name for p in snapshot.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert record(tmp_path / "ws" / "artifacts")["verified_against"] == "sha256 pinned in models.toml"


def test_interrupted_transfer_resumes_from_the_partial_file(
    sshd: SshServer, tmp_path: Path, demo_fixtures: Path
) -> None:
    remote = copy_adapter(demo_fixtures / "demo-adapter", tmp_path / "remote")
    total = 24 * MIB
    (remote / "optimizer_state.safetensors").write_bytes(os.urandom(total))
    write_sha256sums(remote)
    ws = tmp_path / "ws"
    config = fetch_only_config(ws, sshd.source(remote, bwlimit="2048"))  # 2 MiB/s: about 12 s in all
    staging = ws / "artifacts" / "sources" / "alpha" / ".adapter.download"
    proc = subprocess.Popen([PY, "-m", "tasks.build.runner", "--config", str(config), "fetch:alpha-adapter"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait for a few MiB of the big file, then cut the connection
            growing = list(staging.glob(".optimizer_state.safetensors.*")) if staging.is_dir() else []
            if growing and growing[0].stat().st_size >= 4 * MIB:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        else:
            pytest.fail("the transfer never got going")
        killed = sshd.server_rsync_pids()
        assert killed, "no rsync --server process under the test sshd"
        for pid in killed:
            os.kill(pid, signal.SIGKILL)  # the remote end dies: like a dropped connection
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("modelmake: error:")]
    assert len(lines) == 1 and "models.alpha.adapter (ssh://" in lines[0] and "transfer interrupted" in lines[0]
    partial = staging / ".rsync-partial" / "optimizer_state.safetensors"
    kept = partial.stat().st_size
    assert 4 * MIB <= kept < total
    assert not (ws / "artifacts" / "sources" / "alpha" / "adapter").exists()  # nothing unverified went live

    config.write_text(config.read_text().replace(", bwlimit = 2048", ""))
    resumed = fetch(config)
    assert resumed.returncode == 0, resumed.stderr
    transfer = record(ws / "artifacts")["transfer"]
    assert transfer["matched"] >= kept - MIB  # the kept bytes were reused, block for block...
    assert transfer["received"] < total - kept + MIB  # ...and only the rest crossed the wire
    snapshot = ws / "artifacts" / "sources" / "alpha" / "adapter"
    assert sha256_file(snapshot / "optimizer_state.safetensors") == sha256_file(remote / "optimizer_state.safetensors")
    assert not partial.exists()
    print(f"resume: {kept} bytes kept, {transfer['received']} received, {transfer['matched']} matched of {total}")


# ---- bad input: one line naming the model and the source --------------------------------------
def _partial_run(root: Path, adapter: Path) -> Path:
    run = copy_adapter(adapter, root)
    (run / "adapter_config.json").unlink()
    write_sha256sums(run)
    return run


def _no_manifest_run(root: Path, adapter: Path) -> Path:
    return copy_adapter(adapter, root)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unreachable", "host unreachable: connection refused by 127.0.0.1:"),
        ("wrong_key", "authentication failed"),
        ("missing_path", "remote path not found:"),
        ("partial", "remote directory is incomplete: no adapter_config.json"),
        ("no_manifest", "no checksum manifest: SHA256SUMS is not in"),
        ("unknown_host_key", "host key verification failed"),
    ],
)
def test_bad_remote_is_one_line_naming_model_and_source(
    sshd: SshServer, tmp_path: Path, demo_fixtures: Path, case: str, expected: str
) -> None:
    adapter = demo_fixtures / "demo-adapter"
    remote = remote_run(tmp_path / "remote", adapter)
    source = sshd.source(remote)
    if case == "unreachable":
        from ssh_support import free_port

        source = source.replace(f":{sshd.port}/", f":{free_port()}/")
    elif case == "wrong_key":
        source = sshd.source(remote, key=sshd.wrong_key)
    elif case == "missing_path":
        source = sshd.source(tmp_path / "no-such-run")
    elif case == "partial":
        source = sshd.source(_partial_run(tmp_path / "partial", adapter))
    elif case == "no_manifest":
        source = sshd.source(_no_manifest_run(tmp_path / "bare", adapter))
    elif case == "unknown_host_key":
        other = tmp_path / "other_known_hosts"  # the host presents a key that is not the recorded one
        other.write_text(f"[127.0.0.1]:{sshd.port} " + sshd.wrong_key.with_suffix(".pub").read_text())
        source = source.replace(str(sshd.known_hosts), str(other))
    proc = fetch(fetch_only_config(tmp_path / "ws", source))
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("modelmake: error: fetch:alpha-adapter: models.alpha.adapter (ssh://")
    assert expected in lines[0]
    assert not (tmp_path / "ws" / "artifacts" / "sources" / "alpha" / "adapter").exists()
