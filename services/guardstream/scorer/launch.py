"""Starting the configured engine (`GUARDSTREAM_ENGINE`). Each engine module is imported only
when chosen, so a process never loads vLLM and transformers both."""

from __future__ import annotations

from guardstream.model.guard import ModelUnavailable
from guardstream.runtime.settings import Settings
from guardstream.scorer.engine import GuardEngine


async def start_engine(settings: Settings) -> GuardEngine:
    """The configured engine (`GUARDSTREAM_ENGINE`), model loaded."""
    if settings.engine.kind == "transformers":
        # lazy: each engine (vLLM, torch) only where it is chosen
        from guardstream.scorer.hf_engine import TransformersGuardEngine

        if settings.model.adapter_dir is not None:
            raise ModelUnavailable(
                "GUARDSTREAM_ADAPTER_DIR is set but the transformers engine serves no LoRA "
                "adapters: use GUARDSTREAM_ENGINE=vllm, or unset the adapter registry"
            )

        return await TransformersGuardEngine.start(settings)
    # lazy: each engine (vLLM, torch) only where it is chosen
    from guardstream.scorer.vllm_engine import VllmGuardEngine

    return await VllmGuardEngine.start(settings)
