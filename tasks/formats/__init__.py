"""Readers of the file formats the build consumes, one module per format, no heavy imports:
safetensors headers, GGUF headers, JSON objects, llama.cpp tokenizer test vectors."""
