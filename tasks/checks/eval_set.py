"""The shared evaluation set: chat samples rendered and tokenized once, fed to every runtime.

Every comparison (HF vs GGUF logits, F16 vs each quant, the adapter's effect) runs on the same
token ids: both runtimes see identical input, so any difference is the model's, never the
tokenizer's (tokenizer parity is checked separately). Each sample is a conversation whose last
message is the reference answer; its positions split into the prompt and the answer, and the
answer positions are where a chat model is actually used. A model without a chat template (a
completion fine-tune) gets the same samples as plain text (`plain_text`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.errors import UserError


@dataclass(frozen=True)
class Probe:
    ids: list[int]  # the whole conversation, as the chat template renders it
    answer_start: int  # index of the first answer token (positions answer_start-1.. predict it)
    answer_end: int  # index just after the answer's end-of-turn token

    @property
    def prompt(self) -> list[int]:
        return self.ids[:self.answer_start]

    @property
    def answer(self) -> list[int]:
        return self.ids[self.answer_start:self.answer_end]


def load_samples(path: Path) -> list[list[dict[str, str]]]:
    """Conversations from a JSONL file of {"messages": [...]} ending with the assistant's answer."""
    samples = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: evaluation samples not found") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path}:{i}: expected a JSON object with a 'messages' list") from None
        if not messages or messages[-1].get("role") != "assistant":
            raise UserError(f"{path}:{i}: the last message must be the assistant's reference answer")
        samples.append(messages)
    if not samples:
        raise UserError(f"{path}: no samples")
    return samples


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Tokenize rendered chat text as a deployment does: special tokens parsed, BOS once if the model uses one."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]  # the template already wrote the BOS token
    return ids


def plain_text(conv: list[dict[str, str]], eos: str | None) -> tuple[str, str]:
    """(prompt, full) for a model without a chat template (a completion fine-tune): the messages'
    texts one paragraph each, the answer continuing the prompt and ending with EOS."""
    prompt = "".join(m["content"] + "\n\n" for m in conv[:-1])
    return prompt, prompt + conv[-1]["content"] + (eos or "")


def probes(tokenizer: Any, samples: list[list[dict[str, str]]]) -> list[Probe]:
    out = []
    chat = bool(getattr(tokenizer, "chat_template", None))
    for conv in samples:
        if chat:
            prompt_text = tokenizer.apply_chat_template(conv[:-1], tokenize=False, add_generation_prompt=True)
            full_text = tokenizer.apply_chat_template(conv, tokenize=False)
        else:
            prompt_text, full_text = plain_text(conv, tokenizer.eos_token)
        full = _encode(tokenizer, full_text)
        prompt = _encode(tokenizer, prompt_text)
        start = 0  # longest common prefix: a merge across the boundary belongs to the answer
        while start < min(len(prompt), len(full)) and prompt[start] == full[start]:
            start += 1
        end = len(full)
        eos = tokenizer.eos_token_id
        for i in range(start, len(full)):
            if full[i] == eos:
                end = i + 1
                break
        out.append(Probe(ids=full, answer_start=start, answer_end=end))
    return out
