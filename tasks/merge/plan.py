"""The merge decided before any byte is written: every output tensor, where it comes from, what to do to it.

Building the plan reads only headers and config files, so every "this adapter does not fit" error (wrong
shapes, unknown tensors, vocabulary mismatches, tied weights we will not touch) is raised here, cheaply,
and `merge_streaming` can promise not to write anything for an adapter that fails.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from tasks.core.errors import UserError
from tasks.formats.safetensors import TensorInfo, read_checkpoint
from tasks.merge.architecture import Layout, describe, read_config, vocab_size
from tasks.merge.lora_adapter import Adapter, LoraModule, load_adapter
from tasks.merge.shard_layout import OutTensor

FLOATS = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class Job:
    """One output tensor: start from `source`'s bytes, cast to `out.dtype`, then apply `lora` (if any)."""

    out: OutTensor
    source: TensorInfo
    lora: LoraModule | None = None
    kind: str = "copy"  # "copy", "cast", or the LoRA layer kind: "linear", "conv1d", "embedding"


@dataclass
class MergePlan:
    jobs: list[Job]
    config: dict  # config.json to write (the base's, updated)
    config_changed: bool
    notes: list[str] = field(default_factory=list)  # behaviour the user should hear about (warnings)


def build_plan(base_dir: Path, adapter_dir: Path) -> MergePlan:
    """Read headers and configs of both sides and check that the adapter fits the base."""
    config = read_config(base_dir)
    base = read_checkpoint(base_dir)
    adapter = load_adapter(adapter_dir)
    layout = describe(base_dir, config, set(base), exact=_touches_vocabulary(base, adapter, config))
    return _Planner(base, adapter, layout, config).plan()


def _touches_vocabulary(base: dict[str, TensorInfo], adapter: Adapter, config: dict) -> bool:
    """Does the adapter change anything tying or vocabulary rules apply to (so the real architecture matters)?"""
    vocab = vocab_size(config)
    for name in [*adapter.replacements, *(f"{m}.weight" for m in adapter.modules)]:
        info = base.get(name)
        if info is None or (vocab is not None and info.shape[:1] == (vocab,)):
            return True  # unknown to the base (e.g. a tied head) or vocabulary-sized
        if any(part in name.split(".") for part in ("embed_tokens", "lm_head", "wte", "word_embeddings")):
            return True
    return False


class _Planner:
    def __init__(self, base: dict[str, TensorInfo], adapter: Adapter, layout: Layout, config: dict) -> None:
        self.base, self.adapter, self.layout, self.config = base, adapter, layout, config
        # Tied tensors that the checkpoint does not store (the usual case): tied name -> stored source.
        self.tied = {t: s for t, s in ((t, self.resolve(s)) for t, s in layout.tied.items())
                     if s is not None and self.resolve(t) is None}
        self.sources: dict[str, TensorInfo] = dict(base)
        self.loras: dict[str, LoraModule] = {}
        self.kinds: dict[str, str] = {}
        self.extra: dict[str, TensorInfo] = {}  # tensors written on top of the base's (untied heads)
        self.notes: list[str] = []
        self.config_updates: dict[str, object] = {}

    def resolve(self, name: str) -> str | None:
        """The base's spelling of `name`; tolerates checkpoints saved without the base_model_prefix."""
        if name in self.base:
            return name
        prefix = f"{self.layout.prefix}." if self.layout.prefix else None
        if prefix and name.startswith(prefix) and name[len(prefix):] in self.base:
            return name[len(prefix):]
        if prefix and prefix + name in self.base:
            return prefix + name
        return None

    def plan(self) -> MergePlan:
        replaced = {self._place_replacement(k, info): info for k, info in self.adapter.replacements.items()}
        self._tie_replacements(replaced)
        for mod in self.adapter.modules.values():
            self._place_lora(mod)
        self._check_vocab()
        jobs = [self._job(name, base_info) for name, base_info in self.base.items()]
        jobs += [self._job(name, None) for name in self.extra]
        config = copy.deepcopy(self.config)
        for key, value in self.config_updates.items():
            for cfg in (config, config.get("text_config")):
                if isinstance(cfg, dict) and (key in cfg or cfg is config):
                    cfg[key] = value
        return MergePlan(jobs, config, bool(self.config_updates), self.notes)

    def _place_replacement(self, key: str, info: TensorInfo) -> str:
        """Whole tensors from the adapter (modules_to_save, saved base layers, biases) replace base tensors."""
        name = self.resolve(key) or (key if key in self.tied else None)
        if name is None:
            raise UserError(f"adapter tensor {info.name} {list(info.shape)}: the base model has no tensor {key}")
        base = self.base.get(name) or self.base[self.tied[name]]
        resized = (len(info.shape) == 2 and len(base.shape) == 2 and info.shape[1] == base.shape[1]
                   and info.shape[0] != base.shape[0] and (name in self.layout.embeddings or name in self.tied))
        if info.shape != base.shape and not resized:
            raise UserError(f"adapter tensor {info.name} has shape {list(info.shape)} but base tensor {name} has "
                            f"shape {list(base.shape)}")
        if info.dtype != base.dtype and not (info.dtype in FLOATS and base.dtype in FLOATS):
            raise UserError(f"adapter tensor {info.name} is {info.dtype} but base tensor {name} is {base.dtype}")
        return name

    def _tie_replacements(self, replaced: dict[str, TensorInfo]) -> None:
        """Mirror peft for modules_to_save on tied embeddings: stay tied only if the adapter kept them tied."""
        for head, emb in self.tied.items():
            new_head, new_emb = replaced.pop(head, None), replaced.get(emb)
            if new_head is None and new_emb is None:
                continue
            if self.adapter.settings.ensure_weight_tying:
                self.sources[emb] = new_emb or new_head  # trained as one shared tensor: still tied
                continue
            # Trained as two tensors (peft's modules_to_save copy is not tied to the other side), and peft's
            # merge_and_unload writes them untied, flipping tie_word_embeddings; do the same, loudly.
            self.extra[head] = new_head or self.base[emb]
            self.config_updates["tie_word_embeddings"] = False
            self.notes.append(f"{emb} and {head} were tied in the base, but the adapter replaces only "
                              f"{'both separately' if new_head and new_emb else (emb if new_emb else head)}; "
                              "writing both and setting tie_word_embeddings=false, as peft's merge_and_unload does")
        self.sources.update(replaced)

    def _place_lora(self, mod: LoraModule) -> None:
        key = f"{mod.module}.weight"
        name = self.resolve(key)
        tied_with = {e: h for h, e in self.tied.items()}.get(name) if name else None
        if key in self.tied or tied_with:
            other = self.tied.get(key) or tied_with
            raise UserError(
                f"adapter applies LoRA to {mod.module}, whose weight is tied to {other} (tie_word_embeddings): "
                f"merging would change {other} too, which the adapter did not train (peft's merge_and_unload does "
                "that silently, or twice with ensure_weight_tying); untie the base first, e.g. save it with "
                "tie_word_embeddings=false")
        if name is None:
            raise UserError(f"adapter has LoRA weights {mod.A.name} for module {mod.module}, but the base model has "
                            f"no tensor {key}")
        src = self.sources[name]
        kind = self._kind(mod, src)
        # nn.Linear stores (out, in); Conv1D (in, out); nn.Embedding (num_embeddings, dim) = (A cols, B rows)
        expect = (mod.B.shape[0], mod.A.shape[1]) if kind == "linear" else (mod.A.shape[1], mod.B.shape[0])
        if src.shape != expect:
            raise UserError(f"adapter does not fit the base: {name} is {list(src.shape)} in the base but "
                            f"{mod.B.name} {list(mod.B.shape)} @ {mod.A.name} {list(mod.A.shape)} makes {list(expect)}")
        if mod.magnitude is not None and mod.magnitude.shape != (mod.B.shape[0],):
            raise UserError(f"adapter does not fit the base: DoRA magnitude {mod.magnitude.name} is "
                            f"{list(mod.magnitude.shape)}, {name} {list(src.shape)} needs [{mod.B.shape[0]}]")
        if src.dtype not in FLOATS:
            raise UserError(f"base tensor {name} is {src.dtype}: only F32/F16/BF16 weights can be merged "
                            "(quantized bases are not supported)")
        self.loras[name] = mod
        self.kinds[name] = kind

    def _kind(self, mod: LoraModule, src: TensorInfo) -> str:
        """peft's per-layer dispatch; shapes and the config flag only when the architecture is unknown."""
        kind = self.layout.module_kinds.get(mod.module)
        if kind is None and not self.layout.conv1d_possible:
            return "embedding" if mod.embedding else "linear"
        if kind is None and self.layout.module_kinds:
            raise UserError(f"adapter targets {mod.module}, which is not a module of this base architecture")
        if kind is None:  # fallback layout
            if mod.embedding:
                return "embedding"
            out_in, in_out = (mod.B.shape[0], mod.A.shape[1]), (mod.A.shape[1], mod.B.shape[0])
            if out_in == in_out:
                return "conv1d" if self.adapter.settings.fan_in_fan_out else "linear"
            return "conv1d" if src.shape == in_out else "linear"
        if mod.embedding != (kind == "embedding") or kind not in ("linear", "conv1d", "embedding"):
            what = "lora_embedding_A/B" if mod.embedding else "lora_A/B"
            raise UserError(f"adapter has {what} tensors for {mod.module}, a {kind} layer: only Linear, Conv1D and "
                            "Embedding LoRA can be merged")
        return kind

    def _check_vocab(self) -> None:
        """Resized vocabularies must be resized everywhere; config.json then gets the new vocab_size."""
        rows = {}
        for name in self.layout.embeddings:
            stored = self.resolve(name)
            if stored is not None:
                rows[stored] = self.sources[stored].shape[0]
            elif name in self.extra:
                rows[name] = self.extra[name].shape[0]
        if len(set(rows.values())) > 1:
            detail = ", ".join(f"{n} has {r} rows" for n, r in sorted(rows.items()))
            raise UserError(f"adapter leaves the vocabulary inconsistent: {detail} (resize every embedding)")
        old = vocab_size(self.config)
        if rows and old is not None and (new := next(iter(rows.values()))) != old:
            self.config_updates["vocab_size"] = new
            self.notes.append(f"vocabulary resized by the adapter: vocab_size {old} -> {new}")

    def _job(self, name: str, base_info: TensorInfo | None) -> Job:
        src = self.sources[name] if base_info is not None else self.extra[name]
        dtype = (base_info or self.base[self.tied[name]]).dtype
        out = OutTensor(name, dtype, src.shape)
        if name in self.loras:
            return Job(out, src, self.loras[name], self.kinds[name])
        return Job(out, src, None, "copy" if src.dtype == dtype else "cast")
