"""User-supplied JSON files that must hold an object (config.json, adapter_config.json, tokenizer files).

One reader, so that every such file fails the same way: one UserError line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.core.errors import UserError


def read_json_object(path: Path, missing: str) -> dict[str, Any]:
    """The object in `path`; `missing` says why the file is needed (it ends the "missing" message)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing ({missing})") from None
    except (OSError, ValueError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise UserError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON object")
    return data
