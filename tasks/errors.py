"""User-facing errors: one line saying what is wrong and where, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class UserError(Exception):
    """Bad input from the user (models.toml, an adapter, a path): reported as one line, exit 2.

    The message must name the place (file, key, tensor or path) and what is wrong with it.
    """

    exit_code = 2


def read_json_object(path: Path, missing: str) -> dict[str, Any]:
    """A user-supplied JSON file that must hold an object (config.json, adapter_config.json).

    `missing` says why the file is needed; every failure is one UserError line naming the file.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing ({missing})") from None
    except (OSError, ValueError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise UserError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON object")
    return data
