"""The convert and quantize stages of a model: what they read and write (light: no llama.cpp here).

Both carry the toolchain identity in their key, so changing the llama.cpp pin rebuilds exactly the GGUFs.
"""

from __future__ import annotations

from tasks.core import toolchain
from tasks.core.config.schema import Config, ModelSpec
from tasks.core.stage import Stage, StageKind

CONVERT = StageKind("convert", group="convert", version=1, builder="tasks.gguf.convert:build", needs_gguf=True)
QUANTIZE = StageKind("quantize", group="quantize", version=1, builder="tasks.gguf.quantize:build", needs_gguf=True)


def convert_stage(config: Config, m: ModelSpec) -> list[Stage]:
    layout = config.layout
    return [Stage(
        task=f"convert:{m.name}", kind=CONVERT, artifacts=config.artifacts, model=m.name,
        manifest=layout.manifest(m.name, "convert"), log=layout.log(m.name, "convert"),
        inputs={"merged": layout.merged(m.name)}, outputs=(layout.gguf(m.name, m.outtype),),
        params={"outtype": m.outtype, "model_name": m.name}, toolchain=toolchain.identity(),
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
