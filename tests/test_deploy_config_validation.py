"""Deploy settings in models.toml are validated up front: one line naming the key, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core.config.load import load_config
from tasks.core.errors import UserError

BASE = """
[build]
artifacts = "artifacts"
[hardware.t4]
memory_gb = 15.36
{hardware}
[models.m]
base = "fixture:demo-base"
adapter = "fixture:demo-adapter"
[models.m.deploy]
port = 5000
{deploy}
"""


def load(tmp_path: Path, deploy: str = "", hardware: str = ""):
    path = tmp_path / "models.toml"
    path.write_text(BASE.format(deploy=deploy, hardware=hardware))
    return load_config(path, check_paths=False)


@pytest.mark.parametrize(("deploy", "hardware", "message"), [
    ('targets = ["ollama", "kubernetes"]', "", "models.m.deploy.targets[1]: unknown target 'kubernetes'"),
    ('hardware = "a100"', "", "models.m.deploy.hardware: unknown hardware profile 'a100' (profiles: t4)"),
    ('host = "localhost; rm -rf /"', "", "models.m.deploy.host: 'localhost; rm -rf /' is not an IP address"),
    ('vllm = { hardware = "t4", gpu_util = 0.5 }', "", "models.m.deploy.vllm.gpu_util: unknown key"),
    ('targets = ["vllm"]', "", "models.m.deploy.vllm.hardware: required for the vllm target"),
    ('vllm = { hardware = "t4", image = "--privileged" }', "", "models.m.deploy.vllm.image: not a container image"),
    ('lmstudio = { link = "hardlink" }', "", "models.m.deploy.lmstudio.link: 'hardlink' is not one of symlink, copy"),
    ('lmstudio = { quants = ["q2_k"] }', "", "models.m.deploy.lmstudio.quants[0]: 'q2_k' is not built"),
    ('health = { timeout = -1 }', "", "models.m.deploy.health.timeout: -1 is outside"),
    ('ollama_template = "missing.gotmpl"', "", "models.m.deploy.ollama_template: file not found"),
    ('stop = ["a\\nb"]', "", "models.m.deploy.stop: expected a list of non-empty one-line strings"),
    ("", "[hardware.vps]\nmemroy_gb = 2", "hardware.vps.memroy_gb: unknown key"),
    ("", '[hardware.vps]\nmemory_gb = 2\nutilization = 1.5', "hardware.vps.utilization: 1.5 is outside"),
    ("", '[hardware."../x"]\nmemory_gb = 2', "unsafe profile name '../x'"),
])
def test_bad_deploy_settings_are_one_line_errors(tmp_path: Path, deploy: str, hardware: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        load(tmp_path, deploy, hardware)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_good_settings_parse(tmp_path: Path) -> None:
    c = load(tmp_path, 'targets = ["vllm", "ollama"]\nhost = "0.0.0.0"\nlmstudio = { home = "~/lms", link = "copy" }\n'
                       'vllm = { hardware = "t4", max_model_len = 8192, kv_cache_dtype = "fp8", lora = true }')
    d = c.models["m"].deploy
    assert d.targets == ("vllm", "ollama") and d.host == "0.0.0.0"
    assert d.lmstudio.home == Path("~/lms").expanduser().resolve() and d.lmstudio.link == "copy"
    assert (d.vllm.max_model_len, d.vllm.kv_cache_dtype, d.vllm.lora) == (8192, "fp8", True)
    assert c.hardware["t4"].budget_bytes() == int(15.36e9 * 0.9)


def test_doit_reports_a_bad_key_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(BASE.format(deploy='vllm = { hardwre = "t4" }', hardware=""))
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "doit", "-f", str(repo / "dodo.py"), "list"],
                          env={"MODELMAKE_CONFIG": str(path), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("models.m.deploy.vllm.hardwre: unknown key (allowed: dtype, hardware, image, "
                                        "kv_cache_dtype, lora, max_model_len)")
    assert "Traceback" not in proc.stderr
