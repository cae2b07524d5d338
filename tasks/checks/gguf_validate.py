"""GGUF validity: is this file the merged model, in the type it claims, with its tokenizer?

Checked against the merged Hugging Face directory (the reference), not against itself:
architecture and hyperparameters against config.json; every tensor and its shape against the
safetensors headers mapped through gguf-py's tensor name map; the tokenizer model and
pre-tokenizer against what llama.cpp's converter derives from the HF tokenizer; the chat
template and stop ids against the merged model's own files; the byte size against the sum of
the tensors' sizes for their ggml types. Each problem is one sentence naming the field.
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from tasks.core.quant_types import QUANT_FTYPES, base_type
from tasks.formats.gguf import Scan, ScanError, scan
from tasks.formats.safetensors import read_header

# HF architecture class -> llama.cpp architecture name (the converter's mapping, for the
# architectures modelmake builds and tests; others fall back to config.model_type).
ARCHITECTURES = {
    "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama", "Phi3ForCausalLM": "phi3", "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2", "StableLmForCausalLM": "stablelm",
}
OUTTYPE_FTYPES = {"f16": 1, "bf16": 32}
# (config.json key, GGUF key suffix) pairs that must agree.
HPARAMS = (
    ("num_hidden_layers", "block_count"), ("hidden_size", "embedding_length"),
    ("intermediate_size", "feed_forward_length"), ("num_attention_heads", "attention.head_count"),
    ("num_key_value_heads", "attention.head_count_kv"),
)
# Tensors the converter may add that have no HF counterpart.
EXTRA_TENSOR_PREFIXES = ("rope_freqs", "rope_factors")
# Bits per weight of the dominant tensors of each GGUF type (llama.cpp's own figures).
NOMINAL_BPW = {
    "f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q6_k": 6.5625, "q5_k_m": 5.5, "q5_k_s": 5.5, "q5_0": 5.5,
    "q5_1": 6.0, "q4_k_m": 4.5, "q4_k_s": 4.5, "q4_0": 4.5, "q4_1": 5.0, "q3_k_l": 3.4375, "q3_k_m": 3.4375,
    "q3_k_s": 3.4375, "q2_k": 2.625, "iq4_nl": 4.5, "iq4_xs": 4.25,
}


@dataclass
class HFReference:
    """What the merged HF directory says the GGUF must contain."""

    config: dict[str, Any]
    tensors: dict[str, tuple[int, ...]]  # HF name -> shape
    tokenizer_model: str | None  # "gpt2" (byte-level BPE) | "llama" (SentencePiece) | None: unknown
    expected_pre: str | None  # the converter's pre-tokenizer name for this tokenizer; None: not derivable
    chat_template: str | None
    eos_id: int | None
    bos_id: int | None
    stop_ids: list[int] = field(default_factory=list)  # generation_config eos ids: must all end a turn


def _safetensors_shapes(merged: Path) -> dict[str, tuple[int, ...]]:
    return {name: info.shape for f in sorted(merged.glob("*.safetensors")) for name, info in read_header(f).items()}


def tokenizer_model_of(tokenizer_json: dict[str, Any]) -> str | None:
    """llama.cpp's tokenizer model name for a tokenizers JSON (as the converter chooses it)."""
    model = tokenizer_json.get("model", {}).get("type")
    text = json.dumps({k: tokenizer_json.get(k) for k in ("pre_tokenizer", "decoder")})
    if model == "BPE" and "ByteLevel" in text:
        return "gpt2"
    if model in ("BPE", "Unigram") and (tokenizer_json["model"].get("byte_fallback") or "Metaspace" in text
                                        or "\u2581" in json.dumps(tokenizer_json.get("normalizer"))):
        return "llama"
    return None


@lru_cache(maxsize=1)
def converter_pre_table(base_py: Path) -> tuple[str, dict[str, str]]:
    """(chktxt, {chkhsh: pre}) read from the pinned converter's get_vocab_base_pre, by parsing its AST."""
    tree = ast.parse(base_py.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "get_vocab_base_pre":
            chktxt, table = None, {}
            for sub in ast.walk(node):
                if isinstance(sub, ast.Assign) and getattr(sub.targets[0], "id", None) == "chktxt":
                    chktxt = ast.literal_eval(sub.value)
                if isinstance(sub, ast.If) and isinstance(sub.test, ast.Compare):
                    right = sub.test.comparators[0]
                    if getattr(sub.test.left, "id", None) == "chkhsh" and isinstance(right, ast.Constant):
                        for stmt in sub.body:
                            if isinstance(stmt, ast.Assign) and getattr(stmt.targets[0], "id", None) == "res":
                                table[right.value] = ast.literal_eval(stmt.value)
            if chktxt is None or not table:
                break
            return chktxt, table
    raise ValueError(f"{base_py}: get_vocab_base_pre not found: the converter changed shape")


def expected_pre(hf_tokenizer: Any, base_py: Path) -> str | None:
    """The pre-tokenizer name llama.cpp's converter assigns to this HF tokenizer (byte-level BPE)."""
    chktxt, table = converter_pre_table(base_py)
    chkhsh = hashlib.sha256(str(hf_tokenizer.encode(chktxt)).encode()).hexdigest()
    return table.get(chkhsh)


def hf_reference(merged: Path, hf_tokenizer: Any, converter_base_py: Path) -> HFReference:
    config = json.loads((merged / "config.json").read_text(encoding="utf-8"))
    tok_json_path = merged / "tokenizer.json"
    tok_json = json.loads(tok_json_path.read_text(encoding="utf-8")) if tok_json_path.is_file() else {}
    tmodel = tokenizer_model_of(tok_json) if tok_json else None
    pre = expected_pre(hf_tokenizer, converter_base_py) if tmodel == "gpt2" else None
    template_path = merged / "chat_template.jinja"
    template = template_path.read_text(encoding="utf-8") if template_path.is_file() else hf_tokenizer.chat_template
    stops: list[int] = []
    gen_path = merged / "generation_config.json"
    if gen_path.is_file():
        ids = json.loads(gen_path.read_text(encoding="utf-8")).get("eos_token_id")
        stops = [i for i in (ids if isinstance(ids, list) else [ids]) if isinstance(i, int)]
    return HFReference(
        config=config, tensors=_safetensors_shapes(merged), tokenizer_model=tmodel, expected_pre=pre,
        chat_template=template, eos_id=hf_tokenizer.eos_token_id, bos_id=hf_tokenizer.bos_token_id, stop_ids=stops,
    )


def _expected_ggml_type(gtype: str) -> str:
    if gtype in OUTTYPE_FTYPES:
        return gtype.upper()
    parts = gtype.upper().split("_")
    return "_".join(parts[:2]) if len(parts) > 2 or parts[-1] in ("S", "M", "L") else gtype.upper()


def validate(path: Path, gtype: str, ref: HFReference) -> tuple[dict[str, Any], list[str]]:
    """Facts about the GGUF at `path` (claimed type `gtype`) and the problems found (empty: valid)."""
    facts: dict[str, Any] = {"file": path.name, "type": gtype, "size": path.stat().st_size}
    gtype = base_type(gtype)  # a no-matrix twin ("q2_k-noimatrix") is checked as its llama.cpp type
    try:
        sc: Scan = scan(path)
    except ScanError as exc:
        facts["readable"] = False  # nothing else can be checked, and llama.cpp must not be asked to load it
        return facts, [f"{path.name}: {exc}"]
    facts.update(readable=True, version=sc.version, tensors=len(sc.tensors))
    problems: list[str] = []
    slack = sc.file_size - sc.data_end
    if slack > max(sc.alignment, 4096):
        problems.append(f"{path.name}: {slack} bytes after the last tensor's data (expected at most padding)")
    reader = sc
    arch = reader.get("general.architecture")
    facts["architecture"] = arch
    hf_arch = (ref.config.get("architectures") or [None])[0]
    want_arch = ARCHITECTURES.get(hf_arch, ref.config.get("model_type"))
    if arch != want_arch:
        problems.append(f"{path.name}: general.architecture is {arch!r}, the merged model is {hf_arch} ({want_arch!r})")
    for cfg_key, suffix in HPARAMS:
        want = ref.config.get(cfg_key)
        if cfg_key == "num_key_value_heads" and want is None:
            want = ref.config.get("num_attention_heads")
        got = reader.get(f"{arch}.{suffix}")
        if want is not None and got is not None and int(got) != int(want):
            problems.append(f"{path.name}: {arch}.{suffix} is {got}, config.json {cfg_key} is {want}")
    ftype = reader.get("general.file_type")
    want_ftype = OUTTYPE_FTYPES.get(gtype, QUANT_FTYPES.get(gtype))
    facts["file_type"] = ftype
    if ftype != want_ftype:
        problems.append(f"{path.name}: general.file_type is {ftype}, expected {want_ftype} for {gtype}")
    problems += _check_tensors(path.name, reader, gtype, ref, arch, facts)
    problems += _check_tokenizer(path.name, reader, ref, facts)
    return facts, problems


def _check_tensors(name: str, reader: Scan, gtype: str, ref: HFReference, arch: Any,
                   facts: dict[str, Any]) -> list[str]:
    import gguf

    problems: list[str] = []
    got = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    n_layers = int(ref.config.get("num_hidden_layers", 0))
    indices = {int(n.split(".")[1]) for n in got if n.startswith("blk.")}
    if indices != set(range(n_layers)):
        problems.append(f"{name}: has blocks {sorted(indices)[:8]}..., config.json num_hidden_layers is {n_layers}")
    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(arch)
    expected: dict[str, tuple[int, ...]] = {}
    unmapped: list[str] = []
    if arch_enum is not None:
        tmap = gguf.get_tensor_name_map(arch_enum, n_layers)
        for hf_name, shape in ref.tensors.items():
            gname = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gname is None:
                unmapped.append(hf_name)
            else:
                expected[gname] = tuple(reversed(shape))
    if arch_enum is None or unmapped:
        # No name map for this architecture in gguf-py: fall back to counting tensors.
        facts["tensor_check"] = "count"
        if len(got) < len(ref.tensors):
            problems.append(f"{name}: {len(got)} tensors, the merged model has {len(ref.tensors)}")
    else:
        facts["tensor_check"] = "names+shapes"
        missing = sorted(set(expected) - set(got))
        extra = sorted(n for n in set(got) - set(expected) if not n.startswith(EXTRA_TENSOR_PREFIXES))
        if missing:
            problems.append(f"{name}: missing {len(missing)} tensors of the merged model, e.g. {missing[:3]}")
        if extra:
            problems.append(f"{name}: {len(extra)} tensors the merged model does not have, e.g. {extra[:3]}")
        wrong = [n for n in expected if n in got and got[n] != expected[n]]
        for n in wrong[:3]:
            problems.append(f"{name}: tensor {n} has shape {list(got[n])}, the merged model's is {list(expected[n])}")
    vocab = ref.config.get("vocab_size")
    if "token_embd.weight" in got and vocab and got["token_embd.weight"][-1] != vocab:
        problems.append(f"{name}: token_embd.weight has {got['token_embd.weight'][-1]} rows, vocab_size is {vocab}")
    # Size: plausible bits per weight for the claimed type, and the type actually present.
    n_elem = sum(int(t.n_elements) for t in reader.tensors)
    n_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    bpw = 8 * n_bytes / n_elem if n_elem else 0.0
    facts["bits_per_weight"] = round(bpw, 4)
    nominal = NOMINAL_BPW.get(gtype)
    high = 17.0 if gtype in OUTTYPE_FTYPES else 16.0
    if nominal is not None and not nominal * 0.95 <= bpw <= high:
        problems.append(f"{name}: {bpw:.2f} bits per weight is implausible for {gtype} (nominal {nominal})")
    types = {t.type_name for t in reader.tensors}
    want_type = _expected_ggml_type(gtype)
    if want_type not in types:
        problems.append(f"{name}: no tensor of type {want_type} in a {gtype} file (types: {', '.join(sorted(types))})")
    return problems


def _check_tokenizer(name: str, reader: Scan, ref: HFReference, facts: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    tmodel = reader.get("tokenizer.ggml.model")
    pre = reader.get("tokenizer.ggml.pre")
    n_tokens = reader.get("tokenizer.ggml.tokens")
    facts.update(tokenizer_model=tmodel, pre_tokenizer=pre, expected_pre_tokenizer=ref.expected_pre, tokens=n_tokens)
    if tmodel is None or not n_tokens:
        return [f"{name}: no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens missing)"]
    if ref.tokenizer_model and tmodel != ref.tokenizer_model:
        problems.append(f"{name}: tokenizer.ggml.model is {tmodel!r}, the HF tokenizer is {ref.tokenizer_model!r}")
    if tmodel == "gpt2":
        if ref.expected_pre is None:
            problems.append(f"{name}: llama.cpp's converter does not recognise this BPE pre-tokenizer (pre {pre!r})")
        elif pre != ref.expected_pre:
            problems.append(f"{name}: tokenizer.ggml.pre is {pre!r}, the HF tokenizer's pre-tokenizer is "
                            f"{ref.expected_pre!r}")
    vocab = ref.config.get("vocab_size")
    if vocab and n_tokens != vocab:
        problems.append(f"{name}: {n_tokens} tokens, config.json vocab_size is {vocab}")
    template = reader.get("tokenizer.chat_template")
    facts["chat_template"] = template is not None
    if template is None and ref.chat_template is not None:
        problems.append(f"{name}: no chat template (tokenizer.chat_template missing)")
    elif ref.chat_template is not None and template.strip() != ref.chat_template.strip():
        problems.append(f"{name}: tokenizer.chat_template differs from the merged model's chat template")
    eos = reader.get("tokenizer.ggml.eos_token_id")
    bos = reader.get("tokenizer.ggml.bos_token_id")
    facts.update(eos_id=eos, bos_id=bos)
    if eos is None:
        problems.append(f"{name}: no end-of-sequence token (tokenizer.ggml.eos_token_id missing)")
    elif ref.eos_id is not None and eos != ref.eos_id and eos not in ref.stop_ids:
        problems.append(f"{name}: tokenizer.ggml.eos_token_id is {eos}, the HF tokenizer's eos is {ref.eos_id}")
    if bos is not None and ref.bos_id is not None and bos != ref.bos_id:
        problems.append(f"{name}: tokenizer.ggml.bos_token_id is {bos}, the HF tokenizer's bos is {ref.bos_id}")
    facts["tokenizer_digest"] = reader.tokenizer_digest
    return problems


def check_stops(name: str, llama: Any, ref: HFReference) -> tuple[list[int], list[str]]:
    """Every stop id of the merged model must end generation in llama.cpp (is end-of-generation)."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    stops = sorted(set(ref.stop_ids) | ({ref.eos_id} if ref.eos_id is not None else set()))
    not_eog = [i for i in stops if not llama_cpp.llama_vocab_is_eog(vocab, i)]
    return stops, [f"{name}: token {i} ends a turn in the merged model but llama.cpp does not stop on it"
                   for i in not_eog]
