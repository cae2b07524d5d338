"""All probes of a GGUF in one llama.cpp decode give each probe's own logits (read the weights once)."""

from __future__ import annotations

import pytest
from conftest import REPO, Workspace

from tasks import parity
from tasks.eval_set import Probe, load_samples, probes
from tasks.llama_batch_eval import ALIGN, batched_logits, plan


def one_at_a_time(llm, probe_set: list[Probe]) -> list:
    """The plain way: one decode per probe, every position's logits."""
    import numpy as np

    out = []
    for p in probe_set:
        llm.reset()
        llm.eval(p.ids)
        out.append(np.array(llm.scores[:len(p.ids)], dtype=np.float32))
    return out


def test_plan_aligns_every_probe_and_pads_with_a_sequence_of_its_own() -> None:
    probe_set = [Probe(list(range(10, 10 + n)), 1, n) for n in (5, 16, 20, 3)]
    ((members, slots),) = plan(probe_set, max_tokens=512)
    assert members == [0, 1, 2, 3]
    starts = [next(i for i, s in enumerate(slots) if s.output and s.seq == k) for k in range(4)]
    assert starts == [0, 16, 32, 64] and all(s % ALIGN == 0 for s in starts)
    for k, start in enumerate(starts):
        got = [(s.token, s.pos, s.seq, s.output) for s in slots[start:start + len(probe_set[k].ids)]]
        assert got == [(t, i, k, True) for i, t in enumerate(probe_set[k].ids)]
    padding = [s for s in slots if not s.output]
    assert len(slots) == 67 and len(padding) == 67 - 44
    assert {s.seq for s in padding} == {4} and [s.pos for s in padding] == list(range(len(padding)))


def test_plan_splits_decodes_at_the_token_budget() -> None:
    probe_set = [Probe([1] * n, 1, n) for n in (30, 30, 40, 100)]
    decodes = plan(probe_set, max_tokens=64)
    assert [m for m, _ in decodes] == [[0, 1], [2], [3]]  # a probe longer than the budget decodes alone
    assert [len(s) for _, s in decodes] == [62, 40, 100]
    assert [s.seq for s in decodes[0][1] if not s.output] == [2, 2]  # padding: the sequence after the probes'


@pytest.fixture(scope="module")
def demo_probes(fixtures_ws: Workspace) -> list[Probe]:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(fixtures_ws.artifacts / "demo" / "merged"))
    return probes(tokenizer, load_samples(REPO / "eval_samples.jsonl"))


@pytest.mark.parametrize("gtype", ["f16", "q8_0"])
def test_one_decode_equals_each_probe_alone(fixtures_ws: Workspace, demo_probes: list[Probe], gtype: str) -> None:
    import numpy as np

    gguf = fixtures_ws.artifacts / "demo" / f"demo-{gtype}.gguf"
    assert len(plan(demo_probes)) == 1
    with parity.quiet_native(None):
        llm = parity.open_llama(gguf, parity.context_size(demo_probes))
        want = one_at_a_time(llm, demo_probes)
        got = batched_logits(llm, demo_probes)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and np.array_equal(g, w), float(np.abs(g - w).max())


def test_repacked_k_quant_stays_within_activation_rounding(fixtures_ws: Workspace, demo_probes: list[Probe]) -> None:
    """Q4_K rows are repacked for the CPU; the last rows of a batch quantize their activations one
    way, groups of four another, so a probe's logits may move by that rounding, never more."""
    import numpy as np

    gguf = fixtures_ws.artifacts / "demo" / "demo-q4_k_m.gguf"
    with parity.quiet_native(None):
        llm = parity.open_llama(gguf, parity.context_size(demo_probes))
        want = one_at_a_time(llm, demo_probes)
        got = batched_logits(llm, demo_probes)
    diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))
    top1 = np.mean(np.concatenate([g.argmax(-1) == w.argmax(-1) for g, w in zip(got, want, strict=True)]))
    assert diff < 0.1 and top1 >= 0.99, (diff, top1)

