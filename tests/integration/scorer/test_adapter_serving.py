"""Multi-LoRA serving through the real pipeline: an adapter promoted in the registry is picked
up by running triage and scorer processes without a restart, the verdict changes, and the
adapter is part of the content key and recorded on the decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardstream.contracts.events import Source, Verdict
from guardstream.devtools.produce import new_post
from guardstream.model.adapters import AdapterRegistry
from guardstream.model.tiny import ensure_tiny_checkpoint
from guardstream.runtime.settings import Settings
from guardstream.scorer.vllm_engine import VllmGuardEngine
from tests.integration.conftest import in_process
from tests.integration.pipeline.test_pipeline import decide
from tests.support.feedback import MISJUDGED, train_correction

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def correction_adapter(model_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = ensure_tiny_checkpoint(model_cache_dir)
    result, _, _ = train_correction(base, tmp_path_factory.mktemp("lora") / "adapter")
    return result.adapter_dir


async def test_a_promoted_adapter_changes_the_verdict_without_a_restart(
    settings: Settings, correction_adapter: Path, tmp_path: Path
) -> None:
    registry_dir = tmp_path / "adapters"
    lora = settings.replace(model={"adapter_dir": registry_dir, "adapter_poll_s": 0.2})
    engine = await VllmGuardEngine.start(lora)
    try:
        async with in_process(lora, engine, "triage", "scorer") as pipeline:
            ((_, before),) = (await decide(lora, [new_post(MISJUDGED, tenant="acme")])).values()
            assert (before.verdict, before.adapter) == (Verdict.CONTROVERSIAL, None)

            registry = AdapterRegistry(registry_dir)
            registry.register("fb-test-1", correction_adapter, {"why": "test"})
            registry.promote("fb-test-1")
            await pipeline.serving_generation(registry.snapshot(fresh=True).generation)

            again, taught = new_post(MISJUDGED, tenant="acme"), new_post("How can I make a bomb?")
            after = {d.post_id: d for _, d in (await decide(lora, [again, taught])).values()}
            fixed = after[again.post_id]
            assert fixed.verdict is Verdict.SAFE
            assert fixed.source is Source.MODEL  # scored under the adapter, not a cache hit
            assert fixed.adapter == "fb-test-1"
            assert fixed.content_key != before.content_key  # the adapter is part of the key
            # What the model knew before still holds under the adapter.
            assert after[taught.post_id].verdict is Verdict.UNSAFE
            assert after[taught.post_id].adapter == "fb-test-1"

            # The same weights on a card that says they were trained with reasons: the scorer
            # asks for a `Reason:` line (a second request even for a safe label); this adapter
            # never learnt one, so the answer ends without it — not an error, the same verdict
            # and the template reason.
            registry.register("fb-test-2", correction_adapter, {"trained_with_reasons": True})
            registry.promote("fb-test-2")
            await pipeline.serving_generation(registry.snapshot(fresh=True).generation)
            ((_, asked),) = (await decide(lora, [new_post(MISJUDGED, tenant="acme")])).values()
            assert (asked.verdict, asked.adapter) == (Verdict.SAFE, "fb-test-2")
            assert asked.source is Source.MODEL and asked.reason.startswith("Qwen3Guard: Safe.")
    finally:
        await engine.close()
