"""`make ollama-template JINJA=... [BOS=...] [EOS=...] [FORMAT=json]`: a Modelfile TEMPLATE from a chat template.

The same derivation and proof the render stage uses (tasks/deploy/ollama_template.py), for a Jinja
file on its own: prints the Modelfile's TEMPLATE and PARAMETER stop lines, or the one-line
reason there is none (exit 1). With a BOS token the TEMPLATE leaves it to the runtime, as
llama.cpp adds it for models that use one. FORMAT=json prints {"family", "template", "stops",
"notes"} or {"error"}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tasks.deploy import modelfile


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make ollama-template", description=__doc__.splitlines()[0])
    ap.add_argument("jinja", help="the chat template (.jinja file)")
    ap.add_argument("--bos", default=None, help="the tokenizer's BOS token (bos_token)")
    ap.add_argument("--eos", default=None, help="the tokenizer's EOS token (eos_token)")
    ap.add_argument("--format", choices=("modelfile", "json"), default="modelfile")
    args = ap.parse_args(argv)
    as_json = args.format == "json"

    def fail(message: str, code: int) -> int:
        if as_json:
            print(json.dumps({"error": message}, ensure_ascii=False))
        else:
            print(f"modelmake: {message}", file=sys.stderr)
        return code

    path = Path(args.jinja)
    if not args.jinja:
        return fail("JINJA is empty: give the chat template, e.g. make ollama-template JINJA=chat_template.jinja", 2)
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return fail(f"{path}: cannot read the chat template ({exc.__class__.__name__}: {exc})", 2)

    from tasks.deploy.ollama_template import TemplateNotSupported, detect

    try:
        found = detect(source, {"bos_token": args.bos, "eos_token": args.eos}, gguf_adds_bos=bool(args.bos))
        template = modelfile.quote(found.template, f"{path}: TEMPLATE")
        stops = [modelfile.parameter_value("stop", s, f"{path}: stop") for s in found.stops]
    except TemplateNotSupported as exc:
        return fail(f"{path}: no Ollama TEMPLATE: {exc}", 1)
    except modelfile.ModelfileError as exc:
        return fail(str(exc), 1)
    if as_json:
        print(json.dumps({"family": found.family, "template": found.template, "stops": list(found.stops),
                          "notes": list(found.notes)}, ensure_ascii=False))
        return 0
    print(f"# TEMPLATE: derived from {path.name}, identical to it on {found.proven} probe conversations "
          f"({', '.join(found.features)})")
    if args.bos:
        print(f"# The TEMPLATE does not write {args.bos}: the runtime adds it (llama.cpp does for models with a BOS)")
    for note in found.notes:
        print(f"# Note: {' '.join(note.split())}")
    print(f"TEMPLATE {template}")
    for s in stops:
        print(f"PARAMETER stop {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
