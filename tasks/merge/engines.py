"""The merge stage's builder: adapter + base -> a merged Hugging Face model directory.

Engines: "peft" loads the whole model and calls merge_and_unload (the reference); "stream"
merges tensor by tensor in bounded memory (tasks.merge.stream). Either way the directory gets
the base's tokenizer and chat template files and is written under a temporary name and renamed
into place whole.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tasks.core import atomic
from tasks.core.config.schema import Config
from tasks.core.stage import Stage

SHARD_SIZE = "2GB"
# Files of a base model or adapter that are not weights but must travel with the merged model.
SUPPORT_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "generation_config.json",
)


def copy_support_files(base_dir: Path, adapter_dir: Path, out: Path) -> None:
    """Tokenizer, chat template and generation config: the adapter's copy wins (it may add tokens)."""
    for name in SUPPORT_FILES:
        for src in (adapter_dir / name, base_dir / name):
            if src.is_file():
                shutil.copyfile(src, out / name)
                break


def normalise_config(out: Path) -> None:
    """Drop fields that record where the model was loaded from: the output must not depend on it."""
    path = out / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("_name_or_path", None)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def merge_with_peft(base_dir: Path, adapter_dir: Path, out: Path) -> None:
    import peft
    import torch
    import transformers

    torch.set_num_threads(1)  # the delta's float reductions must not depend on the machine
    model = transformers.AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto")
    model = peft.PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.save_pretrained(str(out), max_shard_size=SHARD_SIZE)
    # save_pretrained writes a generation_config of its own; the source's is copied over it below.


def build(stage: Stage, config: Config) -> None:
    base_dir = stage.inputs["base"]
    adapter_dir = stage.inputs["adapter_config"].parent
    (final,) = stage.outputs
    with atomic.atomic_dir(final) as tmp:
        if stage.params["engine"] == "stream":
            from tasks.merge.stream import merge_streaming

            merge_streaming(base_dir, adapter_dir, tmp, progress=True)
        else:
            merge_with_peft(base_dir, adapter_dir, tmp)
        copy_support_files(base_dir, adapter_dir, tmp)
        normalise_config(tmp)
