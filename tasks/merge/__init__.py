"""adapter:<m> and merge:<m>: check a LoRA adapter, then merge it into its base (streaming or peft)."""
