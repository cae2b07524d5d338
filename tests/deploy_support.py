"""Shared pieces of the deployment tests: a built demo workspace, the Go renderer, small servers.

The demo workspace reuses the repo's built fixtures (and demo GGUFs) when they are there and
fresh, because a copy is what a CI cache restore gives and content keys accept it; on a clean
machine it falls back to conftest's `fixtures_ws`, which builds them.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, Workspace

from tasks.core.manifest import read_manifest

GO_SOURCE = REPO / "tests" / "gotemplate" / "main.go"

HARDWARE = """
[hardware.t4]
kind = "gpu"
memory_gb = 15.36
utilization = 0.9
reserve_gb = 1.0
bf16 = false

[hardware.vps]
kind = "cpu"
memory_gb = 2.0
utilization = 1.0
reserve_gb = 0.5
cpus = 1
"""


def demo_models(port: int, system: str = "You are Majora, the modelmake demo assistant.", extra: str = "",
                home: str = "lmhome") -> str:
    return f"""
[build]
artifacts = "artifacts"
templates = "templates"
threads = 2
{HARDWARE}
[models.demo]
base = "fixture:demo-base"
adapter = "fixture:demo-adapter"
quants = ["q4_k_m"]
system = {json.dumps(system)}

[models.demo.deploy]
port = {port}
context = 512
quant = "q4_k_m"
temperature = 0.2
hardware = "vps"
lmstudio = {{ home = {json.dumps(home)} }}
health = {{ prompt = "Who are you?", expect = "I am Majora, built by modelmake.", timeout = 30 }}
{extra}
"""


def fresh_fixtures() -> Path | None:
    """The repo's built fixtures directory, if every fixture manifest is present."""
    fixtures = REPO / "artifacts" / "fixtures"
    names = ("demo-base", "demo-adapter")
    if all(read_manifest(fixtures / "manifests" / f"{n}.json") for n in names):
        return fixtures
    return None


def seed_workspace(root: Path, fixtures: Path, models_toml: str, with_demo: bool = True) -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "templates", root / "templates")
    shutil.copytree(fixtures, root / "artifacts" / "fixtures", ignore=shutil.ignore_patterns(".*.lock"))
    demo = REPO / "artifacts" / "demo"
    if with_demo and (demo / "manifests" / "quantize-q4_k_m.json").is_file():
        # Only what this config builds: merged/, the f16 and q4_k_m GGUFs and their manifests.
        dest = root / "artifacts" / "demo"
        (dest / "manifests").mkdir(parents=True)
        for name in ("merged", "merged.sha256", "adapter.json", "adapter.json.sha256", "demo-f16.gguf",
                     "demo-f16.gguf.sha256", "demo-q4_k_m.gguf", "demo-q4_k_m.gguf.sha256"):
            src = demo / name
            if src.is_dir():
                shutil.copytree(src, dest / name)
            elif src.is_file():
                shutil.copyfile(src, dest / name)
        for name in ("adapter.json", "merge.json", "convert.json", "quantize-q4_k_m.json"):
            if (demo / "manifests" / name).is_file():
                shutil.copyfile(demo / "manifests" / name, dest / "manifests" / name)
    ws = Workspace(root)
    ws.config.write_text(models_toml)
    return ws


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def go_binary(out_dir: Path) -> Path:
    """Build the Go renderer, installing Debian's golang-go first if `go` is missing."""
    if shutil.which("go") is None:
        apt = ["apt-get", "install", "-y", "-q", "golang-go"]
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, timeout=600)
        subprocess.run(apt, check=True, capture_output=True, timeout=900,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    exe = out_dir / "ollama_render"
    env = {**os.environ, "GOCACHE": str(out_dir / "gocache"), "GO111MODULE": "off", "CGO_ENABLED": "0"}
    subprocess.run(["go", "build", "-o", str(exe), str(GO_SOURCE)], check=True, env=env, timeout=600,
                   capture_output=True)
    return exe


def go_batch(exe: Path, templates: list[str], cases: list[dict]) -> list[dict]:
    """Run the Go renderer once: each case names its template by index; {"prompt"} or {"error"} per case."""
    req = json.dumps({"templates": templates, "cases": cases})
    proc = subprocess.run([str(exe)], input=req, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def go_render(exe: Path, template: str, conversations: list[list[dict]], system: str = "",
              now: str = "2024-07-26") -> list[str]:
    cases = [{"template": 0, "messages": c, "tools": [], "think": None, "system": system, "now": now}
             for c in conversations]
    out = go_batch(exe, [template], cases)
    assert all("prompt" in r for r in out), out
    return [r["prompt"] for r in out]


class _Handler(http.server.BaseHTTPRequestHandler):
    behaviour = "500"
    reply: dict | None = None

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        if self.behaviour == "hang":
            self.server.release.wait(60)  # type: ignore[attr-defined]
            return
        if self.behaviour == "500":
            self._send(500, {"error": "internal"})
            return
        if self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "someone-else"}]})
        else:
            if "Content-Length" in self.headers:
                self.rfile.read(int(self.headers["Content-Length"]))
            self._send(200, self.reply or {})

    do_GET = _handle
    do_POST = _handle


@contextlib.contextmanager
def http_server(behaviour: str, reply: dict | None = None) -> Iterator[int]:
    """A real HTTP server on 127.0.0.1 in a thread: '500', 'hang' or 'answer' (with `reply`)."""
    handler = type("H", (_Handler,), {"behaviour": behaviour, "reply": reply})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.release = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.release.set()  # type: ignore[attr-defined]
        server.shutdown()
        server.server_close()


_BUILT: dict[str, Workspace] = {}


@pytest.fixture(scope="session")
def built_demo(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Workspace:
    """The demo (q4_k_m) built through render:demo, once per session (read-only: copy it to change it)."""
    if "ws" not in _BUILT:
        fixtures = fresh_fixtures() or request.getfixturevalue("fixtures_ws").artifacts / "fixtures"
        ws = seed_workspace(tmp_path_factory.mktemp("deploy-demo") / "ws", fixtures, demo_models(free_port()))
        ws.doit("render:demo")
        _BUILT["ws"] = ws
    return _BUILT["ws"]


@pytest.fixture(scope="session")
def go_renderer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Go's text/template, built once per session (Debian golang-go is installed if missing)."""
    if "go" not in _BUILT:
        _BUILT["go"] = go_binary(tmp_path_factory.mktemp("go"))  # type: ignore[assignment]
    return _BUILT["go"]  # type: ignore[return-value]


def demo_copy(built: Workspace, dest: Path, **models: object) -> Workspace:
    """A private copy of the built demo, with models.toml rewritten by demo_models(**models).

    Files are hard links (fast, no extra space): the build replaces files by rename, never in
    place, so the shared build is not touched; a test that edits bytes in place must unlink first.
    """
    shutil.copytree(built.root, dest, symlinks=True, copy_function=os.link,
                    ignore=shutil.ignore_patterns(".doit.db*", ".cache", "run", "logs", ".*.lock", "models.toml"))
    ws = Workspace(dest)
    shutil.copyfile(built.config, ws.config)  # a real copy: tests edit it in place
    if models:
        ws.config.write_text(demo_models(**models))  # type: ignore[arg-type]
    return ws
