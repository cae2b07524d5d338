"""bench_pipeline's limits, goals, table and JSON: what each measured stage is compared with, and why.

Limits (seconds a stage cannot beat on this machine):
- merge:   base + adapter read once, merged written once, at the disk's sequential throughput;
- convert: merged read once, the F16 GGUF written once;
- quantize: llama.cpp's own quantize loop on the same F16 file (compute-bound; its bytes are shown too);
- check:   every weight file it needs (base, adapter, merged, every GGUF) read once;
- adapter, render, plan+lock: the few bytes they read (about 0: their cost is start-up).
"""

from __future__ import annotations

import math
import os
from typing import Any

from bench_merge import GB, Shape
from pipeline_disk import Disk
from pipeline_run import Measured


def disk_needed(shape: Shape) -> int:
    """Base + merged + F16 (each about the base's size), the quantizations, a scratch file, headroom."""
    base = 2 * sum(math.prod(s) for _, s in shape.tensors())
    return int(3.9 * base + 4 * GB)


def _limits(results: dict[str, Measured], loops: dict[str, Measured], sizes: dict[str, int],
            disk: Disk) -> dict[str, dict[str, Any]]:
    ggufs = [g for g in sizes if g not in ("base", "adapter", "merged")]
    out: dict[str, dict[str, Any]] = {}
    for task in results:
        kind = task.split(":", 1)[0]
        if kind == "merge":
            moved = (sizes["base"] + sizes["adapter"], sizes["merged"])
        elif kind == "convert":
            moved = (sizes["merged"], sizes.get("f16", 0))
        elif kind == "quantize":
            q = task.rsplit("-", 1)[1]
            loop = loops.get(q)
            out[task] = {"limit_s": loop.wall_s if loop else None, "limit": "llama.cpp's own quantize loop",
                         "bytes_limit_s": disk.seconds(sizes.get("f16", 0), sizes.get(q, 0))}
            continue
        elif kind == "check":
            moved = (sizes["base"] + sizes["adapter"] + sizes["merged"] + sum(sizes[g] for g in ggufs), 0)
        elif kind == "adapter":
            moved = (sizes["adapter"], 0)
        else:
            moved = (0, 0)
        out[task] = {"limit_s": disk.seconds(*moved), "limit": "bytes at the disk's sequential throughput",
                     "needed_read": moved[0], "needed_written": moved[1]}
    return out


def _goals(results: dict[str, Measured], limits: dict[str, dict[str, Any]], reference: dict | None,
           sizes: dict[str, int], shape: Shape) -> dict[str, tuple[bool | None, str]]:
    def ratio(task: str) -> float | None:
        lim = limits.get(task, {}).get("limit_s")
        return results[task].wall_s / lim if task in results and lim else None

    goals: dict[str, tuple[bool | None, str]] = {}
    goals["every stage passes"] = (bool(results) and all(r.passed for r in results.values())
                                   and "check:big" in results, f"{sum(r.passed for r in results.values())}"
                                   f"/{len(results)}")
    for task, bound in (("merge:big", 1.5), ("convert:big", 1.5), ("check:big", 2.0),
                        *((t, 1.2) for t in results if t.startswith("quantize:"))):
        r = ratio(task)
        goals[f"{task} within {bound}x of its limit"] = (None if r is None else r <= bound,
                                                          "-" if r is None else f"{r:.2f}x")
    total = sum(r.wall_s for r in results.values())
    limit_sum = sum(v["limit_s"] or 0 for v in limits.values())
    goals["whole build within 1.5x of the sum of the stages' limits"] = (
        total <= 1.5 * limit_sum if limit_sum else None, f"{total:.0f} s / {limit_sum:.0f} s = "
        f"{total / limit_sum:.2f}x" if limit_sum else "-")
    check = results.get("check:big")
    if check:
        inputs = limits["check:big"]["needed_read"]
        goals["check anonymous peak under 2 GB"] = (check.anon_peak < 2 * GB, f"{check.anon_peak / GB:.2f} GB")
        goals["check reads at most 2x its inputs"] = (check.read_bytes <= 2 * inputs,
                                                      f"{check.read_bytes / GB:.1f} GB of {inputs / GB:.1f} GB = "
                                                      f"{check.read_bytes / inputs:.2f}x")
        goals["check at most a quarter of the build's wall time"] = (check.wall_s <= total / 4,
                                                                     f"{check.wall_s:.0f} of {total:.0f} s = "
                                                                     f"{100 * check.wall_s / total:.0f}%")
    if reference is not None:
        goals["check.json figures identical to the probe-by-probe check"] = (
            bool(reference["identical"]), "identical" if reference["identical"]
            else "; ".join(reference["differences"][:3]))
    return goals


def report(shape: Shape, args: Any, memcap: str | None, disk: Disk, measured: list[Measured],
           loops: dict[str, Measured], reference: dict | None, sizes: dict[str, int], check_json: dict | None,
           name: str, reused: set[str] = frozenset()) -> dict[str, Any]:
    """Print the table and the goals; return the JSON document."""
    results = {m.name: m for m in measured}
    limits = _limits({k: v for k, v in results.items() if not k.startswith("plan")}, loops, sizes, disk)
    limits.update({k: {"limit_s": 0.0, "limit": "start-up only"} for k in results if k.startswith("plan")})
    goals = _goals(results, limits, reference, sizes, shape)
    cap = f"memcap {args.cap:g} GiB, page cache dropped before each stage" if memcap else "UNCAPPED (no memcap)"
    print(f"\n{shape.label}: base {sizes['base'] / GB:.1f} GB bf16, {cap}; disk read {disk.read_bps / GB:.2f} GB/s, "
          f"write {disk.write_bps / GB:.2f} GB/s (measured now)")
    head = (f"{'stage':<26} {'result':<6} {'wall s':>7} {'limit s':>8} {'ratio':>6} {'peak RSS':>9} {'anon':>6} "
            f"{'cgroup':>7} {'read GB':>8} {'write GB':>8} {'CPU s':>7} {'load':>5}")
    print(head)
    rows = [*measured, *loops.values()]
    for m in rows:
        lim = limits.get(m.name, {}).get("limit_s")
        ratio = f"{m.wall_s / lim:.2f}" if lim else "-"
        cg = f"{m.cgroup_peak / GB:.2f}" if m.cgroup_peak is not None else "-"
        result = "ok" if m.passed else ("OOM" if m.oom else f"rc {m.rc}")
        mark = "*" if m.name in reused else ""
        print(f"{m.name + mark:<26} {result:<6} {m.wall_s:7.1f} {lim if lim is not None else 0:8.1f} {ratio:>6} "
              f"{m.peak_rss / GB:9.2f} {m.anon_peak / GB:6.2f} {cg:>7} {m.read_bytes / GB:8.2f} "
              f"{m.written_bytes / GB:8.2f} {m.cpu_s:7.1f} {m.load_end:5.1f}")
    total = sum(m.wall_s for m in measured)
    print(f"{'build total':<26} {'':<6} {total:7.1f} {sum(v['limit_s'] or 0 for v in limits.values()):8.1f}")
    print("(GB = 10^9 bytes; peak RSS: largest process of the stage's tree; anon: sampled anonymous memory of the "
          "whole tree; cgroup: memcap's peak, page cache included; CPU s: user+system of the tree; load: 1-minute "
          "load average at the stage's end)")
    if reused:
        print("* not rerun: measured by the previous run (--only)")
    for goal, (met, value) in goals.items():
        mark = "n/a" if met is None else ("met" if met else "MISSED")
        print(f"  [{mark}] {goal}: {value}")
    if reference is not None:
        print(f"  (probe-by-probe check, uncapped, for the comparison: {reference.get('seconds')} s)")
    load = os.getloadavg()[0]
    return {"shape": shape.label, "name": name, "cap_gib": args.cap if memcap else None, "memcap": bool(memcap),
            "disk": {"read_bps": disk.read_bps, "write_bps": disk.write_bps, "caches_dropped": disk.caches_dropped},
            "sizes": sizes, "stages": [_json(m, limits.get(m.name)) for m in measured],
            "quantize_loops": {q: _json(m, None) for q, m in loops.items()},
            "goals": {g: {"met": met, "value": v} for g, (met, v) in goals.items()},
            "reference": reference, "check_probes": (check_json or {}).get("probes", {}).get("positions"),
            "cpus": os.cpu_count(), "loadavg_end": load, "reused_from_previous_run": sorted(reused)}


def _json(m: Measured, limit: dict | None) -> dict[str, Any]:
    d = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in vars(m).items()}
    d["passed"] = m.passed
    if limit:
        d.update({k: (round(v, 2) if isinstance(v, float) else v) for k, v in limit.items()})
    return d
