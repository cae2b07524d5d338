"""A Slack/Discord-compatible webhook gets the summary on success and failure; it never fails the build."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import Workspace
from source_support import workspace_with
from ssh_support import free_port

from tasks.build.notify import DISCORD_LIMIT, payload

MODELS = """
[models.alpha]
base = "fixture:demo-base"
adapter = "adapters/alpha"
quants = []
[models.beta]
base = "fixture:demo-base"
adapter = "adapters/beta"
quants = []
"""


@dataclass
class Hook:
    url: str
    bodies: list[dict] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def hook() -> Iterator[Hook]:
    """An HTTP server on 127.0.0.1 that records every JSON body POSTed to it."""
    state = Hook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length", "0"))
            assert self.headers.get("Content-Type") == "application/json"
            state.bodies.append(json.loads(self.rfile.read(length)))
            self.send_response(state.status)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/secret"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def ws(tmp_path: Path, demo_fixtures: Path) -> Workspace:
    return workspace_with(tmp_path / "ws", demo_fixtures, MODELS)


def test_success_posts_the_summary_table(ws: Workspace, hook: Hook) -> None:
    run = ws.doit("adapter", MODELMAKE_WEBHOOK=hook.url)
    assert run.returncode == 0
    (body,) = hook.bodies
    assert body["modelmake"]["status"] == "success" and body["modelmake"]["failed"] == []
    assert body["text"].startswith("modelmake ws: build succeeded (2 built")
    assert "alpha/adapter.json" in body["text"] and "beta/adapter.json" in body["text"]  # the table
    assert body["content"] == body["text"] and body["username"] == "modelmake"


def test_failure_posts_which_task_failed(ws: Workspace, hook: Hook) -> None:
    (ws.root / "adapters" / "beta" / "adapter_config.json").write_text("{ not json")
    run = ws.doit("adapter", check=False, MODELMAKE_WEBHOOK=hook.url)
    assert run.returncode != 0
    (body,) = hook.bodies
    assert body["modelmake"]["status"] == "failure" and body["modelmake"]["failed"] == ["adapter:beta"]
    assert "build FAILED (1 failed: adapter:beta)" in body["text"]


def test_webhook_from_models_toml(ws: Workspace, hook: Hook, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELMAKE_WEBHOOK", raising=False)
    ws.config.write_text(ws.config.read_text().replace("[build]\n", f'[build]\nwebhook = "{hook.url}"\n', 1))
    ws.doit("adapter:alpha")
    assert len(hook.bodies) == 1 and hook.bodies[0]["modelmake"]["status"] == "success"


@pytest.mark.parametrize("failure", ["http_500", "connection_refused"])
def test_failing_webhook_never_fails_the_build(ws: Workspace, hook: Hook, failure: str) -> None:
    url = hook.url
    if failure == "http_500":
        hook.status = 500
    else:
        url = f"http://127.0.0.1:{free_port()}/hook"
    run = ws.doit("adapter:alpha", MODELMAKE_WEBHOOK=url)
    assert run.returncode == 0
    warnings = [ln for ln in run.stdout.splitlines() if ln.startswith("modelmake: warning: webhook")]
    assert len(warnings) == 1 and "the build result is unaffected" in warnings[0]
    assert "secret" not in warnings[0]  # the URL's secret path is not printed
    assert "1 artifact(s) built" in run.stdout


def test_long_summary_fits_discord() -> None:
    table = [f"alpha  alpha/file-{i:04d}.gguf  1.0 MiB  0123456789ab  built" for i in range(200)]
    body = payload(True, "proj", table, [], 200, 200)
    assert len(body["content"]) <= DISCORD_LIMIT and body["content"].endswith("```")
    assert len(body["text"]) > DISCORD_LIMIT  # Slack gets the whole table
