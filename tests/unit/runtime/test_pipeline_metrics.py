"""The values behind the pipeline gauges: consumer lag from highwater and the done watermark,
Redis availability as the fail-open stores see it, the adapter the scorer serves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from opentelemetry.metrics import CallbackOptions

from guardstream.model.adapters import Adapter
from guardstream.runtime import metrics
from guardstream.runtime.loop import BatchLoop, LoopConfig
from guardstream.runtime.redisstore import FailOpenStore, Unavailable
from guardstream.scorer.engine import RawAnswer
from guardstream.scorer.metered import SERVING_WINDOW_S, MeteredEngine

pytestmark = pytest.mark.unit


def observed(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted((k, str(v)) for k, v in (o.attributes or {}).items())): o.value
        for o in metrics.gauges.observe(name)(CallbackOptions())
    }


class FakeConsumer:
    def __init__(self, highwater: dict[TopicPartition, int]) -> None:
        self._highwater = highwater

    def assignment(self) -> set[TopicPartition]:
        return set(self._highwater)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._highwater.get(tp)


async def _noop(records: Sequence[Any]) -> None:
    return None


def test_lag_is_highwater_minus_the_done_watermark_per_partition() -> None:
    p0, p1, p2 = (TopicPartition("posts.v1", p) for p in range(3))
    consumer = FakeConsumer({p0: 100, p1: 10, p2: 5})
    config = LoopConfig("triage", 10, 100, 100, 1.0, 1.0, group="g-lag-test")
    loop = BatchLoop(consumer, _noop, config)  # type: ignore[arg-type]
    loop._tracker.start(p0, range(40, 50))  # 40..49 in flight: watermark 40
    loop._tracker.start(p1, range(0, 10))
    loop._tracker.finish(p1, range(0, 10))  # all done: watermark 10
    loop._observe()  # p2: nothing fetched yet, no watermark: no series rather than a guess
    lag = {
        dict(k)["partition"]: v
        for k, v in observed("guardstream.consumer.lag").items()
        if dict(k)["group"] == "g-lag-test"
    }
    assert lag == {"0": 60, "1": 0}
    assert observed("guardstream.consumer.in_flight")[(("process", "triage"),)] == 10
    assert observed("guardstream.consumer.assigned_partitions")[(("process", "triage"),)] == 3

    consumer._highwater = {p1: 12}  # p0 and p2 revoked: their series disappear
    loop._observe()
    lag = {
        dict(k)["partition"]: v
        for k, v in observed("guardstream.consumer.lag").items()
        if dict(k)["group"] == "g-lag-test"
    }
    assert lag == {"1": 2}


async def test_redis_availability_follows_the_fail_open_store() -> None:
    store = FailOpenStore(object(), what="unit-store", timeout_s=1.0)  # type: ignore[arg-type]
    key = (("store", "unit-store"),)
    assert observed("guardstream.redis.available")[key] == 1
    with pytest.raises(Unavailable):
        async with store.attempt("get"):
            raise ConnectionError("refused")
    assert observed("guardstream.redis.available")[key] == 0
    async with store.attempt("get"):
        pass
    assert observed("guardstream.redis.available")[key] == 1


class FakeEngine:
    def __init__(self) -> None:
        self.model_id = "m"
        self.alive = True

    async def assess(
        self,
        messages: Sequence[dict[str, str]],
        request_id: str,
        adapter: Adapter | None = None,
    ) -> RawAnswer:
        return RawAnswer("Safety: Safe", prompt_tokens=30, output_tokens=4)

    async def close(self) -> None:
        return None


async def test_the_adapter_serving_gauge_shows_the_adapters_requests_named() -> None:
    now = [0.0]
    metered = MeteredEngine(FakeEngine(), clock=lambda: now[0])
    assert observed("guardstream.scorer.adapter_serving") == {
        (("adapter", "none"), ("model", "m")): 1
    }
    lora = Adapter("lora-7", Path("/adapters/lora-7"), "acme", "t")
    answer = await metered.assess([{"role": "user", "content": "x"}], "r1", lora)
    assert answer.prompt_tokens == 30
    assert observed("guardstream.scorer.adapter_serving") == {
        (("adapter", "lora-7"), ("model", "m")): 1,
        (("adapter", "none"), ("model", "m")): 1,  # other tenants still get the base model
    }
    now[0] = SERVING_WINDOW_S + 1
    await metered.assess([{"role": "user", "content": "x"}], "r2", lora)
    assert observed("guardstream.scorer.adapter_serving") == {
        (("adapter", "lora-7"), ("model", "m")): 1  # the base has not served for a while
    }
