"""The guard engine, measured: latency and tokens per model call, and which adapter serves.

A transparent `GuardEngine` wrapper, so the scorer's logic and every engine implementation
stay free of telemetry code. Attributes are the model id and adapter only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from guardstream.model.adapters import Adapter
from guardstream.runtime import metrics
from guardstream.scorer.engine import GuardEngine, RawAnswer

SERVING_WINDOW_S = 600.0


class MeteredEngine:
    def __init__(self, engine: GuardEngine, clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._clock = clock
        self._last_served: dict[str, float] = {}  # adapter id ("none": base) → monotonic time
        self._serving(None)

    @property
    def model_id(self) -> str:
        return self._engine.model_id

    @property
    def alive(self) -> bool:
        return self._engine.alive

    def _serving(self, adapter: Adapter | None) -> dict[str, str]:
        """Report the adapters this scorer served within `SERVING_WINDOW_S` (each request
        names its own: tenants may have different ones); a retired one's series disappears."""
        name = adapter.adapter_id if adapter is not None else "none"
        now = self._clock()
        self._last_served[name] = now
        self._last_served = {
            a: t for a, t in self._last_served.items() if now - t <= SERVING_WINDOW_S
        }
        metrics.gauges.replace_where(
            "guardstream.scorer.adapter_serving",
            {(("adapter", a), ("model", self.model_id)): 1 for a in self._last_served},
        )
        return {"model": self.model_id, "adapter": name}

    async def assess(
        self,
        messages: Sequence[dict[str, str]],
        request_id: str,
        adapter: Adapter | None = None,
    ) -> RawAnswer:
        attrs = self._serving(adapter)
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
