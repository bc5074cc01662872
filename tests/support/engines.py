"""Latency and fault injection around the real engine: a real model cannot be made slow, or
fail, on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from guardstream.model.adapters import Adapter
from guardstream.scorer.engine import GuardEngine, RawAnswer, ScoringError


class _Around:
    """A real engine, owned by the test session, with `before` run ahead of each request."""

    def __init__(self, inner: GuardEngine) -> None:
        self._inner = inner

    @property
    def model_id(self) -> str:
        return self._inner.model_id

    @property
    def alive(self) -> bool:
        return self._inner.alive

    async def before(self, messages: Sequence[dict[str, str]], adapter: Adapter | None) -> None:
        raise NotImplementedError

    async def assess(
        self,
        messages: Sequence[dict[str, str]],
        request_id: str,
        adapter: Adapter | None = None,
    ) -> RawAnswer:
        await self.before(messages, adapter)
        return await self._inner.assess(messages, request_id, adapter)

    async def close(self) -> None:
        """The inner engine belongs to the test session."""


class SlowEngine(_Around):
    """Delegates to a real engine after `delay(messages)` seconds."""

    def __init__(self, inner: GuardEngine, delay: Callable[[Sequence[dict[str, str]]], float]):
        super().__init__(inner)
        self._delay = delay

    async def before(self, messages: Sequence[dict[str, str]], adapter: Adapter | None) -> None:
        await asyncio.sleep(self._delay(messages))


class FailingAdapterEngine(_Around):
    """Delegates to a real engine, except that requests `fails(messages, adapter)` picks raise
    a scoring error: a real adapter cannot be made to fail on demand."""

    def __init__(
        self,
        inner: GuardEngine,
        fails: Callable[[Sequence[dict[str, str]], Adapter | None], bool],
    ) -> None:
        super().__init__(inner)
        self._fails = fails

    async def before(self, messages: Sequence[dict[str, str]], adapter: Adapter | None) -> None:
        if self._fails(messages, adapter):
            raise ScoringError("injected adapter failure")
