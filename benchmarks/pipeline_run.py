"""Run one command as a measured stage: under a memory cap, caches dropped, its whole process tree counted.

Why each figure comes from where it does:
- bytes read / written: wait4()'s ru_inblock / ru_oublock (512-byte units) of the launched child.
  They are the kernel's read_bytes / write_bytes counters of /proc/<pid>/io, summed by the kernel
  over every process of the tree as it is reaped, so short-lived children (the converter, the
  quantizer) are counted too. Reads served from the page cache are not disk reads: with caches
  dropped before each stage, every byte a stage needs comes from the disk once at least.
- peak RSS: ru_maxrss, the largest high-water mark of any process of the tree (file pages included).
- anonymous peak: sampled every SAMPLE_S from the memory cgroup that memcap creates for the
  command (its anonymous total, all processes), or from /proc when there is no cgroup.
- pass / OOM: the exit status, and memcap's own last line (oom_kills, peak with page cache).
- CPU seconds: wait4()'s user + system time of the tree, and the 1-minute load average when the
  stage ended: on a shared machine the wall time of a compute-bound stage stretches with the load
  while its CPU seconds do not, so the two together say whether a slow row was the stage or the machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SAMPLE_S = 0.05
CGROUP_V1 = Path("/sys/fs/cgroup/memory")
MEMCAP_LINE = re.compile(r"memcap: limit (\S+) GiB, peak (\S+) GiB .*oom_kills (\S+), rc (-?\d+)")


@dataclass
class Measured:
    name: str
    rc: int
    oom: bool
    wall_s: float
    peak_rss: int  # bytes
    anon_peak: int  # bytes
    cgroup_peak: int | None  # bytes, page cache included (memcap's figure)
    read_bytes: int
    written_bytes: int
    stderr_tail: str
    cpu_s: float = 0.0  # user + system seconds of the whole tree
    load_end: float = 0.0  # 1-minute load average when it ended (the machine may be shared)

    @property
    def passed(self) -> bool:
        return self.rc == 0 and not self.oom


def drop_page_cache() -> bool:
    """Empty the page cache (root only), so that what a measurement reads comes from the disk."""
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def _cgroup_anon(pid: int) -> int | None:
    for group in CGROUP_V1.glob(f"memcap.{pid}.*"):
        try:
            stat = dict(line.split() for line in (group / "memory.stat").read_text().splitlines())
        except (OSError, ValueError):
            return None
        return int(stat.get("total_rss", stat.get("rss", 0)))
    return None


def _tree_anon(root: int) -> int:
    """RssAnon summed over `root` and its descendants (fallback without a memory cgroup)."""
    children: dict[int, list[int]] = {}
    anon: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields.get("PPid", "0").strip()), []).append(pid)
        anon[pid] = int(fields.get("RssAnon", "0 kB").split()[0]) * 1024
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += anon.get(pid, 0)
        todo += children.get(pid, [])
    return total


def run(name: str, cmd: list[str], *, cwd: Path, env: dict[str, str], memcap: str | None, cap_gib: float,
        drop_caches: bool = True) -> Measured:
    """Run `cmd` (under `memcap cap_gib` when given) and measure it; never raises on a failing command."""
    subprocess.run(["sync"], check=False)  # the previous stage's dirty pages are not this stage's writes
    if drop_caches and not memcap:
        drop_page_cache()
    full = [memcap, f"{cap_gib:g}", *cmd] if memcap else cmd
    env = {**env, "MEMCAP_DROP_CACHES": "1" if drop_caches else "0"}
    start = time.perf_counter()
    proc = subprocess.Popen(full, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]
    done = threading.Event()
    stderr_chunks: list[bytes] = []

    def sample() -> None:
        while not done.is_set():
            value = _cgroup_anon(proc.pid) if memcap else None
            peak[0] = max(peak[0], value if value is not None else _tree_anon(proc.pid))
            time.sleep(SAMPLE_S)

    def drain() -> None:
        assert proc.stderr is not None
        stderr_chunks.append(proc.stderr.read())

    threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=drain, daemon=True)]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    for t in threads:
        t.join()
    stderr = b"".join(stderr_chunks).decode(errors="replace")
    rc = os.waitstatus_to_exitcode(status)
    oom, cgroup_peak = rc in (137, -9), None
    for line in stderr.splitlines()[::-1]:
        m = MEMCAP_LINE.search(line)
        if m:
            cgroup_peak = int(float(m.group(2)) * 1024**3)
            oom = oom or (m.group(3).isdigit() and int(m.group(3)) > 0)
            break
    tail = "\n".join(ln for ln in stderr.splitlines() if not ln.startswith("memcap:"))[-600:]
    return Measured(name, rc, oom, wall, usage.ru_maxrss * 1024, peak[0], cgroup_peak,
                    usage.ru_inblock * 512, usage.ru_oublock * 512, tail, usage.ru_utime + usage.ru_stime,
                    os.getloadavg()[0])
