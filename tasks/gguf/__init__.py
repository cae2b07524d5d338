"""convert:<m> and quantize:<m>-<type>: llama.cpp's converter and its C-API quantizer."""
