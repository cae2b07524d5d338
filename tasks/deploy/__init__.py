"""render:<m> (Modelfile, LM Studio, vLLM files) and the deploy/serve/health commands that use them."""
