"""A running triage process takes a changed policy directory without a restart, and refuses a
bad one (policy/reloader.py), on the real broker and Redis. No scorer runs: each post is new
text, so it leaves as a score request naming the pack (`id@version`) it was decided under."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from guardstream.contracts.events import ScoreRequest
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.produce import new_post, send
from guardstream.runtime.settings import Settings
from tests.integration.conftest import Pipeline, in_process
from tests.support.oracle import read_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PACK = 'id: default\nversion: "{version}"\ntenants: ["*"]\n'
_texts = itertools.count()


def swap_in(directory: Path, text: str) -> None:
    """Replace the pack file whole, as `guardstream policy apply` and ConfigMaps do."""
    spare = directory / ".default.yaml.tmp"
    spare.write_text(text, encoding="utf-8")
    os.replace(spare, directory / "default.yaml")


@pytest.fixture
async def triage_only(settings: Settings, tmp_path: Path) -> AsyncIterator[Pipeline]:
    swap_in(tmp_path, PACK.format(version="1"))
    reloading = settings.replace(policy={"dir": tmp_path, "poll_s": 0.2})
    async with in_process(reloading, None, "triage") as state:  # type: ignore[arg-type]
        yield state


async def decided_under(settings: Settings, timeout_s: float = 60) -> str:
    """Send one new post; the pack ref its score request names."""
    post = new_post(f"reload check number {next(_texts)}: is the ferry running today?")
    await send(settings, [post])
    topic = TopicNames(settings.namespace)[Topic.SCORE_REQUESTS]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        for raw in await read_all(settings, [topic]):
            request = ScoreRequest.from_json(raw)
            if request.post_id == post.post_id:
                return request.policy
        await asyncio.sleep(0.2)
    raise AssertionError(f"no score request for {post.post_id} within {timeout_s} s")


async def test_decisions_switch_to_a_new_pack_version_and_a_bad_one_never_takes_effect(
    triage_only: Pipeline, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = triage_only.settings
    assert await decided_under(settings) == "default@1"

    swap_in(tmp_path, PACK.format(version="2"))
    deadline = asyncio.get_running_loop().time() + 60
    seen = await decided_under(settings)
    while seen != "default@2" and asyncio.get_running_loop().time() < deadline:
        assert seen == "default@1"  # old or new, never anything else
        await asyncio.sleep(0.2)
        seen = await decided_under(settings)
    assert seen == "default@2"

    with caplog.at_level(logging.ERROR, logger="guardstream.policy.reloader"):
        swap_in(tmp_path, PACK.format(version="3") + "controversial: sometimes\n")
        deadline = asyncio.get_running_loop().time() + 60
        while not any("refused" in r.getMessage() for r in caplog.records):
            assert asyncio.get_running_loop().time() < deadline, "the bad file was never read"
            await asyncio.sleep(0.1)
    refused = next(r for r in caplog.records if "refused" in r.getMessage())
    assert "controversial" in refused.__dict__["why"]
    assert "default.yaml" in refused.__dict__["why"]
    assert await decided_under(settings) == "default@2"
