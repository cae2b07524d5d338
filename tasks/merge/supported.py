"""Refuse, before merging, a base the pinned llama.cpp converter cannot turn into a GGUF.

Before: a `BertModel` or any `FooForCausalLM` base was merged first (minutes, and merged/ replaced)
and refused only by the converter's own traceback. The list comes from the pinned converter itself
(tasks.core.toolchain.text_architectures), so it is exactly what that revision accepts. Of those,
modelmake builds generative models only: its checks compare next-token logits and chat answers,
which an encoder (BertModel) or an embedding head (Qwen3Model) has none of.
"""

from __future__ import annotations

from pathlib import Path

from tasks.core import toolchain
from tasks.core.config.schema import Config
from tasks.core.errors import UserError
from tasks.core.stage import Stage
from tasks.formats.json_object import read_json_object

GENERATIVE_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def generative_architectures() -> dict[str, str]:
    return {a: fam for a, fam in toolchain.text_architectures().items() if a.endswith(GENERATIVE_SUFFIXES)}


def check_architecture(base: Path) -> str:
    """The base's architecture if the converter supports it; else one line naming it and the families."""
    path = base / "config.json"
    arches = read_json_object(path, "the converter picks the model class from it").get("architectures")
    if not arches or not isinstance(arches, list) or not isinstance(arches[0], str):
        raise UserError(f"{path}: architectures: missing (llama.cpp's converter needs it to pick a model class)")
    arch = arches[0]
    supported = generative_architectures()
    if arch in supported:
        return arch
    families = ", ".join(sorted(set(supported.values())))
    if arch in toolchain.text_architectures():
        why = "is not a text-generation architecture (modelmake's checks need next-token logits)"
    else:
        why = f"is not supported by the pinned llama.cpp converter ({toolchain.PACKAGE}=={toolchain.VERSION})"
    raise UserError(f"{path}: architectures[0]: {arch!r} {why}; supported families: {families}")


def precheck(stage: Stage, config: Config) -> None:
    """merge:<m>'s precheck: only for models that build a GGUF (a vLLM-only model is never converted)."""
    m = config.models.get(stage.model or "")
    if m is not None and m.builds_gguf:
        check_architecture(stage.inputs["base"])
