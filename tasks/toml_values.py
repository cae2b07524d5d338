"""Typed reads of models.toml values: each failure is one UserError line naming the key."""

from __future__ import annotations

from typing import Any

from tasks.errors import UserError


def check_keys(raw: dict[str, Any], allowed: set[str], where: str, key: str) -> None:
    for k in raw:
        if k not in allowed:
            raise UserError(f"{where}: {key}.{k}: unknown key (allowed: {', '.join(sorted(allowed))})")


def string(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: {key}: expected str, got {type(value).__name__} {value!r}")
    return value
