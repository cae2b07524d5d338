"""llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) for a model's deploy quant.

`start` launches `python -m llama_cpp.server` on the model's port (127.0.0.1 unless models.toml
says otherwise) in its own session, records its pid in artifacts/run/<model>/server.pid and its
output in artifacts/logs/<model>/serve.log, and returns once /v1/models answers. A second start
finds the live server and says so; `stop` ends exactly the process it recorded (checked by its
command line, so a recycled pid is never killed). Argument lists only, never a shell.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tasks.core import atomic
from tasks.core.config.schema import Config, ModelSpec
from tasks.core.errors import UserError
from tasks.core.layout import REPO
from tasks.core.locks import exclusive

READY_TIMEOUT = 120.0


def run_dir(config: Config, m: ModelSpec) -> Path:
    """Runtime state (pid file, health report): not build output, never in a manifest."""
    return config.layout.run_dir(m.name)


def pid_path(config: Config, m: ModelSpec) -> Path:
    return run_dir(config, m) / "server.pid"


def deploy_summary(config: Config, m: ModelSpec) -> dict[str, Any]:
    path = config.layout.model_file(m.name, "deploy.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not rendered; run `doit render:{m.name}` first") from None


def endpoint(m: ModelSpec) -> tuple[str, int]:
    if m.deploy.port is None:
        raise UserError(f"models.{m.name}.deploy.port: not set (the server and the health check need a port)")
    return m.deploy.host, m.deploy.port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\x00")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def running(config: Config, m: ModelSpec) -> dict[str, Any] | None:
    """The recorded server if its process is alive and is that server; a stale pid file is removed."""
    path = pid_path(config, m)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    pid = int(state.get("pid", -1))
    cmd = _cmdline(pid)
    if _alive(pid) and "llama_cpp.server" in cmd and str(state.get("port")) in cmd and state.get("gguf") in cmd:
        return state
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return None


@contextlib.contextmanager
def _lock(config: Config, m: ModelSpec):
    with exclusive(run_dir(config, m) / ".serve.lock"):
        yield


def command(config: Config, m: ModelSpec, gguf: Path, host: str, port: int, context: int) -> list[str]:
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", m.name,
           "--host", host, "--port", str(port), "--n_ctx", str(context)]
    profile = config.hardware.get(m.deploy.hardware or "")
    if profile is not None and profile.cpus:
        cmd += ["--n_threads", str(profile.cpus)]
    return cmd


def start(config: Config, m: ModelSpec, ready_timeout: float = READY_TIMEOUT) -> str:
    host, port = endpoint(m)
    summary = deploy_summary(config, m)
    if not summary.get("gguf"):
        raise UserError(f"models.{m.name}.deploy.targets: no GGUF target, nothing for llama.cpp to serve")
    gguf = config.layout.model_file(m.name, summary["gguf"]).resolve()
    if not gguf.is_file():
        raise UserError(f"{gguf}: not built; run `doit render:{m.name}`")
    with _lock(config, m):
        state = running(config, m)
        if state is not None:
            return f"serve: {m.name} is already running (pid {state['pid']}) at http://{host}:{state['port']}"
        if port_open(host, port):
            raise UserError(f"models.{m.name}.deploy.port: {host}:{port} is already in use by another process")
        log = config.layout.log(m.name, "serve")
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = command(config, m, gguf, host, port, summary["context"])
        if summary.get("lora"):  # adapter mode: the base's GGUF with the fine-tune's LoRA applied at load
            cmd += ["--lora_path", str(config.layout.model_file(m.name, summary["lora"]))]
        with open(log, "ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=REPO, start_new_session=True)
        state = {"pid": proc.pid, "host": host, "port": port, "gguf": str(gguf), "log": str(log)}
        atomic.write_text(pid_path(config, m), json.dumps(state, indent=2) + "\n")
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _models_answer(host, port):
                return (f"serve: {m.name} ({summary['gguf']}) listening at http://{host}:{port}/v1 "
                        f"(pid {proc.pid}, log {log})")
            time.sleep(0.25)
        _terminate(proc.pid)
        with contextlib.suppress(FileNotFoundError):
            pid_path(config, m).unlink()
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
        why = "exited" if proc.poll() is not None else f"did not answer within {ready_timeout:g}s"
        raise UserError(f"serve: the llama.cpp server for {m.name} {why}; last log lines ({log}):\n  "
                        + "\n  ".join(tail))


def _models_answer(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/v1/models", timeout=1.0) as resp:
            return resp.status == 200
    except OSError:
        return False


def _terminate(pid: int, grace: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (started by an earlier command): poll its state
            done = 0 if _alive(pid) else pid
        if done:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def stop(config: Config, m: ModelSpec) -> str:
    with _lock(config, m):
        state = running(config, m)
        if state is None:
            return f"stop: {m.name} is not running"
        _terminate(int(state["pid"]))
        with contextlib.suppress(FileNotFoundError):
            pid_path(config, m).unlink()
        return f"stop: {m.name} stopped (pid {state['pid']})"
