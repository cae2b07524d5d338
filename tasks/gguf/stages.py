"""The convert and quantize stages of a model: what they read and write (light: no llama.cpp here).

Both carry the toolchain identity in their key, so changing the llama.cpp pin rebuilds exactly the GGUFs.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from tasks.core import toolchain
from tasks.core.config.schema import Config, ModelSpec, Source
from tasks.core.stage import Stage, StageKind

# version 2: general.name is the base model's name (base_name), no longer the user's model name.
CONVERT = StageKind("convert", group="convert", version=2, builder="tasks.gguf.convert:build", needs_gguf=True)


def base_name(src: Source) -> str:
    """What the GGUF's general.name says: the base model, as models.toml names it (the Hub repo, the
    fixture, the last component of a local or SSH path), never the user's name for the fine-tune.

    llama.cpp reads general.name as the model's identity: its vocab code treats special tokens
    differently when the name contains "phi3" or "phi-3" (src/llama-vocab.cpp), so a Qwen fine-tune
    named `phi35` failed tokenizer parity, and a Phi-3 fine-tune named `nayru` lost handling its
    tokenizer needs. Taken from the spec, not from any directory the build runs in, so the GGUF stays
    byte-identical wherever it is built."""
    if src.fixture:
        return src.fixture
    remote = src.remote
    if remote is not None and getattr(remote, "repo_id", None):
        return str(remote.repo_id).rsplit("/", 1)[-1]
    where = str(remote.path) if remote is not None and getattr(remote, "path", None) else src.spec
    return PurePosixPath(where.rstrip("/")).name or where
QUANTIZE = StageKind("quantize", group="quantize", version=1, builder="tasks.gguf.quantize:build", needs_gguf=True)


def convert_stage(config: Config, m: ModelSpec) -> list[Stage]:
    layout = config.layout
    return [Stage(
        task=f"convert:{m.name}", kind=CONVERT, artifacts=config.artifacts, model=m.name,
        manifest=layout.manifest(m.name, "convert"), log=layout.log(m.name, "convert"),
        inputs={"merged": layout.merged(m.name)}, outputs=(layout.gguf(m.name, m.outtype),),
        params={"outtype": m.outtype, "base_name": base_name(m.base)}, toolchain=toolchain.identity(),
        doc=f"convert {m.name} to {m.outtype.upper()} GGUF with llama.cpp's converter",
    )]


def quantize_stages(config: Config, m: ModelSpec) -> list[Stage]:
    layout = config.layout
    return [Stage(
        task=f"quantize:{m.name}-{q}", kind=QUANTIZE, artifacts=config.artifacts, model=m.name,
        manifest=layout.manifest(m.name, f"quantize-{q}"), log=layout.log(m.name, f"quantize-{q}"),
        inputs={"gguf": layout.gguf(m.name, m.outtype)}, outputs=(layout.gguf(m.name, q),),
        params={"type": q}, toolchain=toolchain.identity(), doc=f"quantize {m.name} to {q.upper()}",
    ) for q in m.quants]
