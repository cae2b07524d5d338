"""Typed reads of models.toml values: each failure is one UserError line naming the file and key.

The one place these rules live: the loader, the deploy, gate and remote-source sections all read
their values through here, so the same mistake gets the same message wherever it is made.
"""

from __future__ import annotations

import math
import re
from typing import Any

from tasks.core.errors import UserError

# A model (or profile) name becomes a directory under artifacts/ and a doit task suffix: keep it boring.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def check_keys(raw: dict[str, Any], allowed: set[str], where: str, key: str) -> None:
    """Refuse keys outside `allowed`; `key` is the table's own key ("" for the top level)."""
    prefix = f"{key}." if key else ""
    for k in raw:
        if k not in allowed:
            raise UserError(f"{where}: {prefix}{k}: unknown key (allowed: {', '.join(sorted(allowed))})")


def table(value: Any, where: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key}: expected a table, got {type(value).__name__}")
    return value


def typed(value: Any, kind: type, where: str, key: str) -> Any:
    """`value` if it is a `kind` (a bool is not an int here), else a UserError naming the key."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{where}: {key}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def string(value: Any, where: str, key: str) -> str:
    return typed(value, str, where, key)


def choice(value: Any, allowed: tuple[str, ...], where: str, key: str) -> str:
    """A string that is one of `allowed`."""
    text = string(value, where, key)
    if text not in allowed:
        raise UserError(f"{where}: {key}: {text!r} is not one of {', '.join(allowed)}")
    return text


def number(value: Any, where: str, key: str, low: float | None = None, high: float | None = None) -> float:
    """A finite int or float within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: {key}: expected a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{low if low is not None else '-inf'}-{high if high is not None else 'inf'}"
        raise UserError(f"{where}: {key}: {value} is outside {bounds}")
    return float(value)


def safe_name(value: Any, where: str, key: str, what: str = "name") -> str:
    name = string(value, where, key)
    if not NAME_RE.match(name):
        raise UserError(f"{where}: {key}: unsafe {what} {name!r}")
    return name
