"""Quality gates: the thresholds a model's check stage must meet, from models.toml `gates`.

A gate is either a scalar (one figure per model) or per GGUF type (a number that applies to
every type, or a table `{q8_0 = ..., q4_k_m = ...}`). Every gate has a default, so an
unconfigured model is still checked; the defaults are loose enough for tiny random test
models and tight enough to catch a broken export (a lost adapter, a wrong tokenizer, a
quantization that went wrong moves these figures by orders of magnitude, not by percent).

Light module: tasks/core/config/load.py validates gates on every doit call; the check stage
applies them (tasks/checks/check.py).
"""

from __future__ import annotations

from typing import Any

from tasks.core.config.values import table
from tasks.core.errors import UserError

# Scalar gates: name -> (default, kind). "min" gates are fractions in [0, 1]; "max" gates are >= 0.
SCALAR_GATES: dict[str, tuple[float, str]] = {
    "min_tokenizer_parity": (1.0, "fraction"),  # texts tokenized identically by HF and llama.cpp
    "min_top1": (0.99, "fraction"),  # HF fp32 vs F16 GGUF: top-1 agreement over probe positions
    "max_logit_diff": (0.5, "number"),  # HF fp32 vs F16 GGUF: max |logit difference|
}

# Per-GGUF-type gates. `min_adapter_retention` applies to the unquantized GGUF too.
TYPED_GATES = ("max_kl_mean", "max_kl_p99", "min_quant_top1", "min_adapter_retention")
FRACTION_GATES = {"min_tokenizer_parity", "min_top1", "min_quant_top1", "min_adapter_retention"}


def default_typed(gate: str, gtype: str) -> float | None:
    """Default of a per-type gate for one GGUF type (None: reported, not gated)."""
    family = gtype.split("_")[0]
    if gate == "max_kl_mean":
        if gtype in ("f16", "bf16"):
            return None
        return {"q8": 0.02, "q6": 0.2, "q5": 0.5, "q4": 1.0, "q3": 2.0}.get(family, 3.0)
    if gate == "max_kl_p99":
        return None
    if gate == "min_quant_top1":
        if gtype in ("f16", "bf16"):
            return None
        return {"q8": 0.9, "q6": 0.7, "q5": 0.6, "q4": 0.5}.get(family, 0.3)
    if gate == "min_adapter_retention":
        return 0.9 if gtype in ("f16", "bf16") else 0.5
    raise KeyError(gate)


def _number(value: Any, where: str, key: str, fraction: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where}: {key}: expected a number, got {type(value).__name__} {value!r}")
    if value < 0:
        raise UserError(f"{where}: {key}: must not be negative, got {value!r}")
    if fraction and value > 1:
        raise UserError(f"{where}: {key}: is a fraction (0 to 1), got {value!r}")
    return float(value)


def parse_gates(raw: Any, outtype: str, quants: tuple[str, ...], where: str, key: str) -> dict[str, Any]:
    """Validate a model's `gates` table and resolve every gate for every GGUF type it builds.

    Returns {"scalar": {name: value}, "typed": {name: {gtype: value or None}}}: plain JSON, so
    it can be a stage parameter (a changed gate re-runs the check, nothing else).
    """
    raw = table(raw, where, key)
    allowed = set(SCALAR_GATES) | set(TYPED_GATES)
    for name in raw:
        if name not in allowed:
            raise UserError(f"{where}: {key}.{name}: unknown gate (allowed: {', '.join(sorted(allowed))})")
    gtypes = (outtype, *quants)
    scalar = {
        name: _number(raw[name], where, f"{key}.{name}", name in FRACTION_GATES) if name in raw else default
        for name, (default, _kind) in SCALAR_GATES.items()
    }
    typed: dict[str, dict[str, float | None]] = {}
    for name in TYPED_GATES:
        values = {g: default_typed(name, g) for g in gtypes}
        if name in raw:
            given = raw[name]
            if isinstance(given, dict):
                for gtype, v in given.items():
                    gkey = f"{key}.{name}.{gtype}"
                    if gtype not in gtypes:
                        raise UserError(
                            f"{where}: {gkey}: {gtype!r} is not built for this model (types: {', '.join(gtypes)})"
                        )
                    if name != "min_adapter_retention" and gtype == outtype:
                        raise UserError(f"{where}: {gkey}: {gtype!r} is the reference every quant is compared to")
                    values[gtype] = _number(v, where, gkey, name in FRACTION_GATES)
            else:
                v = _number(given, where, f"{key}.{name}", name in FRACTION_GATES)
                for g in gtypes:
                    if name == "min_adapter_retention" or g != outtype:
                        values[g] = v
        typed[name] = values
    return {"scalar": scalar, "typed": typed}


def gate_key(model: str, name: str, gtype: str | None = None) -> str:
    """The models.toml key a gate is set with, for failure messages."""
    return f"models.{model}.gates.{name}" + (f".{gtype}" if gtype else "")
