"""vLLM serves the merged directory: a vLLM-only model never converts to GGUF, and its launch
script and compose service carry the planner's --max-model-len and --gpu-memory-utilization."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import yaml
from conftest import Workspace
from deploy_support import HARDWARE, fresh_fixtures

VLLM_ONLY = """
[build]
artifacts = "artifacts"
templates = "templates"
{hardware}
[models.sheik]
base = "fixture:demo-base"
adapter = "fixture:demo-adapter"
system = "You are Sheik."

[models.sheik.deploy]
port = 5003
context = 2048
targets = ["vllm"]
vllm = {{ hardware = "{profile}", lora = true }}
"""


def workspace(tmp_path: Path, request, profile: str = "t4", hardware: str = HARDWARE) -> Workspace:
    fixtures = fresh_fixtures() or request.getfixturevalue("fixtures_ws").artifacts / "fixtures"
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    shutil.copytree(Path(__file__).resolve().parents[1] / "templates", ws.root / "templates")
    shutil.copytree(fixtures, ws.artifacts / "fixtures", ignore=shutil.ignore_patterns(".*.lock"))
    ws.config.write_text(VLLM_ONLY.format(hardware=hardware, profile=profile))
    return ws


def exec_args(script: Path) -> list[str]:
    line = next(ln for ln in script.read_text().splitlines() if ln.startswith("exec "))
    return shlex.split(line)[1:]


def test_vllm_only_model_builds_no_gguf(tmp_path: Path, request) -> None:
    ws = workspace(tmp_path, request)
    run = ws.doit()
    assert "merge:sheik" in run.executed and "render:sheik" in run.executed
    assert not any(t.startswith(("convert:", "quantize:")) for t in run.executed + run.uptodate)
    assert list(ws.artifacts.rglob("*.gguf")) == []
    out = ws.artifacts / "sheik"
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".sha256") == [
        "adapter.json", "deploy.json", "manifests", "merged", "vllm-compose.yaml", "vllm-serve-lora.sh",
        "vllm-serve.sh"]
    args = exec_args(out / "vllm-serve.sh")
    assert args[:3] == ["vllm", "serve", "./merged"]
    opts = dict(zip(args[3::2], args[4::2], strict=False))
    assert opts["--served-model-name"] == "sheik" and opts["--port"] == "5003"
    assert opts["--gpu-memory-utilization"] == "0.9" and opts["--max-model-len"] == "4096"
    assert opts["--dtype"] == "float16"  # the T4 profile says bf16 = false
    assert (out / "merged" / "config.json").is_file()
    lora = exec_args(out / "vllm-serve-lora.sh")
    assert lora[:3] == ["vllm", "serve", "../fixtures/demo-base"] and "--enable-lora" in lora
    name, path = lora[lora.index("--lora-modules") + 1].split("=", 1)
    assert name == "sheik" and (out / path / "adapter_config.json").is_file()
    compose = yaml.safe_load((out / "vllm-compose.yaml").read_text())
    service = compose["services"]["sheik-vllm"]
    assert service["volumes"] == ["./merged:/models/sheik:ro"]
    assert service["command"][service["command"].index("--max-model-len") + 1] == "4096"
    assert service["ports"] == ["127.0.0.1:5003:8000"]
    assert ws.doit().executed == []  # and nothing rebuilds


def test_vllm_deployment_that_cannot_fit_fails_early(tmp_path: Path, request) -> None:
    tiny = HARDWARE + '\n[hardware.tiny]\nkind = "gpu"\nmemory_gb = 0.08\nutilization = 0.9\nreserve_gb = 0.0\n'
    ws = workspace(tmp_path, request, profile="tiny", hardware=tiny)
    run = ws.doit(check=False)
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert "models.sheik.deploy.vllm: 16-bit does not fit on hardware 'tiny' at context 2048" in out
    assert "merge:sheik" not in run.executed
