"""The render stage: deployment files for each target, from Jinja templates in templates/.

Templates render in Jinja's sandbox with StrictUndefined: a template typo fails the build
instead of writing an empty field, and a template cannot reach Python internals. Values from
models.toml reach the files only through quoting made for each format: Ollama's Modelfile
(tasks/deploy/modelfile.py, checked by parsing the result back), JSON/YAML strings (json.dumps), shell
words (shlex.quote). The Ollama TEMPLATE is derived from the model's own chat template
(tasks/deploy/ollama_template.py) and the memory planner vets the hardware fit (tasks/deploy/planner.py).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from tasks.core import atomic
from tasks.core.config.schema import Config, HardwareProfile
from tasks.core.errors import UserError
from tasks.core.stage import Stage, skipped_marker
from tasks.deploy import modelfile, planner


def environment(template_dir: Path) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=FileSystemLoader(str(template_dir)), undefined=StrictUndefined,
        keep_trailing_newline=True, autoescape=False, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
    env.filters["shquote"] = lambda v: shlex.quote(str(v))

    def ollama_quote(value: str, what: str) -> str:
        try:
            return modelfile.quote(value, what)
        except modelfile.ModelfileError as exc:
            raise UserError(str(exc)) from None

    env.filters["ollama_quote"] = ollama_quote
    return env


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def _token(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def special_tokens(merged: Path) -> dict[str, Any]:
    cfg = _json(merged / "tokenizer_config.json")
    return {k: _token(cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}


def chat_template(merged: Path) -> str | None:
    """The merged model's Jinja chat template, or None for a model without one (completion-only)."""
    path = merged / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    tpl = _json(merged / "tokenizer_config.json").get("chat_template")
    return tpl if isinstance(tpl, str) and tpl.strip() else None


def stop_tokens(merged: Path) -> list[str]:
    """End-of-generation strings: every eos id of the generation config, and the tokenizer's eos token."""
    gen = _json(merged / "generation_config.json")
    tokenizer = _json(merged / "tokenizer.json")
    by_id = {t["id"]: t["content"] for t in tokenizer.get("added_tokens", [])}
    ids = gen.get("eos_token_id")
    ids = ids if isinstance(ids, list) else [ids] if ids is not None else []
    stops = [by_id[i] for i in ids if i in by_id]
    eos = special_tokens(merged)["eos_token"]
    if isinstance(eos, str) and eos not in stops:
        stops.insert(0, eos)
    return stops


def _profile(params: dict[str, Any], name: str) -> HardwareProfile:
    return HardwareProfile(**params["hardware"][name])


def ollama_context(stage: Stage, merged: Path, eos_stops: list[str]) -> dict[str, Any]:
    """The Modelfile's values, or {"ollama_skipped": reason} when no TEMPLATE can be derived.

    A refusal costs only the Ollama target: the render stage writes `Modelfile.skipped` with
    the reason instead of a Modelfile, and every other target is still built.
    """
    from tasks.deploy.ollama_template import TemplateNotSupported, detect, raw_prompt_template
    from tasks.formats import gguf

    p, name = stage.params, stage.params["model"]
    notes: tuple[str, ...] = ()
    if "ollama_template" in stage.inputs:
        template = stage.inputs["ollama_template"].read_text(encoding="utf-8")
        family, family_stops, system_ok = "explicit (deploy.ollama_template), used as given: not checked", (), True
    else:
        source = chat_template(merged)
        if source is None:
            found = raw_prompt_template()
        else:
            try:
                adds_bos = gguf.adds_bos(stage.inputs["gguf"])
                found = detect(source, special_tokens(merged), adds_bos)
            except TemplateNotSupported as exc:
                return {"ollama_skipped": f"models.{name}: no Ollama TEMPLATE derived from its chat template: {exc}; "
                                          f"give one with models.{name}.deploy.ollama_template"}
        template, family_stops, system_ok, notes = found.template, found.stops, found.system_supported, found.notes
        family = found.family if found.family != "derived" else (
            f"derived from the model's chat template, identical to it on {found.proven} probe conversations "
            f"({', '.join(found.features)})")
    system = p["system"]
    if system is not None and not system_ok:
        raise UserError(f"models.{name}.system: the chat template of {name} rejects system messages; "
                        f"remove system or give a TEMPLATE with models.{name}.deploy.ollama_template")
    stops = list(dict.fromkeys([*family_stops, *eos_stops]))
    d = p["deploy"]
    values: list[tuple[str, Any]] = [("stop", s) for s in stops] + [("num_ctx", d["context"])]
    values += [(k, d[k]) for k in ("temperature", "top_p", "top_k", "repeat_penalty") if d[k] is not None]
    try:
        parameters = [(k, modelfile.parameter_value(k, v, f"models.{name}.deploy")) for k, v in values]
    except modelfile.ModelfileError as exc:
        raise UserError(str(exc)) from None
    return {"ollama_template": template, "ollama_family": family, "ollama_system": system,
            "ollama_notes": [" ".join(n.split()) for n in notes], "ollama_parameters": parameters,
            "ollama_stops": stops}


def template_stops(stage: Stage, merged: Path, eos_stops: list[str]) -> list[str]:
    """The stops Ollama would get (end of turn, turn openers), for LM Studio without an Ollama target."""
    from tasks.deploy.ollama_template import TemplateNotSupported, detect
    from tasks.formats import gguf

    source = chat_template(merged)
    if source is None or "gguf" not in stage.inputs:
        return eos_stops
    try:
        found = detect(source, special_tokens(merged), gguf.adds_bos(stage.inputs["gguf"]))
    except TemplateNotSupported:
        return eos_stops
    return list(dict.fromkeys([*found.stops, *eos_stops]))


def check_modelfile(text: str, ctx: dict[str, Any], name: str) -> None:
    """The rendered Modelfile must read back (with Ollama's parsing rules) to exactly what we meant."""
    try:
        commands = modelfile.parse(text)
    except modelfile.ModelfileError as exc:
        raise UserError(f"models.{name}: the rendered Modelfile does not parse: {exc}") from None
    got = {c: [v for k, v in commands if k == c] for c in ("model", "template", "system", "stop")}
    got["adapter"] = [v for k, v in commands if k == "adapter"]
    want = {"model": [f"./{ctx['gguf']}"], "template": [ctx["ollama_template"]],
            "adapter": [f"./{ctx['ollama_adapter']}"] if ctx.get("ollama_adapter") else [],
            "system": [] if ctx["ollama_system"] is None else [ctx["ollama_system"]], "stop": ctx["ollama_stops"]}
    for key, values in want.items():
        if got[key] != values:
            raise UserError(f"models.{name}: the rendered Modelfile reads back a different {key.upper()} "
                            f"({got[key]!r} instead of {values!r}); check templates/Modelfile.j2")


def lmstudio_config(p: dict[str, Any], system: str | None, stops: list[str]) -> dict[str, Any]:
    """LM Studio's per-model default config (KVConfig: operation = inference, load = load time)."""
    d = p["deploy"]
    ops: list[dict[str, Any]] = []
    if system is not None:
        ops.append({"key": "llm.prediction.systemPrompt", "value": system})
    if d["temperature"] is not None:
        ops.append({"key": "llm.prediction.temperature", "value": d["temperature"]})
    if d["top_k"] is not None:
        ops.append({"key": "llm.prediction.topKSampling", "value": d["top_k"]})
    if d["top_p"] is not None:
        ops.append({"key": "llm.prediction.topPSampling", "value": {"checked": True, "value": d["top_p"]}})
    if d["repeat_penalty"] is not None:
        ops.append({"key": "llm.prediction.repeatPenalty", "value": {"checked": True, "value": d["repeat_penalty"]}})
    if stops:
        ops.append({"key": "llm.prediction.stopStrings", "value": stops})
    load = [{"key": "llm.load.contextLength", "value": d["context"]}]
    return {"preset": "", "operation": {"fields": ops}, "load": {"fields": load}}


def plan_context(stage: Stage, merged: Path) -> dict[str, Any]:
    """Hardware checks: the GGUF at deploy.context, and vLLM settings chosen by the planner."""
    from tasks.deploy import vllm

    p, name, d = stage.params, stage.params["model"], stage.params["deploy"]
    shape = planner.model_shape(merged)
    out: dict[str, Any] = {"plan": {}}
    if d["hardware"] and "gguf" in stage.inputs:
        prof = _profile(p, d["hardware"])
        weights, source = planner.gguf_weight_bytes(shape, p["quant"], stage.inputs["gguf"])
        f = planner.fit(shape, prof, "gguf", p["quant"], weights, source)
        planner.require_fit(f, d["context"], prof, f"models.{name}.deploy")
        out["plan"]["gguf"] = {"profile": prof.name, "context": d["context"], "max_context": f.max_context,
                               "weights_bytes": weights, "kv_bytes_per_token": f.per_token}
    if p["vllm_profile"]:
        prof = _profile(p, p["vllm_profile"])
        cfg = _json(merged / "config.json")
        vp = vllm.plan(name, shape, cfg.get("dtype") or cfg.get("torch_dtype"), d["vllm"], prof, d["context"])
        port = d["port"] or vllm.CONTAINER_PORT
        out["vllm"] = vp
        out["vllm_args"] = vllm.server_args(vp, name, d["host"], port)
        out["vllm_container_args"] = ["--model", f"/models/{name}"] + vllm.server_args(
            vp, name, "0.0.0.0", vllm.CONTAINER_PORT)
        out["vllm_port"] = port
        out["plan"]["vllm"] = {"profile": prof.name, "dtype": vp.dtype, "max_model_len": vp.max_model_len,
                               "gpu_memory_utilization": vp.gpu_memory_utilization}
        if d["vllm"]["lora"]:
            rank = int(_json(stage.inputs["adapter_config"]).get("r", 8))
            lora = vllm.lora_args(name, p["adapter_rel"], rank)
            out["vllm_lora_args"] = [*lora, *vllm.server_args(vp, f"{name}-base", d["host"], port)]
            out["vllm_lora_container_args"] = ["--model", f"/models/{name}-base", *vllm.lora_args(
                name, f"/adapters/{name}", rank), *vllm.server_args(vp, f"{name}-base", "0.0.0.0", vllm.CONTAINER_PORT)]
    return out


def context(stage: Stage) -> dict[str, Any]:
    p = stage.params
    merged = stage.inputs["merged"]
    d = p["deploy"]
    eos = list(dict.fromkeys([*stop_tokens(merged), *d["stop"]]))
    ctx: dict[str, Any] = {
        "model": p["model"], "quant": p["quant"], "system": p["system"], "deploy": d,
        "publisher": d["publisher"], "stops": eos, "base_rel": p["base_rel"], "adapter_rel": p["adapter_rel"],
        "gguf": f"{p['model']}-{p['quant']}.gguf" if "gguf" in stage.inputs else None,
        "gguf_sha256": stage.input_digests()["gguf"] if "gguf" in stage.inputs else None,
        "lmstudio_files": [f"{p['model']}-{q}.gguf" for q in p["lmstudio_quants"]],
    }
    ctx.update(lora_context(stage))
    ctx.update(plan_context(stage, merged))
    if "ollama" in d["targets"]:
        ctx.update(ollama_context(stage, merged, eos))
        ctx["stops"] = ctx.get("ollama_stops", eos)
    elif "lmstudio" in d["targets"]:
        ctx["stops"] = template_stops(stage, merged, eos)
    ctx["lmstudio_config"] = lmstudio_config(p, p["system"], ctx["stops"])
    return ctx


def lora_context(stage: Stage) -> dict[str, Any]:
    """Adapter/both mode: serve the base's GGUF with the LoRA GGUF when the lora stage built one.

    In both mode the lora stage may have written `<file>.skipped` instead (DoRA, modules_to_save...):
    the model is then served merged, as in merged mode; adapter mode always has the file."""
    lora = stage.params.get("lora")
    if not lora:
        return {}
    path = stage.inputs["lora_manifest"].parent.parent / lora["file"]
    if not path.is_file():
        return {"ollama_adapter": None, "lora_mode": lora["mode"], "lora": None}
    from tasks.core.hashing import sha256_file

    return {"gguf": lora["base_gguf"], "gguf_sha256": stage.input_digests()["base_gguf"], "lora": lora["file"],
            "ollama_adapter": lora["file"], "ollama_adapter_sha256": sha256_file(path), "lora_mode": lora["mode"]}


def deploy_summary(ctx: dict[str, Any]) -> dict[str, Any]:
    """deploy.json: what deploy/serve/health need, in one reproducible file."""
    d = ctx["deploy"]
    return {
        "model": ctx["model"], "targets": d["targets"], "quant": ctx["quant"], "gguf": ctx["gguf"],
        "gguf_sha256": ctx["gguf_sha256"], "host": d["host"], "port": d["port"], "context": d["context"],
        "system": ctx["system"], "stops": ctx["stops"], "ollama_family": ctx.get("ollama_family"),
        **({"ollama_skipped": ctx["ollama_skipped"]} if "ollama_skipped" in ctx else {}),
        **({"lora": ctx["lora"]} if "lora" in ctx else {}),
        "lmstudio_files": ctx["lmstudio_files"] if "lmstudio" in d["targets"] else [],
        "plan": ctx["plan"],
    }


def build(stage: Stage, config: Config) -> None:
    ctx = context(stage)
    template_dirs = {path.parent for role, path in stage.inputs.items() if role.startswith("template:")}
    env = environment(next(iter(template_dirs))) if template_dirs else None
    for out in stage.outputs:
        if out.name == "Modelfile" and "ollama_skipped" in ctx:
            # Not a Modelfile: the reason there is none (see tasks.core.stage.skipped_marker).
            print(f"modelmake: {stage.task}: Ollama target skipped: {ctx['ollama_skipped']}", file=sys.stderr)
            for stale in (out, out.with_name(out.name + ".sha256")):
                stale.unlink(missing_ok=True)  # a Modelfile from an earlier build must not outlive this
            atomic.write_text(skipped_marker(out), ctx["ollama_skipped"] + "\n")
            continue
        skipped_marker(out).unlink(missing_ok=True)
        if out.name == "deploy.json":
            text = json.dumps(deploy_summary(ctx), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        else:
            assert env is not None
            adapter_tpl = out.name == "Modelfile" and "template:Modelfile-adapter" in stage.inputs
            text = env.get_template("Modelfile-adapter.j2" if adapter_tpl else f"{out.name}.j2").render(**ctx)
        if out.name == "Modelfile":
            check_modelfile(text, ctx, ctx["model"])
        atomic.write_text(out, text)
        if out.suffix == ".sh":
            out.chmod(0o755)
