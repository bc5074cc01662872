"""guardstream: streaming content moderation with Qwen3Guard-Gen on vLLM.

Posts arrive on Kafka, are validated and deduplicated by the triage process, scored by the
scorer process, and the decisions land on action topics (allow / block / review).
"""

__version__ = "0.1.0"
