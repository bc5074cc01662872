"""The near-duplicate index against a real Redis, each test under its own key prefix."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff

from guardstream.contracts.text import normalise
from guardstream.verdict.neardup import NearMatch, RedisNearDuplicateIndex

# Each test takes well under a second; the stores' deadlines are 0.2-0.5 s. A call that
# outlives its deadline (a client retrying a refused or silent Redis forever) hangs, and this
# bound ends the test as a failure with the stack of the call that hung, instead of after the
# suite's 300 s default.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

SCOPE = "post\x00\x00default-v1\x00guard-model\x00"
TTL_S = 600
TIMEOUT_S = 0.5

EN_POST = "Free iPhone giveaway! Follow and DM me, 10 winners picked tonight. Do not miss it."
EN_VARIANTS = [
    "FREE IPHONE GIVEAWAY!!! follow and dm me, 10 winners picked tonight... do not miss it",
    "Free iPhone giveaway 🔥🔥 Follow and DM me, 10 winners picked tonight. Do not miss it 👉",
    EN_POST + " https://bit.ly/3kQz7Wp",
    "Free iPhone give away! Follow and D M me, 10 winners picked tonight. Do not miss it.",
]
EN_DISTINCT = [
    "Free iPhone giveaway! Follow and DM me, 20 winners picked tonight. Do not miss it.",
    "Free Rolex giveaway! Follow and DM me, 10 winners picked tonight. Do not miss it.",
    "Meet me at the park tomorrow at 5 and bring the concert tickets, we leave after.",
]
ZH_POST = "加我微信免费领取手机，限前10名，今晚抽奖，手慢无！"
ZH_VARIANTS = [
    "加我微信，免费领取手机！限前10名～今晚抽奖，手慢无😂😂",
    "加 我 微 信 免 费 领 取 手 机，限前10名，今晚抽奖，手慢无！",
    ZH_POST + " http://t.cn/A6xYz",
]
ZH_DISTINCT = [
    "加我微信免费领取相机，限前10名，今晚抽奖，手慢无！",
    "加我微信免费领取手机，限前20名，今晚抽奖，手慢无！",
]


def key(text: str) -> str:
    return "ck-" + uuid.uuid5(uuid.NAMESPACE_OID, text).hex


def items(*texts: str) -> list[tuple[str, str]]:
    return [(key(normalise(t)), normalise(t)) for t in texts]


@pytest.fixture
def prefix() -> str:
    return f"gs:t{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def client(redis_url: str, prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def make_index(client: aioredis.Redis, prefix: str) -> Callable[..., RedisNearDuplicateIndex]:
    def make(**overrides: int) -> RedisNearDuplicateIndex:
        settings = {"ttl_s": TTL_S, **overrides}
        return RedisNearDuplicateIndex(client, prefix=prefix, timeout_s=TIMEOUT_S, **settings)

    return make


async def keys_under(client: aioredis.Redis, prefix: str) -> list[bytes]:
    return [k async for k in client.scan_iter(match=prefix + "*", count=1000)]


@pytest.mark.parametrize(
    ("post", "variants"), [(EN_POST, EN_VARIANTS), (ZH_POST, ZH_VARIANTS)], ids=["en", "zh"]
)
async def test_variants_find_the_post_they_came_from(
    make_index: Callable[..., RedisNearDuplicateIndex], post: str, variants: list[str]
) -> None:
    index = make_index()
    await index.add_many(SCOPE, items(post))
    found = await index.find_many(SCOPE, items(*variants))
    original = key(normalise(post))
    assert found == {k: NearMatch(original, 0) for k, _ in items(*variants)}


@pytest.mark.parametrize(
    ("post", "distinct"), [(EN_POST, EN_DISTINCT), (ZH_POST, ZH_DISTINCT)], ids=["en", "zh"]
)
async def test_distinct_posts_are_not_matched(
    make_index: Callable[..., RedisNearDuplicateIndex], post: str, distinct: list[str]
) -> None:
    index = make_index()
    await index.add_many(SCOPE, items(post))
    assert await index.find_many(SCOPE, items(*distinct)) == {}


async def test_a_tolerant_threshold_finds_typos_through_the_bands_but_never_other_digits(
    make_index: Callable[..., RedisNearDuplicateIndex],
) -> None:
    index = make_index(threshold=10)  # eleven bands of 5-6 bits
    await index.add_many(SCOPE, items(EN_POST))
    near = {  # text: its distance from EN_POST
        "Free iPhone giveaway! Follow and DM me, 10 winners picked tonight. Do not mis it.": 6,
        "Free iPhone givaway! Follow and DM me, 10 winners picked tonight. Do not miss it.": 8,
        "Free iPhone giveaway! Folow and DM me, 10 winners picked tonight. Do not miss it.": 8,
        # Tolerance cannot tell a typo from a dropped "not": why the default threshold is 0.
        "Free iPhone giveaway! Follow and DM me, 10 winners picked tonight. Do miss it.": 7,
    }
    found = await index.find_many(SCOPE, items(*near))
    original = key(normalise(EN_POST))
    assert found == {key(normalise(t)): NearMatch(original, d) for t, d in near.items()}
    # 10 bits away, but another number is another post; "winers" is 14 bits away.
    other = [
        "Free iPhone giveaway! Follow and DM me, 13 winners picked tonight. Do not miss it.",
        "Free iPhone giveaway! Follow and DM me, 10 winers picked tonight. Do not miss it.",
    ]
    assert await index.find_many(SCOPE, items(*other)) == {}
    strict = make_index()  # the default threshold, 0
    await strict.add_many(SCOPE, items(EN_POST))
    assert await strict.find_many(SCOPE, items(*near)) == {}
    assert len(await strict.find_many(SCOPE, items(*EN_VARIANTS))) == len(EN_VARIANTS)


async def test_a_post_is_not_its_own_near_duplicate(
    make_index: Callable[..., RedisNearDuplicateIndex],
) -> None:
    index = make_index()
    await index.add_many(SCOPE, items(EN_POST))
    assert await index.find_many(SCOPE, items(EN_POST)) == {}


async def test_one_round_trip_answers_a_mixed_batch(
    make_index: Callable[..., RedisNearDuplicateIndex],
) -> None:
    index = make_index()
    await index.add_many(SCOPE, items(EN_POST, ZH_POST))
    batch = items(EN_VARIANTS[0], ZH_VARIANTS[0], EN_DISTINCT[0], EN_VARIANTS[0], "short")
    found = await index.find_many(SCOPE, batch)
    assert found == {
        batch[0][0]: NearMatch(key(normalise(EN_POST)), 0),
        batch[1][0]: NearMatch(key(normalise(ZH_POST)), 0),
    }


async def test_scopes_are_isolated(make_index: Callable[..., RedisNearDuplicateIndex]) -> None:
    index = make_index()
    await index.add_many(SCOPE, items(EN_POST))
    assert await index.find_many(SCOPE + "other-adapter", items(*EN_VARIANTS)) == {}
    assert len(await index.find_many(SCOPE, items(*EN_VARIANTS))) == len(EN_VARIANTS)


async def test_short_texts_are_never_stored_or_matched(
    make_index: Callable[..., RedisNearDuplicateIndex], client: aioredis.Redis, prefix: str
) -> None:
    index = make_index()
    await index.add_many(SCOPE, items("I hate you so much!!", "我恨你"))
    assert await keys_under(client, prefix) == []
    assert await index.find_many(SCOPE, items("i hate you so much", "我恨你！")) == {}


async def test_buckets_keep_their_newest_members_only(
    make_index: Callable[..., RedisNearDuplicateIndex], client: aioredis.Redis, prefix: str
) -> None:
    index = make_index(bucket_max=5)
    wave = [f"{EN_POST}{'!' * i}" for i in range(1, 9)]  # one fingerprint, eight keys
    for text in wave:
        await index.add_many(SCOPE, items(text))
        await asyncio.sleep(0.003)  # distinct insertion times
    (bucket,) = await keys_under(client, prefix)
    members = await client.zrange(bucket, 0, -1)
    assert len(members) == 5
    newest = {key(normalise(t)) for t in wave[-5:]}
    assert {m.decode().rpartition(":")[0] for m in members} == newest
    # The newest member answers: its verdict is the most current.
    found = await index.find_many(SCOPE, items(EN_POST))
    assert found[key(normalise(EN_POST))] == NearMatch(key(normalise(wave[-1])), 0)


async def test_buckets_expire(
    make_index: Callable[..., RedisNearDuplicateIndex], client: aioredis.Redis, prefix: str
) -> None:
    index = make_index(ttl_s=120)
    await index.add_many(SCOPE, items(EN_POST, ZH_POST))
    buckets = await keys_under(client, prefix)
    assert len(buckets) == 2
    for bucket in buckets:
        assert 0 < await client.ttl(bucket) <= 120


async def test_members_older_than_the_ttl_are_ignored(
    make_index: Callable[..., RedisNearDuplicateIndex], client: aioredis.Redis, prefix: str
) -> None:
    index = make_index(ttl_s=60)
    await index.add_many(SCOPE, items(EN_POST))
    (bucket,) = await keys_under(client, prefix)
    (member,) = await client.zrange(bucket, 0, -1)
    await client.zadd(bucket, {member: (time.time() - 120) * 1000})  # a bucket kept alive
    assert await index.find_many(SCOPE, items(*EN_VARIANTS)) == {}


async def test_corrupt_members_are_ignored(
    make_index: Callable[..., RedisNearDuplicateIndex], client: aioredis.Redis, prefix: str
) -> None:
    index = make_index()
    await index.add_many(SCOPE, items(EN_POST))
    (bucket,) = await keys_under(client, prefix)
    now = time.time() * 1000
    garbage = {b"no-colon": now, b"k:nothex!nothex!": now, b":0000000000000000": now}
    await client.zadd(bucket, {**garbage, b"\xff\xfe:0000000000000000": now})
    found = await index.find_many(SCOPE, items(EN_VARIANTS[0]))
    assert list(found.values()) == [NearMatch(key(normalise(EN_POST)), 0)]


async def test_a_client_decoding_responses_reads_the_same_members(
    redis_url: str, make_index: Callable[..., RedisNearDuplicateIndex], prefix: str
) -> None:
    await make_index().add_many(SCOPE, items(EN_POST))
    decoding = aioredis.Redis.from_url(redis_url, decode_responses=True)
    index = RedisNearDuplicateIndex(decoding, prefix=prefix, ttl_s=TTL_S, timeout_s=TIMEOUT_S)
    try:
        found = await index.find_many(SCOPE, items(EN_VARIANTS[0]))
    finally:
        await index.close()
    assert list(found.values()) == [NearMatch(key(normalise(EN_POST)), 0)]


async def test_redis_refusing_connections_means_no_match(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused connection is a miss. The client retries a refusal (redis-py does, with
    backoff); this one would retry it forever, so only the store's deadline ends each call -
    as a `TimeoutError`, where a call without a deadline would hang (and fail by the module's
    timeout)."""
    timeout_s = 0.2
    client = aioredis.Redis(
        host="127.0.0.1",
        port=1,
        socket_connect_timeout=timeout_s,
        retry=Retry(ConstantBackoff(0.01), retries=1_000_000_000),
    )
    index = RedisNearDuplicateIndex(client, prefix="gs:t:", ttl_s=TTL_S, timeout_s=timeout_s)
    caplog.set_level(logging.WARNING, logger="guardstream.runtime.redisstore")
    try:
        for _ in range(3):
            assert await index.find_many(SCOPE, items(*EN_VARIANTS)) == {}
            await index.add_many(SCOPE, items(EN_POST))
    finally:
        await index.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # once per incident, not per call or record
    assert warnings[0].__dict__["store"] == "near_duplicate_index"
    assert warnings[0].__dict__["error"] == "TimeoutError"  # ended by the deadline
    assert "iphone" not in caplog.text.lower()


async def test_a_redis_that_never_answers_costs_at_most_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The call ends by the store's deadline (a `TimeoutError`) after waiting at least the
    timeout for a server that never answers; a call without one hangs and fails by the
    module's timeout."""
    asked = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await reader.read(1):  # a request arrived: never answer it
            asked.set()
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    timeout_s = 0.2
    # The client's own socket timeout fires too, and its retry asks again, forever: only the
    # store's deadline ends the call.
    client = aioredis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=timeout_s / 4,
        retry=Retry(ConstantBackoff(0.01), retries=1_000_000_000),
    )
    index = RedisNearDuplicateIndex(client, prefix="gs:t:", ttl_s=TTL_S, timeout_s=timeout_s)
    caplog.set_level(logging.WARNING, logger="guardstream.runtime.redisstore")
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        assert await index.find_many(SCOPE, items(*EN_VARIANTS)) == {}
        assert loop.time() - started >= timeout_s  # it waited for the server, then gave up
        assert asked.is_set()  # the request reached the server, which never answered
        await index.add_many(SCOPE, items(EN_POST))
    finally:
        await index.close()
        server.close()
        await server.wait_closed()
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.__dict__["error"] == "TimeoutError"  # ended by its deadline


@pytest.mark.parametrize(
    "bad",
    [{"threshold": -1}, {"threshold": 32}, {"min_chars": 0}, {"bucket_max": 0}, {"ttl_s": 0}],
)
def test_nonsense_settings_are_refused(
    make_index: Callable[..., RedisNearDuplicateIndex], bad: dict[str, int]
) -> None:
    with pytest.raises(ValueError, match=r"threshold|positive"):
        make_index(**bad)
