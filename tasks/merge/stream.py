"""Streaming LoRA merge: base shards in, merged shards out, one tensor in memory at a time.

peft's `merge_and_unload` needs the whole model in RAM.  Here the plan (tasks.merge.plan) fixes every
output tensor up front from headers alone, so a misfit adapter is refused before anything is written;
then tasks.merge.pipeline streams each tensor through: untouched ones straight from the base file into
the output, the adapted ones through a reused buffer where they are merged in place with peft's exact
arithmetic (tasks.merge.lora_math).  Peak memory is a few copies of the largest merged tensor plus its float32
delta, whatever the model size.
"""

from __future__ import annotations

import errno
import warnings
from pathlib import Path

from tasks.core.atomic import temp_owner
from tasks.core.diskspace import DiskFull
from tasks.core.diskspace import message as disk_full
from tasks.core.errors import UserError
from tasks.formats.safetensors import INDEX_NAME
from tasks.merge.pipeline import write_shards
from tasks.merge.plan import MergePlan, build_plan
from tasks.merge.shard_layout import index_json, plan_shards, shard_names
from tasks.merge.shard_writer import fsync_dir, write_small_file

__all__ = ["check_adapter_fits", "merge_streaming"]


def check_adapter_fits(base_dir: Path, adapter_dir: Path) -> None:
    """Raise UserError unless the adapter can be merged into the base; reads headers and configs only."""
    build_plan(Path(base_dir), Path(adapter_dir))


def merge_streaming(base_dir: Path, adapter_dir: Path, out_dir: Path, *,
                    max_shard_bytes: int = 2 * 1024**3, progress: bool = False) -> list[Path]:
    """Merge the LoRA adapter in adapter_dir (adapter_config.json + adapter_model.safetensors) into the
    safetensors base model in base_dir (model.safetensors or sharded with model.safetensors.index.json,
    plus config.json), writing weights + model.safetensors.index.json (when sharded) + config.json
    (copied from base, vocab_size updated if the vocabulary was resized) into out_dir (exists, empty;
    the caller owns atomicity of the directory and copies tokenizer/chat-template/generation-config files).
    Returns the paths written.

    Every merged tensor is bit-identical to peft's ``merge_and_unload()`` + ``save_pretrained``.  Nothing
    is written if the adapter does not fit; on any failure the files written so far are removed.
    """
    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    plan = build_plan(base_dir, adapter_dir)
    for note in plan.notes:
        warnings.warn(note, stacklevel=2)
    shards = plan_shards([job.out for job in plan.jobs], max_shard_bytes)
    names = shard_names(len(shards))
    outputs = [*names, *([INDEX_NAME] if len(shards) > 1 else []), "config.json"]
    if not out_dir.is_dir():
        raise UserError(f"{out_dir}: output directory does not exist")
    clash = [n for n in outputs if (out_dir / n).exists()]
    if clash:
        raise UserError(f"{out_dir}: already holds {', '.join(clash)}; refusing to overwrite")
    for n in outputs:  # leftovers of a killed run would block the exclusive create
        (out_dir / f".{n}.partial").unlink(missing_ok=True)

    written: list[Path] = []
    try:
        write_shards(plan, shards, names, out_dir, written, progress)
        if len(shards) > 1:
            written.append(write_small_file(out_dir / INDEX_NAME, index_json(shards, names)))
        written.append(write_small_file(out_dir / "config.json", _config_bytes(base_dir, plan)))
        fsync_dir(out_dir)
    except OSError as e:
        _remove(written)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # the stage's hidden temporary: name where it goes
            where = out_dir.parent if temp_owner(out_dir) is not None else out_dir
            raise DiskFull(disk_full(where, detail="while writing the merged model; partial output "
                                     "removed, free space and retry")) from e
        raise UserError(f"{out_dir}: cannot write the merged model: {e.strerror or e}; partial output removed") from e
    except BaseException:
        _remove(written)
        raise
    return written


def _config_bytes(base_dir: Path, plan: MergePlan) -> bytes:
    """The base's config.json verbatim, unless the merge changed vocab_size or tie_word_embeddings."""
    import json

    if not plan.config_changed:
        return (base_dir / "config.json").read_bytes()
    return (json.dumps(plan.config, indent=2, sort_keys=True) + "\n").encode()


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
