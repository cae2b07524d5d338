"""The data an Ollama TEMPLATE sees for a chat request, built as Ollama's server builds it.

Input is a chat request in Ollama's API shape (messages with role, content, thinking,
tool_calls, tool_name, tool_call_id; tools as JSON schemas; think as null, a bool or a level).
As in Ollama (server/routes.go, server/prompt.go, template/template.go, api/types.go): the
Modelfile SYSTEM is prepended when the first message is not a system message; messages are
collated; tool-call arguments and tool properties become plain Go maps; JSON numbers become
float64; think becomes Think (bool), ThinkLevel ("medium" for true) and IsThinkSet.
tests/gotemplate/main.go builds the same values from the same JSON with Go's own types.
"""

from __future__ import annotations

from typing import Any

from tasks.deploy.gotmpl import GoSlice, GoStruct

THINK_LEVELS = ("high", "medium", "low", "max")


def _jsonish(v: Any) -> Any:
    """A decoded JSON value as Go's encoding/json gives it to an `any`: numbers are float64."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, list):
        return [_jsonish(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonish(x) for k, x in v.items()}
    raise TypeError(f"not a JSON value: {v!r}")


def _property(p: dict[str, Any]) -> GoStruct:
    t = p.get("type")
    types = [t] if isinstance(t, str) else list(t or [])
    return GoStruct("api.ToolProperty",
                    AnyOf=GoSlice("[]api.ToolProperty", [_property(x) for x in p.get("anyOf") or []]),
                    Type=GoSlice("api.PropertyType", types),
                    Items=_jsonish(p.get("items")), Description=p.get("description", ""),
                    Enum=GoSlice("[]interface {}", [_jsonish(x) for x in p.get("enum") or []]),
                    Properties=GoStruct("*api.ToolPropertiesMap") if p.get("properties") else None,
                    Required=GoSlice("[]string", p.get("required") or []))


def _tool(t: dict[str, Any]) -> GoStruct:
    fn = t.get("function") or {}
    params = fn.get("parameters") or {}
    props = params.get("properties")
    return GoStruct(
        "template.templateTool", Type=t.get("type", ""), Items=_jsonish(t.get("items")),
        Function=GoStruct("template.templateToolFunction", Name=fn.get("name", ""),
                          Description=fn.get("description", ""),
                          Parameters=GoStruct(
                              "template.templateToolFunctionParameters", Type=params.get("type", ""),
                              Defs=_jsonish(params.get("$defs")), Items=_jsonish(params.get("items")),
                              Required=GoSlice("[]string", params.get("required") or []),
                              Properties={k: _property(v) for k, v in (props or {}).items()})))


def _message(m: dict[str, Any]) -> GoStruct:
    calls = GoSlice("[]template.templateToolCall", [
            GoStruct("template.templateToolCall", ID=c.get("id", ""), Function=GoStruct(
                "template.templateToolCallFunction", Index=int(c["function"].get("index", 0)),
                Name=c["function"].get("name", ""), Arguments=_jsonish(c["function"].get("arguments", {}))))
        for c in m.get("tool_calls") or []])
    return GoStruct("*template.templateMessage", Role=str(m.get("role", "")).lower(), Content=m.get("content", ""),
                    Thinking=m.get("thinking", ""), Images=GoSlice("[]api.ImageData"), ToolCalls=calls,
                    ToolName=m.get("tool_name", ""), ToolCallID=m.get("tool_call_id", ""))


def collate(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Ollama's collate: system texts joined; consecutive same-role messages merged (not tool)."""
    system, out = [], []
    for m in messages:
        if m.get("role") == "system":
            system.append(m.get("content", ""))
        if out and out[-1].get("role") == m.get("role") and m.get("role") != "tool":
            out[-1] = {**out[-1], "content": out[-1].get("content", "") + "\n\n" + m.get("content", "")}
        else:
            out.append(dict(m))
    return "\n\n".join(system), out


def think_values(think: Any) -> dict[str, Any]:
    """Think, ThinkLevel and IsThinkSet from a request's think (api.ThinkValue)."""
    if think is None:
        return {"Think": False, "ThinkLevel": "", "IsThinkSet": False}
    if isinstance(think, bool):
        return {"Think": think, "ThinkLevel": "medium" if think else "", "IsThinkSet": True}
    if think in THINK_LEVELS:
        return {"Think": True, "ThinkLevel": think, "IsThinkSet": True}
    raise ValueError(f"invalid think value {think!r}")


def template_data(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                  think: Any = None, modelfile_system: str = "") -> dict[str, Any]:
    """The map Ollama executes a `.Messages` TEMPLATE with."""
    msgs = list(messages)
    if msgs and msgs[0].get("role") != "system" and modelfile_system:
        msgs = [{"role": "system", "content": modelfile_system}, *msgs]
    system, collated = collate(msgs)
    return {"System": system, "Messages": GoSlice("[]*template.templateMessage", [_message(m) for m in collated]),
            "Tools": GoSlice("template.templateTools", [_tool(t) for t in tools or []]),
            "Response": "", **think_values(think)}
