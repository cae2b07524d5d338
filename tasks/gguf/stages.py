"""The convert, imatrix and quantize stages of a model: what they read and write (light: no llama.cpp here).

All carry the toolchain identity in their key, so changing the llama.cpp pin rebuilds exactly the GGUFs.
The importance matrix is keyed on the unquantized GGUF and the calibration files' bytes; a quant built
with it has the matrix as an input, so new calibration data rebuilds the matrix and exactly those quants.
"""

from __future__ import annotations

from pathlib import Path

from tasks.core import toolchain
from tasks.core.config.schema import Config, ModelSpec
from tasks.core.quant_types import base_type
from tasks.core.stage import Stage, StageKind

CONVERT = StageKind("convert", group="convert", version=1, builder="tasks.gguf.convert:build", needs_gguf=True)
QUANTIZE = StageKind("quantize", group="quantize", version=1, builder="tasks.gguf.quantize:build", needs_gguf=True)
IMATRIX = StageKind("imatrix", group="imatrix", version=1, builder="tasks.gguf.imatrix:build", needs_gguf=True)


def convert_stage(config: Config, m: ModelSpec) -> list[Stage]:
    layout = config.layout
    return [Stage(
        task=f"convert:{m.name}", kind=CONVERT, artifacts=config.artifacts, model=m.name,
        manifest=layout.manifest(m.name, "convert"), log=layout.log(m.name, "convert"),
        inputs={"merged": layout.merged(m.name)}, outputs=(layout.gguf(m.name, m.outtype),),
        params={"outtype": m.outtype, "model_name": m.name}, toolchain=toolchain.identity(),
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
