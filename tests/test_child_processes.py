"""A stage's children die with it: on SIGKILL of the worker, on an exception, on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import REPO

from tasks.core import procs

ENV = {**os.environ, "PYTHONPATH": str(REPO)}  # the scripts below import tasks.core


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie is dead, only not yet reaped
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


def worker(tmp_path: Path, body: str) -> tuple[subprocess.Popen, list[int]]:
    """A worker process that holds a stage lock and starts children through tasks.core.procs;
    it writes the children's pids (child, grandchild) to pids.txt and then runs `body`."""
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from tasks.core import locks, procs
        with locks.exclusive(Path({str(tmp_path / "stage.lock")!r})):
            p = procs.spawn(["sh", "-c", "sleep 300 & echo $!; exec sleep 300"], stdout=-1, text=True)
            grandchild = p.stdout.readline().strip()
            Path({str(tmp_path / "pids.txt")!r}).write_text(f"{{p.pid}} {{grandchild}}")
        """) + textwrap.indent(textwrap.dedent(body), "    "))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=ENV, stderr=subprocess.PIPE, text=True)
    pids = tmp_path / "pids.txt"
    deadline = time.monotonic() + 30
    while not pids.is_file() or len(pids.read_text().split()) < 2:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return proc, [int(x) for x in pids.read_text().split()]


def test_sigkill_of_the_worker_kills_its_child(tmp_path: Path) -> None:
    proc, (child, grandchild) = worker(tmp_path, "time.sleep(300)\n")
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert wait_gone(child), "the parent-death signal kills the direct child"
    finally:  # a grandchild outliving a SIGKILL of the worker is the documented limit
        for pid in (child, grandchild):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_an_exception_kills_the_childs_whole_group(tmp_path: Path) -> None:
    proc, (child, grandchild) = worker(tmp_path, "raise SystemExit(3)\n")
    assert proc.wait(timeout=10) == 3
    assert wait_gone(child) and wait_gone(grandchild), "atexit kills the group, grandchildren included"


def test_ctrl_c_in_a_child_call_kills_the_group(tmp_path: Path) -> None:
    script = tmp_path / "w.py"
    script.write_text(textwrap.dedent(f"""
        from pathlib import Path
        from tasks.core import procs
        try:
            procs.run(["sh", "-c", "sleep 300 & echo $! > {tmp_path}/gc; exec sleep 300"])
        except KeyboardInterrupt:
            print("interrupted")
        """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    gc = tmp_path / "gc"
    deadline = time.monotonic() + 30
    while not gc.is_file() or not gc.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    assert out.strip() == "interrupted"
    assert wait_gone(int(gc.read_text()))


def test_a_child_holds_the_stage_lock_while_it_lives(tmp_path: Path) -> None:
    """An orphan that outlives its worker keeps the stage locked: a later build waits for it."""
    import fcntl

    lock = tmp_path / "stage.lock"
    script = tmp_path / "w.py"
    # The child clears its parent-death signal: it stands for any child that outlives the worker.
    survivor = "import ctypes, time; ctypes.CDLL(None).prctl(1, 0, 0, 0, 0); print(1, flush=True); time.sleep(300)"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from tasks.core import locks, procs
        with locks.exclusive(Path({str(lock)!r})):
            p = procs.spawn([sys.executable, "-c", {survivor!r}], stdout=-1, text=True)
            p.stdout.readline()
            print(p.pid, flush=True)
            os._exit(0)  # gone without any clean-up, as after a SIGKILL
        """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    proc.wait(timeout=10)
    try:
        assert alive(child)
        with open(lock, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                raise AssertionError("the stage lock was free while the orphan still ran")
            except BlockingIOError:
                pass
            os.kill(child, signal.SIGKILL)
            assert wait_gone(child)
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the orphan is gone
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_signal_names_of_exit_statuses() -> None:
    assert procs.signal_name(-9) == "SIGKILL"
    assert procs.signal_name(137) == "SIGKILL"
    assert procs.signal_name(-2) == "SIGINT"
    assert procs.signal_name(1) is None and procs.signal_name(0) is None
