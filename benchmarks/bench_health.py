"""Health-check figures on the demo: latency and tokens/s through llama.cpp's server, plus the
memory planner's table for Qwen2.5-7B on the T4 and VPS profiles of models.toml.

    python benchmarks/bench_health.py [--quick]

Needs the demo built (`doit render:demo`). Starts the real server (python -m llama_cpp.server) on
the demo's deploy quant on a free loopback port, runs the health check N times (3 quick, 10
full), stops the server. Prints a table and writes artifacts/bench/health.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENCH = ROOT / "artifacts" / "bench"
QWEN25_7B = {
    "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def planner_rows() -> list[dict]:
    from tasks.core.config.load import load_config
    from tasks.deploy import planner

    config = load_config(ROOT / "models.toml")
    shape = planner.shape_from_config(QWEN25_7B)
    rows = []
    for name in ("t4", "vps"):
        profile = config.hardware[name]
        for q in ("q8_0", "q5_k_m", "q4_k_m"):
            w, src = planner.gguf_weight_bytes(shape, q)
            f = planner.fit(shape, profile, "gguf", q, w, src)
            rows.append({"profile": name, "target": "gguf", "quant": q, "weights_gb": round(w / 1e9, 2),
                         "budget_gb": round(f.budget / 1e9, 2), "max_context": f.max_context})
        f = planner.fit(shape, profile, "vllm", "16-bit", planner.vllm_weight_bytes(shape), "2 B/param")
        rows.append({"profile": name, "target": "vllm", "quant": "16-bit", "weights_gb": round(f.weights / 1e9, 2),
                     "budget_gb": round(f.budget / 1e9, 2), "max_context": f.max_context})
    return rows


def main(quick: bool) -> dict:
    from tasks.core.config.load import load_config
    from tasks.deploy import health, serve

    runs = 3 if quick else 10
    text = (ROOT / "models.toml").read_text()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "models.toml"
        cfg.write_text(text.replace('artifacts = "artifacts"', f"artifacts = {str(ROOT / 'artifacts')!r}", 1)
                       .replace("port = 5000", f"port = {_free_port()}", 1))
        config = load_config(cfg)
        m = config.models["demo"]
        serve.start(config, m)
        try:
            reports = [health.check(config, m) for _ in range(runs)]
        finally:
            serve.stop(config, m)
    lat = [r.latency_s for r in reports if r.latency_s]
    tps = [r.tokens_per_s for r in reports if r.tokens_per_s]
    result = {
        "runs": runs, "statuses": [r.status for r in reports], "reply": reports[-1].reply,
        "latency_s": {"median": statistics.median(lat), "min": min(lat), "max": max(lat)},
        "tokens_per_s": {"median": statistics.median(tps), "min": min(tps), "max": max(tps)},
        "planner_qwen25_7b": planner_rows(),
    }
    print(f"health of demo ({runs} runs): {', '.join(sorted(set(result['statuses'])))}; reply {result['reply']!r}")
    print(f"  latency  median {result['latency_s']['median']:.3f}s  (min {min(lat):.3f}, max {max(lat):.3f})")
    print(f"  tokens/s median {result['tokens_per_s']['median']:.1f}  (min {min(tps):.1f}, max {max(tps):.1f})")
    print("planner, Qwen2.5-7B:")
    print(f"  {'profile':<8}{'target':<7}{'quant':<8}{'weights':>9}{'budget':>9}{'max ctx':>9}")
    for r in result["planner_qwen25_7b"]:
        print(f"  {r['profile']:<8}{r['target']:<7}{r['quant']:<8}{r['weights_gb']:>7.2f}GB{r['budget_gb']:>7.2f}GB"
              f"{r['max_context']:>9}")
    BENCH.mkdir(parents=True, exist_ok=True)
    (BENCH / "health.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
