"""The report stages: pick a quantization by evidence.

report:<m> joins the check stage's quality figures (deterministic) with runtime figures it
measures itself (load time, prompt and generation tokens/s, latency, peak RSS: one
`tasks.checks.runtime_probe` process per GGUF), and writes <m>.json, <m>.md and <m>.png (file size
against KL divergence and against tokens/s: the quantization ladder). report:_compare puts every
model side by side on the shared prompt set. Timings vary from run to run, so these files are
not part of the build's reproducible outputs (the check's figures are).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tasks.core import atomic, procs
from tasks.core.config.schema import Config
from tasks.core.errors import UserError
from tasks.core.layout import REPO
from tasks.core.quant_types import PLAIN_SUFFIX
from tasks.core.stage import Stage

THREADS = 2
MIB = 2**20


def runtime(gguf: Path, ids: list[dict[str, list[int]]], log: Path) -> dict[str, Any]:
    """Runtime figures of one GGUF, measured in a fresh process (see tasks/checks/runtime_probe.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "samples.json"
        samples.write_text(json.dumps(ids), encoding="utf-8")
        cmd = [sys.executable, "-m", "tasks.checks.runtime_probe", str(gguf), "--samples", str(samples),
               "--threads", str(THREADS)]
        with open(log, "ab") as log_fh:
            proc = procs.run(cmd, stdout=subprocess.PIPE, stderr=log_fh, cwd=REPO)
    if proc.returncode != 0:
        raise UserError(f"{gguf}: runtime measurement failed (exit {proc.returncode}; log: {log})")
    return json.loads(proc.stdout)


def rows(check: dict[str, Any], measured: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per GGUF type, unquantized first: size, quality, adapter survival, runtime."""
    out = []
    for gtype, rt in measured.items():
        facts = check["validity"][gtype]
        q = check["quality"].get(gtype, {})
        out.append({
            "type": gtype,
            "file": facts["file"],
            "size_bytes": facts["size"],
            "bits_per_weight": facts.get("bits_per_weight"),
            "kl_mean": q.get("kl_mean"),
            "kl_p99": q.get("kl_p99"),
            "top1_agreement": q.get("top1_agreement"),
            "ppl": q.get("ppl"),
            "answer_ppl": q.get("answer_ppl"),
            "answer_exact": q.get("answer_exact"),
            "adapter_retention": check["adapter"].get(gtype, {}).get("retention"),
            "imatrix": gtype in check.get("imatrix", {}),
            **{f"rt_{k}": v for k, v in rt.items()},
        })
    return out


def _fmt(v: Any, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def markdown(model: str, check: dict[str, Any], table: list[dict[str, Any]]) -> str:
    ref = check["reference"]
    tok, logits = check["tokenizer"], check["logits"]
    lines = [
        f"# {model}: quantization report",
        "",
        f"Reference: the {ref.upper()} GGUF. Quality is measured on {check['probes']['samples']} samples of the "
        f"shared prompt set ({check['probes']['positions']} positions, "
        f"{check['probes']['answer_positions']} of them reference-answer tokens); runtime with llama.cpp, "
        f"{THREADS} threads, greedy decoding.",
        "",
        f"- Tokenizer parity (HF vs llama.cpp): {tok['parity']:.2%} of {tok['cases']} texts "
        f"({tok['vectors']} of them llama.cpp's test vectors)",
        f"- Merged HF (fp32) vs {ref.upper()} GGUF: top-1 agreement {logits['top1_agreement']:.2%}, "
        f"max |logit difference| {logits['max_abs_diff']:.4g} (logits up to {logits['logit_absmax']:.4g})",
        f"- Adapter survival (1 = the adapter's full effect, 0 = lost): merged "
        f"{check['adapter']['merged']['retention']:.4f}",
        f"- Check: {'passed' if check['passed'] else 'FAILED'}",
        "",
        "| type | size MiB | bpw | KL mean | KL p99 | top-1 | ppl | answer ppl | answers exact | adapter kept "
        "| load s | prompt tok/s | gen tok/s | TTFT ms | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r['type']} | {r['size_bytes'] / MIB:.1f} | {_fmt(r['bits_per_weight'], '.2f')} | "
            f"{_fmt(r['kl_mean'])} | {_fmt(r['kl_p99'])} | {_fmt(r['top1_agreement'], '.2%')} | {_fmt(r['ppl'])} | "
            f"{_fmt(r['answer_ppl'])} | {_fmt(r['answer_exact'], '.0%')} | {_fmt(r['adapter_retention'], '.3f')} | "
            f"{r['rt_load_s']:.2f} | {r['rt_prompt_tok_s']:.0f} | {r['rt_gen_tok_s']:.1f} | "
            f"{1000 * r['rt_ttft_s_mean']:.0f} | {r['rt_peak_rss_mib']:.0f} |"
        )
    lines += imatrix_lines(check)
    lines += ["", f"![size vs KL and tokens/s]({model}.png)", ""]
    return "\n".join(lines)


def imatrix_lines(check: dict[str, Any]) -> list[str]:
    """What the importance matrix bought: each matrix quant beside the same type built without one."""
    comparison = check.get("imatrix")
    if not comparison:
        return []
    lines = ["", "## Importance matrix", "",
             "Quants built with the importance matrix (calibration data, never the evaluation set) beside the "
             "same type without it (`<type>-noimatrix`, built when `imatrix.compare = true`; types that need a "
             "matrix have no such twin).", "",
             "| type | KL mean with | KL mean without | KL change | KL p99 with / without | top-1 with / without "
             "| ppl with / without |", "|---|---:|---:|---:|---:|---:|---:|"]
    for q, c in comparison.items():
        w, wo = c["with"], c.get("without", {})
        ratio = c.get("kl_mean_ratio")
        change = "-" if ratio is None else f"{100 * (ratio - 1):+.1f}%"
        lines.append(f"| {q} | {_fmt(w['kl_mean'])} | {_fmt(wo.get('kl_mean'))} | {change} | "
                     f"{_fmt(w['kl_p99'])} / {_fmt(wo.get('kl_p99'))} | {_fmt(w['top1_agreement'], '.2%')} / "
                     f"{_fmt(wo.get('top1_agreement'), '.2%')} | {_fmt(w['ppl'])} / {_fmt(wo.get('ppl'))} |")
    return lines


def plot(model: str, table: list[dict[str, Any]], out: Path) -> None:
    """Size vs KL (log scale) and size vs tokens/s, one labelled point per GGUF type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_kl, ax_speed) = plt.subplots(1, 2, figsize=(11, 4.2))
    quants = [r for r in table if r["kl_mean"]]
    for r in quants:
        x = r["size_bytes"] / MIB
        # with the importance matrix: filled red; its no-matrix twin: hollow; plain quants: blue
        style = ({"color": "tab:red"} if r.get("imatrix") else {"facecolors": "none", "edgecolors": "tab:red"}
                 if r["type"].endswith(PLAIN_SUFFIX) else {"color": "tab:blue"})
        ax_kl.scatter(x, r["kl_mean"], **style)
        ax_kl.annotate(r["type"], (x, r["kl_mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if any(r.get("imatrix") for r in quants):
        ax_kl.scatter([], [], color="tab:red", label="with importance matrix")
        ax_kl.scatter([], [], facecolors="none", edgecolors="tab:red", label="same type without")
        ax_kl.scatter([], [], color="tab:blue", label="no matrix configured")
        ax_kl.legend(fontsize=7, loc="upper right")
    ref = table[0]
    ax_kl.axvline(ref["size_bytes"] / MIB, color="grey", linestyle="--", linewidth=1)
    ax_kl.annotate(f"{ref['type']} (reference)", (ref["size_bytes"] / MIB, 0.5), xycoords=("data", "axes fraction"),
                   rotation=90, fontsize=8, color="grey", xytext=(-10, 0), textcoords="offset points")
    if quants:
        ax_kl.set_yscale("log")
    ax_kl.set_xlabel("file size (MiB)")
    ax_kl.set_ylabel(f"KL({ref['type']} || quant), mean per token")
    ax_kl.set_title(f"{model}: quality vs size")
    ax_prompt = ax_speed.twinx()
    for r in table:
        x = r["size_bytes"] / MIB
        ax_speed.scatter(x, r["rt_gen_tok_s"], color="tab:green")
        ax_prompt.scatter(x, r["rt_prompt_tok_s"], color="tab:orange", marker="s")
        ax_speed.annotate(r["type"], (x, r["rt_gen_tok_s"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax_speed.set_xlabel("file size (MiB)")
    ax_speed.set_ylabel("generation tokens/s (circles)", color="tab:green")
    ax_prompt.set_ylabel("prompt tokens/s (squares)", color="tab:orange")
    ax_speed.set_title(f"{model}: speed vs size ({THREADS} threads)")
    for ax in (ax_kl, ax_speed):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic.atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def build(stage: Stage, config: Config) -> None:
    check = json.loads(stage.inputs["check"].read_text(encoding="utf-8"))
    if not check.get("passed"):
        raise UserError(f"{stage.inputs['check']}: the check did not pass; no report for a failed model")
    types = [stage.params["outtype"], *stage.params["quants"]]
    measured = {g: runtime(stage.inputs[f"gguf:{g}"], check["probes"]["ids"], stage.log) for g in types}
    table = rows(check, measured)
    model = stage.params["model"]
    out_json, out_md, out_png = stage.outputs
    doc = {"model": model, "reference": check["reference"], "tokenizer_parity": check["tokenizer"]["parity"],
           "logits": check["logits"], "adapter_merged": check["adapter"]["merged"], "types": table}
    atomic.write_text(out_json, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    atomic.write_text(out_md, markdown(model, check, table))
    plot(model, table, out_png)


def build_compare(stage: Stage, config: Config) -> None:
    """Every model's types side by side: quality, latency, throughput, memory."""
    reports = {role.split(":", 1)[1]: json.loads(path.read_text(encoding="utf-8"))
               for role, path in sorted(stage.inputs.items()) if role.startswith("report:")}
    lines = [
        "# Models side by side on the shared prompt set",
        "",
        "| model | type | size MiB | KL mean | answers exact (greedy) | adapter kept | TTFT ms | answer ms "
        "| gen tok/s | prompt tok/s | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    flat = []
    for name, rep in reports.items():
        for r in rep["types"]:
            flat.append({"model": name, **r})
            lines.append(
                f"| {name} | {r['type']} | {r['size_bytes'] / MIB:.1f} | {_fmt(r['kl_mean'])} | "
                f"{_fmt(r['rt_answer_exact'], '.0%')} | {_fmt(r['adapter_retention'], '.3f')} | "
                f"{1000 * r['rt_ttft_s_mean']:.0f} | {1000 * r['rt_answer_s_mean']:.0f} | {r['rt_gen_tok_s']:.1f} | "
                f"{r['rt_prompt_tok_s']:.0f} | {r['rt_peak_rss_mib']:.0f} |"
            )
    out_json, out_md = stage.outputs
    atomic.write_text(out_json, json.dumps({"models": list(reports), "rows": flat}, indent=2, sort_keys=True) + "\n")
    atomic.write_text(out_md, "\n".join(lines) + "\n")
