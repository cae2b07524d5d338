"""Installing into an LM Studio directory: layout and settings, idempotence, backups and rollback,
and links that never leave artifacts/ nor go through a link planted in the target."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from conftest import Workspace
from deploy_support import demo_copy

from tasks.deploy import cli as deploy_cli

SYSTEM_2 = 'You are Nayru.\nNever say """ twice.'


def cli(ws: Workspace, *args: str) -> int:
    return deploy_cli.main(["--config", str(ws.config), *args])


@pytest.fixture
def ws(built_demo: Workspace, tmp_path: Path) -> Workspace:
    return demo_copy(built_demo, tmp_path / "ws")


def tree(root: Path) -> dict[str, str]:
    """Every entry under root (links not followed): path -> link target, or file digest/size."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            out[rel] = "-> " + os.readlink(p) if p.is_symlink() else f"{p.stat().st_size}:{p.read_bytes()[:64]!r}"
    return out


def test_install_layout_and_settings(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(ws, "deploy", "demo") == 0
    assert "lmstudio: installed demo (demo-q4_k_m.gguf)" in capsys.readouterr().out
    home = ws.root / "lmhome"
    link = home / "models" / "modelmake" / "demo" / "demo-q4_k_m.gguf"
    assert link.is_symlink() and Path(os.readlink(link)) == (ws.artifacts / "demo" / "demo-q4_k_m.gguf").resolve()
    cfg_file = home / ".internal/user-concrete-model-default-config/modelmake/demo/demo-q4_k_m.gguf.json"
    cfg = json.loads(cfg_file.read_text())
    ops = {f["key"]: f["value"] for f in cfg["operation"]["fields"]}
    assert ops["llm.prediction.systemPrompt"] == "You are Majora, the modelmake demo assistant."
    assert ops["llm.prediction.temperature"] == 0.2
    assert ops["llm.prediction.stopStrings"][0] == "<|im_end|>"
    assert cfg["load"]["fields"] == [{"key": "llm.load.contextLength", "value": 512}]
    model_yaml = yaml.safe_load((home / "hub/models/modelmake/demo/model.yaml").read_text())
    assert model_yaml["model"] == "modelmake/demo" and model_yaml["base"] == "modelmake/demo"
    assert model_yaml["config"]["operation"]["fields"] == cfg["operation"]["fields"]
    ports = json.loads((home / "modelmake" / "ports.json").read_text())
    assert ports["demo"]["port"] == json.loads((ws.artifacts / "demo" / "deploy.json").read_text())["port"]


def test_identical_deploy_changes_nothing(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(ws, "deploy", "demo") == 0
    home = ws.root / "lmhome"
    before = tree(home)
    stamps = {p: p.lstat().st_mtime_ns for p in home.rglob("*")}
    assert cli(ws, "deploy", "demo") == 0
    assert "unchanged" in capsys.readouterr().out
    assert tree(home) == before
    assert {p: p.lstat().st_mtime_ns for p in home.rglob("*")} == stamps


def test_changed_deploy_backs_up_and_rollback_restores(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    home = ws.root / "lmhome"
    cfg_file = home / ".internal/user-concrete-model-default-config/modelmake/demo/demo-q4_k_m.gguf.json"
    assert cli(ws, "deploy", "demo") == 0
    v1 = tree(home / "models") | tree(home / ".internal") | tree(home / "hub")
    ws.config.write_text(ws.config.read_text().replace(
        'system = "You are Majora, the modelmake demo assistant."', f"system = {json.dumps(SYSTEM_2)}"))
    ws.doit("render:demo")
    assert cli(ws, "deploy", "demo") == 0
    assert "previous version backed up as" in capsys.readouterr().out
    ops = {f["key"]: f["value"] for f in json.loads(cfg_file.read_text())["operation"]["fields"]}
    assert ops["llm.prediction.systemPrompt"] == SYSTEM_2
    assert cli(ws, "rollback", "demo") == 0
    assert tree(home / "models") | tree(home / ".internal") | tree(home / "hub") == v1
    # The first deploy's backup is the empty directory it replaced: rolling back again uninstalls.
    assert cli(ws, "rollback", "demo") == 0
    assert not (home / "models" / "modelmake" / "demo" / "demo-q4_k_m.gguf").exists()
    assert not cfg_file.exists()
    assert "demo" not in json.loads((home / "modelmake" / "ports.json").read_text())
    capsys.readouterr()
    assert cli(ws, "rollback", "demo") == 2
    assert "nothing to roll back to" in capsys.readouterr().err


def test_copy_mode_installs_a_verified_copy(ws: Workspace) -> None:
    ws.config.write_text(ws.config.read_text().replace('lmstudio = { home = "lmhome" }',
                                                       'lmstudio = { home = "lmhome", link = "copy" }'))
    assert cli(ws, "deploy", "demo") == 0
    installed = ws.root / "lmhome" / "models" / "modelmake" / "demo" / "demo-q4_k_m.gguf"
    assert not installed.is_symlink()
    assert installed.read_bytes() == (ws.artifacts / "demo" / "demo-q4_k_m.gguf").read_bytes()


def test_planted_directory_link_is_refused_and_nothing_escapes(ws: Workspace, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws.root / "lmhome" / "models").mkdir(parents=True)
    (ws.root / "lmhome" / "models" / "modelmake").symlink_to(outside)
    assert cli(ws, "deploy", "demo") == 2
    assert "is a symbolic link or not a directory; refusing to follow it" in capsys.readouterr().err
    assert list(outside.iterdir()) == []
    assert not (ws.root / "lmhome" / ".internal").exists()  # refused before changing anything


def test_planted_file_link_is_moved_aside_not_written_through(ws: Workspace, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target_dir = ws.root / "lmhome" / "models" / "modelmake" / "demo"
    target_dir.mkdir(parents=True)
    (target_dir / "demo-q4_k_m.gguf").symlink_to(victim)
    ws.config.write_text(ws.config.read_text().replace('lmstudio = { home = "lmhome" }',
                                                       'lmstudio = { home = "lmhome", link = "copy" }'))
    assert cli(ws, "deploy", "demo") == 0
    assert victim.read_text() == "precious"
    assert not (target_dir / "demo-q4_k_m.gguf").is_symlink()
    backed_up = list((ws.root / "lmhome" / "modelmake" / "backups" / "demo").glob("*/files/models/*/*/*.gguf"))
    assert [os.readlink(p) for p in backed_up] == [str(victim)]


def test_links_only_point_into_artifacts(ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gguf = ws.artifacts / "demo" / "demo-q4_k_m.gguf"
    elsewhere = tmp_path / "elsewhere.gguf"
    gguf.rename(elsewhere)
    gguf.symlink_to(elsewhere)  # an artifact that resolves outside artifacts/
    assert cli(ws, "deploy", "demo") == 2
    assert "resolves outside" in capsys.readouterr().err
    assert not (ws.root / "lmhome" / "models" / "modelmake" / "demo" / "demo-q4_k_m.gguf").exists()


def test_port_registry_refuses_a_port_taken_by_another_model(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    registry = ws.root / "lmhome" / "modelmake" / "ports.json"
    registry.parent.mkdir(parents=True)
    port = json.loads((ws.artifacts / "demo" / "deploy.json").read_text())["port"]
    registry.write_text(json.dumps({"nayru": {"port": port, "model": "modelmake/nayru"}}))
    assert cli(ws, "deploy", "demo") == 2
    assert f"port {port} is already registered to model 'nayru'" in capsys.readouterr().err


def test_deploy_task_through_doit(ws: Workspace) -> None:
    run = ws.doit("deploy:demo")
    assert "deploy:demo" in run.executed
    assert "ollama: not on PATH; Modelfile ready" in run.stdout
    assert (ws.root / "lmhome" / "models" / "modelmake" / "demo" / "demo-q4_k_m.gguf").is_symlink()
    # `ollama create` gets an argument list (no shell): a stand-in on PATH records its argv.
    bindir = ws.root / "bin"
    bindir.mkdir()
    record = ws.root / "ollama-argv.json"
    fake = bindir / "ollama"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"json.dump([sys.argv[1:], os.getcwd()], open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    ws.doit("deploy:demo", PATH=f"{bindir}:{os.environ['PATH']}")
    argv, cwd = json.loads(record.read_text())
    assert argv == ["create", "demo", "-f", str(ws.artifacts / "demo" / "Modelfile")]
    assert Path(cwd) == ws.artifacts / "demo"

