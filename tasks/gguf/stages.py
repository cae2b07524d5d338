"""The convert, imatrix and quantize stages of a model: what they read and write (light: no llama.cpp here).

All carry the toolchain identity in their key, so changing the llama.cpp pin rebuilds exactly the GGUFs.
The importance matrix is keyed on the unquantized GGUF and the calibration files' bytes; a quant built
with it has the matrix as an input, so new calibration data rebuilds the matrix and exactly those quants.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from tasks.core import toolchain
from tasks.core.config.schema import Config, ModelSpec, Source
from tasks.core.quant_types import base_type
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
            params={"outtype": outtype, "base_name": base_name(first.base)}, toolchain=toolchain.identity(),
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


IMATRIX = StageKind("imatrix", group="imatrix", version=1, builder="tasks.gguf.imatrix:build", needs_gguf=True)


def convert_stage(config: Config, m: ModelSpec) -> list[Stage]:
    if not m.builds_merged:
        return []
    layout = config.layout
    return [Stage(
        task=f"convert:{m.name}", kind=CONVERT, artifacts=config.artifacts, model=m.name,
        manifest=layout.manifest(m.name, "convert"), log=layout.log(m.name, "convert"),
        inputs={"merged": layout.merged(m.name)}, outputs=(layout.gguf(m.name, m.outtype),),
        params={"outtype": m.outtype, "base_name": base_name(m.base)}, toolchain=toolchain.identity(),
        doc=f"convert {m.name} to {m.outtype.upper()} GGUF with llama.cpp's converter",
    )]


def imatrix_path(config: Config, m: ModelSpec) -> Path | None:
    """The matrix the model's quants use: a configured file, or the one the imatrix stage computes."""
    if m.imatrix is None:
        return None
    return m.imatrix.file or config.layout.imatrix(m.name)


def imatrix_stage(config: Config, m: ModelSpec) -> list[Stage]:
    """imatrix:<m>: the importance matrix over the calibration data (tasks/gguf/imatrix.py)."""
    if m.imatrix is None or m.imatrix.file is not None:
        return []
    layout = config.layout
    inputs = {"gguf": layout.gguf(m.name, m.outtype), **{f"data:{i}": p for i, p in enumerate(m.imatrix.data)}}
    return [Stage(
        task=f"imatrix:{m.name}", kind=IMATRIX, artifacts=config.artifacts, model=m.name,
        manifest=layout.manifest(m.name, "imatrix"), log=layout.log(m.name, "imatrix"),
        inputs=inputs, outputs=(layout.imatrix(m.name),), toolchain=toolchain.identity(),
        params={"chunk": m.imatrix.chunk, "datasets": [p.name for p in m.imatrix.data]},
        doc=f"importance matrix of {m.name} over its calibration data",
    )]


def quantize_stages(config: Config, m: ModelSpec) -> list[Stage]:
    if not m.builds_merged:
        return []
    layout = config.layout
    stages = []
    for q in m.gguf_types[1:]:
        inputs = {"gguf": layout.gguf(m.name, m.outtype)}
        matrix = imatrix_path(config, m) if m.uses_imatrix(q) else None
        if matrix is not None:
            inputs["imatrix"] = matrix
        how = " with the importance matrix" if matrix else (" without the matrix" if q != base_type(q) else "")
        stages.append(Stage(
            task=f"quantize:{m.name}-{q}", kind=QUANTIZE, artifacts=config.artifacts, model=m.name,
            manifest=layout.manifest(m.name, f"quantize-{q}"), log=layout.log(m.name, f"quantize-{q}"),
            inputs=inputs, outputs=(layout.gguf(m.name, q),),
            params={"type": base_type(q)}, toolchain=toolchain.identity(),
            doc=f"quantize {m.name} to {base_type(q).upper()}{how}",
        ))
    return stages
