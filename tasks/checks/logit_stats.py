"""Numbers that compare two models' next-token distributions on the same token ids.

All functions take per-probe arrays of log-probabilities (positions x vocabulary, float32) so
the logits' arbitrary per-position offset never counts as a difference. Element-wise work stays
in float32 (numpy's pairwise summation keeps a 150k-term sum accurate to ~1e-6 relative, far
below any gate); per-position results are accumulated in float64, one probe at a time.
"""

from __future__ import annotations

from typing import Any

from tasks.checks.eval_set import Probe


def log_softmax(logits: Any, in_place: bool = False) -> Any:
    """Log-probabilities of float32 logits; `in_place` overwrites the caller's array (same numbers, no copy:
    the check holds several models' logits for every probe at once)."""
    import numpy as np

    x = logits if in_place and logits.dtype == np.float32 else logits.astype(np.float32)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True, dtype=np.float64)).astype(np.float32)
    return x


def _kl_rows(p_logp: Any, q_logp: Any) -> Any:
    import numpy as np

    return np.maximum((np.exp(p_logp) * (p_logp - q_logp)).sum(axis=-1, dtype=np.float64), 0.0)


def logit_parity(ref_logits: list[Any], test_logits: list[Any]) -> dict[str, float]:
    """Raw-logit agreement (HF fp32 vs F16 GGUF): max |difference|, top-1 agreement, KL."""
    import numpy as np

    diffs, agree, kls = [], [], []
    for a, b in zip(ref_logits, test_logits, strict=True):
        diffs.append(float(np.abs(a - b).max()))
        agree.append(a.argmax(-1) == b.argmax(-1))
        kls.append(_kl_rows(log_softmax(a), log_softmax(b)))
    agree_all = np.concatenate(agree)
    kl = np.concatenate(kls)
    return {
        "positions": int(agree_all.size),
        "max_abs_diff": max(diffs),
        "top1_agreement": float(agree_all.mean()),
        "kl_mean": float(kl.mean()),
        "logit_absmax": float(max(np.abs(a).max() for a in ref_logits)),
    }


def quant_quality(ref_logp: list[Any], test_logp: list[Any], probes: list[Probe]) -> dict[str, float]:
    """KL(ref || test) mean and p99, top-1 agreement with ref, and test's perplexity on the probes.

    Perplexity is over every next-token prediction of the rendered conversations ("ppl") and
    over the reference answers only ("answer_ppl"); "answer_exact" is the fraction of probes
    whose every answer token (end-of-turn included) is the test model's greedy choice, which
    is exactly "greedy decoding reproduces the reference answer".
    """
    import numpy as np

    kls, ans_kls, agree, nll, ans_nll = [], [], [], [], []
    exact = 0
    for r, t, probe in zip(ref_logp, test_logp, probes, strict=True):
        kls.append(_kl_rows(r, t))
        agree.append(r.argmax(-1) == t.argmax(-1))
        ids = np.asarray(probe.ids)
        pos = np.arange(len(ids) - 1)
        token_nll = -t[pos, ids[1:]].astype(np.float64)
        nll.append(token_nll)
        a = slice(probe.answer_start - 1, probe.answer_end - 1)
        ans_nll.append(token_nll[a])
        ans_kls.append(kls[-1][a])
        exact += bool((t[a].argmax(-1) == ids[probe.answer_start:probe.answer_end]).all())
    kl = np.concatenate(kls)
    return {
        "kl_mean": float(kl.mean()),
        "kl_p99": float(np.percentile(kl, 99)),
        "kl_max": float(kl.max()),
        "kl_mean_answer": float(np.concatenate(ans_kls).mean()),  # at the positions predicting the answers
        "top1_agreement": float(np.concatenate(agree).mean()),
        "ppl": float(np.exp(np.concatenate(nll).mean())),
        "answer_ppl": float(np.exp(np.concatenate(ans_nll).mean())),
        "answer_exact": exact / len(probes),
    }


def adapter_retention(test_logp: list[Any], adapted_logp: list[Any], base_logp: list[Any]) -> dict[str, float]:
    """How much of the adapter's effect (adapted - base) a model keeps.

    retention = 1 - sum ||test - adapted|| / sum ||adapted - base|| (L2 over the vocabulary,
    per position): 1 when the test model is the adapted model, about 0 when it is the base
    model (the adapter was dropped), negative when it is further off than the base.
    `adapter_top1` is the fraction of the positions where the adapter changed the greedy
    token at which the test model picks the adapter's token.
    """
    import numpy as np

    resid = effect = 0.0
    changed = kept = positions = 0
    for t, a, b in zip(test_logp, adapted_logp, base_logp, strict=True):
        positions += len(a)
        resid += float(np.sqrt(np.square(t - a).sum(axis=-1, dtype=np.float64)).sum())
        effect += float(np.sqrt(np.square(a - b).sum(axis=-1, dtype=np.float64)).sum())
        a_top, b_top = a.argmax(-1), b.argmax(-1)
        mask = a_top != b_top
        changed += int(mask.sum())
        kept += int((t.argmax(-1)[mask] == a_top[mask]).sum())
    return {
        "effect": effect / positions if positions else 0.0,  # mean L2 norm of (adapted - base) log-probs
        "retention": 1.0 - resid / effect if effect > 0 else 0.0,
        "adapter_top1": kept / changed if changed else 0.0,
        "changed_positions": changed,
    }
