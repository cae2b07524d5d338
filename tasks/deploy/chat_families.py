"""Chat formats Ollama TEMPLATEs are generated for, one class per family.

Each family knows three things about its format:
  * `extract`: read its parameters (default system prompt, [INST] spacing, ...) from renders of
    the model's own Jinja template on probe conversations;
  * `reference`: the prompt our Go template produces for a conversation, written in Python;
  * `go`: the Go text/template itself, for Ollama's `.Messages` API.
Detection (tasks/deploy/ollama_template.py) accepts a family only if `reference` equals the model's
Jinja render on every probe, and the test suite runs `go` through Go's real text/template and
compares with transformers' apply_chat_template. The two halves keep each other honest.

Conventions of the Go side, mirrored by `reference`: the conversation is Ollama's (Modelfile
SYSTEM already prepended when the client sent none); a final user turn gets the generation
prompt; a final assistant turn is a prefill, left open (no end-of-turn token), like
transformers' `continue_final_message`. The BOS token is not in the TEMPLATE: llama.cpp adds it
when the GGUF says so (tasks/deploy/ollama_template.py handles the other case).
"""

from __future__ import annotations

from typing import Any

Msg = dict[str, str]
LAST = "{{- $last := eq (len (slice $.Messages $i)) 1 }}"
FIRST_IS_SYSTEM = '(eq (index $.Messages 0).Role "system")'
OPEN_PREFILL = '{{ if not (and $last (eq $m.Role "assistant")) }}'  # close the turn unless it is a prefill

# Probe texts: plain words that no template adds itself.
S1, U1, A1 = "probe-system-1", "probe-user-1", "probe-answer-1"
U2, A2, U3 = "probe-user-2", "probe-answer-2", "probe-user-3"


class Mismatch(Exception):
    """The model's template is not (exactly) this family's format."""


def lit(text: str) -> str:
    """`text` as literal Go template output: raw when plainly safe, else a Go string constant.

    The constant form has no raw newline, quote or `{{`, so model-derived text (a default system
    prompt, a date line) can neither start a template action nor end a Modelfile string early.
    """
    plain = (text == text.strip() and "{{" not in text and '"' not in text
             and all(c == "\n" or (c.isprintable() and c != "\r") for c in text))
    return text if plain else "{{ " + go_string(text) + " }}"


def go_string(text: str) -> str:
    """A Go interpreted string literal (strconv.Unquote syntax) for `text`."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def _split_once(text: str, needle: str, what: str) -> tuple[str, str]:
    if text.count(needle) != 1:
        raise Mismatch(f"{what}: expected {needle!r} once in {text!r}")
    a, b = text.split(needle)
    return a, b


class Family:
    name = ""
    signature: tuple[str, ...] = ()  # strings the Jinja source must contain to be tried
    end_tokens: tuple[str, ...] = ()  # end-of-turn tokens (PARAMETER stop) if the template uses them
    system_supported = True

    def extract(self, render: Any) -> dict[str, Any]:
        raise NotImplementedError

    def reference(self, msgs: list[Msg], p: dict[str, Any]) -> str:
        raise NotImplementedError

    def go(self, p: dict[str, Any]) -> str:
        raise NotImplementedError

    def stops(self, p: dict[str, Any]) -> tuple[str, ...]:
        """End-of-turn strings the format uses (Ollama stops on them)."""
        return self.end_tokens


class ChatML(Family):
    """Qwen2/2.5 and other ChatML models; a default system prompt when the client sends none."""

    name = "chatml"
    signature = ("<|im_start|>", "<|im_end|>")
    end_tokens = ("<|im_end|>",)

    def extract(self, render: Any) -> dict[str, Any]:
        out = render([{"role": "user", "content": U1}])
        body = f"<|im_start|>user\n{U1}<|im_end|>\n<|im_start|>assistant\n"
        if out == body:
            return {"default_system": None}
        head, tail = "<|im_start|>system\n", "<|im_end|>\n" + body
        if out.startswith(head) and out.endswith(tail) and len(out) > len(head) + len(tail):
            return {"default_system": out[len(head):-len(tail)]}
        raise Mismatch(f"single user turn renders as {out!r}")

    def reference(self, msgs: list[Msg], p: dict[str, Any]) -> str:
        s = ""
        for i, m in enumerate(msgs):
            last = i == len(msgs) - 1
            if i == 0 and m["role"] != "system" and p["default_system"] is not None:
                s += f"<|im_start|>system\n{p['default_system']}<|im_end|>\n"
            s += f"<|im_start|>{m['role']}\n{m['content']}"
            if not (last and m["role"] == "assistant"):
                s += "<|im_end|>\n"
            if last and m["role"] != "assistant":
                s += "<|im_start|>assistant\n"
        return s

    def go(self, p: dict[str, Any]) -> str:
        default = ""
        if p["default_system"] is not None:
            default = ('{{- if and (eq $i 0) (ne $m.Role "system") }}<|im_start|>system\n'
                       + lit(p["default_system"]) + "<|im_end|>\n{{ end }}")
        return ("{{- range $i, $m := .Messages }}" + default + LAST
                + "<|im_start|>{{ $m.Role }}\n{{ $m.Content }}" + OPEN_PREFILL + "<|im_end|>\n{{ end }}"
                + '{{- if and $last (ne $m.Role "assistant") }}<|im_start|>assistant\n{{ end }}'
                + "{{- end }}")


class Llama3(Family):
    """Llama 3.x: a system header always present (3.1+: date preamble), or per-message (3.0)."""

    name = "llama3"
    signature = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    end_tokens = ("<|eot_id|>", "<|eom_id|>")
    HDR = "<|start_header_id|>system<|end_header_id|>\n\n"
    GEN = "<|start_header_id|>assistant<|end_header_id|>\n\n"

    def extract(self, render: Any) -> dict[str, Any]:
        out = render([{"role": "user", "content": U1}])
        turn = f"<|start_header_id|>user<|end_header_id|>\n\n{U1}<|eot_id|>" + self.GEN
        if out == turn:
            return {"always_system": False, "preamble": ""}
        tail = "<|eot_id|>" + turn
        if out.startswith(self.HDR) and out.endswith(tail):
            return {"always_system": True, "preamble": out[len(self.HDR):-len(tail)]}
        raise Mismatch(f"single user turn renders as {out!r}")

    def reference(self, msgs: list[Msg], p: dict[str, Any]) -> str:
        s = ""
        first_sys = bool(msgs) and msgs[0]["role"] == "system"
        if p["always_system"]:
            s += self.HDR + p["preamble"] + (msgs[0]["content"] if first_sys else "") + "<|eot_id|>"
        for i, m in enumerate(msgs):
            last = i == len(msgs) - 1
            if not (p["always_system"] and i == 0 and first_sys):
                s += f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}"
                if not (last and m["role"] == "assistant"):
                    s += "<|eot_id|>"
            if last and m["role"] != "assistant":
                s += self.GEN
        return s

    def go(self, p: dict[str, Any]) -> str:
        head, cond_open, cond_close = "", "", ""
        if p["always_system"]:
            head = ("<|start_header_id|>system<|end_header_id|>\n\n" + lit(p["preamble"])
                    + '{{ range $i, $m := .Messages }}{{ if and (eq $i 0) (eq $m.Role "system") }}'
                    + "{{ $m.Content }}{{ end }}{{ end }}<|eot_id|>")
            cond_open, cond_close = '{{- if not (and (eq $i 0) (eq $m.Role "system")) }}', "{{ end }}"
        return (head + "{{- range $i, $m := .Messages }}" + LAST + cond_open
                + "<|start_header_id|>{{ $m.Role }}<|end_header_id|>\n\n{{ $m.Content }}"
                + OPEN_PREFILL + "<|eot_id|>{{ end }}" + cond_close
                + '{{- if and $last (ne $m.Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>\n\n'
                + "{{ end }}{{- end }}")


class Phi3(Family):
    """Phi-3/3.5: <|system|>/<|user|>/<|assistant|> blocks closed by <|end|>."""

    name = "phi3"
    signature = ("<|user|>", "<|assistant|>", "<|end|>")
    end_tokens = ("<|end|>",)

    def extract(self, render: Any) -> dict[str, Any]:
        out = render([{"role": "user", "content": U1}])
        if out != f"<|user|>\n{U1}<|end|>\n<|assistant|>\n":
            raise Mismatch(f"single user turn renders as {out!r}")
        return {}

    def reference(self, msgs: list[Msg], p: dict[str, Any]) -> str:
        s = ""
        for i, m in enumerate(msgs):
            last = i == len(msgs) - 1
            if m["role"] == "system" and m["content"]:
                s += f"<|system|>\n{m['content']}<|end|>\n"
            elif m["role"] == "user":
                s += f"<|user|>\n{m['content']}<|end|>\n"
            elif m["role"] == "assistant":
                s += f"<|assistant|>\n{m['content']}" + ("" if last else "<|end|>\n")
            if last and m["role"] != "assistant":
                s += "<|assistant|>\n"
        return s

    def go(self, p: dict[str, Any]) -> str:
        return ("{{- range $i, $m := .Messages }}" + LAST
                + '{{- if eq $m.Role "system" }}{{ if $m.Content }}<|system|>\n{{ $m.Content }}<|end|>\n{{ end }}'
                + '{{- else if eq $m.Role "user" }}<|user|>\n{{ $m.Content }}<|end|>\n'
                + '{{ else if eq $m.Role "assistant" }}<|assistant|>\n{{ $m.Content }}{{ if not $last }}<|end|>\n'
                + "{{ end }}{{ end }}"
                + '{{- if and $last (ne $m.Role "assistant") }}<|assistant|>\n{{ end }}{{- end }}')


class Mistral(Family):
    """Mistral [INST] formats (v3-Tekken/Nemo: system text inside the last user turn)."""

    name = "mistral"
    signature = ("[INST]", "[/INST]")

    def extract(self, render: Any) -> dict[str, Any]:
        u = render([{"role": "user", "content": U1}])
        open_, close = _split_once(u, U1, "single user turn")
        if "[INST]" not in open_ or "[/INST]" not in close or "[SYSTEM_PROMPT]" in open_:
            raise Mismatch(f"single user turn renders as {u!r}")
        multi = render([{"role": "user", "content": U1}, {"role": "assistant", "content": A1},
                        {"role": "user", "content": U2}])
        first = open_ + U1 + close
        second = open_ + U2 + close
        if not (multi.startswith(first) and multi.endswith(second)):
            raise Mismatch(f"user/assistant/user renders as {multi!r}")
        apre, asuf = _split_once(multi[len(first):-len(second)], A1, "assistant turn")
        with_sys = render([{"role": "system", "content": S1}, {"role": "user", "content": U1}])
        if not (with_sys.startswith(open_ + S1) and with_sys.endswith(U1 + close)):
            raise Mismatch(f"system + user renders as {with_sys!r}")
        sep = with_sys[len(open_ + S1):-len(U1 + close)]
        p = {"open": open_, "close": close, "apre": apre, "asuf": asuf, "sep": sep}
        convo = [{"role": "system", "content": S1}, {"role": "user", "content": U1},
                 {"role": "assistant", "content": A1}, {"role": "user", "content": U2}]
        out = render(convo)
        for where in ("last", "first"):
            if out == self.reference(convo, {**p, "sys_on": where}):
                return {**p, "sys_on": where}
        raise Mismatch(f"system placement not recognised in {out!r}")

    def reference(self, msgs: list[Msg], p: dict[str, Any]) -> str:
        sys = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else None
        s = ""
        for i, m in enumerate(msgs):
            last = i == len(msgs) - 1
            if m["role"] == "user":
                here = last if p["sys_on"] == "last" else i == 1
                prefix = sys + p["sep"] if (sys is not None and here) else ""
                s += p["open"] + prefix + m["content"] + p["close"]
            elif m["role"] == "assistant":
                s += p["apre"] + m["content"] + ("" if last else p["asuf"])
        return s

    def go(self, p: dict[str, Any]) -> str:
        here = "$last" if p["sys_on"] == "last" else "(eq $i 1)"
        return ("{{- range $i, $m := .Messages }}" + LAST
                + '{{- if eq $m.Role "user" }}' + lit(p["open"])
                + "{{ if and " + here + " " + FIRST_IS_SYSTEM + " }}{{ (index $.Messages 0).Content }}"
                + lit(p["sep"]) + "{{ end }}{{ $m.Content }}" + lit(p["close"])
                + '{{- else if eq $m.Role "assistant" }}' + lit(p["apre"]) + "{{ $m.Content }}"
                + "{{ if not $last }}" + lit(p["asuf"]) + "{{ end }}"
                + "{{- end }}{{- end }}")

    def stops(self, p: dict[str, Any]) -> tuple[str, ...]:
        return (p["asuf"].strip(),) if p["asuf"].strip() else ()


class MistralV7(Family):
    """Mistral Small 3.x (v7-Tekken): [SYSTEM_PROMPT] block, default system prompt."""

    name = "mistral-v7"
    signature = ("[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[INST]", "[/INST]")

    def extract(self, render: Any) -> dict[str, Any]:
        out = render([{"role": "user", "content": U1}])
        body = f"[INST]{U1}[/INST]"
        if out == body:
            default = None
        elif out.startswith("[SYSTEM_PROMPT]") and out.endswith("[/SYSTEM_PROMPT]" + body):
            default = out[len("[SYSTEM_PROMPT]"):-len("[/SYSTEM_PROMPT]" + body)]
        else:
            raise Mismatch(f"single user turn renders as {out!r}")
        multi = render([{"role": "user", "content": U1}, {"role": "assistant", "content": A1},
                        {"role": "user", "content": U2}])
        marker = f"[INST]{U1}[/INST]{A1}"
        if marker not in multi or not multi.endswith(f"[INST]{U2}[/INST]"):
            raise Mismatch(f"user/assistant/user renders as {multi!r}")
        eos = multi[multi.index(marker) + len(marker):-len(f"[INST]{U2}[/INST]")]
        return {"default_system": default, "eos": eos}

    def reference(self, msgs: list[Msg], p: dict[str, Any]) -> str:
        first_sys = bool(msgs) and msgs[0]["role"] == "system"
        s = ""
        if first_sys:
            s += f"[SYSTEM_PROMPT]{msgs[0]['content']}[/SYSTEM_PROMPT]"
        elif p["default_system"] is not None:
            s += f"[SYSTEM_PROMPT]{p['default_system']}[/SYSTEM_PROMPT]"
        for i, m in enumerate(msgs):
            last = i == len(msgs) - 1
            if i == 0 and first_sys:
                continue
            if m["role"] == "system":
                s += f"[SYSTEM_PROMPT]{m['content']}[/SYSTEM_PROMPT]"
            elif m["role"] == "user":
                s += f"[INST]{m['content']}[/INST]"
            elif m["role"] == "assistant":
                s += m["content"] + ("" if last else p["eos"])
        return s

    def go(self, p: dict[str, Any]) -> str:
        if p["default_system"] is None:
            head = ("{{- range $i, $m := .Messages }}{{ if and (eq $i 0) (eq $m.Role \"system\") }}"
                    "[SYSTEM_PROMPT]{{ $m.Content }}[/SYSTEM_PROMPT]{{ end }}{{ end }}")
        else:
            head = ("[SYSTEM_PROMPT]{{ if " + FIRST_IS_SYSTEM.replace("$.", ".") + " }}"
                    "{{ (index .Messages 0).Content }}{{ else }}" + lit(p["default_system"])
                    + "{{ end }}[/SYSTEM_PROMPT]")
        return (head + "{{- range $i, $m := .Messages }}" + LAST
                + '{{- if and (eq $i 0) (eq $m.Role "system") }}'
                + '{{- else if eq $m.Role "system" }}[SYSTEM_PROMPT]{{ $m.Content }}[/SYSTEM_PROMPT]'
                + '{{- else if eq $m.Role "user" }}[INST]{{ $m.Content }}[/INST]'
                + '{{- else if eq $m.Role "assistant" }}{{ $m.Content }}'
                + "{{ if not $last }}" + lit(p["eos"]) + "{{ end }}"
                + "{{- end }}{{- end }}")

    def stops(self, p: dict[str, Any]) -> tuple[str, ...]:
        return (p["eos"],) if p["eos"] else ()


class Gemma(Family):
    """Gemma 2/3: <start_of_turn>user/model. Gemma 2 rejects system messages; Gemma 3 puts the
    system text at the start of the first user turn (that is also what our TEMPLATE does with a
    client's system message for Gemma 2, which has no other place for it)."""

    name = "gemma"
    signature = ("<start_of_turn>", "<end_of_turn>")
    end_tokens = ("<end_of_turn>",)

    def extract(self, render: Any) -> dict[str, Any]:
        out = render([{"role": "user", "content": U1}])
        if out != f"<start_of_turn>user\n{U1}<end_of_turn>\n<start_of_turn>model\n":
            raise Mismatch(f"single user turn renders as {out!r}")
        try:
            with_sys = render([{"role": "system", "content": S1}, {"role": "user", "content": U1}])
        except RenderRefused:
            return {"system": "rejected"}
        if with_sys != f"<start_of_turn>user\n{S1}\n\n{U1}<end_of_turn>\n<start_of_turn>model\n":
            raise Mismatch(f"system + user renders as {with_sys!r}")
        return {"system": "first-user"}

    def reference(self, msgs: list[Msg], p: dict[str, Any]) -> str:
        sys = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else None
        s = ""
        for i, m in enumerate(msgs):
            last = i == len(msgs) - 1
            if m["role"] == "user":
                prefix = sys + "\n\n" if (sys is not None and i == 1) else ""
                s += f"<start_of_turn>user\n{prefix}{m['content']}<end_of_turn>\n"
                if last:
                    s += "<start_of_turn>model\n"
            elif m["role"] == "assistant":
                s += f"<start_of_turn>model\n{m['content']}" + ("" if last else "<end_of_turn>\n")
        return s

    def go(self, p: dict[str, Any]) -> str:
        return ("{{- range $i, $m := .Messages }}" + LAST
                + '{{- if eq $m.Role "user" }}<start_of_turn>user\n'
                + "{{ if and (eq $i 1) " + FIRST_IS_SYSTEM + " }}{{ (index $.Messages 0).Content }}"
                + lit("\n\n") + "{{ end }}{{ $m.Content }}<end_of_turn>\n{{ if $last }}<start_of_turn>model\n{{ end }}"
                + '{{- else if eq $m.Role "assistant" }}<start_of_turn>model\n{{ $m.Content }}'
                + "{{ if not $last }}<end_of_turn>\n{{ end }}"
                + "{{- end }}{{- end }}")


class RenderRefused(Exception):
    """The model's template raised (e.g. Gemma 2 on a system message)."""


# Order matters: the more specific format first (v7 templates also contain [INST]).
FAMILIES: tuple[Family, ...] = (ChatML(), Llama3(), Phi3(), MistralV7(), Mistral(), Gemma())
