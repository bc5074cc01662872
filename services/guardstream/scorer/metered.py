"""The guard engine, measured: latency and tokens per model call, and which adapter serves.

A transparent `GuardEngine` wrapper, so the scorer's logic and every engine implementation
stay free of telemetry code. Attributes are the model id and adapter only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from guardstream.core import metrics
from guardstream.core.adapters import Adapter
from guardstream.scorer.engine import GuardEngine, RawAnswer


class MeteredEngine:
    def __init__(self, engine: GuardEngine) -> None:
        self._engine = engine
        self._serving()

    @property
    def model_id(self) -> str:
        return self._engine.model_id

    @property
    def adapter(self) -> str | None:
        return self._engine.adapter

    @property
    def alive(self) -> bool:
        return self._engine.alive

    def _serving(self) -> dict[str, str]:
        """Report the model/adapter served now (the series of an earlier one disappears)."""
        attrs = {"model": self.model_id, "adapter": self.adapter or "none"}
        metrics.gauges.replace_where(
            "guardstream.scorer.adapter_serving",
            {tuple(sorted(attrs.items())): 1},
        )
        return attrs

    async def assess(
        self,
        messages: Sequence[dict[str, str]],
        request_id: str,
        adapter: Adapter | None = None,
    ) -> RawAnswer:
        attrs = self._serving()
        started = time.monotonic()
        try:
            answer = await self._engine.assess(messages, request_id, adapter)
        except Exception as exc:
            metrics.scorer_failures.add(1, {**attrs, "error": type(exc).__name__})
            raise
        metrics.scorer_latency.record(time.monotonic() - started, attrs)
        metrics.scorer_tokens.record(answer.prompt_tokens, {**attrs, "kind": "prompt"})
        metrics.scorer_tokens.record(answer.output_tokens, {**attrs, "kind": "output"})
        return answer

    async def close(self) -> None:
        await self._engine.close()
