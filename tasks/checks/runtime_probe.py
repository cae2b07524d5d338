"""Measure one GGUF in llama.cpp: load time, prompt and generation speed, latency, peak memory.

Run as its own process (`python -m tasks.checks.runtime_probe`, JSON on stdout) once per GGUF: peak
RSS is a per-process high-water mark, so measuring several files in one process would report
the largest of them for all. Generation is greedy and token by token through the same C calls
a server makes; throughput runs ignore end-of-turn so every file generates the same count, and
prompt and generation speeds are the best of REPEATS runs (the least disturbed by other load).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPEATS = 3


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _greedy(llm: Any, n_vocab: int) -> int:
    import llama_cpp
    import numpy as np

    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return int(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).argmax())


def measure(gguf: Path, samples: list[dict[str, Any]], threads: int, n_gen: int, n_prompt: int) -> dict[str, Any]:
    import llama_cpp

    from tasks.checks.parity import quiet_native

    rss_before = _rss_mib()
    with quiet_native(None):
        start = time.perf_counter()
        llm = llama_cpp.Llama(str(gguf), n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads,
                              verbose=False)
        load_s = time.perf_counter() - start
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n_vocab = llm.n_vocab()
    rss_loaded = _rss_mib()

    # Prompt processing: one batch of n_prompt tokens (the samples' tokens, repeated as needed).
    stream = [t for s in samples for t in s["prompt"]] or [0]
    prompt = (stream * (n_prompt // len(stream) + 1))[:n_prompt]
    # Best of REPEATS: on a shared machine the fastest run is the one least disturbed by others.
    prompt_s = gen_s = float("inf")
    for _ in range(REPEATS):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        prompt_s = min(prompt_s, time.perf_counter() - start)

        # Generation: n_gen tokens after the first sample's prompt, end-of-turn ignored.
        llm.reset()
        llm.eval(samples[0]["prompt"])
        start = time.perf_counter()
        for _ in range(n_gen):
            llm.eval([_greedy(llm, n_vocab)])
        gen_s = min(gen_s, time.perf_counter() - start)

    # The shared prompt set as a user sees it: time to first token, answer until end-of-turn.
    per_sample = []
    for s in samples:
        llm.reset()
        start = time.perf_counter()
        llm.eval(s["prompt"])
        tok = _greedy(llm, n_vocab)
        ttft = time.perf_counter() - start
        out = [tok]
        while not llama_cpp.llama_vocab_is_eog(vocab, tok) and len(out) < len(s["answer"]) + 16:
            llm.eval([tok])
            tok = _greedy(llm, n_vocab)
            out.append(tok)
        total = time.perf_counter() - start
        per_sample.append({"ttft_s": ttft, "total_s": total, "tokens": len(out), "exact": out == s["answer"]})
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = len(per_sample)
    return {
        "load_s": load_s,
        "prompt_tokens": len(prompt),
        "prompt_tok_s": len(prompt) / prompt_s,
        "gen_tokens": n_gen,
        "gen_tok_s": n_gen / gen_s,
        "ttft_s_mean": sum(p["ttft_s"] for p in per_sample) / n,
        "answer_s_mean": sum(p["total_s"] for p in per_sample) / n,
        "answer_exact": sum(p["exact"] for p in per_sample) / n,
        "rss_before_load_mib": rss_before,
        "rss_loaded_mib": rss_loaded,
        "peak_rss_mib": peak_kib / 1024,
        "threads": threads,
        "repeats": REPEATS,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.checks.runtime_probe", description=__doc__)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--samples", type=Path, required=True, help='JSON: [{"prompt": [ids], "answer": [ids]}]')
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-gen", type=int, default=24)
    parser.add_argument("--n-prompt", type=int, default=128)
    args = parser.parse_args(argv)
    samples = json.loads(args.samples.read_text(encoding="utf-8"))
    json.dump(measure(args.gguf, samples, args.threads, args.n_gen, args.n_prompt), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
