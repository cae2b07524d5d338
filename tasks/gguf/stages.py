"""The convert and quantize stages of a model: what they read and write (light: no llama.cpp here).

Both carry the toolchain identity in their key, so changing the llama.cpp pin rebuilds exactly the GGUFs.
"""

from __future__ import annotations

from tasks.core import toolchain
from tasks.core.config.schema import Config, ModelSpec
from tasks.core.stage import Stage, StageKind

CONVERT = StageKind("convert", group="convert", version=1, builder="tasks.gguf.convert:build", needs_gguf=True)
QUANTIZE = StageKind("quantize", group="quantize", version=1, builder="tasks.gguf.quantize:build", needs_gguf=True)
# Adapter mode: the base model's own GGUF and quants, once per distinct base (artifacts/bases/<id>/).
CONVERT_BASE = StageKind("convert-base", group="convert", version=1, builder="tasks.gguf.convert:build")
QUANTIZE_BASE = StageKind("quantize-base", group="quantize", version=1, builder="tasks.gguf.quantize:build")


def base_stages(config: Config) -> list[Stage]:
    """convert:base-<id> and quantize:base-<id>-<type> for every base that a model in adapter or both mode
    uses: one set per base, whatever the number of models on it (the quants are the union of theirs).
    Keyed on the base directory's content digest like any stage input."""
    layout = config.layout
    by_base: dict[str, list[ModelSpec]] = {}
    for m in config.models.values():
        if m.builds_lora:
            by_base.setdefault(m.base_id, []).append(m)
    stages = []
    for bid, models in by_base.items():
        first = models[0]
        outtype = first.outtype  # the same for every model on the base (checked with models.toml)
        src = layout.base_gguf(bid, outtype)
        stages.append(Stage(
            task=f"convert:base-{bid}", kind=CONVERT_BASE, artifacts=config.artifacts,
            manifest=layout.base_manifest(bid, "convert"), log=layout.log("bases", f"{bid}-convert"),
            inputs={"merged": first.base.path}, outputs=(src,),
            params={"outtype": outtype, "model_name": bid}, toolchain=toolchain.identity(),
            doc=f"convert the base {first.base.spec} to {outtype.upper()} GGUF "
                f"(shared by {', '.join(m.name for m in models)})",
        ))
        quants = dict.fromkeys(q for m in models for q in (*m.quants, m.deploy_quant) if q != outtype)
        stages += [Stage(
            task=f"quantize:base-{bid}-{q}", kind=QUANTIZE_BASE, artifacts=config.artifacts,
            manifest=layout.base_manifest(bid, f"quantize-{q}"), log=layout.log("bases", f"{bid}-quantize-{q}"),
            inputs={"gguf": src}, outputs=(layout.base_gguf(bid, q),), params={"type": q},
            toolchain=toolchain.identity(), doc=f"quantize the base {first.base.spec} to {q.upper()}",
        ) for q in quants]
    return stages


def convert_stage(config: Config, m: ModelSpec) -> list[Stage]:
    if not m.builds_merged:
        return []
    layout = config.layout
    return [Stage(
        task=f"convert:{m.name}", kind=CONVERT, artifacts=config.artifacts, model=m.name,
        manifest=layout.manifest(m.name, "convert"), log=layout.log(m.name, "convert"),
        inputs={"merged": layout.merged(m.name)}, outputs=(layout.gguf(m.name, m.outtype),),
        params={"outtype": m.outtype, "model_name": m.name}, toolchain=toolchain.identity(),
        doc=f"convert {m.name} to {m.outtype.upper()} GGUF with llama.cpp's converter",
    )]


def quantize_stages(config: Config, m: ModelSpec) -> list[Stage]:
    if not m.builds_merged:
        return []
    layout = config.layout
    return [Stage(
        task=f"quantize:{m.name}-{q}", kind=QUANTIZE, artifacts=config.artifacts, model=m.name,
        manifest=layout.manifest(m.name, f"quantize-{q}"), log=layout.log(m.name, f"quantize-{q}"),
        inputs={"gguf": layout.gguf(m.name, m.outtype)}, outputs=(layout.gguf(m.name, q),),
        params={"type": q}, toolchain=toolchain.identity(), doc=f"quantize {m.name} to {q.upper()}",
    ) for q in m.quants]
