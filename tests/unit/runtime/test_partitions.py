"""Outputs land where Kafka's default partitioner puts their key, so every client agrees."""

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from guardstream.runtime.kafka import key_partitions

pytestmark = pytest.mark.unit


@given(
    st.lists(st.binary(max_size=80), max_size=60)
    | st.lists(st.binary(min_size=32, max_size=32), min_size=5, max_size=60),
    st.integers(min_value=1, max_value=64),
)
def test_keys_go_where_the_default_partitioner_sends_them(keys: list[bytes], count: int) -> None:
    partitions = list(range(count))
    expected = [DefaultPartitioner()(key, partitions, partitions) for key in keys]
    assert key_partitions(keys, set(partitions)) == expected


MURMUR2 = {  # Kafka's UtilsTest.testMurmur2 (Java int results)
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "java"), MURMUR2.items())
def test_javas_murmur2_vectors(key: bytes, java: int) -> None:
    count = 1009
    # Five copies: keys of one length are hashed together from four on.
    assert key_partitions([key] * 5, range(count)) == [(java & 0x7FFFFFFF) % count] * 5
    assert key_partitions([key], range(count)) == [(java & 0x7FFFFFFF) % count]
