"""Entry points that serving frameworks load: vLLM's general plugin."""
