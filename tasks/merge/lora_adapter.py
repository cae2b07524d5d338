"""Reading a PEFT LoRA adapter without torch: config checks, key normalisation, per-module scaling.

Everything here works on safetensors headers only, so an adapter can be validated (and refused) in
milliseconds before any output exists.  The tensors themselves are read lazily, one module at a time, by
the merge loop.

We refuse, up front and by name, every adapter option whose merge is not "W + scaling * B @ A" (or DoRA),
because silently producing a plausible-looking but wrong model is the worst outcome of a merge.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from tasks.core.errors import UserError
from tasks.formats.json_object import read_json_object
from tasks.formats.peft_adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from tasks.formats.safetensors import TensorInfo, read_header

# Options that only describe the adapter (or only matter while training) and never change the merge.
_HARMLESS = {
    "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode", "lora_dropout", "runtime_config", "megatron_core", "qalora_group_size",
    "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save",
    "eva_config", "corda_config", "lora_ga_config", "loftq_config", "ensure_weight_tying",
}
# Options we implement: read below.
_HANDLED = {"r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "fan_in_fan_out", "bias",
            "use_dora", "init_lora_weights"}
# Options that change the model in ways this merger does not reproduce; refused when set (truthy).
_REFUSED = {
    "trainable_token_indices": "trainable-token deltas are not merged by this tool",
    "layer_replication": "layer replication changes the model's structure",
    "lora_bias": "LoRA biases (lora_bias=true) are not merged by this tool",
    "target_parameters": "LoRA on raw nn.Parameters (target_parameters) is not supported",
    "megatron_config": "Megatron-parallel LoRA layers are not supported",
    "use_qalora": "QA-LoRA is not supported",
    "use_bdlora": "BD-LoRA is not supported",
    "velora_config": "VeLoRA is not supported",
    "monteclora_config": "MonteCLoRA is not supported",
    "arrow_config": "Arrow routing cannot be merged into static weights",
    "kasa_config": "KaSA is not supported",
    "alora_invocation_tokens": "activated LoRA only applies after its invocation tokens and cannot be merged",
}
# init_lora_weights values that leave the base weights alone (anything else rewrites them at load time).
_PLAIN_INITS = {True, False, "gaussian", "eva", "orthogonal"}
_ROLES = {"lora_A": "A", "lora_B": "B", "lora_embedding_A": "A", "lora_embedding_B": "B",
          "lora_magnitude_vector": "magnitude"}
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraSettings:
    """The parts of adapter_config.json that change merged values."""

    r: int
    alpha: float
    use_rslora: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    fan_in_fan_out: bool
    use_dora: bool
    ensure_weight_tying: bool

    def rank_and_scaling(self, module: str) -> tuple[int, float]:
        """peft's `_create_and_replace`: the first matching pattern wins, then alpha/r or alpha/sqrt(r)."""
        r = self.rank_pattern.get(_pattern_key(self.rank_pattern, module), self.r)
        alpha = self.alpha_pattern.get(_pattern_key(self.alpha_pattern, module), self.alpha)
        return r, (alpha / math.sqrt(r) if self.use_rslora else alpha / r)


def _pattern_key(patterns: dict[str, object], module: str) -> str:
    # Same regex as peft.utils.other.get_pattern_key, so rank/alpha patterns resolve identically.
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return module


@dataclass
class LoraModule:
    """The LoRA tensors of one adapted module; `embedding` marks nn.Embedding-style (lora_embedding_*)."""

    module: str
    embedding: bool = False
    A: TensorInfo | None = None
    B: TensorInfo | None = None
    magnitude: TensorInfo | None = None
    rank: int = 0
    scaling: float = 0.0


@dataclass
class Adapter:
    """A parsed adapter: LoRA modules by module path, and whole tensors that replace base tensors."""

    settings: LoraSettings
    modules: dict[str, LoraModule] = field(default_factory=dict)
    replacements: dict[str, TensorInfo] = field(default_factory=dict)


def weights_file(adapter_dir: Path) -> Path:
    """adapter_model.safetensors; a pickle (adapter_model.bin) is refused: loading one can run code."""
    path = adapter_dir / ADAPTER_WEIGHTS
    if not path.is_file():
        pickled = adapter_dir / "adapter_model.bin"
        if pickled.is_file():
            raise UserError(f"{pickled}: pickle adapters are refused (loading one can run code); re-save it as "
                            "safetensors (peft: save_pretrained(..., safe_serialization=True))")
        raise UserError(f"{path}: missing (a PEFT adapter needs adapter_model.safetensors)")
    return path


def read_lora_config(adapter_dir: Path) -> dict[str, object]:
    """adapter_config.json of a LoRA adapter: a JSON object, peft_type LORA, positive r and lora_alpha."""
    path = adapter_dir / ADAPTER_CONFIG
    cfg = read_json_object(path, "a PEFT adapter needs adapter_config.json")
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        raise UserError(f"{path}: peft_type: {cfg.get('peft_type')!r} is not supported (only LoRA adapters can be "
                        "merged; merge other PEFT types with peft's merge_and_unload)")
    for key in ("r", "lora_alpha"):
        value = cfg.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise UserError(f"{path}: {key}: expected a positive number, got {value!r}")
    return cfg


def load_settings(adapter_dir: Path) -> LoraSettings:
    """Parse adapter_config.json and refuse anything whose merge we do not reproduce exactly."""
    path = adapter_dir / ADAPTER_CONFIG
    cfg = read_lora_config(adapter_dir)
    for key, why in _REFUSED.items():
        if cfg.get(key):
            raise UserError(f"{path}: {key}={cfg[key]!r} is not supported: {why}")
    unknown = sorted(k for k, v in cfg.items() if k not in _HARMLESS | _HANDLED | set(_REFUSED) and v)
    if unknown:
        raise UserError(f"{path}: unknown option(s) {', '.join(unknown)}; cannot tell whether they change the merge")
    init = cfg.get("init_lora_weights", True)
    if init not in _PLAIN_INITS:
        raise UserError(f"{path}: init_lora_weights={init!r} rewrites the base weights when peft loads the adapter; "
                        "convert it to a plain LoRA first (peft's path_initial_model_for_weight_conversion)")
    if cfg.get("bias", "none") not in ("none", "all", "lora_only"):
        raise UserError(f"{path}: bias={cfg.get('bias')!r} is not a LoRA bias mode")
    try:
        settings = LoraSettings(
            r=int(cfg.get("r", 8)),
            alpha=cfg.get("lora_alpha", 8),
            use_rslora=bool(cfg.get("use_rslora", False)),
            rank_pattern={str(k): int(v) for k, v in (cfg.get("rank_pattern") or {}).items()},
            alpha_pattern={str(k): v for k, v in (cfg.get("alpha_pattern") or {}).items()},
            fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)),
            use_dora=bool(cfg.get("use_dora", False)),
            ensure_weight_tying=bool(cfg.get("ensure_weight_tying", False)),
        )
    except (TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: invalid r/lora_alpha/rank_pattern/alpha_pattern ({e})") from e
    ranks = [settings.r, *settings.rank_pattern.values()]
    alphas = [settings.alpha, *settings.alpha_pattern.values()]
    if min(ranks) <= 0 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in alphas):
        raise UserError(f"{path}: r must be positive and lora_alpha a number (got r={ranks}, alpha={alphas})")
    return settings


class AdapterKey(NamedTuple):
    """One stored adapter key, decoded."""

    target: str  # module path (LoRA tensors) or base tensor name (whole tensors)
    role: str | None  # "A", "B", "magnitude"; None for a whole tensor that replaces the base tensor
    adapter_name: str | None  # when the key spells it (`lora_A.default.weight`)
    wrapped: bool = False  # spelled with peft's `modules_to_save` infix


def normalise_key(key: str) -> AdapterKey:
    """Decode the spellings found in the wild.

    With or without `base_model.model.`, with or without the adapter name (`lora_A.default.weight`), and
    peft's infixes for wrapped base tensors (`base_layer`, `modules_to_save[.<name>]`).
    """
    name = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in _ROLES:
            rest = parts[i + 1:]
            has_weight = part in ("lora_A", "lora_B")
            if rest and rest[-1] == "bias" and has_weight:
                raise UserError(f"adapter tensor {key}: LoRA biases (lora_bias) are not supported")
            if has_weight or (rest and rest[-1] == "weight"):
                if not rest or rest[-1] != "weight":
                    break
                rest = rest[:-1]
            if len(rest) > 1:
                break
            return AdapterKey(".".join(parts[:i]), _ROLES[part], rest[0] if rest else None)
        if part.startswith(("lora_", "hada_", "lokr_", "ia3_", "vera_", "oft_", "boft_")) or part in (
            "trainable_tokens_delta", "trainable_tokens_original"
        ):
            break
    else:
        adapter_name, wrapped = None, "modules_to_save" in parts
        if wrapped:
            i = parts.index("modules_to_save")
            rest = parts[i + 1:]
            if not rest:
                raise UserError(f"adapter tensor {key}: malformed modules_to_save key")
            if len(rest) > 1:  # `modules_to_save.<adapter>.weight`; peft itself saves `modules_to_save.weight`
                adapter_name, rest = rest[0], rest[1:]
            parts = parts[:i] + rest
        return AdapterKey(".".join(p for p in parts if p != "base_layer"), None, adapter_name, wrapped)
    raise UserError(f"adapter tensor {key}: not a LoRA tensor this merger understands")


def load_adapter(adapter_dir: Path) -> Adapter:
    """Settings plus every adapter tensor's location, grouped by module, with ranks and scaling resolved."""
    settings = load_settings(adapter_dir)
    path = weights_file(adapter_dir)
    adapter = Adapter(settings)
    names: set[str] = set()
    plain: set[str] = set()
    wrapped_seen: set[str] = set()
    for key, info in read_header(path).items():
        if ".original_module." in f".{key}.":
            continue  # peft's frozen copy of a modules_to_save tensor: identical to the base tensor
        target, role, adapter_name, wrapped = normalise_key(key)
        if adapter_name is not None:
            names.add(adapter_name)
        if role is None:
            # peft saves resized modules_to_save layers twice, `X.weight` and `X.modules_to_save.weight`,
            # and loads only `X.weight`: the plain spelling wins; two keys of the same spelling are ambiguous.
            seen = wrapped_seen if wrapped else plain
            if target in seen:
                raise UserError(f"adapter tensor {key}: duplicates another tensor for {target}")
            seen.add(target)
            if not wrapped or target not in plain:
                adapter.replacements[target] = info
            continue
        mod = adapter.modules.setdefault(target, LoraModule(target))
        if getattr(mod, role) is not None:
            raise UserError(f"adapter tensor {key}: duplicates {getattr(mod, role).name}")
        setattr(mod, role, info)
        mod.embedding = mod.embedding or ".lora_embedding_" in f".{key}"
    if len(names) > 1:
        raise UserError(f"{path}: holds several adapters ({', '.join(sorted(names))}); save them separately")
    for mod in adapter.modules.values():
        _check_module(path, mod, settings)
    return adapter


def _check_module(path: Path, mod: LoraModule, settings: LoraSettings) -> None:
    """Shape-check one module's LoRA tensors against each other and the config (not yet the base)."""
    if mod.A is None or mod.B is None:
        raise UserError(f"{path}: module {mod.module} has only one of its two LoRA matrices")
    if len(mod.A.shape) != 2 or len(mod.B.shape) != 2:
        raise UserError(f"{path}: module {mod.module}: LoRA matrices {mod.A.name} {list(mod.A.shape)} and "
                        f"{mod.B.name} {list(mod.B.shape)} are not 2-D (convolution LoRA is not supported)")
    rank, mod.scaling = settings.rank_and_scaling(mod.module)
    if mod.A.shape[0] != rank or mod.B.shape[1] != rank:
        raise UserError(f"{path}: module {mod.module}: rank {rank} from adapter_config.json does not match "
                        f"{mod.A.name} {list(mod.A.shape)} and {mod.B.name} {list(mod.B.shape)}")
    mod.rank = rank
    if settings.use_dora != (mod.magnitude is not None):
        raise UserError(f"{path}: module {mod.module}: use_dora={settings.use_dora} in adapter_config.json but "
                        f"the magnitude vector is {'missing' if settings.use_dora else 'present'}")
    for t in (mod.A, mod.B, mod.magnitude):
        if t is not None and t.dtype not in ("F32", "F16", "BF16"):
            raise UserError(f"{path}: adapter tensor {t.name} has dtype {t.dtype}; expected F32, F16 or BF16")
