"""An Ollama TEMPLATE for a model, derived from the model's own Jinja chat template and proven.

A fine-tune pushed to Ollama without the right TEMPLATE talks garbage (ollama #6823, #2334,
#6330), and guessing from a token or two is how that happens. So the TEMPLATE is derived from
renders of the model's Jinja (tasks/deploy/ollama_synth.py) and accepted only when Ollama's way of
executing it gives the identical prompt on every probe conversation: system or none,
multi-turn, prefill, reasoning shown or dropped, thinking on/off, and tool definitions, calls
and results where the template renders them. What cannot be reproduced is refused with one
line naming the construct; models.toml can always give a TEMPLATE (deploy.ollama_template).

Dates: the Jinja's `strftime_now` runs on a pinned clock (2024-07-26); a date it prints as
YYYY-MM-DD becomes Ollama's `{{ currentDate }}` (or `yesterdayDate`), any other format stays
pinned and the Modelfile says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tasks.deploy.ollama_probe import PINNED_DATE, JinjaModel, think_switch

RAW_PROMPT = "{{ .Prompt }}"


class TemplateNotSupported(Exception):
    """No TEMPLATE reproduces the model's template; the message says what it does."""


@dataclass(frozen=True)
class OllamaTemplate:
    family: str  # "derived", or how the TEMPLATE was obtained
    template: str  # Go text/template for Ollama's TEMPLATE
    stops: tuple[str, ...]  # PARAMETER stop strings (end of turn, then turn openers)
    system_supported: bool
    proven: int = 0  # probe conversations it was proven identical on
    features: tuple[str, ...] = ()  # what the probes covered: chat, prefill, thinking, tools
    notes: tuple[str, ...] = ()  # pinned dates, conversations the model's own template rejects
    probes: tuple[Any, ...] = field(default=(), compare=False)  # the probes (tasks.deploy.ollama_probe.Probe) proven on


def raw_prompt_template() -> OllamaTemplate:
    """For a model without a chat template (a completion fine-tune): the prompt as given."""
    return OllamaTemplate(family="raw prompt (the model has no chat template)", template=RAW_PROMPT, stops=(),
                          system_supported=False,
                          notes=("no chat template: nothing to check the TEMPLATE against",))


def detect(chat_template: str, special_tokens: dict[str, Any], gguf_adds_bos: bool) -> OllamaTemplate:
    """The proven TEMPLATE for `chat_template`, or TemplateNotSupported (one line, no traceback)."""
    from tasks.deploy.ollama_synth import Refused, derive_all

    try:
        jinja = JinjaModel(chat_template, dict(special_tokens), think_switch(chat_template))
    except Exception as exc:  # noqa: BLE001 - a template transformers cannot even inspect
        raise TemplateNotSupported(f"the chat template does not parse: {_line(exc)}") from None
    bos = special_tokens.get("bos_token") or ""
    try:
        d = derive_all(jinja, bos if gguf_adds_bos else "")
    except Refused as exc:
        raise TemplateNotSupported(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - never a traceback for a template, whatever it does
        raise TemplateNotSupported(f"modelmake could not analyse it ({_line(exc)})") from None
    notes = list(d.notes)
    if d.rejected:
        names = sorted({n.split(",")[0] for n in d.rejected})
        notes.append(f"the model's own template rejects {len(d.rejected)} probe conversation(s) "
                     f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}): {next(iter(d.rejected.values()))}")
    system_ok = any(p.messages and p.messages[0]["role"] == "system" for p in d.probes)
    return OllamaTemplate(family="derived", template=d.template, stops=tuple(d.stops), system_supported=system_ok,
                          proven=len(d.probes), features=tuple(d.covered), notes=tuple(notes),
                          probes=tuple(d.probes))


def _line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


__all__ = ["PINNED_DATE", "OllamaTemplate", "TemplateNotSupported", "detect", "raw_prompt_template"]
