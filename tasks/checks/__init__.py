"""check:<m> (validity, parity, adapter survival, quant quality, gated) and report:<m> (runtime figures)."""
