"""`redis_client` packs commands with hiredis: the bytes redis-py's own packer writes."""

import pytest
import redis.asyncio as aioredis
from redis.exceptions import DataError

from guardstream.runtime.redisstore import HiredisPacking, redis_client
from guardstream.runtime.settings import Settings

pytestmark = pytest.mark.unit

COMMANDS = [
    ("MGET", "gs:ns:vc:0123456789abcdef0123456789abcdef", "gs:ключ:中文"),
    ("ZADD", b"gs:nd2:bucket", 1764121234567.123, "key:00ff00ff00ff00ff"),
    ("ZREMRANGEBYSCORE", "bucket", "-inf", 1764121234567.123 - 86_400_000.0),
    ("ZRANGEBYSCORE", "bucket", 0.1, "+inf", "WITHSCORES"),
    ("EXPIRE", "bucket", 86_400),
    ("EVALSHA", "0" * 40, 3, "k1", "k2", "k3", 1764121234567.5),
    ("SET", "k", b"\x00\xff{}", "PX", 1000, "NX"),
    ("SET", "k", bytearray(b"ab"), "EX", -5),
    ("SET", "k", memoryview(b"cd")),
    ("ZADD", "k", 1e20, "m", -0.0, "n", float("inf"), "o"),
    ("CONFIG GET", "maxmemory"),
    (b"CONFIG SET", b"x", 12345678901234567890),
    ("SET", "k", "x" * 10_000),  # above redis-py's buffer cut-off: it writes it in pieces
]


class Hiredis(HiredisPacking, aioredis.Connection):
    pass


@pytest.mark.parametrize("command", COMMANDS)
def test_hiredis_packs_what_redis_py_packs(command: tuple[object, ...]) -> None:
    ours = b"".join(Hiredis().pack_command(*command))  # type: ignore[arg-type]
    theirs = b"".join(aioredis.Connection().pack_command(*command))  # type: ignore[arg-type]
    assert ours == theirs


@pytest.mark.parametrize("bad", [True, None, object()])
def test_what_redis_py_cannot_encode_is_a_data_error_still(bad: object) -> None:
    with pytest.raises(DataError):
        aioredis.Connection().pack_command("SET", "k", bad)  # type: ignore[arg-type]
    with pytest.raises(DataError):
        Hiredis().pack_command("SET", "k", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", aioredis.Connection),
        ("rediss://127.0.0.1:6380/0", aioredis.SSLConnection),
        ("unix:///tmp/redis.sock", aioredis.UnixDomainSocketConnection),
    ],
)
def test_the_client_keeps_the_url_s_connection_kind(url: str, kind: type) -> None:
    client = redis_client(Settings(redis={"url": url}))
    made = client.connection_pool.connection_class
    assert issubclass(made, HiredisPacking)
    assert issubclass(made, kind)
