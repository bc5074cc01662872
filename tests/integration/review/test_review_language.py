"""Posts sent without `lang` get one in triage, and it reaches the review console: on the real
broker, Redis and PostgreSQL, a Chinese post without `lang` goes through the real triage (its
score request says `zh`, detected), a repost decided from the cached verdict goes to review
with the language on its decision, and the console's language filter (the API's and the
page's: one query) finds its task."""

from __future__ import annotations

import asyncio

import pytest

from guardstream.contracts.events import LangSource, ScoreRequest, Source, Verdict, utcnow
from guardstream.contracts.topics import Topic
from guardstream.model.guard import served_model_id
from guardstream.policy import load_registry
from guardstream.review.logic import task_id
from guardstream.triage import main as triage_main
from guardstream.triage.service import Triage
from guardstream.verdict.cache import CachedVerdict, RedisVerdictCache
from guardstream.verdict.intake import triage_record
from tests.integration.review.conftest import Console, new_test_post, produce, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TEXT = "听说那个地方的人都有病,离他们远点。"


async def test_a_post_without_lang_is_reviewed_under_its_detected_language(
    console: Console,
) -> None:
    settings = console.settings
    stop = asyncio.Event()
    exposed: list[Triage] = []
    triage = asyncio.create_task(triage_main.run(settings, stop, expose=exposed.append))
    try:
        first = new_test_post(text=TEXT, lang=None)
        await produce(settings, (Topic.POSTS, first, first.post_id))
        [raw] = await read_topic(settings, Topic.SCORE_REQUESTS, 1, within=60)
        request = ScoreRequest.model_validate(raw)
        assert request.post_id == first.post_id
        assert (request.lang, request.lang_source) == ("zh", LangSource.DETECTED)

        # The scorer's verdict for the content, cached as the scorer caches it.
        item = triage_record(
            first.to_json(),
            max_text_chars=settings.process.max_text_chars,
            model=served_model_id(settings),
            adapter=None,
            policies=load_registry(settings.policy.dir),
        )
        assert item.content_key == request.content_key
        cache = RedisVerdictCache.from_settings(settings)
        try:
            await cache.put_many(
                {
                    item.verdict_key: CachedVerdict(
                        verdict=Verdict.CONTROVERSIAL,
                        categories=("Unethical Acts",),
                        confidence=0.58,
                        reason="Qwen3Guard: Controversial [Unethical Acts]",
                        source=Source.MODEL,
                        model=served_model_id(settings),
                        decided_at=utcnow(),
                    )
                }
            )
        finally:
            await cache.close()

        # A repost, also without `lang`: decided by triage from the cache, sent to review.
        repost = new_test_post(text=TEXT, lang=None)
        await produce(settings, (Topic.POSTS, repost, repost.post_id))
        [decision] = await read_topic(settings, Topic.REVIEW, 1, within=60)
        assert decision["post_id"] == repost.post_id and decision["source"] == "cache"
        assert (decision["lang"], decision["lang_source"]) == ("zh", "detected")
        assert exposed[0].languages == {("zh", "detected"): 2}  # the metric's counts

        await console.wait_tasks(1)
        tid = task_id(repost.tenant, repost.post_id, decision["policy"])
        await console.add_reviewer("alice", ("acme",))
        async with console.client("alice") as http:
            found = (await http.get("/api/v1/queue", params={"lang": "zh"})).json()
            assert [(t["task_id"], t["lang"]) for t in found["tasks"]] == [(tid, "zh")]
            other = (await http.get("/api/v1/queue", params={"lang": "en"})).json()
            assert other["tasks"] == []
    finally:
        stop.set()
        await asyncio.wait_for(triage, timeout=60)
