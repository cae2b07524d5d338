"""A shared, content-addressed stage cache: a second clone restores instead of building, byte for byte.

Real parts only: two independent workspaces (each its own directory, artifacts/ and run-cache), real
builds of the demo, a real cache directory, and corrupted or concurrent writes to it done for real.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cache_support import artifact_digests, cached_workspace, flip_byte, summary
from conftest import REPO, Workspace

from tasks.cache.backends import blob_rel, entry_rel
from tasks.core.hashing import sha256_file

TARGET = "lock"  # the default: everything models.lock records (checks included)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, demo_fixtures: Path) -> tuple[Workspace, Path]:
    """Machine A built the demo model and pushed every stage to a shared cache directory (read-only)."""
    root = tmp_path_factory.mktemp("shared-cache")
    cache = root / "cache"
    ws = cached_workspace(root / "machine-a", demo_fixtures, f'[{{ url = "{cache}", push = true }}]')
    run = ws.doit(TARGET)
    assert "pushed to" in run.stderr
    status = summary(run.stdout)
    assert "alpha/alpha-q8_0.gguf" in status and "restored" not in status.values()
    return ws, cache


def copy_cache(cache: Path, dest: Path) -> Path:
    shutil.copytree(cache, dest)
    return dest


def manifest(ws: Workspace, stage: str) -> dict:
    return json.loads((ws.artifacts / "alpha" / "manifests" / f"{stage}.json").read_text())


def test_second_clone_restores_every_stage_and_is_byte_identical(
    pushed: tuple[Workspace, Path], tmp_path: Path, demo_fixtures: Path
) -> None:
    a, cache = pushed
    b = cached_workspace(tmp_path / "machine-b", demo_fixtures, f'"{cache}"')  # pull-only, bare string
    run = b.doit(TARGET)
    status = summary(run.stdout)
    assert set(status) == set(summary(a.doit(TARGET).stdout))
    built = {k: v for k, v in status.items() if v not in ("restored", "up to date")}
    assert built == {}, run.stdout
    assert "alpha/alpha-q8_0.gguf" in status and status["alpha/alpha-q8_0.gguf"] == "restored"
    assert "0 artifact(s) built" in run.stdout
    assert f"merge:alpha: restored from {cache}" in run.stderr
    assert artifact_digests(b) == artifact_digests(a)
    assert b.doit(TARGET).executed == []  # restored outputs are fresh like built ones


def test_flipped_byte_in_a_cached_blob_is_refused_and_that_stage_builds_locally(
    pushed: tuple[Workspace, Path], tmp_path: Path, demo_fixtures: Path
) -> None:
    a, cache = pushed
    cache = copy_cache(cache, tmp_path / "cache")
    record = manifest(a, "quantize-q8_0")["outputs"]["alpha/alpha-q8_0.gguf"]
    blob = cache / blob_rel(record["sha256"])
    flip_byte(blob)
    c = cached_workspace(tmp_path / "machine-c", demo_fixtures, f'[{{ url = "{cache}", push = true }}]')
    run = c.doit(TARGET)
    refused = [ln for ln in run.stderr.splitlines() if "refused" in ln]
    assert len(refused) == 1 and "alpha/alpha-q8_0.gguf" in refused[0] and "sha256" in refused[0], run.stderr
    status = summary(run.stdout)
    assert status["alpha/alpha-q8_0.gguf"] == "built"
    assert status["alpha/merged/"] == "restored" and status["alpha/alpha-f16.gguf"] == "restored"
    assert artifact_digests(c) == artifact_digests(a)
    assert sha256_file(blob) == record["sha256"]  # the push replaced the damaged blob


def test_entry_without_its_blobs_is_refused_as_partial(
    pushed: tuple[Workspace, Path], tmp_path: Path, demo_fixtures: Path
) -> None:
    a, cache = pushed
    cache = copy_cache(cache, tmp_path / "cache")
    record = manifest(a, "convert")["outputs"]["alpha/alpha-f16.gguf"]
    (cache / blob_rel(record["sha256"])).unlink()
    d = cached_workspace(tmp_path / "machine-d", demo_fixtures, f'"{cache}"')
    run = d.doit("convert:alpha")
    assert "refused: entry is partial: no blob for alpha/alpha-f16.gguf" in run.stderr
    assert summary(run.stdout)["alpha/alpha-f16.gguf"] == "built"
    assert sha256_file(d.artifacts / "alpha" / "alpha-f16.gguf") == record["sha256"]


PUSH = """
import sys, time
from pathlib import Path
from tasks.build.registry import all_stages
from tasks.cache.backends import DirBackend
from tasks.cache.entry import push
from tasks.core.config.load import load_config
config, cache, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
(stage,) = [s for s in all_stages(load_config(config)) if s.task == "merge:alpha"]
while not go.exists():
    time.sleep(0.001)
print(push(stage, DirBackend(cache)))
"""


def test_two_machines_pushing_one_key_at_once_leave_one_valid_entry(
    pushed: tuple[Workspace, Path], tmp_path: Path, demo_fixtures: Path
) -> None:
    a, _ = pushed
    cache, go = tmp_path / "fresh-cache", tmp_path / "go"
    machines = [a.copy_to(tmp_path / f"pusher-{i}") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", PUSH, str(m.config), str(cache), str(go)], cwd=REPO,
                              env=m.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for m in machines]
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    key = manifest(a, "merge")["key"]
    assert [p.relative_to(cache).as_posix() for p in cache.glob("entries/*/*")] == [entry_rel(key)]
    assert list((cache / "tmp").iterdir()) == []  # no temporary left behind
    entry = json.loads((cache / entry_rel(key)).read_text())
    for rec in entry["outputs"].values():
        assert sha256_file(cache / blob_rel(rec["sha256"])) == rec["sha256"]
    e = cached_workspace(tmp_path / "machine-e", demo_fixtures, f'"{cache}"')
    run = e.doit("merge:alpha")
    assert summary(run.stdout)["alpha/merged/"] == "restored"


def test_run_cache_restores_an_earlier_adapter_instead_of_rebuilding(
    pushed: tuple[Workspace, Path], tmp_path: Path
) -> None:
    from conftest import scale_adapter

    a, _ = pushed
    ws = a.copy_to(tmp_path / "ws")  # A's run-cache holds every stage A built
    ws.config.write_text(re.sub(r"^cache = .*$", "", ws.config.read_text(), flags=re.M))  # no shared cache
    v1 = tmp_path / "adapter-v1"
    shutil.copytree(ws.root / "adapters" / "alpha", v1)
    scale_adapter(v1, tmp_path / "adapter-v2", 2.0)
    before = artifact_digests(ws)

    shutil.rmtree(ws.root / "adapters" / "alpha")
    shutil.copytree(tmp_path / "adapter-v2", ws.root / "adapters" / "alpha")
    run = ws.doit("render")
    assert summary(run.stdout)["alpha/merged/"] == "built"

    shutil.rmtree(ws.root / "adapters" / "alpha")
    shutil.copytree(v1, ws.root / "adapters" / "alpha")
    run = ws.doit(TARGET)
    status = summary(run.stdout)
    assert "built" not in status.values(), run.stdout  # check.json was never rebuilt for v2: up to date
    for rebuilt_for_v2 in ("alpha/adapter.json", "alpha/merged/", "alpha/alpha-f16.gguf", "alpha/alpha-q8_0.gguf",
                           "alpha/Modelfile"):
        assert status[rebuilt_for_v2] == "restored", run.stdout
    assert "restored from run-cache" in run.stderr
    assert artifact_digests(ws) == before


# ---- the same over real remote storage: sshd on loopback, an S3-compatible emulator -------------------
def republish(a: Workspace, dest: Path, cache_toml: str, **env: str) -> Workspace:
    """Machine A again with another push cache: its alpha stages come back from its own run-cache,
    and what this machine built goes on to the push cache."""
    ws = a.copy_to(dest)
    ws.config.write_text(re.sub(r"^cache = .*$", f"cache = {cache_toml}", ws.config.read_text(), flags=re.M))
    shutil.rmtree(ws.artifacts / "alpha")
    run = ws.doit(TARGET, **env)
    assert "restored from run-cache" in run.stderr and "pushed to" in run.stderr, run.stderr
    return ws


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    from ssh_support import SshServer, ensure_packages

    ensure_packages()
    server = SshServer(tmp_path_factory.mktemp("cache-sshd"))
    yield server
    server.stop()


def test_second_clone_restores_over_a_real_sshd(
    pushed: tuple[Workspace, Path], sshd, tmp_path: Path, demo_fixtures: Path
) -> None:
    a, _ = pushed
    remote = tmp_path / "remote-cache"
    table = f'{{ url = "{sshd.url(remote)}", key = "{sshd.key}", known_hosts = "{sshd.known_hosts}"'
    republish(a, tmp_path / "machine-a2", f"[{table}, push = true }}]")
    assert list(remote.glob("entries/*/*.json")) and list((remote / "tmp").iterdir()) == []
    b = cached_workspace(tmp_path / "machine-b", demo_fixtures, f"[{table} }}]")
    run = b.doit(TARGET)
    status = summary(run.stdout)
    assert {k: v for k, v in status.items() if v not in ("restored", "up to date")} == {}, run.stdout
    assert status["alpha/merged/"] == "restored" and f"restored from {sshd.url(remote)}" in run.stderr
    assert artifact_digests(b) == artifact_digests(a)


@pytest.fixture(scope="module")
def s3_emulator(tmp_path_factory: pytest.TempPathFactory):
    """moto's server mode: an S3-compatible emulator on 127.0.0.1 (not AWS), reached through s3fs."""
    import time
    import urllib.request

    from ssh_support import free_port

    port = free_port()
    log = open(tmp_path_factory.mktemp("s3-emulator") / "moto.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the S3-compatible emulator did not start on {url}") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


S3_ENV = {"AWS_ACCESS_KEY_ID": "emulator", "AWS_SECRET_ACCESS_KEY": "emulator", "AWS_DEFAULT_REGION": "us-east-1"}


def test_second_clone_restores_from_an_s3_compatible_emulator_through_fsspec(
    pushed: tuple[Workspace, Path], s3_emulator: str, tmp_path: Path, demo_fixtures: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import s3fs

    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    fs = s3fs.S3FileSystem(endpoint_url=s3_emulator)
    fs.mkdir("modelmake-cache")
    a, _ = pushed
    table = f'{{ url = "s3://modelmake-cache/team", options = {{ endpoint_url = "{s3_emulator}" }}'
    republish(a, tmp_path / "machine-a2", f"[{table}, push = true }}]", **S3_ENV)
    assert fs.ls("modelmake-cache/team/entries") and not fs.exists("modelmake-cache/team/tmp")
    b = cached_workspace(tmp_path / "machine-b", demo_fixtures, f"[{table} }}]")
    run = b.doit(TARGET, **S3_ENV)
    status = summary(run.stdout)
    assert {k: v for k, v in status.items() if v not in ("restored", "up to date")} == {}, run.stdout
    assert "restored from s3://modelmake-cache/team" in run.stderr
    assert artifact_digests(b) == artifact_digests(a)


def test_run_cache_links_keep_the_digest_cache_valid(pushed: tuple[Workspace, Path]) -> None:
    """Hard-linking outputs into the run-cache changes their ctime; a no-op build must still read no artifact."""
    from tasks.core.hashing import HashCache
    from tasks.core.layout import ArtifactLayout

    a, _ = pushed
    assert list(ArtifactLayout(a.artifacts).run_cache().glob("entries/*/*.json"))
    cache = HashCache(ArtifactLayout(a.artifacts).hash_db())
    for path in (a.artifacts / "alpha" / "manifests").glob("*.json"):
        for rel, rec in json.loads(path.read_text())["outputs"].items():
            out = (a.artifacts / rel).resolve()
            assert cache.lookup(out, out.stat()) == rec["sha256"], rel
