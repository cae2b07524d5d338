"""llama.cpp's server on the demo's quant, and the health check against real servers:
the demo itself (healthy: it answers its training prompt and stops at <|im_end|>), a dead port,
a server answering 500, a hung server, and one that answers wrongly (degraded)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import Workspace
from deploy_support import demo_copy, demo_models, free_port, http_server

from tasks.deploy import cli as deploy_cli


def cli(ws: Workspace, *args: str) -> int:
    return deploy_cli.main(["--config", str(ws.config), *args])


@pytest.fixture
def served(built_demo: Workspace, tmp_path: Path):
    """A copy of the demo with its llama.cpp server running (started by `doit serve:demo`)."""
    ws = demo_copy(built_demo, tmp_path / "ws", port=free_port())
    ws.doit("render:demo")
    run = ws.doit("serve:demo")
    assert "listening at http://127.0.0.1:" in run.stdout
    try:
        yield ws
    finally:
        ws.doit("stop:demo", check=False)


def test_served_demo_is_healthy(served: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(served, "health", "demo", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "healthy", report["reasons"]
    # The fine-tune's trained answer, through the GGUF's chat template, stopped at <|im_end|>.
    assert report["reply"] == "I am Majora, built by modelmake."
    assert "<|im_end|>" not in report["reply"]
    assert report["latency_s"] > 0 and report["completion_tokens"] > 0 and report["tokens_per_s"] > 0
    names = {c["name"] for c in report["checks"] if c["ok"]}
    assert {"gguf magic", "gguf sha256", "port", "model listed", "expected reply", "end of turn"} <= names
    saved = json.loads((served.artifacts / "run" / "demo" / "health.json").read_text())
    assert saved["status"] == "healthy"


def test_starting_twice_is_detected_and_stop_stops(served: Workspace) -> None:
    pid = json.loads((served.artifacts / "run" / "demo" / "server.pid").read_text())["pid"]
    again = served.doit("serve:demo")
    assert f"already running (pid {pid})" in again.stdout
    run = served.doit("health:demo")  # doit wiring: exit 0 when healthy, readable summary
    assert "HEALTHY" in run.stdout
    served.doit("stop:demo")
    assert not (served.artifacts / "run" / "demo" / "server.pid").exists()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or "llama_cpp" not in Path(f"/proc/{pid}/cmdline").read_text()


def test_port_in_use_by_someone_else_is_refused(built_demo: Workspace, tmp_path: Path) -> None:
    with http_server("500") as port:
        ws = demo_copy(built_demo, tmp_path / "ws", port=port)
        ws.doit("render:demo")
        run = ws.doit("serve:demo", check=False)
        assert run.returncode != 0
        assert f"127.0.0.1:{port} is already in use by another process" in run.stderr


def _health(built: Workspace, tmp_path: Path, port: int, capsys: pytest.CaptureFixture[str],
            timeout: str = "5") -> tuple[int, dict]:
    """Health of the built demo's files against a server on `port` (the build is shared, read-only)."""
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.config.write_text(demo_models(port).replace('artifacts = "artifacts"', f"artifacts = {str(built.artifacts)!r}")
                         .replace('templates = "templates"', f"templates = {str(built.root / 'templates')!r}"))
    capsys.readouterr()
    code = cli(ws, "health", "demo", "--json", "--timeout", timeout)
    return code, json.loads(capsys.readouterr().out)


def test_dead_port_is_unhealthy(built_demo: Workspace, tmp_path: Path, capsys) -> None:
    code, report = _health(built_demo, tmp_path, free_port(), capsys)
    assert (code, report["status"]) == (2, "unhealthy")
    assert any("not reachable" in r for r in report["reasons"])
    assert all(c["ok"] for c in report["checks"] if c["name"].startswith("gguf"))  # files were fine


def test_server_answering_500_is_unhealthy(built_demo: Workspace, tmp_path: Path, capsys) -> None:
    with http_server("500") as port:
        code, report = _health(built_demo, tmp_path, port, capsys)
    assert (code, report["status"]) == (2, "unhealthy")
    assert report["reasons"] == ["/v1/models: HTTP 500"]


def test_hung_server_times_out_unhealthy(built_demo: Workspace, tmp_path: Path, capsys) -> None:
    with http_server("hang") as port:
        started = time.monotonic()
        code, report = _health(built_demo, tmp_path, port, capsys, timeout="1.5")
        elapsed = time.monotonic() - started
    assert (code, report["status"]) == (2, "unhealthy")
    assert any("timed out" in r for r in report["reasons"]), report["reasons"]
    assert elapsed < 30  # bounded by the timeout, not by the server


def test_wrong_answers_are_degraded(built_demo: Workspace, tmp_path: Path, capsys) -> None:
    leaky = {"choices": [{"message": {"role": "assistant", "content": "I am Qwen<|im_end|>\n<|im_start|>user"},
                          "finish_reason": "length"}], "usage": {"completion_tokens": 12}}
    with http_server("answer", reply=leaky) as port:
        code, report = _health(built_demo, tmp_path, port, capsys)
    assert (code, report["status"]) == (1, "degraded")
    failed = {c["name"] for c in report["checks"] if not c["ok"]}
    assert failed == {"model listed", "end of turn", "expected reply"}


def test_tampered_gguf_is_unhealthy(built_demo: Workspace, tmp_path: Path, capsys) -> None:
    ws = demo_copy(built_demo, tmp_path / "ws", port=free_port())
    ws.doit("render:demo")
    gguf = ws.artifacts / "demo" / "demo-q4_k_m.gguf"
    data = bytearray(gguf.read_bytes())
    data[len(data) // 2] ^= 0xFF
    gguf.unlink()  # a hard link to the shared build: replace, do not edit in place
    gguf.write_bytes(bytes(data))
    capsys.readouterr()
    assert cli(ws, "health", "demo") == 2
    assert "[FAIL] gguf sha256" in capsys.readouterr().out
