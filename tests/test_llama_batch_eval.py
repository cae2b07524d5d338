"""All probes of a GGUF in one llama.cpp decode give each probe's own logits, bit for bit (weights read once)."""

from __future__ import annotations

import pytest
from conftest import REPO, Workspace

from tasks.checks import parity
from tasks.checks.eval_set import Probe, load_samples, probes
from tasks.checks.llama_batch_eval import ALIGN, batched_logits, load, plan


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


def test_with_repacked_weights_every_unaligned_probe_ends_a_decode() -> None:
    probe_set = [Probe([1] * n, 1, n) for n in (8, 13, 20, 6, 12)]
    decodes = plan(probe_set, max_tokens=64, exact_tails=True)
    assert [m for m, _ in decodes] == [[0, 2, 1], [4, 3]]  # 13 and 6 tokens end their decodes
    for members, slots in decodes:
        last = probe_set[members[-1]]
        assert len(slots) % 4 == len(last.ids) % 4 and slots[-1].seq == len(members) - 1
        for k in members[:-1]:
            assert len(probe_set[k].ids) % 4 == 0


@pytest.mark.parametrize(("gtype", "repacked"), [("f16", False), ("q8_0", False), ("q4_k_m", True)])
def test_one_pass_equals_each_probe_alone(fixtures_ws: Workspace, demo_probes: list[Probe], gtype: str,
                                          repacked: bool) -> None:
    """Bit for bit, also where llama.cpp repacked the weights for this CPU (Q4_K on x86 with AVX2)."""
    import numpy as np

    gguf = fixtures_ws.artifacts / "demo" / f"demo-{gtype}.gguf"
    assert len(plan(demo_probes)) == 1
    with parity.quiet_native(None):
        llm, found = load(gguf, parity.context_size(demo_probes))
        got = batched_logits(llm, demo_probes, found)
        want = one_at_a_time(parity.open_llama(gguf, parity.context_size(demo_probes)), demo_probes)
    assert found == repacked
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and np.array_equal(g, w), float(np.abs(g - w).max())
