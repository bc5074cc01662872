"""The feedback loop (the seeds' 数据回流): human reviews become training data for a better model.

`sample` is the archived record of one review, `archive` keeps them as dated JSONL, `curation`
picks what is worth training on (pure), `dataset` turns samples into Qwen3Guard-format
targets, `train` fine-tunes a LoRA adapter, `evaluate` scores base and adapter on held-out
samples, and `job` runs the weekly cycle end to end.
"""
