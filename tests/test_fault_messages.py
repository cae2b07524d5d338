"""Faults name their cause: a worker killed by a signal, a full disk at each stage, Ctrl-C to doit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PY, REPO, Workspace
from fs_support import resize, tmpfs, used
from test_interrupted_builds import alive, children_of, stage, start, wait_for_temp

from tasks.core import atomic
from tasks.core.hashing import sha256_file
from tasks.core.stage import stale_reason


def doit_popen(ws: Workspace, *args: str) -> subprocess.Popen:
    """doit in a session of its own, as a terminal's foreground job is: its group is doit's pid."""
    return subprocess.Popen([PY, "-m", "doit", "-f", str(REPO / "dodo.py"), *args], env=ws.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def worker_of(doit: subprocess.Popen, task: str, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in children_of(doit.pid):
            try:
                if task in Path(f"/proc/{pid}/cmdline").read_text():
                    return pid
            except FileNotFoundError:
                continue
        assert doit.poll() is None, doit.communicate()
        time.sleep(0.02)
    raise AssertionError(f"no worker for {task} started")


def debris(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if atomic.temp_owner(p) is not None]


def test_a_worker_killed_by_a_signal_is_reported_with_the_signal(scratch_ws: Workspace) -> None:
    """Before: `FAILED convert:alpha` with no word of why."""
    st = stage(scratch_ws, "convert:alpha")
    st.manifest.unlink()
    doit = doit_popen(scratch_ws, "convert:alpha")
    worker = worker_of(doit, "convert:alpha")
    wait_for_temp(st.outputs[0].parent, ".alpha-f16.gguf.tmp-*", doit)
    os.kill(worker, signal.SIGKILL)
    out, err = doit.communicate(timeout=60)
    assert doit.returncode != 0
    assert "modelmake: FAILED convert:alpha: killed by SIGKILL (log: " in out + err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("to", ["doit", "group"])
def test_ctrl_c_to_doit_alone_ends_promptly_with_one_line_and_the_summary(scratch_ws: Workspace, to: str) -> None:
    """Before: a KeyboardInterrupt traceback, then doit waited for the stage to finish (61 s in check).
    `doit`: `kill -INT <doit>`; `group`: Ctrl-C in a terminal (SIGINT to the foreground process group)."""
    st = stage(scratch_ws, "check:alpha")
    st.manifest.unlink()
    doit = doit_popen(scratch_ws, "check:alpha")
    worker = worker_of(doit, "check:alpha")
    time.sleep(3)  # inside the check's model loading / evaluation
    sent = time.monotonic()
    if to == "doit":
        doit.send_signal(signal.SIGINT)
    else:
        os.killpg(doit.pid, signal.SIGINT)
    out, err = doit.communicate(timeout=60)
    took = time.monotonic() - sent
    assert took < 15, f"doit took {took:.1f}s to stop"
    assert doit.returncode != 0
    assert "Traceback" not in out + err
    assert "modelmake: interrupted during check:alpha; nothing half-written was kept" in out + err
    assert "artifact" in out and "Interrupted:" in out, out  # the summary table and its last line
    deadline = time.monotonic() + 10
    while alive(worker):
        assert time.monotonic() < deadline, "the stage worker outlived doit"
        time.sleep(0.05)
    assert stale_reason(st) is not None
    run = scratch_ws.doit("check:alpha")
    assert "check:alpha" in run.executed and stale_reason(st) is None
    assert not debris(scratch_ws.artifacts)


@pytest.mark.parametrize("task", ["merge:alpha", "convert:alpha", "quantize:alpha-q8_0"])
def test_a_full_disk_at_each_stage_says_disk_full_and_leaves_nothing(scratch_ws: Workspace, task: str) -> None:
    st = stage(scratch_ws, task)
    (out,) = st.outputs
    before = {p.relative_to(out): sha256_file(p) for p in out.rglob("*") if p.is_file()} if out.is_dir() \
        else {Path(): sha256_file(out)}
    size = sum(p.stat().st_size for p in out.rglob("*")) if out.is_dir() else out.stat().st_size
    shutil.rmtree(out) if out.is_dir() else out.unlink()
    st.manifest.unlink()
    with tmpfs(scratch_ws.artifacts, 64 << 30) as artifacts:
        resize(artifacts, used(artifacts) + size // 2)  # room for half of the output
        proc = start(scratch_ws, task)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 1, err
        lines = [ln for ln in err.splitlines() if ln.startswith("modelmake: error:")]
        assert len(lines) == 1 and lines[0].startswith(f"modelmake: error: {task}: ") and "disk full: " in lines[0]
        assert str(artifacts) in lines[0] and "free" in lines[0]
        assert "Traceback" not in err
        assert not debris(artifacts), "nothing half-written is left on the full disk"
        assert stale_reason(st) is not None
        resize(artifacts, used(artifacts) + 2 * size + (64 << 20))
        run = scratch_ws.doit(task)
        assert task in run.executed and stale_reason(st) is None
        after = {p.relative_to(out): sha256_file(p) for p in out.rglob("*") if p.is_file()} if out.is_dir() \
            else {Path(): sha256_file(out)}
        assert after == before, "the rebuild on a disk with room gives the same bytes"
