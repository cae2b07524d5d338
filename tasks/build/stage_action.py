"""The doit action that runs one stage's worker (`python -m tasks.build.runner <task>`).

doit's own CmdAction, on Ctrl-C or `kill -INT` of doit alone, printed a KeyboardInterrupt traceback
and then waited for the stage to finish (measured: 61 s during a check), because its output threads
are joined at exit; a worker killed by a signal was reported as a bare FAILED. This action:

- starts the worker through tasks.core.procs (its own process group, parent-death signal), so the
  worker never outlives doit, however doit ends;
- on Ctrl-C (to doit alone or to its group) passes SIGINT on, gives the worker a few seconds to
  remove its temporaries, then kills it, records the interruption for the summary and re-raises:
  doit stops, the summary reporter prints one line and the table (tasks/build/summary.py);
- reports a worker killed by a signal as "killed by SIGKILL" (what the summary line shows).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from typing import Any

from doit.action import CmdAction
from doit.exceptions import TaskError, TaskFailed

from tasks.core import procs

GRACE_S = 5.0  # a worker inside a long C call (llama.cpp) sees SIGINT only when the call returns
INTERRUPTED: list[str] = []  # the task a Ctrl-C stopped, for the summary (doit has no place for it)


class StageAction(CmdAction):
    """CmdAction for the stage worker, with the interruption and signal handling described above."""

    def execute(self, out: Any = None, err: Any = None) -> TaskError | TaskFailed | None:
        self.out = self.err = self.result = ""
        cmd = self.expand_action()
        proc = procs.spawn(cmd, **self.pkwargs)  # stdout/stderr inherited: the stage prints as it goes
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            INTERRUPTED.append(self.task.name if self.task else " ".join(cmd))
            with _ignoring_sigint():
                proc.send_signal(signal.SIGINT)  # already sent if Ctrl-C went to the whole group: harmless
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=GRACE_S)
                procs.kill(proc)
            raise
        finally:
            procs.kill(proc)
        if rc == 0:
            return None
        sig = procs.signal_name(rc) if rc < 0 else None
        if sig is not None:
            return TaskError(f"worker killed by {sig}: {' '.join(cmd)}")
        if rc > 125:
            return TaskError(f"Command error: '{' '.join(cmd)}' returned {rc}")
        return TaskFailed(f"Command failed: '{' '.join(cmd)}' returned {rc}")


class _ignoring_sigint:
    """A second Ctrl-C while the worker is being stopped must not leave it running."""

    def __enter__(self) -> None:
        self.previous = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self.previous)
