"""A source that is gone: a verified snapshot stands in for an unreachable remote (one warning line),
offline builds and SHA256-pinned sources do not contact it, and with no snapshot it is one error line.
Against a real sshd on 127.0.0.1, stopped for the unreachable cases."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from ssh_support import SshServer, ensure_packages, write_sha256sums
from test_ssh_source import fetch, fetch_only_config

from tasks.core.hashing import sha256_file


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    ensure_packages()
    server = SshServer(tmp_path / "sshd")
    yield server
    server.stop()


@pytest.fixture
def training_run(tmp_path: Path) -> Path:
    """What a GPU box leaves after training: the adapter files and their SHA256SUMS (the fetch
    only moves and verifies bytes, so any bytes do)."""
    run = tmp_path / "box" / "run-1"
    run.mkdir(parents=True)
    (run / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (run / "adapter_model.safetensors").write_bytes(os.urandom(256 << 10))
    write_sha256sums(run)
    return run


def logins(server: SshServer) -> int:
    return server.log.read_text(errors="replace").count("Accepted publickey")


def errors_and_warnings(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith(("modelmake: error", "modelmake: warning"))]


def test_unreachable_remote_with_a_verified_snapshot_warns_once_and_builds_on(
        tmp_path: Path, sshd: SshServer, training_run: Path) -> None:
    config = fetch_only_config(tmp_path / "ws", sshd.source(training_run))
    assert fetch(config).returncode == 0
    snapshot = tmp_path / "ws" / "artifacts" / "sources" / "alpha" / "adapter"
    before = sha256_file(snapshot / "adapter_model.safetensors")
    sshd.stop()  # the rented box is gone
    proc = fetch(config)
    assert proc.returncode == 0, proc.stderr
    lines = errors_and_warnings(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("modelmake: warning: models.alpha.adapter (ssh://")
    assert "host unreachable" in lines[0] and "using the snapshot (verified 20" in lines[0]
    assert lines[0].endswith(") as is")
    assert sha256_file(snapshot / "adapter_model.safetensors") == before


def test_unreachable_remote_without_a_snapshot_is_one_error_line(
        tmp_path: Path, sshd: SshServer, training_run: Path) -> None:
    config = fetch_only_config(tmp_path / "ws", sshd.source(training_run))
    sshd.stop()
    proc = fetch(config)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    (line,) = errors_and_warnings(proc.stderr)
    assert line.startswith("modelmake: error: fetch:alpha-adapter: models.alpha.adapter (ssh://")
    assert "host unreachable" in line and line.endswith("no verified snapshot to build from")


@pytest.mark.parametrize("env", ["MODELMAKE_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_build_does_not_contact_the_remote(tmp_path: Path, sshd: SshServer, training_run: Path,
                                                   env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = fetch_only_config(tmp_path / "ws", sshd.source(training_run))
    monkeypatch.setenv(env, "1")
    if env == "MODELMAKE_OFFLINE":  # no snapshot yet: nothing to build from
        proc = fetch(config)
        assert proc.returncode == 2
        (line,) = errors_and_warnings(proc.stderr)
        assert line.endswith("MODELMAKE_OFFLINE=1 and no verified snapshot yet: run once with the remote reachable")
        assert logins(sshd) == 1  # only the server's own readiness check
    monkeypatch.delenv(env)
    assert fetch(config).returncode == 0
    seen = logins(sshd)
    monkeypatch.setenv(env, "1")
    proc = fetch(config)
    assert proc.returncode == 0, proc.stderr
    if env == "MODELMAKE_OFFLINE":
        assert logins(sshd) == seen, "offline: the remote was not contacted"
        assert "MODELMAKE_OFFLINE=1: using the snapshot (verified 20" in proc.stderr
    else:  # the Hub's own switch leaves SSH sources alone
        assert logins(sshd) > seen


def test_sha256_pinned_source_whose_snapshot_matches_needs_no_contact(
        tmp_path: Path, sshd: SshServer, training_run: Path) -> None:
    pins = ", ".join(f'"{n}" = "{sha256_file(training_run / n)}"'
                     for n in ("adapter_config.json", "adapter_model.safetensors"))
    config = fetch_only_config(tmp_path / "ws", sshd.source(training_run, sha256="{ " + pins + " }"))
    assert fetch(config).returncode == 0
    seen = logins(sshd)
    proc = fetch(config)
    assert proc.returncode == 0, proc.stderr
    assert logins(sshd) == seen
    assert "pinned by SHA256 in models.toml and the snapshot matches: remote not contacted" in proc.stderr
    snapshot = tmp_path / "ws" / "artifacts" / "sources" / "alpha" / "adapter"
    (snapshot / "adapter_model.safetensors").write_bytes(b"damaged")  # no longer matches: fetched again
    proc = fetch(config)
    assert proc.returncode == 0 and logins(sshd) > seen
    fetched = snapshot / "adapter_model.safetensors"
    assert sha256_file(fetched) == sha256_file(training_run / "adapter_model.safetensors")


def test_a_snapshot_of_another_source_does_not_stand_in(tmp_path: Path, sshd: SshServer, training_run: Path) -> None:
    """models.toml now names another run on the box: the old snapshot is not that run, even if the box is gone."""
    config = fetch_only_config(tmp_path / "ws", sshd.source(training_run))
    assert fetch(config).returncode == 0
    config.write_text(config.read_text().replace(str(training_run), str(training_run.with_name("run-2"))))
    sshd.stop()
    proc = fetch(config)
    assert proc.returncode == 2
    (line,) = errors_and_warnings(proc.stderr)
    assert "run-2" in line and line.endswith("no verified snapshot to build from")
