"""A PEFT adapter directory: the file names every stage that reads an adapter declares.

The rules for what those files may contain live in tasks/merge/lora_adapter.py; this is only
the naming convention, shared by the merge, check and render stages.
"""

from __future__ import annotations

from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_files(adapter_dir: Path) -> dict[str, Path]:
    """The adapter's files by the roles stage keys use."""
    return {"adapter_config": adapter_dir / ADAPTER_CONFIG, "adapter_weights": adapter_dir / ADAPTER_WEIGHTS}
