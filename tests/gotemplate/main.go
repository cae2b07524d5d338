// ollama_render: renders Ollama TEMPLATEs with Go's standard text/template, as Ollama does.
//
// Reads {"templates": [...], "cases": [{"template": i, "messages": [...], "tools": [...],
// "think": null|bool|"high", "system": "...", "now": "2006-01-02"}, ...]} on stdin and writes a
// JSON list with {"prompt": ...} or {"error": ...} per case. Before executing a template it
// builds the data as Ollama's server does (server/routes.go, server/prompt.go,
// template/template.go, api/types.go): the Modelfile SYSTEM is prepended when the conversation
// does not start with a system message; consecutive messages of the same role are merged with
// "\n\n" (tool results excepted); system messages are joined into .System; tool-call arguments
// and tool properties are plain maps; think becomes Think/ThinkLevel/IsThinkSet. The template
// runs with missingkey=zero and exactly Ollama's functions (json, currentDate, yesterdayDate,
// toTypeScriptType); "now" stands in for the clock so that dates are reproducible. Only the
// standard library is used.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
	"time"
)

type PropertyType []string

func (pt *PropertyType) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		*pt = []string{s}
		return nil
	}
	var a []string
	if err := json.Unmarshal(data, &a); err != nil {
		return err
	}
	*pt = a
	return nil
}

func (pt PropertyType) MarshalJSON() ([]byte, error) {
	if len(pt) == 1 {
		return json.Marshal(pt[0])
	}
	return json.Marshal([]string(pt))
}

func (pt PropertyType) String() string {
	if len(pt) == 0 {
		return ""
	}
	if len(pt) == 1 {
		return pt[0]
	}
	return fmt.Sprintf("%v", []string(pt))
}

// opaqueProperties stands for api.ToolPropertiesMap (nested properties): templates cannot range it.
type opaqueProperties struct{ raw json.RawMessage }

func (o *opaqueProperties) UnmarshalJSON(data []byte) error { o.raw = data; return nil }

type ToolProperty struct {
	AnyOf       []ToolProperty    `json:"anyOf,omitempty"`
	Type        PropertyType      `json:"type,omitempty"`
	Items       any               `json:"items,omitempty"`
	Description string            `json:"description,omitempty"`
	Enum        []any             `json:"enum,omitempty"`
	Properties  *opaqueProperties `json:"properties,omitempty"`
	Required    []string          `json:"required,omitempty"`
}

func mapTS(t string) string {
	switch t {
	case "string":
		return "string"
	case "number", "integer":
		return "number"
	case "boolean":
		return "boolean"
	case "array":
		return "any[]"
	case "object":
		return "Record<string, any>"
	case "null":
		return "null"
	}
	return "any"
}

func (tp ToolProperty) ToTypeScriptType() string {
	if len(tp.AnyOf) > 0 {
		var types []string
		for _, a := range tp.AnyOf {
			types = append(types, a.ToTypeScriptType())
		}
		return strings.Join(types, " | ")
	}
	if len(tp.Type) == 0 {
		return "any"
	}
	var types []string
	for _, t := range tp.Type {
		types = append(types, mapTS(t))
	}
	return strings.Join(types, " | ")
}

// Request side (Ollama's API shape).
type apiTool struct {
	Type     string `json:"type"`
	Items    any    `json:"items,omitempty"`
	Function struct {
		Name        string `json:"name"`
		Description string `json:"description,omitempty"`
		Parameters  struct {
			Type       string                  `json:"type"`
			Defs       any                     `json:"$defs,omitempty"`
			Items      any                     `json:"items,omitempty"`
			Required   []string                `json:"required,omitempty"`
			Properties map[string]ToolProperty `json:"properties"`
		} `json:"parameters"`
	} `json:"function"`
}

type apiMessage struct {
	Role      string `json:"role"`
	Content   string `json:"content"`
	Thinking  string `json:"thinking,omitempty"`
	ToolCalls []struct {
		ID       string `json:"id,omitempty"`
		Function struct {
			Index     int            `json:"index"`
			Name      string         `json:"name"`
			Arguments map[string]any `json:"arguments"`
		} `json:"function"`
	} `json:"tool_calls,omitempty"`
	ToolName   string `json:"tool_name,omitempty"`
	ToolCallID string `json:"tool_call_id,omitempty"`
}

// Template side: the shapes template/template.go hands to a template.
type templateArgs map[string]any

func (t templateArgs) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(t)
	return string(b)
}

type templateProperties map[string]ToolProperty

func (t templateProperties) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(t)
	return string(b)
}

type templateToolFunctionParameters struct {
	Type       string             `json:"type"`
	Defs       any                `json:"$defs,omitempty"`
	Items      any                `json:"items,omitempty"`
	Required   []string           `json:"required,omitempty"`
	Properties templateProperties `json:"properties"`
}

type templateToolFunction struct {
	Name        string                         `json:"name"`
	Description string                         `json:"description"`
	Parameters  templateToolFunctionParameters `json:"parameters"`
}

type templateTool struct {
	Type     string               `json:"type"`
	Items    any                  `json:"items,omitempty"`
	Function templateToolFunction `json:"function"`
}

func (t templateTool) String() string { b, _ := json.Marshal(t); return string(b) }

type templateTools []templateTool

func (t templateTools) String() string { b, _ := json.Marshal(t); return string(b) }

type templateToolCallFunction struct {
	Index     int
	Name      string
	Arguments templateArgs
}

type templateToolCall struct {
	ID       string
	Function templateToolCallFunction
}

type templateMessage struct {
	Role       string
	Content    string
	Thinking   string
	Images     [][]byte
	ToolCalls  []templateToolCall
	ToolName   string
	ToolCallID string
}

type Case struct {
	Template int             `json:"template"`
	Messages []apiMessage    `json:"messages"`
	Tools    []apiTool       `json:"tools"`
	Think    json.RawMessage `json:"think"`
	System   string          `json:"system"`
	Now      string          `json:"now"`
}

type Request struct {
	Templates []string `json:"templates"`
	Cases     []Case   `json:"cases"`
}

type Result struct {
	Prompt *string `json:"prompt,omitempty"`
	Error  string  `json:"error,omitempty"`
}

func thinkValues(raw json.RawMessage) (bool, string, bool, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return false, "", false, nil
	}
	var b bool
	if err := json.Unmarshal(raw, &b); err == nil {
		level := ""
		if b {
			level = "medium"
		}
		return b, level, true, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil || (s != "high" && s != "medium" && s != "low" && s != "max") {
		return false, "", false, fmt.Errorf("invalid think value %s", raw)
	}
	return true, s, true, nil
}

func render(tmpl *template.Template, c Case) (string, error) {
	msgs := append([]apiMessage{}, c.Messages...)
	if len(msgs) > 0 && msgs[0].Role != "system" && c.System != "" {
		msgs = append([]apiMessage{{Role: "system", Content: c.System}}, msgs...)
	}
	var system []string
	var collated []*templateMessage
	for _, m := range msgs {
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if n := len(collated); n > 0 && collated[n-1].Role == m.Role && m.Role != "tool" {
			collated[n-1].Content += "\n\n" + m.Content
			continue
		}
		var calls []templateToolCall
		for _, tc := range m.ToolCalls {
			calls = append(calls, templateToolCall{ID: tc.ID, Function: templateToolCallFunction{
				Index: tc.Function.Index, Name: tc.Function.Name, Arguments: templateArgs(tc.Function.Arguments)}})
		}
		collated = append(collated, &templateMessage{Role: strings.ToLower(m.Role), Content: m.Content,
			Thinking: m.Thinking, ToolCalls: calls, ToolName: m.ToolName, ToolCallID: m.ToolCallID})
	}
	var tools templateTools
	for _, t := range c.Tools {
		p := t.Function.Parameters
		tools = append(tools, templateTool{Type: t.Type, Items: t.Items, Function: templateToolFunction{
			Name: t.Function.Name, Description: t.Function.Description,
			Parameters: templateToolFunctionParameters{Type: p.Type, Defs: p.Defs, Items: p.Items,
				Required: p.Required, Properties: templateProperties(p.Properties)}}})
	}
	think, level, set, err := thinkValues(c.Think)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	err = tmpl.Execute(&b, map[string]any{
		"System": strings.Join(system, "\n\n"), "Messages": collated, "Tools": tools, "Response": "",
		"Think": think, "ThinkLevel": level, "IsThinkSet": set,
	})
	return b.String(), err
}

func main() {
	var req Request
	dec := json.NewDecoder(os.Stdin)
	if err := dec.Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "bad request:", err)
		os.Exit(2)
	}
	parsed := make([]*template.Template, len(req.Templates))
	parseErr := make([]error, len(req.Templates))
	out := make([]Result, 0, len(req.Cases))
	for _, c := range req.Cases {
		now, err := time.Parse("2006-01-02", c.Now)
		if err != nil {
			out = append(out, Result{Error: "bad now: " + err.Error()})
			continue
		}
		funcs := template.FuncMap{
			"json": func(v any) string { b, _ := json.Marshal(v); return string(b) },
			"currentDate": func(args ...string) string { return now.Format("2006-01-02") },
			"yesterdayDate": func(args ...string) string { return now.AddDate(0, 0, -1).Format("2006-01-02") },
			"toTypeScriptType": func(v any) string {
				if p, ok := v.(ToolProperty); ok {
					return p.ToTypeScriptType()
				}
				if p, ok := v.(*ToolProperty); ok && p != nil {
					return p.ToTypeScriptType()
				}
				return "any"
			},
		}
		i := c.Template
		if parsed[i] == nil && parseErr[i] == nil {
			parsed[i], parseErr[i] = template.New("").Option("missingkey=zero").Funcs(funcs).Parse(req.Templates[i])
		}
		if parseErr[i] != nil {
			out = append(out, Result{Error: "template does not parse: " + parseErr[i].Error()})
			continue
		}
		// Rebind the functions so that this case's clock is the one dates come from.
		tmpl := parsed[i].Funcs(funcs)
		prompt, err := render(tmpl, c)
		if err != nil {
			out = append(out, Result{Error: "template does not execute: " + err.Error()})
			continue
		}
		out = append(out, Result{Prompt: &prompt})
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(5)
	}
}
