"""Model assets: the Qwen3Guard-Gen chat template and the tiny offline test checkpoint."""
