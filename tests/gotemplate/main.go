// ollama_render: renders Ollama TEMPLATEs with Go's standard text/template, as Ollama does.
//
// Reads {"template": ..., "system": ..., "conversations": [[{role, content}, ...], ...]} on stdin,
// writes a JSON list of prompts. Before executing the template it applies what Ollama's server
// does to a chat request (server/routes.go, template/template.go): the Modelfile SYSTEM is
// prepended when the conversation does not start with a system message; consecutive messages of
// the same role are merged with "\n\n"; system messages are joined into .System; the template
// runs with missingkey=zero. Only the standard library is used.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role      string `json:"role"`
	Content   string `json:"content"`
	Thinking  string `json:"thinking,omitempty"`
	ToolCalls []any  `json:"tool_calls,omitempty"`
}

type Request struct {
	Template      string      `json:"template"`
	System        string      `json:"system"`
	Conversations [][]Message `json:"conversations"`
}

func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func main() {
	var req Request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "bad request:", err)
		os.Exit(2)
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(req.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "template does not parse:", err)
		os.Exit(3)
	}
	out := []string{}
	for _, conv := range req.Conversations {
		msgs := append([]Message{}, conv...)
		if len(msgs) > 0 && msgs[0].Role != "system" && req.System != "" {
			msgs = append([]Message{{Role: "system", Content: req.System}}, msgs...)
		}
		system, collated := collate(msgs)
		var b strings.Builder
		err := tmpl.Execute(&b, map[string]any{
			"System": system, "Messages": collated, "Tools": nil, "Response": "",
			"Think": false, "IsThinkSet": false,
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "template does not execute:", err)
			os.Exit(4)
		}
		out = append(out, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(5)
	}
}
