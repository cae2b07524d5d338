"""Decision tables learned from renders: which text a template writes in which situation.

A rendered prompt is cut at the probe texts (message contents, reasoning) into gaps. Each gap
belongs to a slot (the junction before a message, the text between reasoning and answer, the
end of the prompt) and is recorded with the situation it appeared in: the roles around it,
whether it is the last message, whether thinking is on, and so on. A slot's value is then a
small decision tree over those features, grown only as far as the observations force: a
feature is used only when two situations that differ in it produced different text. Two
observations that no feature tells apart are a conflict, and the template is refused.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

# Features in the order they are preferred when two explain the observations equally well.
FEATURES = ("role", "prev", "last", "sys", "think", "tools", "thinking", "prev_thinking", "first_user",
            "last_user", "after_last_user", "through_last_answer", "through_first_answer", "prev_calls", "calls",
            "empty", "prev_empty")


class Conflict(Exception):
    """Two observations in indistinguishable situations gave different values."""


@dataclass(frozen=True)
class Leaf:
    value: Any


@dataclass(frozen=True)
class Node:
    feature: str
    branches: tuple[tuple[Any, Any], ...]  # (feature value, subtree); the most common value last


def _entropy(values: list[Any]) -> float:
    n = len(values)
    return -sum(c / n * math.log2(c / n) for c in Counter(values).values())


def learn(obs: list[tuple[dict[str, Any], Any]], slot: str, features: tuple[str, ...] = FEATURES) -> Any:
    """A decision tree reproducing every observation (features, value) of one slot."""
    values = [v for _, v in obs]
    if len(set(map(repr, values))) == 1:
        return Leaf(values[0])
    best, best_h = None, math.inf
    for f in features:
        groups: dict[Any, list[Any]] = {}
        for feats, v in obs:
            groups.setdefault(feats.get(f), []).append(repr(v))
        if len(groups) < 2:
            continue
        h = sum(len(g) * _entropy(g) for g in groups.values())
        if h < best_h - 1e-9:
            best, best_h = f, h
    if best is None:
        a = obs[0]
        b = next(o for o in obs if repr(o[1]) != repr(a[1]))
        diff = {k: a[0].get(k) for k in features}
        raise Conflict(f"{slot}: the template writes {_show(a[1])} in one case and {_show(b[1])} in another "
                       f"that differs in nothing modelmake can tell apart ({diff})")
    groups2: dict[Any, list[tuple[dict[str, Any], Any]]] = {}
    for o in obs:
        groups2.setdefault(o[0].get(best), []).append(o)
    rest = tuple(f for f in features if f != best)
    ordered = sorted(groups2.items(), key=lambda kv: (len(kv[1]), repr(kv[0])))
    return Node(best, tuple((k, learn(g, slot, rest)) for k, g in ordered))


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) < 120 else text[:117] + "..."
