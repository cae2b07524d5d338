"""Crash points: a stage SIGKILLed at each write, fsync and rename it makes, for every stage kind of the demo,
and the build recovers every time: it succeeds, every sidecar verifies, every artifact is byte-identical to a
clean build, no temporary of ours is left anywhere under the workspace, models.lock equals the clean one.

The points are enumerated first (MODELMAKE_CRASH_TRACE, tasks/core/atomic.crash_point), then the stage is
killed at one point per run (MODELMAKE_CRASH_AT). `make test` kills each kind at its middle point;
`make crashtest` (marker `crashtest`) at every point, fixtures included, and writes the figures to
artifacts/crashtest.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PY, REPO, Workspace

from tasks.core import atomic

# Every stage kind the demo builds, by one stage of the two-model workspace; "lock" is doit's own write.
KINDS = {"adapter": "adapter:alpha", "merge": "merge:alpha", "convert": "convert:alpha",
         "quantize": "quantize:alpha-q8_0", "render": "render:alpha", "check": "check:alpha", "lock": "lock"}
FIXTURE_KINDS = {"tiny-base": "fixture:demo-base", "lora-train": "fixture:demo-adapter"}
SKIP_DIRS = {"logs", ".cache", "run"}  # logs and derived caches are not artifacts


def snapshot(ws: Workspace) -> dict[str, str]:
    """Digest of every artifact file (manifests and sidecars included) and of models.lock."""
    out = {}
    for p in sorted(ws.artifacts.rglob("*")):
        rel = p.relative_to(ws.artifacts)
        is_lock = p.name.startswith(".") and p.name.endswith(".lock")  # stage locks hold the last builder's pid
        if p.is_file() and not is_lock and rel.parts[0] not in SKIP_DIRS and ".test-cache" not in rel.parts:
            out[rel.as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    out["models.lock"] = hashlib.sha256((ws.root / "models.lock").read_bytes()).hexdigest()
    return out


def debris(ws: Workspace) -> list[str]:
    return [str(p.relative_to(ws.root)) for p in ws.root.rglob(".*") if atomic.temp_owner(p) is not None]


def bad_sidecars(ws: Workspace) -> list[str]:
    bad = []
    for sidecar in ws.artifacts.rglob("*.sha256"):
        for line in sidecar.read_text().splitlines():
            digest, rel = line.split("  ", 1)
            f = sidecar.parent / rel
            if not f.is_file() or hashlib.sha256(f.read_bytes()).hexdigest() != digest:
                bad.append(f"{sidecar.name}: {rel}")
    return bad


def make_stale(ws: Workspace, task: str) -> None:
    if task == "lock":
        (ws.root / "models.lock").unlink()
        return
    from tasks.build.registry import all_stages
    from tasks.core.config.load import load_config

    stage = {s.task: s for s in all_stages(load_config(ws.config))}[task]
    stage.manifest.unlink(missing_ok=True)


def run_stage(ws: Workspace, task: str, **env: str) -> subprocess.CompletedProcess:
    cmd = [PY, "-m", "doit", "-f", str(REPO / "dodo.py"), "lock"] if task == "lock" else \
        [PY, "-m", "tasks.build.runner", "--config", str(ws.config), task]
    return subprocess.run(cmd, cwd=REPO, env=ws.env(**env), capture_output=True, text=True, timeout=900)


def points_of(ws: Workspace, task: str, tmp: Path) -> list[str]:
    trace = tmp / f"{task.replace(':', '_')}.trace"
    make_stale(ws, task)
    proc = run_stage(ws, task, MODELMAKE_CRASH_TRACE=str(trace))
    assert proc.returncode == 0, proc.stderr
    return trace.read_text().splitlines()


def crash_and_recover(ws: Workspace, task: str, n: int, clean: dict[str, str]) -> dict[str, object]:
    make_stale(ws, task)
    killed = run_stage(ws, task, MODELMAKE_CRASH_AT=str(n))
    recovery = ws.doit(check=False)
    result = {"task": task, "point": n, "killed": killed.returncode == -9, "recovered": recovery.returncode == 0,
              "debris": debris(ws), "bad_sidecars": bad_sidecars(ws)}
    now = snapshot(ws)
    result["differs"] = sorted(k for k in clean.keys() | now.keys() if clean.get(k) != now.get(k))
    return result


def check_all(ws: Workspace, kinds: dict[str, str], tmp: Path, every_point: bool) -> list[dict[str, object]]:
    ws.doit()
    clean = snapshot(ws)
    assert not debris(ws) and not bad_sidecars(ws)
    results = []
    for kind, task in kinds.items():
        points = points_of(ws, task, tmp)
        assert points, f"{task} makes no write through tasks.core.atomic"
        assert snapshot(ws) == clean, f"{task} rebuilt differently without a kill"
        chosen = range(1, len(points) + 1) if every_point else [(len(points) + 1) // 2]
        for n in chosen:
            r = crash_and_recover(ws, task, n, clean)
            r.update(kind=kind, points=len(points), at=points[n - 1])
            results.append(r)
    return results


def assert_clean(results: list[dict[str, object]]) -> None:
    failures = [r for r in results if not (r["killed"] and r["recovered"]) or r["debris"] or r["bad_sidecars"]
                or r["differs"]]
    assert not failures, json.dumps(failures, indent=1)


def test_a_kill_at_a_crash_point_of_each_stage_kind_is_recovered(scratch_ws: Workspace, tmp_path: Path) -> None:
    results = check_all(scratch_ws, KINDS, tmp_path, every_point=False)
    assert {r["kind"] for r in results} == set(KINDS)
    assert_clean(results)


def summarise(results: list[dict[str, object]], kinds: dict[str, str]) -> dict[str, object]:
    return {
        "points": len(results),
        "kills": sum(1 for r in results if r["killed"]),
        "recoveries": sum(1 for r in results if r["recovered"] and not r["differs"] and not r["bad_sidecars"]),
        "debris": sum(len(r["debris"]) for r in results),
        "by_kind": {k: sum(1 for r in results if r["kind"] == k) for k in kinds},
        "results": results,
    }


@pytest.mark.crashtest
def test_a_kill_at_every_crash_point_of_every_stage_kind_is_recovered(scratch_ws: Workspace, tmp_path: Path) -> None:
    """MODELMAKE_CRASHTEST_KINDS=adapter,convert,... limits the kinds (the fixtures retrain at every point)."""
    kinds = {**KINDS, **FIXTURE_KINDS}
    wanted = os.environ.get("MODELMAKE_CRASHTEST_KINDS")
    if wanted:
        kinds = {k: v for k, v in kinds.items() if k in wanted.split(",")}
    out = REPO / "artifacts" / "crashtest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, object]] = []
    for kind, task in kinds.items():  # figures written after each kind, so a long run can be read as it goes
        results += check_all(scratch_ws, {kind: task}, tmp_path, every_point=True)
        out.write_text(json.dumps(summarise(results, kinds), indent=1) + "\n")
    summary = summarise(results, kinds)
    print(f"\ncrash points: {summary['points']} enumerated, {summary['kills']} kills, "
          f"{summary['recoveries']} clean recoveries, {summary['debris']} debris ({out})", file=sys.stderr)
    assert set(summary["by_kind"]) == set(kinds) and all(summary["by_kind"].values())
    assert_clean(results)
