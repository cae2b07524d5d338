"""Child processes of a stage die with it: llama.cpp's converter, the quantize child, rsync/ssh, probes.

A killed worker must not leave a converter writing into `artifacts/` behind its back (measured before
this module: 5 of 7 SIGKILLs during convert left the converter running, and the recovery run then had
two converters at once). Three layers:

- every child runs in its own process group, and the group is SIGKILLed whenever the call that started
  it ends for any reason (a normal return waits for it first; an exception, Ctrl-C or SIGTERM unwinds
  through a `finally`; `atexit` catches the rest);
- the child asks the kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG), which covers a
  SIGKILL of the worker, where no Python code runs;
- the child inherits the stage lock (tasks.core.locks), so a later build of the same stage waits for
  any orphan that still holds it instead of building beside it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tasks.core import locks

_PR_SET_PDEATHSIG = 1
_children: set[subprocess.Popen[Any]] = set()


def _load_prctl() -> Callable[..., int] | None:
    # Resolved here, not in the child: loading a library between fork and exec can deadlock.
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: process groups and the finally still apply


_PRCTL = _load_prctl()


def _die_with(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(137)
    return preexec


def spawn(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """subprocess.Popen in its own process group, killed with the worker; stop it with `kill`."""
    pass_fds = tuple(kwargs.pop("pass_fds", ())) + locks.held_fds()
    proc = subprocess.Popen(list(cmd), process_group=0, preexec_fn=_die_with(os.getpid()),
                            pass_fds=pass_fds, **kwargs)
    _children.add(proc)
    return proc


def kill(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the child's whole group (grandchildren too) and reap it; harmless once it has exited."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        proc.wait()
    _children.discard(proc)


@contextlib.contextmanager
def child(cmd: Sequence[str], **kwargs: Any) -> Iterator[subprocess.Popen[Any]]:
    """A child for the block; when the block ends (normally or not) its group is killed."""
    proc = spawn(cmd, **kwargs)
    try:
        yield proc
    finally:
        kill(proc)


def run(cmd: Sequence[str], *, timeout: float | None = None, input: Any = None, capture_output: bool = False,
        **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """subprocess.run with the guarantees above (TimeoutExpired and FileNotFoundError as subprocess raises)."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    with child(cmd, **kwargs) as proc:
        out, err = proc.communicate(input, timeout=timeout)
        rc = proc.wait()
    return subprocess.CompletedProcess(list(cmd), rc, out, err)


def signal_name(returncode: int) -> str | None:
    """"SIGKILL" for a child killed by signal 9 (returncode -9, or 128+9 from a shell), else None."""
    num = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 160 else 0
    try:
        return signal.Signals(num).name if num else None
    except ValueError:
        return None


@atexit.register
def _kill_all() -> None:
    for proc in list(_children):
        kill(proc)
