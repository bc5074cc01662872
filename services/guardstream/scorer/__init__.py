"""Scorer process: score requests in, Qwen3Guard-Gen verdicts out (vLLM in-process)."""
