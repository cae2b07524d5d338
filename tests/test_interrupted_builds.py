"""A stage killed at any point leaves nothing that a later run takes as built."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PY, REPO, Workspace

from tasks.build.registry import all_stages
from tasks.core.config.load import load_config
from tasks.core.stage import stale_reason


def stage(ws: Workspace, task: str):
    return {s.task: s for s in all_stages(load_config(ws.config))}[task]


def start(ws: Workspace, task: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PY, "-m", "tasks.build.runner", "--config", str(ws.config), task], cwd=REPO, env=ws.env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def wait_for_temp(directory: Path, pattern: str, proc: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in directory.glob(pattern) if p.is_dir() or p.stat().st_size > 0]
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"stage ended before writing a temporary: {proc.stderr.read()}")
        time.sleep(0.005)
    raise AssertionError("no temporary output appeared")


@pytest.mark.parametrize(
    ("task", "pattern"),
    [
        ("merge:alpha", ".merged.tmp-*"),
        ("convert:alpha", ".alpha-f16.gguf.tmp-*"),
        ("quantize:alpha-q4_k_m", ".alpha-q4_k_m.gguf.tmp-*"),
    ],
)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_stage_is_not_taken_as_built(scratch_ws: Workspace, task: str, pattern: str, sig: int) -> None:
    st = stage(scratch_ws, task)
    st.manifest.unlink()  # force this stage to rebuild
    proc = start(scratch_ws, task)
    temp = wait_for_temp(st.outputs[0].parent, pattern, proc)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not st.manifest.exists()
    assert stale_reason(st) is not None
    if sig == signal.SIGINT:
        assert not temp.exists(), "an interrupted stage removes its own temporary"
    run = scratch_ws.doit()
    assert task in run.executed
    assert stale_reason(st) is None
    assert not list(st.outputs[0].parent.glob(".*.tmp-*")), "leftover temporaries are cleaned up"


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.parametrize(("task", "pattern"), [("convert:alpha", ".alpha-f16.gguf.tmp-*"),
                                               ("quantize:alpha-q4_k_m", ".alpha-q4_k_m.gguf.tmp-*")])
def test_sigkill_of_the_worker_takes_llamacpp_with_it(scratch_ws: Workspace, task: str, pattern: str) -> None:
    """Before: the converter kept writing after its worker was killed and raced the recovery run."""
    st = stage(scratch_ws, task)
    st.manifest.unlink()
    proc = start(scratch_ws, task)
    wait_for_temp(st.outputs[0].parent, pattern, proc)
    kids = children_of(proc.pid)
    assert kids, "the stage runs llama.cpp in a child process"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 10
    while any(alive(k) for k in kids):
        assert time.monotonic() < deadline, "llama.cpp outlived its killed worker"
        time.sleep(0.05)
    run = scratch_ws.doit()
    assert task in run.executed
    assert stale_reason(st) is None
    assert not list(st.outputs[0].parent.glob(".*.tmp-*")), "no temporary remains after the recovery"


def test_truncated_output_under_final_name_is_rebuilt(scratch_ws: Workspace) -> None:
    """Even if something outside modelmake truncates an artifact, the manifest's digest catches it."""
    st = stage(scratch_ws, "quantize:beta-q8_0")
    out = st.outputs[0]
    with open(out, "r+b") as f:
        f.truncate(out.stat().st_size // 3)
    assert stale_reason(st) == "output changed on disk: beta/beta-q8_0.gguf"
    assert "quantize:beta-q8_0" in scratch_ws.doit().executed
