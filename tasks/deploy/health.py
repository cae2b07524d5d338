"""Health of a deployed model: its files, then a live server on loopback.

File checks: the deployed GGUF exists, starts with the GGUF magic, and has the size and SHA256
its manifest recorded. Server checks: the port accepts connections, GET /v1/models lists the
model, and a chat completion of the health prompt returns within the timeout; its latency and
tokens/s are measured. The reply must be non-empty, must stop on its own (finish_reason "stop")
and must not leak an end-of-turn token (a wrong template's symptom); with `expect` set it must be
exactly that text (a fine-tune's trained answer is the sharpest probe).

Status: unhealthy if a critical check fails (files, port, HTTP errors, timeout), degraded if only
warnings fail (model not listed, reply not as expected, slow), else healthy. Exit codes for
scripts: 0 healthy, 1 degraded, 2 unhealthy (3: the check itself could not run).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks.core.config.schema import Config, ModelSpec
from tasks.core.errors import UserError

EXIT = {"healthy": 0, "degraded": 1, "unhealthy": 2}


@dataclass
class Check:
    name: str
    ok: bool
    critical: bool
    detail: str


@dataclass
class Report:
    model: str
    url: str
    status: str = "healthy"
    checks: list[Check] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    latency_s: float | None = None
    completion_tokens: int | None = None
    tokens_per_s: float | None = None
    reply: str | None = None

    def add(self, name: str, ok: bool, detail: str, critical: bool = True) -> bool:
        self.checks.append(Check(name, ok, critical, detail))
        return ok

    def finish(self) -> Report:
        failed = [c for c in self.checks if not c.ok]
        self.reasons = [f"{c.name}: {c.detail}" for c in failed]
        self.status = ("unhealthy" if any(c.critical for c in failed) else "degraded" if failed else "healthy")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    def summary(self) -> str:
        lines = [f"health of {self.model} at {self.url}: {self.status.upper()}"]
        for c in self.checks:
            mark = "ok  " if c.ok else ("FAIL" if c.critical else "WARN")
            lines.append(f"  [{mark}] {c.name}: {c.detail}")
        if self.latency_s is not None:
            tps = f", {self.tokens_per_s:.1f} tokens/s" if self.tokens_per_s else ""
            lines.append(f"  latency {self.latency_s:.3f}s, {self.completion_tokens} tokens{tps}")
        return "\n".join(lines)


def check_files(config: Config, m: ModelSpec, report: Report, summary: dict[str, Any]) -> None:

    if not summary.get("gguf"):
        report.add("files", True, "no GGUF target (vLLM serves merged/)")
        return
    for name, label in ((summary["gguf"], "gguf"), (summary.get("lora"), "lora gguf")):
        if name:
            _check_file(config, m, report, config.layout.model_file(m.name, name), label)


def _check_file(config: Config, m: ModelSpec, report: Report, gguf: Path, label: str) -> None:
    """A served GGUF: present, a GGUF, recorded by a manifest of this project, unchanged since."""
    from tasks.core.hashing import sha256_file
    from tasks.core.manifest import output_record
    from tasks.formats.gguf import MAGIC

    if not report.add(f"{label} exists", gguf.is_file(), str(gguf)):
        return
    with open(gguf, "rb") as fh:
        magic = fh.read(4)
    report.add(f"{label} magic", magic == MAGIC, f"{magic!r}" + ("" if magic == MAGIC else f", expected {MAGIC!r}"))
    rec = output_record(config.layout, m.name, gguf)
    if not report.add("manifest", rec is not None, "recorded" if rec else f"no manifest records {gguf.name}"):
        return
    assert rec is not None
    size = gguf.stat().st_size
    same = size == rec["size"]
    report.add(f"{label} size", same, f"{size} bytes" + ("" if same else f", manifest says {rec['size']}"))
    digest = sha256_file(gguf)
    report.add(f"{label} sha256", digest == rec["sha256"],
               digest[:16] + ("" if digest == rec["sha256"] else f", manifest says {rec['sha256'][:16]}"))


def _http(url: str, timeout: float, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def check_server(m: ModelSpec, report: Report, summary: dict[str, Any], host: str, port: int, timeout: float) -> None:
    base = f"http://{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 5.0)):
            pass
    except OSError as exc:
        report.add("port", False, f"{host}:{port} not reachable ({exc.strerror or exc})")
        return
    report.add("port", True, f"{host}:{port} accepts connections")
    try:
        status, body = _http(base + "/v1/models", timeout)
    except (OSError, ValueError) as exc:
        report.add("/v1/models", False, f"no valid answer within {timeout:g}s ({_why(exc)})")
        return
    if not report.add("/v1/models", status == 200, f"HTTP {status}"):
        return
    ids = [d.get("id") for d in (body or {}).get("data", []) if isinstance(d, dict)]
    report.add("model listed", m.name in ids, f"{m.name!r} in {ids}" if m.name in ids else f"{m.name!r} not in {ids}",
               critical=False)
    messages = ([{"role": "system", "content": summary["system"]}] if summary.get("system") is not None else [])
    messages.append({"role": "user", "content": m.deploy.health.prompt})
    request = {"model": m.name, "messages": messages, "max_tokens": 64, "temperature": 0, "seed": 0}
    started = time.monotonic()
    try:
        status, body = _http(base + "/v1/chat/completions", timeout, request)
    except (OSError, ValueError) as exc:
        report.add("chat completion", False, f"no answer within {timeout:g}s ({_why(exc)})")
        return
    elapsed = time.monotonic() - started
    if not report.add("chat completion", status == 200 and isinstance(body, dict), f"HTTP {status} in {elapsed:.3f}s"):
        return
    try:
        choice = body["choices"][0]
        reply = choice["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        report.add("chat completion", False, "answer has no choices[0].message.content")
        return
    tokens = (body.get("usage") or {}).get("completion_tokens")
    report.latency_s, report.reply, report.completion_tokens = round(elapsed, 4), reply, tokens
    report.tokens_per_s = round(tokens / elapsed, 2) if tokens and elapsed > 0 else None
    report.add("reply", bool(reply.strip()), f"{reply!r}" if reply.strip() else "empty reply", critical=False)
    leaked = [s for s in summary.get("stops", []) if s in reply]
    report.add("end of turn", not leaked and choice.get("finish_reason") == "stop",
               f"finish_reason {choice.get('finish_reason')!r}" + (f", reply contains {leaked}" if leaked else ""),
               critical=False)
    expect = m.deploy.health.expect
    if expect is not None:
        report.add("expected reply", reply.strip() == expect.strip(), f"expected {expect!r}", critical=False)
    limit = m.deploy.health.max_latency
    if limit is not None:
        report.add("latency", elapsed <= limit, f"{elapsed:.3f}s (limit {limit:g}s)", critical=False)


def _why(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)) or "timed out" in str(exc):
        return "timed out"
    return str(getattr(exc, "reason", exc))


def check(config: Config, m: ModelSpec, timeout: float | None = None) -> Report:
    from tasks.deploy.serve import deploy_summary, endpoint, run_dir

    host, port = endpoint(m)
    summary = deploy_summary(config, m)
    report = Report(model=m.name, url=f"http://{host}:{port}/v1")
    check_files(config, m, report, summary)
    check_server(m, report, summary, host, port, timeout or m.deploy.health.timeout)
    report.finish()
    out = run_dir(config, m) / "health.json"
    try:
        from tasks.core import atomic

        atomic.write_text(out, report.to_json() + "\n")
    except OSError as exc:
        raise UserError(f"{out}: cannot write the health report: {exc}") from None
    return report
