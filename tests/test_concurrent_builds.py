"""Two builds at once in one tree: a per-stage lock serialises them and both finish correctly."""

from __future__ import annotations

import subprocess

from conftest import PY, REPO, Workspace

from tasks.build.registry import all_stages
from tasks.core.config.load import load_config
from tasks.core.stage import stale_reason


def test_two_builds_at_once_do_not_corrupt_anything(scratch_ws: Workspace) -> None:
    stages = {s.task: s for s in all_stages(load_config(scratch_ws.config))}
    built = {t: s for t, s in stages.items() if stale_reason(s) is None}  # what the default build made
    assert {"merge:alpha", "convert:alpha", "check:alpha"} <= built.keys()
    for task in ("merge:alpha", "convert:alpha", "quantize:alpha-q8_0", "quantize:alpha-q4_k_m"):
        stages[task].manifest.unlink()
    cmd = [PY, "-m", "doit", "-f", str(REPO / "dodo.py")]
    procs = [subprocess.Popen(cmd, env=scratch_ws.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    stderr = results[0][1] + results[1][1]
    # Each stage was built once; the second build either waited on the lock or found it fresh.
    assert stderr.count("merge:alpha: built") == 1
    assert [t for t, s in built.items() if stale_reason(s) is not None] == []
    assert scratch_ws.doit().executed == []
    check = subprocess.run(["sha256sum", "-c", "alpha-q8_0.gguf.sha256", "merged.sha256"],
                           cwd=scratch_ws.artifacts / "alpha", capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
